#include "handlers/processor.h"

#include <algorithm>
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

pb::Device ToWire(DeviceKind d) {
  return d == DeviceKind::kCuda ? pb::DEVICE_CUDA : pb::DEVICE_CPU;
}

// Resolves the request's shared-memory output places (after planning, which fixes the result's
// dtype) and refuses an output that overlaps an input or another output: kernels read their
// inputs while they write, and two results in one place would garble both.
absl::Status PlaceOutputs(const pb::ProcessRequest& request, const SharedMemoryRegions* shm,
                          PreparedRequest* prepared) {
  prepared->aux_out.resize(prepared->aux.size());
  auto resolve = [&](const pb::SharedMemoryRef& ref, const std::string& path, uint64_t bytes,
                     kernels::DType dtype, ShmSpan* out) -> absl::Status {
    if (shm == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          path,
          ": shared memory is disabled on this server; leave it unset to get the bytes "
          "in the response"));
    }
    auto span = shm->Resolve(ref, path, 0, bytes, kernels::DTypeSize(dtype));
    if (!span.ok()) return span.status();
    span->bytes = bytes;  // the result's extent, not the whole reservation, for overlaps
    *out = std::move(*span);
    return absl::OkStatus();
  };
  if (request.has_images_output()) {
    absl::Status s =
        resolve(request.images_output(), "images_output", Processor::MainOutputBytes(*prepared),
                prepared->plan.output_dtype, &prepared->main_out);
    if (!s.ok()) return s;
  }
  for (size_t j = 0; j < prepared->aux.size(); ++j) {
    const pb::AuxTensor& a = request.aux(static_cast<int>(j));
    if (!a.has_output()) continue;
    const DecodedTensor& d = prepared->aux[j];
    absl::Status s =
        resolve(a.output(), absl::StrCat("aux[", j, "].output"),
                Processor::AuxOutputBytes(*prepared, j), d.view.dtype, &prepared->aux_out[j]);
    if (!s.ok()) return s;
  }
  // Every output against every input and every earlier output (nothing to do, and nothing
  // allocated, for the usual request without outputs in shared memory).
  std::vector<std::pair<std::string, const ShmSpan*>> inputs, outputs;
  if (prepared->main_out.pin) outputs.emplace_back("images_output", &prepared->main_out);
  for (size_t j = 0; j < prepared->aux_out.size(); ++j) {
    if (prepared->aux_out[j].pin) {
      outputs.emplace_back(absl::StrCat("aux[", j, "].output"), &prepared->aux_out[j]);
    }
  }
  if (outputs.empty()) return absl::OkStatus();
  if (prepared->main.shm.pin) inputs.emplace_back("images", &prepared->main.shm);
  for (size_t j = 0; j < prepared->aux.size(); ++j) {
    if (prepared->aux[j].shm.pin) {
      inputs.emplace_back(absl::StrCat("aux[", j, "].tensor"), &prepared->aux[j].shm);
    }
  }
  for (size_t o = 0; o < outputs.size(); ++o) {
    for (const auto& [name, span] : inputs) {
      if (outputs[o].second->Overlaps(*span)) {
        return absl::InvalidArgumentError(
            absl::StrCat(outputs[o].first, ": overlaps the shared-memory bytes of the input ", name,
                         "; results must go to memory that no input of the request uses"));
      }
    }
    for (size_t p = 0; p < o; ++p) {
      if (outputs[o].second->Overlaps(*outputs[p].second)) {
        return absl::InvalidArgumentError(
            absl::StrCat(outputs[o].first, ": overlaps the shared-memory place of ",
                         outputs[p].first, "; each result needs a place of its own"));
      }
    }
  }
  return absl::OkStatus();
}

// An image list as the dense batch it becomes, without data: N, dtype, C and rank, which the
// outputs are made from (their H and W come from the plan).
DecodedTensor DenseOutline(const RaggedTensor& list, int64_t n) {
  DecodedTensor t;
  t.view.dtype = list.dtype;
  t.view.shape = {n, 1, 1, list.c};
  t.rank = list.rank;
  return t;
}

