// The reference of the antialiased resampling (kernels/resample/resample.h): per output pixel,
// each axis's taps and normalised triangle weights derived afresh from the semantics in
// resample.h (every source index tried, no tables), and one double-precision sum over the 2-D
// product of the two weight sets. Linked into tests only.
#ifndef TENSORPREP_KERNELS_REFERENCE_RESAMPLE_REFERENCE_H_
#define TENSORPREP_KERNELS_REFERENCE_RESAMPLE_REFERENCE_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/resample/resample.h"

namespace tensorprep::kernels::reference {

// Expected output of ResampleAaCpu for a dst of shape (src.shape.n, out_h, out_w, src.shape.c),
// as doubles in memory order, rounded once to src.dtype (uint8 and int32 to nearest even with
// saturation, float32 to nearest, float16 to nearest even with overflow to infinity). `maps` has
// 1 or src.shape.n entries; every output index must keep a tap (as ResampleAaCpu requires).
std::vector<double> ResampleAa(const ConstTensorView& src, absl::Span<const ResampleMap> maps,
                               int64_t out_h, int64_t out_w);

}  // namespace tensorprep::kernels::reference

#endif  // TENSORPREP_KERNELS_REFERENCE_RESAMPLE_REFERENCE_H_
