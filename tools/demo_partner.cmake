# demo_partner: the stand-in partner ("prison calendar") used by ./run.sh.
ess_binary(demo_partner SRCS demo_partner.cc
  DEPS ess_http ess_log ess_cli ess_webhook absl::flags absl::strings absl::synchronization
       absl::flat_hash_set absl::time)
