// The test oracle of the colour adjustments (kernels/color/color.h): torchvision's tensor code
// transliterated one whole-image torch operation at a time, in double with every result rounded
// to float32 where torch rounds it, with none of the kernels' fusion, tiling or shared per-pixel
// functions. Linked into tests and benchmarks, never into the server.
#ifndef TENSORPREP_KERNELS_REFERENCE_COLOR_REFERENCE_H_
#define TENSORPREP_KERNELS_REFERENCE_COLOR_REFERENCE_H_

#include <vector>

#include "absl/types/span.h"
#include "kernels/color/color.h"
#include "kernels/common/tensor.h"

namespace tensorprep::kernels::reference {

// Expected output of ColorCpu for the same arguments with a dst of `out_channels` channels, as
// doubles in memory order (members of src.dtype). The arguments must satisfy CheckColorChains.
std::vector<double> Color(const ConstTensorView& src,
                          absl::Span<const std::vector<ColorAdjust>> chains, int64_t out_channels);

}  // namespace tensorprep::kernels::reference

#endif  // TENSORPREP_KERNELS_REFERENCE_COLOR_REFERENCE_H_
