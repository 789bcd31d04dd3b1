#include "handlers/processor.h"

#include <chrono>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "handlers/error_text.h"
#include "kernels/common/status.h"

namespace tensorprep::handlers {

namespace {

using Clock = std::chrono::steady_clock;

int64_t NanosSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
}

// Prefixes errors with the request id so a client with many requests in flight can tell which.
absl::Status WithRequestId(const absl::Status& s, const std::string& id) {
  if (s.ok() || id.empty()) return s;
  return absl::Status(s.code(), absl::StrCat(RequestIdPrefix(id), s.message()));
}

pb::Device ToWire(DeviceKind d) { return d == DeviceKind::kCuda ? pb::DEVICE_CUDA : pb::DEVICE_CPU; }

}  // namespace

Processor::Processor(ProcessorOptions options, Backend* cpu, Backend* cuda)
    : options_(std::move(options)), cpu_(cpu), cuda_(cuda) {}

std::vector<const Backend*> Processor::backends() const {
  std::vector<const Backend*> out = {cpu_};
  if (cuda_ != nullptr) out.push_back(cuda_);
  return out;
}

absl::StatusOr<std::unique_ptr<PreparedRequest>> Processor::Prepare(
    const pb::ProcessRequest& request) const {
  const auto start = Clock::now();
  auto prepared = std::make_unique<PreparedRequest>();
  const std::string& id = request.request_id();
  if (!request.has_images()) {
    return WithRequestId(
        absl::InvalidArgumentError("images: expected a batch tensor, got none"), id);
  }
  auto main = DecodeBatch(request.images(), "images", options_.limits);
  if (!main.ok()) return WithRequestId(main.status(), id);
  prepared->main = std::move(*main);
  const kernels::BatchShape& shape = prepared->main.view.shape;
  uint64_t bytes_in = prepared->main.view.bytes();

  std::vector<AuxSampling> sampling;
  std::set<std::string> names;
  for (int j = 0; j < request.aux_size(); ++j) {
    const pb::AuxTensor& a = request.aux(j);
    const std::string path = absl::StrCat("aux[", j, "]");
    if (!a.name().empty() && !names.insert(a.name()).second) {
      return WithRequestId(absl::InvalidArgumentError(absl::StrCat(
                               path, ".name: expected a unique name, got ",
                               QuoteCallerString(a.name()), " a second time")),
                           id);
    }
    if (!a.has_tensor()) {
      return WithRequestId(
          absl::InvalidArgumentError(absl::StrCat(path, ".tensor: expected a tensor, got none")),
          id);
    }
    auto aux = DecodeBatch(a.tensor(), path + ".tensor", options_.limits);
    if (!aux.ok()) return WithRequestId(aux.status(), id);
    const kernels::BatchShape& as = aux->view.shape;
    if (as.n != shape.n || as.h != shape.h || as.w != shape.w) {
      return WithRequestId(
          absl::InvalidArgumentError(absl::StrCat(
              path, ".tensor.shape: expected N,H,W = ", shape.n, ",", shape.h, ",", shape.w,
              " (the images' batch and size), got ", as.n, ",", as.h, ",", as.w)),
          id);
    }
    if (a.interpolation() < pb::INTERPOLATION_UNSPECIFIED ||
        a.interpolation() > pb::INTERPOLATION_BILINEAR) {
      return WithRequestId(absl::InvalidArgumentError(absl::StrCat(
                               path, ".interpolation: expected INTERPOLATION_NEAREST or "
                                     "INTERPOLATION_BILINEAR, got unknown value ",
                               a.interpolation())),
                           id);
    }
    if (!std::isfinite(a.fill())) {
      return WithRequestId(absl::InvalidArgumentError(absl::StrCat(
                               path, ".fill: expected a finite number, got ", a.fill())),
                           id);
    }
    AuxSampling s;
    s.interp = a.interpolation() == pb::INTERPOLATION_BILINEAR ? kernels::Interp::kBilinear
                                                                : kernels::Interp::kNearest;
    s.fill = a.fill();
    sampling.push_back(s);
    bytes_in += aux->view.bytes();
    prepared->aux.push_back(std::move(*aux));
  }

  if (request.device() < pb::DEVICE_AUTO || request.device() > pb::DEVICE_CUDA) {
    return WithRequestId(absl::InvalidArgumentError(absl::StrCat(
                             "device: expected DEVICE_AUTO, DEVICE_CPU or DEVICE_CUDA, got "
                             "unknown value ",
                             request.device())),
                         id);
  }
  auto plan = BuildPlan(request.pipeline(), BatchState{shape, prepared->main.view.dtype},
                        request.seed(), request.sample_offset(), std::move(sampling),
                        options_.plan);
  if (!plan.ok()) return WithRequestId(plan.status(), id);
  prepared->plan = std::move(*plan);

  const bool cuda_usable = cuda_ != nullptr && cuda_->usable();
  switch (request.device()) {
    case pb::DEVICE_CUDA:
      if (!cuda_usable) {
        return WithRequestId(
            absl::FailedPreconditionError(absl::StrCat(
                "device: DEVICE_CUDA requested but no CUDA device is usable (",
                cuda_ == nullptr ? "this server was built without CUDA" : cuda_->detail(),
                "); use DEVICE_AUTO or DEVICE_CPU")),
            id);
      }
      prepared->device = DeviceKind::kCuda;
      break;
    case pb::DEVICE_CPU:
      prepared->device = DeviceKind::kCpu;
      break;
    default:
      prepared->device = cuda_usable && options_.allow_cuda &&
                                 bytes_in >= options_.auto_cuda_min_bytes
                             ? DeviceKind::kCuda
                             : DeviceKind::kCpu;
      break;
  }
  prepared->bytes_in = bytes_in;
  prepared->decode_ns = NanosSince(start);
  return prepared;
}

