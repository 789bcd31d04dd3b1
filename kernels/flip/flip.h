// Mirror of each sample of an NHWC batch: a permuting copy, no arithmetic.
#ifndef TENSORPREP_KERNELS_FLIP_FLIP_H_
#define TENSORPREP_KERNELS_FLIP_FLIP_H_

#include "absl/status/status.h"
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
// shape and do not overlap. Spreads work over `pool` (null: inline). INVALID_ARGUMENT on mismatched
// views; never throws. Thread-safe for distinct outputs.
absl::Status FlipCpu(const ConstTensorView& src, const TensorView& dst,
                     absl::Span<const FlipFlags> flags, ThreadPool* pool);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_FLIP_FLIP_H_
