# essbus: publish / subscribe / queue depth on the RabbitMQ bus, for ./run.sh and humans.
ess_binary(essbus SRCS essbus.cc
  DEPS ess_amqp ess_cli ess_log absl::flags absl::strings absl::synchronization absl::time)
