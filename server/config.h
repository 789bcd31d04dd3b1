// Server settings from command-line flags and TENSORPREP_* environment variables (flags win).
#ifndef TENSORPREP_SERVER_CONFIG_H_
#define TENSORPREP_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tensorprep::server {

struct Config {
  std::string host = "0.0.0.0";  // TENSORPREP_HOST
  int port = 50051;              // TENSORPREP_PORT; 0 picks a free port
  int metrics_port = 9464;       // TENSORPREP_METRICS_PORT; 0 disables /metrics
  std::string device = "auto";   // TENSORPREP_DEVICE: auto | cpu | cuda
  int threads = 0;               // TENSORPREP_THREADS; 0 = all cores
  int max_message_mb = 256;      // TENSORPREP_MAX_MESSAGE_MB (receive and send)
  int stream_inflight = 8;       // TENSORPREP_STREAM_INFLIGHT: requests in flight per stream
  double grace_seconds = 30;     // TENSORPREP_GRACE_SECONDS: drain time on SIGTERM
  bool help = false;
  bool version = false;
};

// The --help text.
std::string Usage();

// Parses `env` (NAME=VALUE strings, e.g. from environ) then `args` (argv without argv[0]).
// INVALID_ARGUMENT naming the flag or variable for unknown flags and bad values.
absl::StatusOr<Config> ParseConfig(const std::vector<std::string>& args,
                                   const std::vector<std::string>& env);

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_CONFIG_H_
