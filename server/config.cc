#include "server/config.h"

#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace tensorprep::server {

std::string Usage() {
  return R"usage(tensorprep-server: image preprocessing over gRPC (rotate, flip, arithmetic; CPU and CUDA)

Usage: tensorprep-server [flags]

Flags (each also read from the environment variable shown; flags win):
  --host ADDR            listen address (TENSORPREP_HOST, default 0.0.0.0)
  --port N               gRPC port, 0 = any free port (TENSORPREP_PORT, default 50051)
  --metrics-port N       Prometheus /metrics port, 0 = off (TENSORPREP_METRICS_PORT, default 9464)
  --device D             auto | cpu | cuda (TENSORPREP_DEVICE, default auto): auto uses a usable
                         CUDA device for large batches and the CPU otherwise; cpu never uses CUDA;
                         cuda requires a usable device at start-up and sends every request to it
  --threads N            CPU worker threads, 0 = all cores (TENSORPREP_THREADS, default 0)
  --max-message-mb N     largest request/response message in MiB (TENSORPREP_MAX_MESSAGE_MB, 256)
  --max-tensor-mb N      largest tensor in a request, in MiB; bigger ones get RESOURCE_EXHAUSTED
                         (TENSORPREP_MAX_TENSOR_MB, default 1024)
  --max-image-megapixels N
                         largest image file in an image_list, in Mi pixels (height x width, as
                         its header declares); bigger ones get RESOURCE_EXHAUSTED before any
                         decoding (TENSORPREP_MAX_IMAGE_MEGAPIXELS, default 128)
  --max-inflight-mb N    request and response bytes held by accepted requests, server-wide, in
                         MiB; past it new requests get RESOURCE_EXHAUSTED
                         (TENSORPREP_MAX_INFLIGHT_MB, default 2048)
  --max-inflight-requests N
                         requests accepted and not yet answered, server-wide; past it new
                         requests get RESOURCE_EXHAUSTED (TENSORPREP_MAX_INFLIGHT_REQUESTS, 1024)
  --stream-inflight N    requests in flight per stream before reading pauses
                         (TENSORPREP_STREAM_INFLIGHT, default 8)
  --stream-inflight-mb N bytes in flight per stream before reading pauses, in MiB; one request
                         bigger than this gets RESOURCE_EXHAUSTED (TENSORPREP_STREAM_INFLIGHT_MB, 256)
  --drain-delay-seconds S
                         on SIGTERM/SIGINT, health turns NOT_SERVING at once but calls are still
                         served for S seconds, so that health-checking clients and load balancers
                         move to other replicas before the shutdown; a second signal ends the
                         delay early (TENSORPREP_DRAIN_DELAY_SECONDS, default 0 = shut down at once)
  --grace-seconds S      then, time given to in-flight work before it is cancelled; new calls are
                         refused (TENSORPREP_GRACE_SECONDS, default 30)
  --max-connection-age-seconds S
                         send a client connection GOAWAY after about S seconds (+-10% jitter) so
                         that long-lived channels reconnect and re-balance over the replicas
                         (TENSORPREP_MAX_CONNECTION_AGE_SECONDS, default 0 = no limit)
  --max-connection-age-grace-seconds S
                         after that GOAWAY, time calls still running on the old connection get
                         before it is closed; needs --max-connection-age-seconds
                         (TENSORPREP_MAX_CONNECTION_AGE_GRACE_SECONDS, default 0 = no limit)
  --tls-cert FILE        PEM certificate chain; with --tls-key turns TLS on (TENSORPREP_TLS_CERT)
  --tls-key FILE         PEM private key (TENSORPREP_TLS_KEY)
  --tls-client-ca FILE   PEM CA bundle; clients must present a certificate it signed (mutual TLS)
                         (TENSORPREP_TLS_CLIENT_CA)
  --auth-token-file FILE bearer token (the file's first line) that every Preprocessor call must
                         send as "authorization: Bearer <token>" (TENSORPREP_AUTH_TOKEN_FILE);
                         TENSORPREP_AUTH_TOKEN or --auth-token give it directly. Health checks
                         and /metrics never need it.
  --uds PATH             also listen on a Unix-domain socket at PATH, for clients on the same
                         host ("unix:PATH"); the file is replaced at start (TENSORPREP_UDS)
  --shm-prefix P         enable shared-memory tensors: clients may register POSIX shared-memory
                         objects whose names start with P, e.g. /tensorprep- (TENSORPREP_SHM_PREFIX,
                         default empty = disabled); the server opens them, never creates them
  --shm-max-regions N    shared-memory regions one client may hold (TENSORPREP_SHM_MAX_REGIONS, 64);
                         on a Unix socket all clients count as one
  --shm-max-mb N         MiB of shared memory mapped for all clients together
                         (TENSORPREP_SHM_MAX_MB, default 4096)
  --result-cache-mb N    MiB of sent result buffers of 1 MiB and more kept for the next results
                         of their size, whose pages are then already mapped; 0 = none
                         (TENSORPREP_RESULT_CACHE_MB, default 256)
  --pipelines PATH       named pipelines offered as models of the KServe v2 / Triton protocol
                         (inference.GRPCInferenceService, same port): a JSON pipeline file or a
                         directory of them (docs/kserve.md); checked at start, a bad file stops
                         the server (TENSORPREP_PIPELINES, default none: only the built-in
                         model 'tensorprep', which takes its pipeline per request)
  --version              print the version and exit
  --help                 print this help and exit

On start the server prints one line: "tensorprep-server ready on HOST:PORT (...)".
)usage";
}

