#include "kernels/reference/layout_reference.h"

#include <cstdint>

namespace tensorprep::kernels::reference {

std::vector<double> ToChannelsFirst(const std::vector<double>& values, const BatchShape& shape) {
  if (static_cast<int64_t>(values.size()) != shape.elements()) return {};
  std::vector<double> planar(values.size());
  for (int64_t n = 0; n < shape.n; ++n) {
    for (int64_t y = 0; y < shape.h; ++y) {
      for (int64_t x = 0; x < shape.w; ++x) {
        for (int64_t c = 0; c < shape.c; ++c) {
          const int64_t from = ((n * shape.h + y) * shape.w + x) * shape.c + c;
          const int64_t to = ((n * shape.c + c) * shape.h + y) * shape.w + x;
          planar[static_cast<size_t>(to)] = values[static_cast<size_t>(from)];
        }
      }
    }
  }
  return planar;
}

}  // namespace tensorprep::kernels::reference
