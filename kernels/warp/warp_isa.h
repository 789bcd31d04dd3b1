// The instruction sets the CPU warp's row loops come in. WarpAffineCpu and WarpAffineRowsCpu
// (warp.h, warp_rows.h) run the fastest one this CPU has; the rest is exposed so that the tests
// can run every row loop this CPU has against the portable one, bit for bit.
#ifndef TENSORPREP_KERNELS_WARP_WARP_ISA_H_
#define TENSORPREP_KERNELS_WARP_WARP_ISA_H_

#include <cstdint>

#include "kernels/common/tensor.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels {

enum class WarpIsa : uint8_t {
  kPortable,  // plain C++, one pixel at a time
  // x86-64 with AVX2: source positions, taps and weights four pixels at a time in double, and
  // the four-tap blend of a pixel's channels in one vector (uint8 and float32 with 1, 3 or 4
  // channels; other dtypes and channel counts take the portable loops).
  kAvx2,
};

// Whether this CPU runs `isa`'s loops (kPortable: always). Fixed for the process.
bool WarpIsaSupported(WarpIsa isa);

// WarpAffineRowsCpu (warp_rows.h) with `isa`'s row loops; the same preconditions, and `isa`
// supported. Every isa writes the same bits.
void WarpAffineRowsCpuIsa(WarpIsa isa, const ConstTensorView& src, int64_t n, int64_t y_begin,
                          int64_t y_end, const Affine& inverse, const WarpParams& params,
                          void* rows);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_WARP_WARP_ISA_H_
