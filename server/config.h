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
  int max_tensor_mb = 1024;      // TENSORPREP_MAX_TENSOR_MB: largest decoded tensor
  int max_image_megapixels = 128;  // TENSORPREP_MAX_IMAGE_MEGAPIXELS: largest image file, Mi px
  int max_inflight_mb = 2048;    // TENSORPREP_MAX_INFLIGHT_MB: request + response bytes held, server-wide
  int max_inflight_requests = 1024;  // TENSORPREP_MAX_INFLIGHT_REQUESTS: server-wide
  int stream_inflight = 8;       // TENSORPREP_STREAM_INFLIGHT: requests in flight per stream
  int stream_inflight_mb = 256;  // TENSORPREP_STREAM_INFLIGHT_MB: bytes in flight per stream
  double grace_seconds = 30;     // TENSORPREP_GRACE_SECONDS: drain time on SIGTERM
  // TENSORPREP_DRAIN_DELAY_SECONDS: on SIGTERM/SIGINT health turns NOT_SERVING at once, but calls
  // are still served for this long before the shutdown begins, so that health-checking clients
  // and load balancers move away first. 0 = shut down at once (the bare binary's default; the
  // Kubernetes manifests set 10). A second signal ends the delay early.
  double drain_delay_seconds = 0;
  // TENSORPREP_MAX_CONNECTION_AGE_SECONDS: a connection older than this (gRPC adds +-10% jitter)
  // gets a GOAWAY, so that clients reconnect and re-balance over the replicas. 0 = no limit.
  double max_connection_age_seconds = 0;
  // TENSORPREP_MAX_CONNECTION_AGE_GRACE_SECONDS: how long calls on a connection past its age may
  // still run before it is closed. 0 = no limit (gRPC's default). Needs a connection age.
  double max_connection_age_grace_seconds = 0;

  // TLS: PEM files. Both cert and key turn TLS on; a client CA also requires and verifies client
  // certificates (mutual TLS).
  std::string tls_cert;       // TENSORPREP_TLS_CERT
  std::string tls_key;        // TENSORPREP_TLS_KEY
  std::string tls_client_ca;  // TENSORPREP_TLS_CLIENT_CA
  // Bearer token every Preprocessor call must carry ("authorization: Bearer <token>"); empty =
  // no token. Health and /metrics never need it. Set from TENSORPREP_AUTH_TOKEN, --auth-token or
  // --auth-token-file (the file's first line); never printed.
  std::string auth_token;

  // Same-host clients. TENSORPREP_UDS: also listen on this Unix-domain socket path (clients use
  // "unix:PATH"); empty = TCP only. The file is replaced at start and removed at exit.
  std::string uds;
  // TENSORPREP_SHM_PREFIX: enables shared-memory tensors for POSIX shared-memory objects whose
  // names start with this (e.g. "/tensorprep-"); empty = disabled (the default).
  std::string shm_prefix;
  // TENSORPREP_SHM_MAX_REGIONS: regions one client (a connection's peer and token; on a Unix
  // socket every client has the same peer, so they share it) may hold.
  int shm_max_regions = 64;
  int shm_max_mb = 4096;      // TENSORPREP_SHM_MAX_MB: MiB mapped for all clients together
  // TENSORPREP_RESULT_CACHE_MB: MiB of sent result buffers (1 MiB and more) kept for reuse, so
  // that large results are written into memory whose pages are already mapped; 0 = none.
  int result_cache_mb = 256;
  // TENSORPREP_PIPELINES: a pipeline file or a directory of them, offered as models of the
  // KServe v2 / Triton protocol (docs/kserve.md); empty = only the built-in model.
  std::string pipelines;
  bool help = false;
  bool version = false;
};

// The --help text.
std::string Usage();

// Parses `env` (NAME=VALUE strings, e.g. from environ) then `args` (argv without argv[0]).
// INVALID_ARGUMENT naming the flag or variable for unknown flags and bad values.
// Also checks combinations: TLS cert without key (or the reverse), a client CA without TLS, a
// connection age grace without a connection age, and unreadable TLS or token files are
// INVALID_ARGUMENT naming the flag.
absl::StatusOr<Config> ParseConfig(const std::vector<std::string>& args,
                                   const std::vector<std::string>& env);

// Reads a whole file; INVALID_ARGUMENT naming `name` when it cannot be read or is empty.
absl::StatusOr<std::string> ReadConfigFile(const std::string& path, const std::string& name);

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_CONFIG_H_
