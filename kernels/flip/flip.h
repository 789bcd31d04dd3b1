// Mirror of each sample of an NHWC batch: a permuting copy, no arithmetic.
#ifndef TENSORPREP_KERNELS_FLIP_FLIP_H_
#define TENSORPREP_KERNELS_FLIP_FLIP_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/common/thread_pool.h"

namespace tensorprep::kernels {

struct FlipFlags {
  bool horizontal = false;  // left-right: column j -> w-1-j
  bool vertical = false;    // up-down: row i -> h-1-i
};

// dst[n] = src[n] mirrored as flags[n] says (both false: a plain copy).
// `flags` has src.shape.n entries, or 1 used for every sample. src and dst have the same dtype and
// shape and do not overlap. Spreads work over `pool` (null: inline). INTERNAL when these
// preconditions are broken (kernels/common/checks.h); never throws. Thread-safe for distinct
// outputs.
absl::Status FlipCpu(const ConstTensorView& src, const TensorView& dst,
                     absl::Span<const FlipFlags> flags, ThreadPool* pool);

// The preconditions every flip entry point (CPU, CUDA, the CPU backend's fused path) checks on its
// source and flags, before its own checks of the destination (kernels/common/checks.h): src shape
// and data, `flags` count (1 or src.shape.n). INTERNAL "<function>: <what>" otherwise.
// Thread-safe.
absl::Status CheckFlipSource(absl::string_view function, const ConstTensorView& src,
                             absl::Span<const FlipFlags> flags);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_FLIP_FLIP_H_
