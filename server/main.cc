// tensorprep-server: flags -> kernels, handlers, service, metrics -> a running gRPC server.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "handlers/backend.h"
#include "handlers/processor.h"
#include "handlers/shm_regions.h"
#include "kernels/common/thread_pool.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "handlers/pipeline_models.h"
#include "server/config.h"
#include "server/kserve_service.h"
#include "server/metrics.h"
#include "server/security.h"
#include "server/service.h"
#include "server/wire_response.h"
#include "server/work_queue.h"

extern char** environ;

namespace tensorprep::server {
namespace {

std::string HostPort(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && host.front() != '[') {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

const char* SignalName(int sig) { return sig == SIGTERM ? "SIGTERM" : "SIGINT"; }

std::chrono::milliseconds Seconds(double seconds) {
  return std::chrono::milliseconds(std::llround(seconds * 1000));
}

// Waits until one of the (blocked) `signals` is pending or `deadline` passes; the signal taken,
// or 0 at the deadline.
int WaitForSignal(const sigset_t& signals, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = deadline - std::chrono::steady_clock::now();
    if (left <= std::chrono::steady_clock::duration::zero()) return 0;
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    const timespec timeout{static_cast<time_t>(ns / 1000000000),
                           static_cast<long>(ns % 1000000000)};
    const int sig = sigtimedwait(&signals, nullptr, &timeout);
    if (sig > 0) return sig;
    // EAGAIN: the timeout passed; EINTR: another signal interrupted the wait. Both re-check the
    // deadline above.
  }
}

int Run(const Config& config) {
  // Signals are taken synchronously by the main thread (sigwait below); every thread started
  // from here on inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // Named pipelines (the KServe v2 protocol's models): checked before anything starts, so that
  // a bad file stops the server with its error instead of serving without those models.
  std::vector<handlers::PipelineModelSpec> pipeline_models;
  if (!config.pipelines.empty()) {
    auto loaded = handlers::LoadPipelineModels(config.pipelines);
    if (!loaded.ok()) {
      std::cerr << "tensorprep-server: --pipelines: " << loaded.status().message() << "\n";
      return 2;
    }
    pipeline_models = std::move(*loaded);
  }
  const size_t pipeline_count = pipeline_models.size();

  kernels::ThreadPool pool(config.threads);
  handlers::CpuBackend cpu(&pool);
  std::unique_ptr<handlers::Backend> cuda;
  if (config.device != "cpu") cuda = handlers::MakeCudaBackend();
  const bool cuda_usable = cuda != nullptr && cuda->usable();
  if (config.device == "cuda" && !cuda_usable) {
    std::cerr << "tensorprep-server: --device cuda but no CUDA device is usable ("
              << (cuda ? cuda->detail() : std::string("built without CUDA")) << ")\n";
    return 2;
  }
  if (config.device == "auto" && !cuda_usable) {
    std::cerr << "tensorprep-server: no usable CUDA device ("
              << (cuda ? cuda->detail() : std::string("built without CUDA"))
              << "); serving on CPU\n";
  }

  handlers::ProcessorOptions options;
  options.limits.max_tensor_bytes = static_cast<uint64_t>(config.max_tensor_mb) << 20;
  options.image_limits.max_image_pixels = static_cast<uint64_t>(config.max_image_megapixels) << 20;
  options.allow_cuda = config.device != "cpu";
  if (config.device == "cuda") options.auto_cuda_min_bytes = 0;
  handlers::ShmOptions shm_options;
  shm_options.key_prefix = config.shm_prefix;
  shm_options.max_regions_per_client = static_cast<uint32_t>(config.shm_max_regions);
  shm_options.max_mapped_bytes = static_cast<uint64_t>(config.shm_max_mb) << 20;
  handlers::SharedMemoryRegions shm(shm_options);
  SetResultBufferCacheLimit(static_cast<size_t>(config.result_cache_mb) << 20);
  handlers::Processor processor(options, &cpu, cuda.get(), &shm, &pool);

  auto registry = std::make_shared<prometheus::Registry>();
  std::vector<std::string> kernel_labels;
  for (int k = 0; k < handlers::kKernelKindCount; ++k) {
    kernel_labels.push_back(handlers::KernelName(static_cast<handlers::KernelKind>(k)));
  }
  Metrics metrics(*registry, kernel_labels, TENSORPREP_VERSION);
  metrics.SetDeviceUsable(MetricDevice::kCpu, true);
  metrics.SetDeviceUsable(MetricDevice::kCuda, cuda_usable);
  std::unique_ptr<prometheus::Exposer> exposer;
  std::string metrics_address = "off";
  if (config.metrics_port != 0) {
    metrics_address = HostPort(config.host, config.metrics_port);
    try {
      exposer = std::make_unique<prometheus::Exposer>(metrics_address);
    } catch (const std::exception& e) {
      std::cerr << "tensorprep-server: cannot serve metrics on " << metrics_address << ": "
                << e.what() << "\n";
      return 2;
    }
    exposer->RegisterCollectable(registry);
  }

  WorkQueue queue(pool.size());
  ServiceOptions service_options;
  service_options.stream_max_inflight = config.stream_inflight;
  service_options.stream_max_bytes = static_cast<uint64_t>(config.stream_inflight_mb) << 20;
  service_options.admission.max_bytes = static_cast<uint64_t>(config.max_inflight_mb) << 20;
  service_options.admission.max_requests = config.max_inflight_requests;
  service_options.auth_token = config.auth_token;
  service_options.shm = &shm;
  PreprocessorService service(processor, queue, metrics, service_options);
  KServeService kserve(service, std::move(pipeline_models));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string address = HostPort(config.host, config.port);
  TlsPem pem;
  if (!config.tls_cert.empty()) {
    // ParseConfig already read each file once; a file that vanished since is still an error.
    for (auto [path, name, out] : {std::tuple{config.tls_cert, "--tls-cert", &pem.cert_chain},
                                   std::tuple{config.tls_key, "--tls-key", &pem.private_key},
                                   std::tuple{config.tls_client_ca, "--tls-client-ca",
                                              &pem.client_ca}}) {
      if (path.empty()) continue;
      auto text = ReadConfigFile(path, name);
      if (!text.ok()) {
        std::cerr << "tensorprep-server: " << text.status().message() << "\n";
        return 2;
      }
      *out = std::move(*text);
    }
  }
  builder.AddListeningPort(address, MakeServerCredentials(pem), &port);
  if (!config.uds.empty()) {
    // A socket left by an earlier run would make the bind fail; anything else at that path is
    // not ours to remove.
    struct stat st;
    if (lstat(config.uds.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        std::cerr << "tensorprep-server: --uds " << config.uds
                  << " exists and is not a socket; not replacing it\n";
        return 2;
      }
      unlink(config.uds.c_str());
    }
    builder.AddListeningPort("unix:" + config.uds, MakeServerCredentials(pem));
  }
  builder.RegisterService(&service);
  builder.RegisterService(&kserve);
  builder.SetMaxReceiveMessageSize(config.max_message_mb * 1024 * 1024);
  builder.SetMaxSendMessageSize(config.max_message_mb * 1024 * 1024);
  // GOAWAY after the age lets long-lived client channels reconnect and re-balance; without a
  // grace, calls on the old connection (long streams too) run to their end.
  if (config.max_connection_age_seconds > 0) {
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_MS,
        static_cast<int>(Seconds(config.max_connection_age_seconds).count()));
  }
  if (config.max_connection_age_grace_seconds > 0) {
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
        static_cast<int>(Seconds(config.max_connection_age_grace_seconds).count()));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "tensorprep-server: cannot listen on " << address
              << (config.uds.empty() ? "" : " and unix:" + config.uds) << "\n";
    return 2;
  }
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus("tensorprep.v1.Preprocessor", true);