// True when a shared-memory region the request used broke while it ran.
bool AnyRegionBroken(const PreparedRequest& p) {
  auto broken = [](const ShmSpan& s) { return s.pin && s.pin.region()->broken(); };
  if (broken(p.main.shm) || broken(p.main_out)) return true;
  for (const DecodedTensor& d : p.aux) {
    if (broken(d.shm)) return true;
  }
  for (const ShmSpan& s : p.aux_out) {
    if (broken(s)) return true;
  }
  return false;
}

}  // namespace

Processor::Processor(ProcessorOptions options, Backend* cpu, Backend* cuda,
                     const SharedMemoryRegions* shm, kernels::ThreadPool* pool)
    : options_(std::move(options)), cpu_(cpu), cuda_(cuda), shm_(shm), pool_(pool) {}

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
  const bool ragged = request.has_image_list();
  if (ragged && request.has_images()) {
    return WithRequestId(absl::InvalidArgumentError(
                             "images, image_list: expected one of them, got both"),
                         id);
  }
  if (!ragged && !request.has_images()) {
    return WithRequestId(absl::InvalidArgumentError(
                             "images: expected a batch tensor (or an image_list), got none"),
                         id);
  }
  uint64_t bytes_in = 0;
  uint64_t inline_bytes_in = 0;
  if (ragged) {
    auto list = CheckImageList(request.image_list(), "image_list", 3, options_.limits,
                               options_.image_limits);
    if (!list.ok()) return WithRequestId(list.status(), id);
    prepared->ragged = std::make_unique<RaggedBatch>();
    prepared->ragged->main = std::move(*list);
    const RaggedTensor& m = prepared->ragged->main;
    prepared->main = DenseOutline(m, static_cast<int64_t>(m.samples.size()));
    bytes_in = inline_bytes_in = m.encoded_bytes;
  } else {
    auto main = DecodeBatch(request.images(), "images", options_.limits, shm_);
    if (!main.ok()) return WithRequestId(main.status(), id);
    prepared->main = std::move(*main);
    bytes_in = prepared->main.view.bytes();
    inline_bytes_in = prepared->main.shm.pin ? 0 : bytes_in;
  }
  const kernels::BatchShape& shape = prepared->main.view.shape;

  std::vector<AuxSampling> sampling;
  std::set<std::string> names;
  for (int j = 0; j < request.aux_size(); ++j) {
    const pb::AuxTensor& a = request.aux(j);
    const std::string path = absl::StrCat("aux[", j, "]");
    if (!a.name().empty() && !names.insert(a.name()).second) {
      return WithRequestId(
          absl::InvalidArgumentError(absl::StrCat(path, ".name: expected a unique name, got ",
                                                  QuoteCallerString(a.name()), " a second time")),
          id);
    }
    DecodedTensor decoded;
    if (ragged) {
      if (!a.has_list()) {
        return WithRequestId(
            absl::InvalidArgumentError(absl::StrCat(
                path, ".list: expected a list of samples (one per image) with image_list, got ",
                a.has_tensor() ? "a batch tensor" : "none")),
            id);
      }
      auto list = CheckImageList(a.list(), path + ".list", 1, options_.limits,
                                 options_.image_limits);
      if (!list.ok()) return WithRequestId(list.status(), id);
      decoded = DenseOutline(*list, shape.n);
      bytes_in += list->encoded_bytes;
      inline_bytes_in += list->encoded_bytes;
      prepared->ragged->aux.push_back(std::move(*list));
    } else if (a.has_list()) {
      return WithRequestId(absl::InvalidArgumentError(absl::StrCat(
                               path, ".list: lists go with image_list; with images send ", path,
                               ".tensor")),
                           id);
    } else if (!a.has_tensor()) {
      return WithRequestId(
          absl::InvalidArgumentError(absl::StrCat(path, ".tensor: expected a tensor, got none")),
          id);
    } else {
      auto aux = DecodeBatch(a.tensor(), path + ".tensor", options_.limits, shm_);
      if (!aux.ok()) return WithRequestId(aux.status(), id);
      const kernels::BatchShape& as = aux->view.shape;
      if (as.n != shape.n || as.h != shape.h || as.w != shape.w) {
        return WithRequestId(
            absl::InvalidArgumentError(absl::StrCat(
                path, ".tensor.shape: expected N,H,W = ", shape.n, ",", shape.h, ",", shape.w,
                " (the images' batch and size), got ", as.n, ",", as.h, ",", as.w)),
            id);
      }
      bytes_in += aux->view.bytes();
      if (!aux->shm.pin) inline_bytes_in += aux->view.bytes();
      decoded = std::move(*aux);
    }
    if (a.interpolation() < pb::INTERPOLATION_UNSPECIFIED ||
        a.interpolation() > pb::INTERPOLATION_BILINEAR) {
      return WithRequestId(absl::InvalidArgumentError(
                               absl::StrCat(path,
                                            ".interpolation: expected INTERPOLATION_NEAREST or "
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
    prepared->aux.push_back(std::move(decoded));
  }

  if (request.device() < pb::DEVICE_AUTO || request.device() > pb::DEVICE_CUDA) {
    return WithRequestId(absl::InvalidArgumentError(absl::StrCat(
                             "device: expected DEVICE_AUTO, DEVICE_CPU or DEVICE_CUDA, got "
                             "unknown value ",
                             request.device())),
                         id);
  }
  PlanOptions plan_options = options_.plan;
  plan_options.max_tensor_bytes =
      std::min(plan_options.max_tensor_bytes, options_.limits.max_tensor_bytes);
  auto plan = ragged ? PlanImageList(request.pipeline(), request.seed(), request.sample_offset(),
                                     sampling, plan_options, prepared->ragged.get())
                     : BuildPlan(request.pipeline(), BatchState{shape, prepared->main.view.dtype},
                                 request.seed(), request.sample_offset(), std::move(sampling),
                                 plan_options);
  if (!plan.ok()) return WithRequestId(plan.status(), id);
  prepared->plan = std::move(*plan);
  if (ragged) {
    prepared->ragged_threads = std::min<uint64_t>(
        shape.n, pool_ == nullptr ? 1 : static_cast<uint64_t>(pool_->size()));
  }
  absl::Status placed = PlaceOutputs(request, shm_, prepared.get());
  if (!placed.ok()) return WithRequestId(placed, id);

  const bool cuda_usable = cuda_ != nullptr && cuda_->usable();
  // A step the CUDA backend has no kernel for keeps the request on the CPU.
  const Step* cpu_only = nullptr;
  if (cuda_ != nullptr) {
    for (const Step& step : prepared->plan.steps) {
      if (!cuda_->Implements(step.kind)) cpu_only = &step;
    }
  }
  switch (request.device()) {
    case pb::DEVICE_CUDA:
      if (ragged) {
        return WithRequestId(absl::FailedPreconditionError(
                                 "device: DEVICE_CUDA requested, but an image_list is decoded "
                                 "and run on the CPU; use DEVICE_AUTO or DEVICE_CPU"),
                             id);
      }
      if (!cuda_usable) {
        return WithRequestId(
            absl::FailedPreconditionError(absl::StrCat(
                "device: DEVICE_CUDA requested but no CUDA device is usable (",
                cuda_ == nullptr ? "this server was built without CUDA" : cuda_->detail(),
                "); use DEVICE_AUTO or DEVICE_CPU")),
            id);
      }
      if (cpu_only != nullptr) {
        return WithRequestId(
            absl::FailedPreconditionError(absl::StrCat(
                "device: DEVICE_CUDA requested but pipeline.ops[", cpu_only->ops.front(),
                "] runs a ", KernelName(cpu_only->kind),
                " kernel, which this server has only on the CPU; use DEVICE_AUTO or DEVICE_CPU")),
            id);
      }
      prepared->device = DeviceKind::kCuda;
      break;
    case pb::DEVICE_CPU:
      prepared->device = DeviceKind::kCpu;
      break;
    default:
      prepared->device = !ragged && cuda_usable && options_.allow_cuda && cpu_only == nullptr &&
                                 bytes_in >= options_.auto_cuda_min_bytes
                             ? DeviceKind::kCuda
                             : DeviceKind::kCpu;
      break;
  }
  prepared->bytes_in = bytes_in;
  prepared->inline_bytes_in = inline_bytes_in;
  prepared->decode_ns = NanosSince(start);
  return prepared;
}

uint64_t Processor::MainOutputBytes(const PreparedRequest& prepared) {
  return static_cast<uint64_t>(prepared.plan.output_shape.elements()) *
         kernels::DTypeSize(prepared.plan.output_dtype);
}

kernels::BatchShape Processor::AuxOutputShape(const PreparedRequest& prepared, size_t j) {
  kernels::BatchShape s = prepared.aux[j].view.shape;
  s.h = prepared.plan.output_shape.h;
  s.w = prepared.plan.output_shape.w;
  return s;
}

uint64_t Processor::AuxOutputBytes(const PreparedRequest& prepared, size_t j) {
  return static_cast<uint64_t>(AuxOutputShape(prepared, j).elements()) *
         kernels::DTypeSize(prepared.aux[j].view.dtype);
}

uint64_t Processor::InlineOutputBytes(const PreparedRequest& prepared) {
  uint64_t bytes = prepared.main_out.data != nullptr ? 0 : MainOutputBytes(prepared);
  if (prepared.ragged) bytes += prepared.ragged->scratch_bytes * prepared.ragged_threads;
  for (size_t j = 0; j < prepared.aux.size(); ++j) {
    if (j >= prepared.aux_out.size() || prepared.aux_out[j].data == nullptr) {
      bytes += AuxOutputBytes(prepared, j);
    }
  }
  return bytes;
}

absl::StatusOr<RunStats> Processor::Run(const pb::ProcessRequest& request,
                                        PreparedRequest& prepared, pb::ProcessResponse* response,
                                        void* main_data) const {
  RunStats stats;
  auto start = Clock::now();
  response->set_request_id(request.request_id());
  const kernels::BatchShape& shape = prepared.plan.output_shape;
  ExecOutputs out;
  if (prepared.main_out.data != nullptr) {
    out.main = PrepareOutput(response->mutable_images(), prepared.plan.output_dtype, shape,
                             prepared.main.rank, prepared.main_out.data);
    *response->mutable_images()->mutable_shm() = request.images_output();
  } else if (main_data != nullptr) {
    out.main = PrepareOutput(response->mutable_images(), prepared.plan.output_dtype, shape,
                             prepared.main.rank, main_data);
    stats.inline_bytes_out += out.main.bytes();
  } else {
    out.main = PrepareOutput(response->mutable_images(), prepared.plan.output_dtype, shape,
                             prepared.main.rank);
    stats.inline_bytes_out += out.main.bytes();
  }
  if (prepared.plan.channels_first) {
    // The kernels see the logical (N, H, W, C) view; the wire says how the bytes lie.
    pb::Tensor* t = response->mutable_images();
    t->clear_shape();
    for (int64_t d : {shape.n, shape.c, shape.h, shape.w}) t->add_shape(d);
  }
  ExecInputs in;
  in.main = prepared.main.view;
  for (size_t j = 0; j < prepared.aux.size(); ++j) {
    const pb::AuxTensor& req_aux = request.aux(static_cast<int>(j));
    pb::AuxTensor* a = response->add_aux();
    a->set_name(req_aux.name());
    a->set_interpolation(req_aux.interpolation());
    a->set_fill(req_aux.fill());
    const DecodedTensor& d = prepared.aux[j];
    if (j < prepared.aux_out.size() && prepared.aux_out[j].data != nullptr) {
      out.aux.push_back(PrepareOutput(a->mutable_tensor(), d.view.dtype,
                                      AuxOutputShape(prepared, j), d.rank,
                                      prepared.aux_out[j].data));
      *a->mutable_tensor()->mutable_shm() = req_aux.output();
    } else {
      out.aux.push_back(
          PrepareOutput(a->mutable_tensor(), d.view.dtype, AuxOutputShape(prepared, j), d.rank));
      stats.inline_bytes_out += out.aux.back().bytes();
    }
    in.aux.push_back(d.view);
  }
  stats.encode_ns = NanosSince(start);

  start = Clock::now();
  Backend* backend = prepared.device == DeviceKind::kCuda ? cuda_ : cpu_;
  absl::Status s;
  if (prepared.ragged) {
    s = RunImageList(*prepared.ragged, cpu_, pool_, out, &stats.steps, &stats.image_decode_ns);
    if (s.code() == absl::StatusCode::kInvalidArgument) {
      return WithRequestId(s, request.request_id());  // a file that turned out corrupt
    }
  } else {
    s = backend->Execute(prepared.plan, in, out, &stats.steps);
  }
  stats.device = prepared.device;
  if (!s.ok() && prepared.device == DeviceKind::kCuda && options_.cuda_fallback_to_cpu &&
      request.device() != pb::DEVICE_CUDA) {
    // A device error fails this attempt only; the CPU computes the same result.
    stats.steps.clear();
    s = cpu_->Execute(prepared.plan, in, out, &stats.steps);
    stats.device = DeviceKind::kCpu;
  }
  stats.kernel_ns = NanosSince(start) - stats.image_decode_ns;
  if (AnyRegionBroken(prepared)) {
    // The fault guard gave the kernels zeros in place of the vanished memory: the result is
    // meaningless, whatever the kernels returned.
    return WithRequestId(
        absl::FailedPreconditionError(
            "a shared-memory region the request used shrank while the request ran (its object "
            "was truncated or removed); the region now refuses requests: unregister it and "
            "register a new one"),
        request.request_id());
  }
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
  t->set_image_decode_ns(stats.image_decode_ns);
  t->set_encode_ns(stats.encode_ns);
  stats.samples = shape.n;
  stats.bytes_out = out.main.bytes();
  for (const auto& a : out.aux) stats.bytes_out += a.bytes();
  pb::Transfer* transfer = response->mutable_transfer();
  transfer->set_inline_bytes_in(prepared.inline_bytes_in);
  transfer->set_shm_bytes_in(prepared.bytes_in - prepared.inline_bytes_in);
  transfer->set_inline_bytes_out(stats.inline_bytes_out);
  transfer->set_shm_bytes_out(stats.bytes_out - stats.inline_bytes_out);
  return stats;
}

void DescribeOps(const std::vector<const Backend*>& backends, pb::ListOpsResponse* response) {
  for (const OpSpec& spec : OpRegistry::Default().ops()) {
    pb::OpInfo* info = response->add_ops();
    info->set_name(spec.name);
    info->set_summary(spec.summary);
    info->set_geometric(spec.geometric);
    info->set_random(spec.random);
    for (const ArgSpec& a : spec.args) {
      pb::ArgInfo* arg = info->add_args();
      arg->set_name(a.name);
      arg->set_type(a.type);
      arg->set_description(a.description);
    }
    for (kernels::DType d : spec.dtypes) info->add_dtypes(EncodeDType(d));
    for (const Backend* b : backends) {
      if (std::all_of(spec.kernels.begin(), spec.kernels.end(),
                      [b](KernelKind k) { return b->Implements(k); })) {
        info->add_devices(ToWire(b->kind()));
      }
    }
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
