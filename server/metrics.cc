#include "server/metrics.h"

#include <cmath>
#include <set>
#include <stdexcept>

namespace tensorprep::server {
namespace {

constexpr std::array<const char*, kRpcCount> kRpcNames = {
    "Process", "ProcessStream", "ListOps", "RegisterSharedMemory", "SharedMemoryStatus",
    "UnregisterSharedMemory", "ModelInfer", "ModelStreamInfer"};
constexpr std::array<const char*, kProtocolCount> kProtocolNames = {"kserve_v2"};
constexpr std::array<const char*, kTransportCount> kTransportNames = {"inline", "shm", "mixed"};
constexpr std::array<const char*, kStageCount> kStageNames = {"decode", "queue", "kernel",
                                                              "encode", "image_decode"};
constexpr std::array<const char*, kDeviceCount> kDeviceNames = {"cpu", "cuda"};
// Indexed by grpc::StatusCode; the spelling gRPC itself uses in its docs and tools.
constexpr std::array<const char*, kCodeCount> kCodeNames = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};
constexpr int kUnknownCode = 2;

int Index(Rpc rpc) { return static_cast<int>(rpc); }
int Index(Stage stage) { return static_cast<int>(stage); }
int Index(MetricDevice device) { return static_cast<int>(device); }
int Index(Transport t) { return static_cast<int>(t); }
bool InRange(int index, int count) { return index >= 0 && index < count; }

// A clock step or a caller's subtraction in the wrong order must not drive a histogram's sum
// negative; NaN would poison the sum for the life of the process.
double Sanitize(double seconds) {
  if (std::isnan(seconds) || seconds < 0) return 0;
  return seconds;
}

}  // namespace

const char* RpcName(Rpc rpc) {
  return InRange(Index(rpc), kRpcCount) ? kRpcNames[Index(rpc)] : "unknown";
}

const char* ProtocolName(Protocol p) {
  const int i = static_cast<int>(p);
  return InRange(i, kProtocolCount) ? kProtocolNames[i] : "unknown";
}

const char* TransportName(Transport t) {
  return InRange(Index(t), kTransportCount) ? kTransportNames[Index(t)] : "unknown";
}
const char* StageName(Stage stage) {
  return InRange(Index(stage), kStageCount) ? kStageNames[Index(stage)] : "unknown";
}
const char* DeviceName(MetricDevice device) {
  return InRange(Index(device), kDeviceCount) ? kDeviceNames[Index(device)] : "unknown";
}
const char* CodeName(int code) {
  return kCodeNames[InRange(code, kCodeCount) ? code : kUnknownCode];
}

const std::vector<double>& DurationBuckets() {
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      25e-6, 50e-6,  100e-6, 250e-6, 500e-6,  // a flip of one small image, a ListOps
      1e-3,  2.5e-3, 5e-3,   10e-3,  25e-3,  50e-3, 100e-3, 250e-3, 500e-3,  // typical batches
      1.0,   2.5,    5.0,    10.0,   30.0};  // large batches on a loaded CPU, stalled streams
  return *kBuckets;
}

