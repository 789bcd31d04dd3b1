// Deliberately plain: for every output pixel, both axes' weights from the definition and a sum
// over every (row, column) tap pair in double. Shares only the scalar conversions of
// kernels/common/numerics.h and half.h (tested on their own) and ToDoubles (reference.h).
#include "kernels/reference/resample_reference.h"

#include <cmath>
#include <limits>

#include "kernels/common/numerics.h"
#include "kernels/reference/reference.h"

namespace tensorprep::kernels::reference {
namespace {

struct Tap {
  int64_t index;
  double weight;
};

// The taps of position `scale * i + offset` on an axis of `size` pixels: every j of the image (and
// of the map's tap window, if any) with a positive triangle weight (1 - |j - c| / max(|scale|,
// 1)), normalised to sum 1.
std::vector<Tap> AxisTaps(const AxisMap& m, int64_t i, int64_t size) {
  const bool windowed = m.tap_end > m.tap_begin;
  const double c = m.scale * static_cast<double>(i) + m.offset;
  const double support = std::fabs(m.scale) > 1.0 ? std::fabs(m.scale) : 1.0;
  std::vector<Tap> taps;
  double sum = 0;
  for (int64_t j = 0; j < size; ++j) {
    if (windowed && (j < m.tap_begin || j >= m.tap_end)) continue;
    const double w = 1.0 - std::fabs(static_cast<double>(j) - c) / support;
    if (w > 0) {
      taps.push_back({j, w});
      sum += w;
    }
  }
  for (Tap& t : taps) t.weight /= sum;
  return taps;
}

double Round(double v, DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return static_cast<double>(static_cast<float>(v));
    case DType::kFloat16: {
      if (std::isnan(v) || std::isinf(v)) return v;
      const double r = RoundToHalfGrid(v);
      return std::fabs(r) > 65504.0 ? std::copysign(std::numeric_limits<double>::infinity(), v) : r;
    }
    default:
      return CastDouble(v, dtype);
  }
}

}  // namespace

std::vector<double> ResampleAa(const ConstTensorView& src, absl::Span<const ResampleMap> maps,
                               int64_t out_h, int64_t out_w) {
  const BatchShape& s = src.shape;
  const std::vector<double> in = ToDoubles(src);
  std::vector<double> out(static_cast<size_t>(s.n * out_h * out_w * s.c));
  for (int64_t n = 0; n < s.n; ++n) {
    const ResampleMap& m = maps.size() == 1 ? maps[0] : maps[n];
    for (int64_t y = 0; y < out_h; ++y) {
      const std::vector<Tap> ty = AxisTaps(m.y, y, s.h);
      for (int64_t x = 0; x < out_w; ++x) {
        const std::vector<Tap> tx = AxisTaps(m.x, x, s.w);
        for (int64_t c = 0; c < s.c; ++c) {
          double v = 0;
          for (const Tap& a : ty) {
            for (const Tap& b : tx) {
              v += a.weight * b.weight * in[((n * s.h + a.index) * s.w + b.index) * s.c + c];
            }
          }
          out[((n * out_h + y) * out_w + x) * s.c + c] = Round(v, src.dtype);
        }
      }
    }
  }
  return out;
}

}  // namespace tensorprep::kernels::reference