  std::printf("tensorprep-server ready on %s (device=%s, threads=%d, metrics=%s)\n",
              HostPort(config.host, port).c_str(), cuda_usable && config.device != "cpu"
                                                       ? (config.device == "cuda" ? "cuda" : "auto:cuda+cpu")
                                                       : "cpu",
              pool.size(), metrics_address.c_str());
  std::fflush(stdout);
  std::cerr << "tensorprep-server: transport "
            << (pem.cert_chain.empty() ? "plaintext"
                                       : pem.client_ca.empty() ? "TLS" : "mutual TLS")
            << ", bearer token " << (config.auth_token.empty() ? "off" : "required")
            << "; KServe v2 protocol on the same port with " << pipeline_count
            << " pipeline model(s)"
            << (config.pipelines.empty() ? std::string() : " from " + config.pipelines)
            << " and the built-in model '" << handlers::kBuiltinModelName << "'\n";
  std::cerr << "tensorprep-server: unix socket " << (config.uds.empty() ? "off" : config.uds)
            << ", shared memory "
            << (config.shm_prefix.empty()
                    ? std::string("off")
                    : absl::StrCat("on (keys ", config.shm_prefix, "*, at most ",
                                   config.shm_max_regions, " regions per client, ",
                                   config.shm_max_mb, " MiB mapped)"))
            << "\n";
  std::cerr << "tensorprep-server: on SIGTERM: drain delay " << config.drain_delay_seconds
            << " s, then grace " << config.grace_seconds << " s; connection max age ";
  if (config.max_connection_age_seconds > 0) {
    std::cerr << config.max_connection_age_seconds << " s (grace ";
    if (config.max_connection_age_grace_seconds > 0) {
      std::cerr << config.max_connection_age_grace_seconds << " s)\n";
    } else {
      std::cerr << "unlimited)\n";
    }
  } else {
    std::cerr << "off\n";
  }

