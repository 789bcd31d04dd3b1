// Prometheus metrics of the server: families built once at start-up, every series of the closed
// label sets created up front, so the request path only observes and increments.
#ifndef TENSORPREP_SERVER_METRICS_H_
#define TENSORPREP_SERVER_METRICS_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace tensorprep::server {

// Closed label sets. Never add a label whose values come from a request.
enum class Rpc : int {
  kProcess = 0,
  kProcessStream = 1,
  kListOps = 2,
  kRegisterSharedMemory = 3,
  kSharedMemoryStatus = 4,
  kUnregisterSharedMemory = 5,
  // inference.GRPCInferenceService (the KServe v2 / Triton protocol); its other RPCs only read
  // state and are not counted.
  kModelInfer = 6,
  kModelStreamInfer = 7,
};
inline constexpr int kRpcCount = 8;
// The protocol of a model request: the closed set of the model families' `protocol` label.
enum class Protocol : int { kKServeV2 = 0 };
inline constexpr int kProtocolCount = 1;
// How a request's tensors travelled: all inside the messages, all through shared memory, or some
// of each.
enum class Transport : int { kInline = 0, kShm = 1, kMixed = 2 };
inline constexpr int kTransportCount = 3;
// kImageDecode: decoding an image_list's files (requests with one only).
enum class Stage : int { kDecode = 0, kQueue = 1, kKernel = 2, kEncode = 3, kImageDecode = 4 };
inline constexpr int kStageCount = 5;
enum class MetricDevice : int { kCpu = 0, kCuda = 1 };
inline constexpr int kDeviceCount = 2;
// gRPC status codes 0..16 are the closed set of the `code` label.
inline constexpr int kCodeCount = 17;

const char* RpcName(Rpc rpc);          // "Process", "ProcessStream", "ListOps", ...
const char* ProtocolName(Protocol p);  // "kserve_v2"
const char* TransportName(Transport t);  // "inline", "shm", "mixed"
const char* StageName(Stage stage);    // "decode", "queue", "kernel", "encode"
const char* DeviceName(MetricDevice);  // "cpu", "cuda"
const char* CodeName(int code);        // "OK", "INVALID_ARGUMENT", ... (grpc names); codes
                                       // outside 0..16 are "UNKNOWN"

// Upper bounds (seconds) of every duration histogram's buckets: 25 us to 30 s in 1-2.5-5 steps,
// so both a 50 us flip and a multi-second batch on a slow CPU land in a bucket of their own.
// The Python client's tensorprep_client_call_duration_seconds uses the same steps from 50 us.
const std::vector<double>& DurationBuckets();

// Thread-safe: every method may be called from any thread at any time after construction.
// Holds references into `registry`, which must outlive it. Never fails on the request path: an
// out-of-range enum or index is ignored, and a negative or NaN duration is observed as 0.
class Metrics {
 public:
  // `kernels` is the closed set of values of the kernel histogram's `op` label (the planner's
  // kernel kinds: "warp", "flip", "elementwise"); it must not come from request data.
  // Builds all families and series in `registry`, and sets tensorprep_build_info{version} = 1.
  // Only start-up misconfiguration throws: std::invalid_argument for an empty or duplicate entry
  // in `kernels`; prometheus-cpp's exceptions for a registry built with InsertBehavior::Throw
  // that already holds these families.
  Metrics(prometheus::Registry& registry, const std::vector<std::string>& kernels,
          const std::string& version);

