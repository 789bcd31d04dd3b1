// Deliberately plain: one element, one tap, one border lookup at a time, all in double precision.
// The scalar rules every backend shares (kernels/common/numerics.h and half.h: kCast's conversions,
// rounding onto the binary16 grid, binary16 encoding; kernels/warp/sampling.h: border resolution,
// the far-position rule, the nearest tap) are used here too, not written a second time: each is tested once against
// independent expectations (tests/kernels/numerics_test.cc, half_test.cc). What the reference adds
// is the composition: every tap, weight and op of a kernel spelled out per element in double, in
// the order the semantics in warp.h and elementwise.h prescribe, with none of the fast kernels'
// tiling, tables, vector paths or blend types.
#include "kernels/reference/reference.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/common/half.h"
#include "kernels/common/numerics.h"
#include "kernels/warp/sampling.h"

namespace tensorprep::kernels::reference {
namespace {

// Rounds `x` to the nearest binary16 value, ties to even; beyond the largest finite value the
// result is +-infinity (IEEE overflow, unlike kCast's saturation).
double RoundToHalf(double x) {
  if (std::isnan(x) || std::isinf(x)) return x;
  const double r = RoundToHalfGrid(x);
  return std::fabs(r) > 65504.0 ? std::copysign(std::numeric_limits<double>::infinity(), x) : r;
}

double RoundToFloat(double x) { return static_cast<double>(static_cast<float>(x)); }

double ReadElement(const ConstTensorView& t, int64_t i) {
  switch (t.dtype) {
    case DType::kUInt8:
      return t.as<uint8_t>()[i];
    case DType::kInt32:
      return t.as<int32_t>()[i];
    case DType::kFloat32:
      return t.as<float>()[i];
    case DType::kFloat16: {
      Half h;
      std::memcpy(&h.bits, static_cast<const unsigned char*>(t.data) + 2 * i, 2);
      return ToDouble(h);
    }
  }
  return 0;
}

// The value of channel c at integer position (ix, iy) of sample n, through the border.
double Tap(const ConstTensorView& src, int64_t n, int64_t ix, int64_t iy, int64_t c,
           const WarpParams& params) {
  const BatchShape& s = src.shape;
  const int64_t x = ResolveBorder(ix, s.w, params.border);
  const int64_t y = ResolveBorder(iy, s.h, params.border);
  if (x < 0 || y < 0) return CastDouble(params.fill, src.dtype);
  return ReadElement(src, ((n * s.h + y) * s.w + x) * s.c + c);
}

// The dtype's rounding of a blended value.
double RoundBlend(double v, DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return RoundToFloat(v);
    case DType::kFloat16:
      return RoundToHalf(v);
    default:
      return CastDouble(v, dtype);
  }
}

// One arithmetic op on one element of dtype `t`, with the per-dtype rounding of elementwise.h.
double Arithmetic(ElementwiseKind kind, double x, double v, DType t) {
  const bool floating = IsFloating(t);
  if (floating) v = RoundToFloat(v);
  double r = 0;
  switch (kind) {
    case ElementwiseKind::kAdd:
      r = x + v;
      break;
    case ElementwiseKind::kSubtract:
      r = x - v;
      break;
    case ElementwiseKind::kMultiply:
      r = x * v;
      break;
    case ElementwiseKind::kDivide:
      r = x / v;
      break;
    default:
      break;
  }
  // One operation on two float32 values, done in double and rounded once to float32, equals the
  // float32 operation (double has more than 2 * 24 + 2 bits).
  if (t == DType::kFloat32) return RoundToFloat(r);
  if (t == DType::kFloat16) return RoundFloatToHalf(static_cast<float>(r));
  return CastDouble(r, t);
}

double PerChannel(const std::vector<double>& v, int64_t c) { return v.size() == 1 ? v[0] : v[c]; }

}  // namespace

std::vector<double> ToDoubles(const ConstTensorView& t) {
  std::vector<double> out(static_cast<size_t>(t.shape.elements()));
  for (int64_t i = 0; i < t.shape.elements(); ++i) out[i] = ReadElement(t, i);
  return out;
}

void FromDoubles(const std::vector<double>& v, const TensorView& t) {
  for (int64_t i = 0; i < t.shape.elements(); ++i) {
    const double x = CastDouble(v[i], t.dtype);
    switch (t.dtype) {
      case DType::kUInt8:
        t.as<uint8_t>()[i] = static_cast<uint8_t>(x);
        break;
      case DType::kInt32:
        t.as<int32_t>()[i] = static_cast<int32_t>(x);
        break;
      case DType::kFloat32:
        t.as<float>()[i] = static_cast<float>(x);
        break;
      case DType::kFloat16: {
        const Half h = FromDouble<Half>(x);
        std::memcpy(static_cast<unsigned char*>(t.data) + 2 * i, &h.bits, 2);
        break;
      }
    }
  }
}