uint64_t Processor::MainOutputBytes(const PreparedRequest& prepared) {
  return static_cast<uint64_t>(prepared.main.view.shape.elements()) *
         kernels::DTypeSize(prepared.plan.output_dtype);
}

absl::StatusOr<RunStats> Processor::Run(const pb::ProcessRequest& request,
                                        PreparedRequest& prepared, pb::ProcessResponse* response,
                                        void* main_data) const {
  RunStats stats;
  auto start = Clock::now();
  response->set_request_id(request.request_id());
  const kernels::BatchShape& shape = prepared.main.view.shape;
  ExecOutputs out;
  out.main = main_data != nullptr
                 ? PrepareOutput(response->mutable_images(), prepared.plan.output_dtype, shape,
                                 prepared.main.rank, main_data)
                 : PrepareOutput(response->mutable_images(), prepared.plan.output_dtype, shape,
                                 prepared.main.rank);
  ExecInputs in;
  in.main = prepared.main.view;
  for (size_t j = 0; j < prepared.aux.size(); ++j) {
    const pb::AuxTensor& req_aux = request.aux(static_cast<int>(j));
    pb::AuxTensor* a = response->add_aux();
    a->set_name(req_aux.name());
    a->set_interpolation(req_aux.interpolation());
    a->set_fill(req_aux.fill());
    const DecodedTensor& d = prepared.aux[j];
    out.aux.push_back(PrepareOutput(a->mutable_tensor(), d.view.dtype, d.view.shape, d.rank));
    in.aux.push_back(d.view);
  }
  stats.encode_ns = NanosSince(start);

  start = Clock::now();
  Backend* backend = prepared.device == DeviceKind::kCuda ? cuda_ : cpu_;
  absl::Status s = backend->Execute(prepared.plan, in, out, &stats.steps);
  stats.device = prepared.device;
  if (!s.ok() && prepared.device == DeviceKind::kCuda && options_.cuda_fallback_to_cpu &&
      request.device() != pb::DEVICE_CUDA) {
    // A device error fails this attempt only; the CPU computes the same result.
    stats.steps.clear();
    s = cpu_->Execute(prepared.plan, in, out, &stats.steps);
    stats.device = DeviceKind::kCpu;
  }
  stats.kernel_ns = NanosSince(start);
  if (!s.ok()) {
    return WithRequestId(
        absl::InternalError(absl::StrCat("running the pipeline on ", DeviceKindName(stats.device),
                                         " failed: ", s.message())),
        request.request_id());
  }
  response->set_device(ToWire(stats.device));
  pb::ServerTimings* t = response->mutable_timings();
  t->set_decode_ns(prepared.decode_ns);
  t->set_kernel_ns(stats.kernel_ns);
  t->set_encode_ns(stats.encode_ns);
  stats.samples = shape.n;
  stats.bytes_out = out.main.bytes();
  for (const auto& a : out.aux) stats.bytes_out += a.bytes();
  return stats;
}

void DescribeOps(const std::vector<const Backend*>& backends, pb::ListOpsResponse* response) {
  for (const OpSpec& spec : OpRegistry::Default().ops()) {
    pb::OpInfo* info = response->add_ops();
    info->set_name(spec.name);
    info->set_summary(spec.summary);
    info->set_geometric(spec.geometric);
    for (const ArgSpec& a : spec.args) {
      pb::ArgInfo* arg = info->add_args();
      arg->set_name(a.name);
      arg->set_type(a.type);
      arg->set_description(a.description);
    }
    for (pb::DType d : {pb::DTYPE_UINT8, pb::DTYPE_INT32, pb::DTYPE_FLOAT32, pb::DTYPE_FLOAT16}) {
      // normalize takes floating batches only.
      if (spec.kind == pb::Op::kNormalize && (d == pb::DTYPE_UINT8 || d == pb::DTYPE_INT32)) {
        continue;
      }
      info->add_dtypes(d);
    }
    for (const Backend* b : backends) info->add_devices(ToWire(b->kind()));
  }
  for (const Backend* b : backends) {
    pb::DeviceInfo* d = response->add_devices();
    d->set_device(ToWire(b->kind()));
    d->set_usable(b->usable());
    d->set_name(b->name());
    d->set_detail(b->detail());
  }
}

}  // namespace tensorprep::handlers