  int sig = 0;
  sigwait(&signals, &sig);
  // Phase 1, the drain delay: every health service ("" and the Preprocessor) says NOT_SERVING, so
  // clients that watch health stop picking this replica, while calls that still come are served
  // as usual. Shutting down at once would cancel the calls a client sends before it has seen
  // NOT_SERVING.
  health->SetServingStatus(false);
  kserve.SetReady(false);
  if (config.drain_delay_seconds > 0) {
    std::cerr << "tensorprep-server: " << SignalName(sig)
              << ": health NOT_SERVING; still serving for the drain delay ("
              << config.drain_delay_seconds << " s; a second SIGTERM or SIGINT ends it)\n";
    const auto start = std::chrono::steady_clock::now();
    const int second = WaitForSignal(signals, start + Seconds(config.drain_delay_seconds));
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (second != 0) {
      std::cerr << "tensorprep-server: " << SignalName(second) << ": drain delay ended after "
                << waited << " s\n";
    } else {
      std::cerr << "tensorprep-server: drain delay over after " << waited << " s\n";
    }
  } else {
    std::cerr << "tensorprep-server: " << SignalName(sig)
              << ": health NOT_SERVING (no drain delay)\n";
  }
  // Phase 2, the drain: new calls and connections are refused, calls in progress get the grace
  // period, then what is left is cancelled.
  std::cerr << "tensorprep-server: shutting down: refusing new calls, in-flight calls have "
            << config.grace_seconds << " s\n";
  server->Shutdown(std::chrono::system_clock::now() + Seconds(config.grace_seconds));
  server->Wait();
  if (!config.uds.empty()) unlink(config.uds.c_str());
  // Every call has finished by now, and each accepted request was settled before its call
  // finished: accepted == answered + cancelled, or a request was lost (docs/reliability.md).
  const uint64_t accepted = service.accepted(), answered = service.answered(),
                 cancelled = service.cancelled();
  std::cerr << "tensorprep-server: stopped; requests accepted=" << accepted
            << " answered=" << answered << " cancelled=" << cancelled;
  if (accepted != answered + cancelled) {
    std::cerr << " (" << static_cast<int64_t>(accepted - answered - cancelled)
              << " unaccounted for)";
  }
  std::cerr << "\n";
  return 0;
}

}  // namespace
}  // namespace tensorprep::server

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  auto config = tensorprep::server::ParseConfig(args, env);
  if (!config.ok()) {
    std::cerr << "tensorprep-server: " << config.status().message() << "\n";
    return 2;
  }
  if (config->help) {
    std::cout << tensorprep::server::Usage();
    return 0;
  }
  if (config->version) {
    std::cout << "tensorprep-server " << TENSORPREP_VERSION << "\n";
    return 0;
  }
  return tensorprep::server::Run(*config);
}