namespace {

using Setter = std::function<absl::Status(Config&, const std::string& value, const std::string& name)>;

absl::Status ParseInt(const std::string& v, const std::string& name, int lo, int hi, int* out) {
  int x;
  if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected an integer in [", lo, ", ", hi, "], got '", v, "'"));
  }
  *out = x;
  return absl::OkStatus();
}

absl::Status ParseSeconds(const std::string& v, const std::string& name, int hi, double* out) {
  double x;
  if (!absl::SimpleAtod(v, &x) || !(x >= 0 && x <= hi)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": expected seconds in [0, ", hi, "], got '", v, "'"));
  }
  *out = x;
  return absl::OkStatus();
}

// A duration that gRPC takes in whole milliseconds: 0 (off) or at least 1 ms, and at most
// kMaxAgeSeconds so that the milliseconds fit an int.
constexpr int kMaxAgeSeconds = 1000000;
absl::Status ParseAgeSeconds(const std::string& v, const std::string& name, double* out) {
  double x;
  if (!absl::SimpleAtod(v, &x) || !(x == 0 || (x >= 0.001 && x <= kMaxAgeSeconds))) {
    return absl::InvalidArgumentError(absl::StrCat(name,
                                                   ": expected 0 (no limit) or seconds in [0.001, ",
                                                   kMaxAgeSeconds, "], got '", v, "'"));
  }
  *out = x;
  return absl::OkStatus();
}

absl::Status SetPath(const std::string& v, const std::string& name, std::string* out) {
  if (v.empty()) return absl::InvalidArgumentError(name + ": expected a file name, got ''");
  *out = v;
  return absl::OkStatus();
}

// The token goes into an HTTP/2 header value: printable ASCII without spaces. The value itself
// is never echoed back in an error.
absl::Status SetToken(const std::string& v, const std::string& name, std::string* out) {
  if (v.empty()) return absl::InvalidArgumentError(name + ": expected a token, got an empty one");
  for (char ch : v) {
    if (ch <= ' ' || ch > '~') {
      return absl::InvalidArgumentError(
          name + ": expected printable ASCII without spaces (the token is not shown)");
    }
  }
  *out = v;
  return absl::OkStatus();
}

