# essctl: the ops command line over ReplayService.
ess_binary(essctl SRCS essctl.cc
  DEPS ess_cli ess_replay_client ess_replay_records ess_wiring absl::flags absl::strings
       absl::str_format
       absl::time)
