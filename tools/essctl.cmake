# essctl: the ops command line over ReplayService.
ess_binary(essctl SRCS essctl.cc
  DEPS ess_cli ess_replay_client ess_replay_records absl::flags absl::strings absl::str_format
       absl::time)