Metrics::Metrics(prometheus::Registry& registry, const std::vector<std::string>& kernels,
                 const std::string& version)
    : registry_(&registry) {
  // Checked before anything is registered. Two indices sharing one series would merge two ops'
  // timings without a trace.
  std::set<std::string> seen;
  for (const auto& kernel : kernels) {
    if (kernel.empty() || !seen.insert(kernel).second) {
      throw std::invalid_argument("metrics: kernel labels must be unique and non-empty, got '" +
                                  kernel + "'");
    }
  }
  const auto& buckets = DurationBuckets();

  auto& request_duration =
      prometheus::BuildHistogram()
          .Name("tensorprep_request_duration_seconds")
          .Help(
              "Time from a request's arrival to its response (or error) being handed to gRPC, "
              "by RPC and gRPC status code. One ProcessStream message is one request.")
          .Register(registry);
  auto& requests = prometheus::BuildCounter()
                       .Name("tensorprep_requests_total")
                       .Help("Requests finished, by RPC and gRPC status code.")
                       .Register(registry);
  auto& in_flight = prometheus::BuildGauge()
                        .Name("tensorprep_requests_in_flight")
                        .Help("Requests started and not yet finished, by RPC.")
                        .Register(registry);
  for (int r = 0; r < kRpcCount; ++r) {
    in_flight_[r] = &in_flight.Add({{"rpc", kRpcNames[r]}});
    for (int c = 0; c < kCodeCount; ++c) {
      const prometheus::Labels labels = {{"rpc", kRpcNames[r]}, {"code", kCodeNames[c]}};
      request_duration_[r][c] = &request_duration.Add(labels, buckets);
      requests_[r][c] = &requests.Add(labels);
    }
  }

  // Every accepted request ends in exactly one of answered or cancelled (docs/reliability.md),
  // so accepted - answered - cancelled is what is still in progress, and 0 when idle.
  auto& accepted = prometheus::BuildCounter()
                       .Name("tensorprep_requests_accepted_total")
                       .Help(
                           "Requests that reached the service, by RPC: unary calls, stream "
                           "messages (valid or not), refused calls.")
                       .Register(registry);
  auto& answered = prometheus::BuildCounter()
                       .Name("tensorprep_requests_answered_total")
                       .Help(
                           "Accepted requests whose response or error was handed to gRPC for a "
                           "caller that was still there, by RPC.")
                       .Register(registry);
  auto& cancelled = prometheus::BuildCounter()
                        .Name("tensorprep_requests_cancelled_total")
                        .Help(
                            "Accepted requests dropped because the caller cancelled, its "
                            "deadline passed or it could no longer be written to, by RPC.")
                        .Register(registry);
  for (int r = 0; r < kRpcCount; ++r) {
    accepted_[r] = &accepted.Add({{"rpc", kRpcNames[r]}});
    answered_[r] = &answered.Add({{"rpc", kRpcNames[r]}});
    cancelled_[r] = &cancelled.Add({{"rpc", kRpcNames[r]}});
  }

  auto& stage_duration =
      prometheus::BuildHistogram()
          .Name("tensorprep_stage_duration_seconds")
          .Help(
              "Server time of one request spent in each stage (decode, queue, kernel, encode; "
              "image_decode for requests with an image_list), "
              "by the device that ran it.")
          .Register(registry);
  for (int s = 0; s < kStageCount; ++s) {
    for (int d = 0; d < kDeviceCount; ++d) {
      stage_duration_[s][d] =
          &stage_duration.Add({{"stage", kStageNames[s]}, {"device", kDeviceNames[d]}}, buckets);
    }
  }

  auto& kernel_duration = prometheus::BuildHistogram()
                              .Name("tensorprep_kernel_duration_seconds")
                              .Help(
                                  "Time of one op of a pipeline over a whole batch, by op and "
                                  "device.")
                              .Register(registry);
  kernel_duration_.resize(kernels.size());
  for (size_t k = 0; k < kernels.size(); ++k) {
    for (int d = 0; d < kDeviceCount; ++d) {
      kernel_duration_[k][d] =
          &kernel_duration.Add({{"op", kernels[k]}, {"device", kDeviceNames[d]}}, buckets);
    }
  }

  received_bytes_ = &prometheus::BuildCounter()
                         .Name("tensorprep_received_bytes_total")
                         .Help("Tensor payload bytes received in requests.")
                         .Register(registry)
                         .Add({});
  sent_bytes_ = &prometheus::BuildCounter()
                     .Name("tensorprep_sent_bytes_total")
                     .Help("Tensor payload bytes sent in responses.")
                     .Register(registry)
                     .Add({});

  auto& transport_requests =
      prometheus::BuildCounter()
          .Name("tensorprep_transport_requests_total")
          .Help("Successful Process/ProcessStream requests by how their tensors travelled: "
                "inline (in the messages), shm (shared memory) or mixed.")
          .Register(registry);
  for (int t = 0; t < kTransportCount; ++t) {
    transport_requests_[t] = &transport_requests.Add({{"transport", kTransportNames[t]}});
  }
  auto& transport_bytes = prometheus::BuildCounter()
                              .Name("tensorprep_transport_bytes_total")
                              .Help("Tensor bytes of successful requests by transport (inline, "
                                    "shm) and direction (in, out).")
                              .Register(registry);
  for (int t = 0; t < 2; ++t) {
    for (int d = 0; d < 2; ++d) {
      transport_bytes_[t][d] = &transport_bytes.Add(
          {{"transport", kTransportNames[t]}, {"direction", d == 0 ? "in" : "out"}});
    }
  }
  shm_regions_ = &prometheus::BuildGauge()
                      .Name("tensorprep_shm_regions")
                      .Help("Shared-memory regions registered.")
                      .Register(registry)
                      .Add({});
  shm_mapped_bytes_ = &prometheus::BuildGauge()
                           .Name("tensorprep_shm_mapped_bytes")
                           .Help("Bytes of shared memory mapped (registered regions, and "
                                 "unregistered ones still in use).")
                           .Register(registry)
                           .Add({});

  auto& samples = prometheus::BuildCounter()
                      .Name("tensorprep_samples_total")
                      .Help("Samples (images) processed successfully, by device.")
                      .Register(registry);
  auto& device_usable = prometheus::BuildGauge()
                            .Name("tensorprep_device_usable")
                            .Help("1 when the device can run kernels, else 0.")
                            .Register(registry);
  for (int d = 0; d < kDeviceCount; ++d) {
    samples_[d] = &samples.Add({{"device", kDeviceNames[d]}});
    device_usable_[d] = &device_usable.Add({{"device", kDeviceNames[d]}});
  }

  queued_ = &prometheus::BuildGauge()
                 .Name("tensorprep_queued_requests")
                 .Help("Requests accepted and waiting for a worker or device.")
                 .Register(registry)
                 .Add({});
  streams_open_ = &prometheus::BuildGauge()
                       .Name("tensorprep_streams_open")
                       .Help("ProcessStream calls currently open.")
                       .Register(registry)
                       .Add({});
  build_info_ = &prometheus::BuildGauge()
                     .Name("tensorprep_build_info")
                     .Help("Always 1; the version label says which build is running.")
                     .Register(registry)
                     .Add({{"version", version}});
  build_info_->Set(1);
}

