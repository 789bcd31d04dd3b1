#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "handlers/backend.h"
#include "handlers/tensor_codec.h"
#include "kernels/common/status.h"

namespace tensorprep::handlers {

using kernels::ConstTensorView;
using kernels::TensorView;

const char* DeviceKindName(DeviceKind d) { return d == DeviceKind::kCuda ? "cuda" : "cpu"; }

std::string CpuBackend::name() const { return absl::StrCat("cpu (", pool_->size(), " threads)"); }

namespace {

// Runs one step on one tensor. `aux` selects the aux sampling rules for warps.
absl::Status RunStep(const Step& step, const ConstTensorView& in, const TensorView& out,
                     const AuxSampling* aux, kernels::ThreadPool* pool) {
  switch (step.kind) {
    case KernelKind::kWarp: {
      kernels::WarpParams p = step.params;
      if (aux != nullptr) {
        p.interp = aux->interp;
        p.fill = aux->fill;
      }
      return kernels::WarpAffineCpu(in, out, step.inverse, p, pool);
    }
    case KernelKind::kFlip:
      return kernels::FlipCpu(in, out, step.flags, pool);
    case KernelKind::kElementwise:
      return kernels::ElementwiseCpu(in, out, step.chain, pool);
  }
  return absl::InternalError("unknown step kind");
}

// Scratch space for one tensor's chain of steps: two buffers used alternately.
class PingPong {
 public:
  TensorView Next(kernels::DType dtype, const kernels::BatchShape& shape) {
    const size_t bytes = static_cast<size_t>(shape.elements()) * kernels::DTypeSize(dtype);
    AlignedBuffer& b = buffers_[turn_];
    turn_ ^= 1;
    if (b.size() < bytes) b = AlignedBuffer(bytes);
    return TensorView{dtype, shape, b.data()};
  }

 private:
  AlignedBuffer buffers_[2];
  int turn_ = 0;
};

}  // namespace

absl::Status CpuBackend::Execute(const Plan& plan, const ExecInputs& in, const ExecOutputs& out,
                                 std::vector<StepTiming>* timings) {
  if (in.aux.size() != out.aux.size() || in.aux.size() != plan.aux.size()) {
    return absl::InternalError("aux tensor count differs between plan, inputs and outputs");
  }
  int last_geometric = -1;
  for (size_t k = 0; k < plan.steps.size(); ++k) {
    if (plan.steps[k].geometric()) last_geometric = static_cast<int>(k);
  }
  PingPong main_scratch;
  std::vector<PingPong> aux_scratch(in.aux.size());
  ConstTensorView main = in.main;
  std::vector<ConstTensorView> aux = in.aux;
  for (size_t k = 0; k < plan.steps.size(); ++k) {
    const Step& step = plan.steps[k];
    const auto start = std::chrono::steady_clock::now();
    const bool last = k + 1 == plan.steps.size();
    const kernels::DType dtype =
        step.kind == KernelKind::kElementwise
            ? kernels::ElementwiseOutputDType(main.dtype, step.chain)
            : main.dtype;
    TensorView dst = last ? out.main : main_scratch.Next(dtype, main.shape);
    TP_RETURN_IF_ERROR(RunStep(step, main, dst, nullptr, pool_));
    main = dst.as_const();
    if (step.geometric()) {
      for (size_t j = 0; j < aux.size(); ++j) {
        TensorView aux_dst = static_cast<int>(k) == last_geometric
                                 ? out.aux[j]
                                 : aux_scratch[j].Next(aux[j].dtype, aux[j].shape);
        TP_RETURN_IF_ERROR(RunStep(step, aux[j], aux_dst, &plan.aux[j], pool_));
        aux[j] = aux_dst.as_const();
      }
    }
    if (timings != nullptr) {
      timings->push_back(
          {step.kind,
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
    }
  }
  if (plan.steps.empty()) std::memcpy(out.main.data, in.main.data, in.main.bytes());
  if (last_geometric < 0) {
    // Aux tensors untouched by the pipeline still come back, unchanged.
    for (size_t j = 0; j < aux.size(); ++j) std::memcpy(out.aux[j].data, in.aux[j].data, in.aux[j].bytes());
  }
  return absl::OkStatus();
}

#ifndef TENSORPREP_HAVE_CUDA
std::unique_ptr<Backend> MakeCudaBackend() { return nullptr; }
#endif

}  // namespace tensorprep::handlers
