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

// Writes output rows [y_begin, y_end) of sample `n` of WarpAffineCpu(src, dst, inverse, params)
// for a dst whose rows are `out_w` pixels wide: (y_end - y_begin) rows of out_w * src.shape.c
// elements of src.dtype, packed, aligned to the dtype, not overlapping src. y_begin and y_end
// count output rows (the output's height is the caller's; rows below it are never read or
// written). `inverse` is sample n's map. Runs on the calling thread. Preconditions (unchecked):
// CheckWarpSource (warp.h) passed, 0 <= n < src.shape.n, 0 <= y_begin < y_end, out_w >= 1.
// Thread-safe for distinct `rows`.
void WarpAffineRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                       int64_t out_w, const Affine& inverse, const WarpParams& params, void* rows);

// The same for an output of the source's size: out_w = src.shape.w, y_end <= src.shape.h.
void WarpAffineRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                       const Affine& inverse, const WarpParams& params, void* rows);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_WARP_WARP_ROWS_H_