std::vector<double> WarpAffine(const ConstTensorView& src, absl::Span<const Affine> inverse,
                               const WarpParams& params) {
  return WarpAffine(src, inverse, params, src.shape.h, src.shape.w);
}

std::vector<double> WarpAffine(const ConstTensorView& src, absl::Span<const Affine> inverse,
                               const WarpParams& params, int64_t out_h, int64_t out_w) {
  const BatchShape& s = src.shape;
  std::vector<double> out(static_cast<size_t>(s.n * out_h * out_w * s.c));
  for (int64_t n = 0; n < s.n; ++n) {
    const Affine& a = inverse.size() == 1 ? inverse[0] : inverse[n];
    for (int64_t i = 0; i < out_h; ++i) {
      for (int64_t j = 0; j < out_w; ++j) {
        const double x = static_cast<double>(j);
        const double y = static_cast<double>(i);
        const double sx = SourceX(a.m, x, y);
        const double sy = SourceY(a.m, x, y);
        const bool is_far = IsFarPosition(sx, sy);
        for (int64_t c = 0; c < s.c; ++c) {
          double v;
          if (is_far) {
            v = CastDouble(params.fill, src.dtype);
          } else if (params.interp == Interp::kNearest) {
            const int64_t ix = NearestIndex(sx);
            const int64_t iy = NearestIndex(sy);
            v = Tap(src, n, ix, iy, c, params);
          } else {
            const double x0 = std::floor(sx);
            const double y0 = std::floor(sy);
            const double fx = sx - x0;
            const double fy = sy - y0;
            const auto ix = static_cast<int64_t>(x0);
            const auto iy = static_cast<int64_t>(y0);
            const double blended = Tap(src, n, ix, iy, c, params) * ((1 - fx) * (1 - fy)) +
                                   Tap(src, n, ix + 1, iy, c, params) * (fx * (1 - fy)) +
                                   Tap(src, n, ix, iy + 1, c, params) * ((1 - fx) * fy) +
                                   Tap(src, n, ix + 1, iy + 1, c, params) * (fx * fy);
            v = RoundBlend(blended, src.dtype);
          }
          out[((n * out_h + i) * out_w + j) * s.c + c] = v;
        }
      }
    }
  }
  return out;
}

std::vector<double> Flip(const ConstTensorView& src, absl::Span<const FlipFlags> flags) {
  const BatchShape& s = src.shape;
  std::vector<double> out(static_cast<size_t>(s.elements()));
  for (int64_t n = 0; n < s.n; ++n) {
    const FlipFlags& f = flags.size() == 1 ? flags[0] : flags[n];
    for (int64_t i = 0; i < s.h; ++i) {
      for (int64_t j = 0; j < s.w; ++j) {
        const int64_t si = f.vertical ? s.h - 1 - i : i;
        const int64_t sj = f.horizontal ? s.w - 1 - j : j;
        for (int64_t c = 0; c < s.c; ++c) {
          out[((n * s.h + i) * s.w + j) * s.c + c] =
              ReadElement(src, ((n * s.h + si) * s.w + sj) * s.c + c);
        }
      }
    }
  }
  return out;
}

std::vector<double> Elementwise(const ConstTensorView& src, absl::Span<const ElementwiseOp> ops) {
  std::vector<double> values = ToDoubles(src);
  const int64_t channels = src.shape.c;
  for (size_t e = 0; e < values.size(); ++e) {
    const int64_t c = static_cast<int64_t>(e) % channels;
    double x = values[e];
    DType t = src.dtype;
    for (const ElementwiseOp& op : ops) {
      switch (op.kind) {
        case ElementwiseKind::kAdd:
        case ElementwiseKind::kSubtract:
        case ElementwiseKind::kMultiply:
        case ElementwiseKind::kDivide:
          x = Arithmetic(op.kind, x, PerChannel(op.a, c), t);
          break;
        case ElementwiseKind::kNormalize: {
          const double centred = RoundToFloat(x - RoundToFloat(PerChannel(op.a, c)));
          const double scaled = RoundToFloat(centred / RoundToFloat(PerChannel(op.b, c)));
          x = t == DType::kFloat16 ? RoundFloatToHalf(static_cast<float>(scaled)) : scaled;
          break;
        }
        case ElementwiseKind::kClamp: {
          const double inf = std::numeric_limits<double>::infinity();
          const double lo = op.has_lo ? CastDouble(op.lo, t) : -inf;
          const double hi = op.has_hi ? CastDouble(op.hi, t) : inf;
          x = x < lo ? lo : (x > hi ? hi : x);
          break;
        }
        case ElementwiseKind::kCast:
          x = CastDouble(x, op.to);
          t = op.to;
          break;
      }
    }
    values[e] = x;
  }
  return values;
}

}  // namespace tensorprep::kernels::reference
