#include "kernels/common/half.h"

namespace tensorprep::kernels {

const float* HalfToFloatTable() {
  static const float* const table = [] {
    static float t[65536];
    for (uint32_t i = 0; i < 65536; ++i) t[i] = HalfToFloat(Half{static_cast<uint16_t>(i)});
    return t;
  }();
  return table;
}

}  // namespace tensorprep::kernels