void Metrics::RequestStarted(Rpc rpc) {
  if (!InRange(Index(rpc), kRpcCount)) return;
  in_flight_[Index(rpc)]->Increment();
}

void Metrics::RequestFinished(Rpc rpc, int grpc_code, double seconds) {
  if (!InRange(Index(rpc), kRpcCount)) return;
  const int code = InRange(grpc_code, kCodeCount) ? grpc_code : kUnknownCode;
  in_flight_[Index(rpc)]->Decrement();
  request_duration_[Index(rpc)][code]->Observe(Sanitize(seconds));
  requests_[Index(rpc)][code]->Increment();
}

void Metrics::CountAccepted(Rpc rpc) {
  if (!InRange(Index(rpc), kRpcCount)) return;
  accepted_[Index(rpc)]->Increment();
}

void Metrics::CountAnswered(Rpc rpc, uint64_t n) {
  if (!InRange(Index(rpc), kRpcCount) || n == 0) return;
  answered_[Index(rpc)]->Increment(static_cast<double>(n));
}

void Metrics::CountCancelled(Rpc rpc, uint64_t n) {
  if (!InRange(Index(rpc), kRpcCount) || n == 0) return;
  cancelled_[Index(rpc)]->Increment(static_cast<double>(n));
}

void Metrics::ObserveStage(Stage stage, MetricDevice device, double seconds) {
  if (!InRange(Index(stage), kStageCount) || !InRange(Index(device), kDeviceCount)) return;
  stage_duration_[Index(stage)][Index(device)]->Observe(Sanitize(seconds));
}

void Metrics::ObserveKernel(int kernel_index, MetricDevice device, double seconds) {
  if (!InRange(kernel_index, static_cast<int>(kernel_duration_.size())) ||
      !InRange(Index(device), kDeviceCount)) {
    return;
  }
  kernel_duration_[kernel_index][Index(device)]->Observe(Sanitize(seconds));
}

void Metrics::AddBytes(uint64_t received, uint64_t sent) {
  // Counters hold doubles: exact up to 2^53 bytes (9 PB), far beyond a process's life.
  if (received != 0) received_bytes_->Increment(static_cast<double>(received));
  if (sent != 0) sent_bytes_->Increment(static_cast<double>(sent));
}

