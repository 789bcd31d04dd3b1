// Reference for output layouts (the test oracle's part for channels-first results; see
// reference.h for what the reference is and is not).
#ifndef TENSORPREP_KERNELS_REFERENCE_LAYOUT_REFERENCE_H_
#define TENSORPREP_KERNELS_REFERENCE_LAYOUT_REFERENCE_H_

#include <vector>

#include "kernels/common/tensor.h"

namespace tensorprep::kernels::reference {

// The values of an NHWC batch of `shape` (in memory order, values.size() == shape.elements())
// rearranged into channels-first (N, C, H, W) memory order: the element at (n, y, x, c) moves to
// ((n * C + c) * H + y) * W + x. Pure; a size mismatch returns an empty vector.
std::vector<double> ToChannelsFirst(const std::vector<double>& values, const BatchShape& shape);

}  // namespace tensorprep::kernels::reference

#endif  // TENSORPREP_KERNELS_REFERENCE_LAYOUT_REFERENCE_H_