const std::map<std::string, Setter>& Setters() {
  static const auto* setters = new std::map<std::string, Setter>{
      {"host",
       [](Config& c, const std::string& v, const std::string& name) {
         if (v.empty()) return absl::InvalidArgumentError(name + ": expected an address, got ''");
         c.host = v;
         return absl::OkStatus();
       }},
      {"port", [](Config& c, const std::string& v,
                  const std::string& name) { return ParseInt(v, name, 0, 65535, &c.port); }},
      {"metrics-port",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 0, 65535, &c.metrics_port);
       }},
      {"device",
       [](Config& c, const std::string& v, const std::string& name) {
         if (v != "auto" && v != "cpu" && v != "cuda") {
           return absl::InvalidArgumentError(
               absl::StrCat(name, ": expected auto, cpu or cuda, got '", v, "'"));
         }
         c.device = v;
         return absl::OkStatus();
       }},
      {"threads", [](Config& c, const std::string& v,
                     const std::string& name) { return ParseInt(v, name, 0, 1024, &c.threads); }},
      {"max-message-mb",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 2047, &c.max_message_mb);
       }},
      {"max-tensor-mb",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 1 << 20, &c.max_tensor_mb);
       }},
      {"max-image-megapixels",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 1 << 20, &c.max_image_megapixels);
       }},
      {"max-inflight-mb",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 1 << 20, &c.max_inflight_mb);
       }},
      {"max-inflight-requests",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 1 << 20, &c.max_inflight_requests);
       }},
      {"stream-inflight",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 1024, &c.stream_inflight);
       }},
      {"stream-inflight-mb",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 1 << 20, &c.stream_inflight_mb);
       }},
      {"tls-cert", [](Config& c, const std::string& v,
                      const std::string& name) { return SetPath(v, name, &c.tls_cert); }},
      {"tls-key", [](Config& c, const std::string& v,
                     const std::string& name) { return SetPath(v, name, &c.tls_key); }},
      {"tls-client-ca", [](Config& c, const std::string& v,
                           const std::string& name) { return SetPath(v, name, &c.tls_client_ca); }},
      {"auth-token",
       [](Config& c, const std::string& v, const std::string& name) {
         return SetToken(v, name, &c.auth_token);
       }},
      {"auth-token-file",
       [](Config& c, const std::string& v, const std::string& name) {
         auto text = ReadConfigFile(v, name);
         if (!text.ok()) return text.status();
         return SetToken(text->substr(0, text->find_first_of("\r\n")), name, &c.auth_token);
       }},
      {"uds", [](Config& c, const std::string& v,
                 const std::string& name) { return SetPath(v, name, &c.uds); }},
      {"pipelines", [](Config& c, const std::string& v,
                       const std::string& name) { return SetPath(v, name, &c.pipelines); }},
      {"shm-prefix",
       [](Config& c, const std::string& v, const std::string& name) {
         // The prefix of an shm_open name: '/', then at least one more character, no other '/'.
         if (v.size() < 2 || v[0] != '/' || v.find('/', 1) != std::string::npos) {
           return absl::InvalidArgumentError(absl::StrCat(
               name, ": expected '/' and a name prefix without another '/', e.g. /tensorprep-, "
                     "got '", v, "'"));
         }
         c.shm_prefix = v;
         return absl::OkStatus();
       }},
      {"shm-max-regions",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 4096, &c.shm_max_regions);
       }},
      {"shm-max-mb",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 1, 1 << 24, &c.shm_max_mb);
       }},
      {"result-cache-mb",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseInt(v, name, 0, 1 << 20, &c.result_cache_mb);
       }},
      {"grace-seconds",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseSeconds(v, name, 3600, &c.grace_seconds);
       }},
      {"drain-delay-seconds",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseSeconds(v, name, 3600, &c.drain_delay_seconds);
       }},
      {"max-connection-age-seconds",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseAgeSeconds(v, name, &c.max_connection_age_seconds);
       }},
      {"max-connection-age-grace-seconds",
       [](Config& c, const std::string& v, const std::string& name) {
         return ParseAgeSeconds(v, name, &c.max_connection_age_grace_seconds);
       }},
  };
  return *setters;
}

std::string EnvName(const std::string& flag) {
  std::string out = "TENSORPREP_";
  for (char ch : flag) out += ch == '-' ? '_' : static_cast<char>(std::toupper(ch));
  return out;
}

}  // namespace

absl::StatusOr<std::string> ReadConfigFile(const std::string& path, const std::string& name) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(name, ": cannot read '", path, "'"));
  std::stringstream buf;
  buf << in.rdbuf();
  if (buf.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": '", path, "' is empty"));
  }
  return buf.str();
}

absl::StatusOr<Config> ParseConfig(const std::vector<std::string>& args,
                                   const std::vector<std::string>& env) {
  Config c;
  for (const std::string& kv : env) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = kv.substr(0, eq);
    for (const auto& [flag, set] : Setters()) {
      if (key == EnvName(flag)) {
        absl::Status s = set(c, kv.substr(eq + 1), key);
        if (!s.ok()) return s;
      }
    }
  }
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      c.help = true;
      continue;
    }
    if (a == "--version") {
      c.version = true;
      continue;
    }
    if (!absl::StartsWith(a, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'; see --help"));
    }
    std::string name = a.substr(2);
    std::string value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": expected a value"));
    }
    auto it = Setters().find(name);
    if (it == Setters().end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, "; see --help"));
    }
    absl::Status s = it->second(c, value, "--" + name);
    if (!s.ok()) return s;
  }
  if (c.help || c.version) return c;
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "--tls-cert and --tls-key: expected both (TLS) or neither, got only one");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError(
        "--tls-client-ca: expected --tls-cert and --tls-key too (mutual TLS needs TLS)");
  }
  if (c.max_connection_age_grace_seconds > 0 && c.max_connection_age_seconds == 0) {
    return absl::InvalidArgumentError(
        "--max-connection-age-grace-seconds: expected --max-connection-age-seconds too (the grace "
        "starts when a connection reaches its age)");
  }
  for (const auto& [path, name] : {std::pair{c.tls_cert, "--tls-cert"},
                                   std::pair{c.tls_key, "--tls-key"},
                                   std::pair{c.tls_client_ca, "--tls-client-ca"}}) {
    if (path.empty()) continue;
    auto text = ReadConfigFile(path, name);
    if (!text.ok()) return text.status();
  }
  return c;
}

}  // namespace tensorprep::server