void Metrics::AddTransfer(uint64_t inline_in, uint64_t inline_out, uint64_t shm_in,
                          uint64_t shm_out) {
  const bool any_inline = inline_in != 0 || inline_out != 0;
  const bool any_shm = shm_in != 0 || shm_out != 0;
  const Transport t = any_shm ? (any_inline ? Transport::kMixed : Transport::kShm)
                              : Transport::kInline;
  transport_requests_[Index(t)]->Increment();
  const uint64_t bytes[2][2] = {{inline_in, inline_out}, {shm_in, shm_out}};
  for (int i = 0; i < 2; ++i) {
    for (int d = 0; d < 2; ++d) {
      if (bytes[i][d] != 0) transport_bytes_[i][d]->Increment(static_cast<double>(bytes[i][d]));
    }
  }
}

void Metrics::SetSharedMemory(uint64_t regions, uint64_t mapped_bytes) {
  shm_regions_->Set(static_cast<double>(regions));
  shm_mapped_bytes_->Set(static_cast<double>(mapped_bytes));
}

void Metrics::AddSamples(MetricDevice device, uint64_t samples) {
  if (!InRange(Index(device), kDeviceCount) || samples == 0) return;
  samples_[Index(device)]->Increment(static_cast<double>(samples));
}

void Metrics::AddQueued(int64_t delta) { queued_->Increment(static_cast<double>(delta)); }

void Metrics::SetDeviceUsable(MetricDevice device, bool usable) {
  if (!InRange(Index(device), kDeviceCount)) return;
  device_usable_[Index(device)]->Set(usable ? 1 : 0);
}

void Metrics::AddOpenStreams(int64_t delta) {
  streams_open_->Increment(static_cast<double>(delta));
}

void Metrics::AddModels(const std::vector<std::string>& models) {
  if (!models_[0].empty()) return;
  std::set<std::string> seen;
  for (const auto& model : models) {
    if (model.empty() || !seen.insert(model).second) {
      throw std::invalid_argument("metrics: model labels must be unique and non-empty, got '" +
                                  model + "'");
    }
  }
  auto& requests = prometheus::BuildCounter()
                       .Name("tensorprep_model_requests_total")
                       .Help(
                           "Inference requests finished, by protocol, model (a pipeline the "
                           "server offers) and gRPC status code. Requests for unknown models "
                           "are not counted here (see tensorprep_requests_total).")
                       .Register(*registry_);
  auto& duration = prometheus::BuildHistogram()
                       .Name("tensorprep_model_request_duration_seconds")
                       .Help(
                           "Time from an inference request's arrival to its response (or "
                           "error), by protocol and model.")
                       .Register(*registry_);
  auto& samples = prometheus::BuildCounter()
                      .Name("tensorprep_model_samples_total")
                      .Help("Samples (batch entries) of successful inference requests, by "
                            "protocol and model.")
                      .Register(*registry_);
  for (int p = 0; p < kProtocolCount; ++p) {
    for (const auto& model : models) {
      ModelSeries series;
      const prometheus::Labels labels = {{"protocol", kProtocolNames[p]}, {"model", model}};
      for (int c = 0; c < kCodeCount; ++c) {
        prometheus::Labels with_code = labels;
        with_code.emplace("code", kCodeNames[c]);
        series.requests[c] = &requests.Add(with_code);
      }
      series.duration = &duration.Add(labels, DurationBuckets());
      series.samples = &samples.Add(labels);
      models_[p].push_back(series);
    }
  }
}

void Metrics::ObserveModelRequest(Protocol protocol, int model_index, int grpc_code,
                                  double seconds, uint64_t samples) {
  const int p = static_cast<int>(protocol);
  if (!InRange(p, kProtocolCount) ||
      !InRange(model_index, static_cast<int>(models_[p].size()))) {
    return;
  }
  ModelSeries& series = models_[p][model_index];
  series.requests[InRange(grpc_code, kCodeCount) ? grpc_code : kUnknownCode]->Increment();
  series.duration->Observe(Sanitize(seconds));
  if (samples != 0) series.samples->Increment(static_cast<double>(samples));
}

}  // namespace tensorprep::server
