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

// How the row loops write their rows. kStreamed: non-temporal stores (kAvx2 only; the portable
// loops ignore it), for results too large to stay in cache; WarpAffineCpu chooses it for
// results of 16 MiB and more. The fused path (warp_rows.h) writes cached, to read the band back.
enum class WarpStores : uint8_t { kCached, kStreamed };

// WarpAffineRowsCpu (warp_rows.h) with `isa`'s row loops and `stores`; the same preconditions,
// and `isa` supported. Every isa and every kind of store writes the same bits, NaN payloads
// aside: where one float32 blend meets two taps that each make a NaN (two NaNs, or a NaN and an
// infinity weighted 0), which of the NaNs comes out follows the compiler's operand order, as it
// differs between the CPU and CUDA; every other value, NaN or not, is the same.
void WarpAffineRowsCpuIsa(WarpIsa isa, const ConstTensorView& src, int64_t n, int64_t y_begin,
                          int64_t y_end, int64_t out_w, const Affine& inverse,
                          const WarpParams& params, void* rows,
                          WarpStores stores = WarpStores::kCached);

// The same for an output of the source's size: out_w = src.shape.w, y_end <= src.shape.h.
void WarpAffineRowsCpuIsa(WarpIsa isa, const ConstTensorView& src, int64_t n, int64_t y_begin,
                          int64_t y_end, const Affine& inverse, const WarpParams& params,
                          void* rows, WarpStores stores = WarpStores::kCached);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_WARP_WARP_ISA_H_
