// Row-band entry points of the CPU warp, for callers that fuse work behind it (the CPU backend
// runs an element-wise chain on each band while the band is still in cache). The public kernel is
// WarpAffineCpu (warp.h); these produce exactly the values it writes.
#ifndef TENSORPREP_KERNELS_WARP_WARP_ROWS_H_
#define TENSORPREP_KERNELS_WARP_WARP_ROWS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels {

// Writes output rows [y_begin, y_end) of sample `n` of WarpAffineCpu(src, ..., inverse, params)
// to `rows`: (y_end - y_begin) rows of src.shape.w * src.shape.c elements of src.dtype, packed,
// aligned to the dtype, not overlapping src. `inverse` is sample n's map. Runs on the calling
// thread. Preconditions (unchecked): CheckWarpSource (warp.h) passed, 0 <= n < src.shape.n,
// 0 <= y_begin < y_end <= src.shape.h. Thread-safe for distinct `rows`.
void WarpAffineRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                       const Affine& inverse, const WarpParams& params, void* rows);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_WARP_WARP_ROWS_H_