  // tensorprep_requests_in_flight{rpc} += 1. A ProcessStream "request" is one message on a stream.
  void RequestStarted(Rpc rpc);
  // tensorprep_requests_in_flight{rpc} -= 1; tensorprep_request_duration_seconds{rpc,code}
  // observes `seconds`; tensorprep_requests_total{rpc,code} += 1. Failed requests land here too.
  // A code outside 0..16 counts as UNKNOWN.
  void RequestFinished(Rpc rpc, int grpc_code, double seconds);
  // The outcome accounting (docs/reliability.md): tensorprep_requests_accepted_total{rpc} += 1
  // when a request reaches the service; then exactly once per request either
  // tensorprep_requests_answered_total{rpc} (its response or error was handed to gRPC for a
  // caller still there) or tensorprep_requests_cancelled_total{rpc} (dropped: the caller
  // cancelled, its deadline passed or it could no longer be written to) += n.
  void CountAccepted(Rpc rpc);
  void CountAnswered(Rpc rpc, uint64_t n = 1);
  void CountCancelled(Rpc rpc, uint64_t n = 1);
  // tensorprep_stage_duration_seconds{stage,device}.
  void ObserveStage(Stage stage, MetricDevice device, double seconds);
  // tensorprep_kernel_duration_seconds{op,device}; `kernel_index` indexes the constructor's
  // `kernels`; out-of-range indices are ignored.
  void ObserveKernel(int kernel_index, MetricDevice device, double seconds);
  // tensorprep_received_bytes_total / tensorprep_sent_bytes_total (tensor payload bytes).
  void AddBytes(uint64_t received, uint64_t sent);
  // One successful request's transport: tensorprep_transport_requests_total{transport} += 1 and
  // tensorprep_transport_bytes_total{transport="inline"|"shm",direction="in"|"out"} by the bytes
  // that went each way.
  void AddTransfer(uint64_t inline_in, uint64_t inline_out, uint64_t shm_in, uint64_t shm_out);
  // tensorprep_shm_regions (registered) and tensorprep_shm_mapped_bytes (mapped, including
  // unregistered regions that requests still use).
  void SetSharedMemory(uint64_t regions, uint64_t mapped_bytes);
  // tensorprep_samples_total{device}.
  void AddSamples(MetricDevice device, uint64_t samples);
  // tensorprep_queued_requests (requests accepted but not yet running).
  void AddQueued(int64_t delta);
  // tensorprep_device_usable{device} = 0/1.
  void SetDeviceUsable(MetricDevice device, bool usable);
  // tensorprep_streams_open += delta.
  void AddOpenStreams(int64_t delta);

  // Per-model series for the models a server offers (pipeline names from its pipeline file,
  // fixed at start-up; never names taken from a request): builds
  // tensorprep_model_requests_total{protocol,model,code},
  // tensorprep_model_request_duration_seconds{protocol,model} and
  // tensorprep_model_samples_total{protocol,model}. Call once, before serving (not
  // thread-safe against the Observe call below); a second call is ignored. Throws
  // std::invalid_argument for an empty or duplicate name.
  void AddModels(const std::vector<std::string>& models);
  // One finished model request: `model_index` indexes AddModels' list (others are ignored),
  // `samples` the batch size of a successful request.
  void ObserveModelRequest(Protocol protocol, int model_index, int grpc_code, double seconds,
                           uint64_t samples);

 private:
  // Series, indexed by the enums above; filled by the constructor, never resized afterwards.
  std::array<prometheus::Gauge*, kRpcCount> in_flight_{};
  std::array<std::array<prometheus::Histogram*, kCodeCount>, kRpcCount> request_duration_{};
  std::array<std::array<prometheus::Counter*, kCodeCount>, kRpcCount> requests_{};
  std::array<prometheus::Counter*, kRpcCount> accepted_{};
  std::array<prometheus::Counter*, kRpcCount> answered_{};
  std::array<prometheus::Counter*, kRpcCount> cancelled_{};
  std::array<std::array<prometheus::Histogram*, kDeviceCount>, kStageCount> stage_duration_{};
  std::vector<std::array<prometheus::Histogram*, kDeviceCount>> kernel_duration_;
  prometheus::Counter* received_bytes_ = nullptr;
  prometheus::Counter* sent_bytes_ = nullptr;
  std::array<prometheus::Counter*, kTransportCount> transport_requests_{};
  // [0 inline, 1 shm][0 in, 1 out]
  std::array<std::array<prometheus::Counter*, 2>, 2> transport_bytes_{};
  prometheus::Gauge* shm_regions_ = nullptr;
  prometheus::Gauge* shm_mapped_bytes_ = nullptr;
  std::array<prometheus::Counter*, kDeviceCount> samples_{};
  prometheus::Gauge* queued_ = nullptr;
  prometheus::Gauge* streams_open_ = nullptr;
  std::array<prometheus::Gauge*, kDeviceCount> device_usable_{};
  prometheus::Gauge* build_info_ = nullptr;
  prometheus::Registry* registry_ = nullptr;
  struct ModelSeries {
    std::array<prometheus::Counter*, kCodeCount> requests{};
    prometheus::Histogram* duration = nullptr;
    prometheus::Counter* samples = nullptr;
  };
  // [protocol][model], filled by AddModels.
  std::array<std::vector<ModelSeries>, kProtocolCount> models_;
};

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_METRICS_H_
