// A pipeline lowered to kernel work: an ordered list of steps over typed views, with every
// per-sample random parameter already drawn. Backends (CPU, CUDA) execute a Plan; they never see
// the request's protobuf.
#ifndef TENSORPREP_HANDLERS_PLAN_H_
#define TENSORPREP_HANDLERS_PLAN_H_

#include <string>
#include <vector>

#include "kernels/color/color.h"
#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/flip/flip.h"
#include "kernels/resample/resample.h"
#include "kernels/warp/warp.h"

namespace tensorprep::handlers {

// Kernel labels: the closed set used for per-kernel timings and metrics.
enum class KernelKind : int { kWarp = 0, kFlip = 1, kElementwise = 2, kResample = 3, kColor = 4 };
inline constexpr int kKernelKindCount = 5;
// "warp", "flip", "elementwise", "resample", "color"
const char* KernelName(KernelKind kind);

// Per-aux-tensor sampling: its own interpolation and fill; borders come from the step.
struct AuxSampling {
  kernels::Interp interp = kernels::Interp::kNearest;
  double fill = 0;
};

// A box of a step's input, in whole pixels: rows [top, top + height), columns [left, left +
// width).
struct ResampleBox {
  int64_t top = 0;
  int64_t left = 0;
  int64_t height = 0;
  int64_t width = 0;
};

struct Step {
  KernelKind kind = KernelKind::kElementwise;
  // Pipeline op indices this step covers (several when ops were fused).
  std::vector<int> ops;
  // The main batch's shape after this step (n and, but for colour steps, c are the input's).
  // Aux tensors take its h and w after a geometric step and keep their own c.
  kernels::BatchShape out;

  // kWarp: per-sample inverse maps (n entries, or 1 for all) and the main batch's sampling.
  // kResample: the same for aux tensors, which are warped (with their own interpolation and
  // fill) where the main batch is resampled with the antialias filter.
  std::vector<kernels::Affine> inverse;
  kernels::WarpParams params;
  // kResample: per-sample axis maps of the main batch (n entries, or 1 for all).
  std::vector<kernels::ResampleMap> maps;
  // kFlip: per-sample mirror flags (n entries, or 1 for all).
  std::vector<kernels::FlipFlags> flags;
  // kElementwise: the fused chain (main batch only).
  std::vector<kernels::ElementwiseOp> chain;
  // kColor: per-sample adjustment chains (n entries, or 1 for all; main batch only).
  std::vector<std::vector<kernels::ColorAdjust>> color;

  bool geometric() const {
    return kind == KernelKind::kWarp || kind == KernelKind::kFlip || kind == KernelKind::kResample;
  }
};

struct Plan {
  std::vector<Step> steps;
  kernels::DType output_dtype = kernels::DType::kUInt8;  // of the main batch
  kernels::BatchShape output_shape;                      // of the main batch, logical NHWC
  // The main batch is written (N, C, H, W): by the last step, which is then element-wise (an
  // empty chain, a copy, where the pipeline's last op is not element-wise).
  bool channels_first = false;
  std::vector<AuxSampling> aux;  // one per aux tensor, in request order
};

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_PLAN_H_
