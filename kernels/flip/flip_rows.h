// Row-band entry point of the CPU flip, for callers that fuse work behind it (the CPU backend runs
// an element-wise chain on each band while it is in cache). The public kernel is FlipCpu
// (flip.h); this produces exactly the values it writes.
#ifndef TENSORPREP_KERNELS_FLIP_FLIP_ROWS_H_
#define TENSORPREP_KERNELS_FLIP_FLIP_ROWS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/flip/flip.h"

namespace tensorprep::kernels {

// Writes output rows [y_begin, y_end) of sample `n` of FlipCpu(src, ..., flags) to `rows`, packed
// ((y_end - y_begin) * w * c elements of src.dtype), not overlapping src; `flags` is sample n's.
// Runs on the calling thread. Preconditions (unchecked): CheckFlipSource (flip.h) passed,
// 0 <= n < src.shape.n, 0 <= y_begin < y_end <= src.shape.h. Thread-safe for distinct `rows`.
void FlipRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                 const FlipFlags& flags, void* rows);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_FLIP_FLIP_ROWS_H_
