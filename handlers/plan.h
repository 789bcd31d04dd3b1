// A pipeline lowered to kernel work: an ordered list of steps over typed views, with every
// per-sample random parameter already drawn. Backends (CPU, CUDA) execute a Plan; they never see
// the request's protobuf.
#ifndef TENSORPREP_HANDLERS_PLAN_H_
#define TENSORPREP_HANDLERS_PLAN_H_

#include <string>
#include <vector>

#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/flip/flip.h"
#include "kernels/warp/warp.h"

namespace tensorprep::handlers {

// Kernel labels: the closed set used for per-kernel timings and metrics.
enum class KernelKind : int { kWarp = 0, kFlip = 1, kElementwise = 2 };
inline constexpr int kKernelKindCount = 3;
const char* KernelName(KernelKind kind);  // "warp", "flip", "elementwise"

// Per-aux-tensor sampling: its own interpolation and fill; borders come from the step.
struct AuxSampling {
  kernels::Interp interp = kernels::Interp::kNearest;
  double fill = 0;
};

struct Step {
  KernelKind kind = KernelKind::kElementwise;
  // Pipeline op indices this step covers (several when ops were fused).
  std::vector<int> ops;

  // kWarp: per-sample inverse maps (n entries, or 1 for all) and the main batch's sampling.
  std::vector<kernels::Affine> inverse;
  kernels::WarpParams params;
  // kFlip: per-sample mirror flags (n entries, or 1 for all).
  std::vector<kernels::FlipFlags> flags;
  // kElementwise: the fused chain (main batch only).
  std::vector<kernels::ElementwiseOp> chain;

  bool geometric() const { return kind != KernelKind::kElementwise; }
};

struct Plan {
  std::vector<Step> steps;
  kernels::DType output_dtype = kernels::DType::kUInt8;  // of the main batch
  std::vector<AuxSampling> aux;                          // one per aux tensor, in request order
};

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_PLAN_H_
