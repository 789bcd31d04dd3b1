// Deliberately plain: one element, one tap, one border lookup at a time, all in double precision.
// Nothing here is shared with the fast kernels except the public types and the Affine maps that
// callers pass in; half precision is decoded and encoded by hand, so that the oracle also checks
// kernels/common/half.h.
#include "kernels/reference/reference.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace tensorprep::kernels::reference {
namespace {

constexpr double kHalfMax = 65504.0;

// binary16 bits -> value, from the format's definition.
double DecodeHalf(uint16_t bits) {
  const int sign = (bits >> 15) & 1;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  double magnitude;
  if (exponent == 0x1f) {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa), -24);
  } else {
    magnitude = std::ldexp(1024.0 + mantissa, exponent - 25);
  }
  return sign ? -magnitude : magnitude;
}

// Rounds `x` to the nearest binary16 value, ties to even; beyond the largest finite value the
// result is +-infinity (IEEE overflow). Returns the rounded value as a double.
double RoundToHalf(double x) {
  if (std::isnan(x) || std::isinf(x)) return x;
  const double a = std::fabs(x);
  double quantum;  // spacing of binary16 values around a
  if (a < std::ldexp(1.0, -14)) {
    quantum = std::ldexp(1.0, -24);
  } else {
    int e;
    std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1): the leading bit is 2^(e-1)
    quantum = std::ldexp(1.0, e - 1 - 10);
  }
  double r = std::nearbyint(a / quantum) * quantum;  // power-of-two scaling: exact
  if (r > kHalfMax) r = std::numeric_limits<double>::infinity();
  return std::copysign(r, x);
}

// A value representable in binary16 -> its bits.
uint16_t EncodeHalf(double v) {
  uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (std::isnan(v)) return static_cast<uint16_t>(sign | 0x7e00);
  if (std::isinf(v)) return static_cast<uint16_t>(sign | 0x7c00);
  if (a < std::ldexp(1.0, -14)) {
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(a * std::ldexp(1.0, 24)));
  }
  int e;
  const double f = std::frexp(a, &e);  // a = f * 2^e
  const int exponent = e - 1 + 15;
  const int mantissa = static_cast<int>((f * 2.0 - 1.0) * 1024.0);
  return static_cast<uint16_t>(sign | (exponent << 10) | mantissa);
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
      uint16_t bits;
      std::memcpy(&bits, static_cast<const unsigned char*>(t.data) + 2 * i, 2);
      return DecodeHalf(bits);
    }
  }
  return 0;
}

// Maps a possibly outside index to an inside one, or -1 when the border supplies `fill`.
int64_t BorderIndex(int64_t i, int64_t n, Border border) {
  if (i >= 0 && i < n) return i;
  switch (border) {
    case Border::kConstant:
      return -1;
    case Border::kEdge:
      return i < 0 ? 0 : n - 1;
    case Border::kReflect: {  // period 2n: 0 1 .. n-1 n-1 .. 1 0
      const int64_t period = 2 * n;
      int64_t r = i % period;
      if (r < 0) r += period;
      return r < n ? r : period - 1 - r;
    }
    case Border::kReflect101: {  // period 2n-2: 0 1 .. n-1 n-2 .. 1
      if (n == 1) return 0;
      const int64_t period = 2 * n - 2;
      int64_t r = i % period;
      if (r < 0) r += period;
      return r < n ? r : period - r;
    }
    case Border::kWrap: {
      int64_t r = i % n;
      if (r < 0) r += n;
      return r;
    }
  }
  return -1;
}

// The value of channel c at integer position (ix, iy) of sample n, through the border.
double Tap(const ConstTensorView& src, int64_t n, int64_t ix, int64_t iy, int64_t c,
           const WarpParams& params) {
  const BatchShape& s = src.shape;
  const int64_t x = BorderIndex(ix, s.w, params.border);
  const int64_t y = BorderIndex(iy, s.h, params.border);
  if (x < 0 || y < 0) return CastValue(params.fill, src.dtype);
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
      return CastValue(v, dtype);
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
  if (t == DType::kFloat16) return RoundToHalf(RoundToFloat(r));
  return CastValue(r, t);
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
    const double x = CastValue(v[i], t.dtype);
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
        const uint16_t bits = EncodeHalf(x);
        std::memcpy(static_cast<unsigned char*>(t.data) + 2 * i, &bits, 2);
        break;
      }
    }
  }
}

double CastValue(double x, DType to) {
  switch (to) {
    case DType::kUInt8:
    case DType::kInt32: {
      if (std::isnan(x)) return 0;
      const double lo = to == DType::kUInt8 ? 0.0 : -2147483648.0;
      const double hi = to == DType::kUInt8 ? 255.0 : 2147483647.0;
      const double r = std::nearbyint(x);  // default rounding mode: to nearest, ties to even
      return r < lo ? lo : (r > hi ? hi : r);
    }
    case DType::kFloat32:
      return RoundToFloat(x);
    case DType::kFloat16: {
      if (std::isnan(x) || std::isinf(x)) return x;
      const double r = RoundToHalf(x);
      if (r > kHalfMax) return kHalfMax;
      if (r < -kHalfMax) return -kHalfMax;
      return r;
    }
  }
  return 0;
}

std::vector<double> WarpAffine(const ConstTensorView& src, absl::Span<const Affine> inverse,
                               const WarpParams& params) {
  const BatchShape& s = src.shape;
  std::vector<double> out(static_cast<size_t>(s.elements()));
  const double far = 4503599627370496.0;  // 2^52: see warp.h
  for (int64_t n = 0; n < s.n; ++n) {
    const Affine& a = inverse.size() == 1 ? inverse[0] : inverse[n];
    for (int64_t i = 0; i < s.h; ++i) {
      for (int64_t j = 0; j < s.w; ++j) {
        const double x = static_cast<double>(j);
        const double y = static_cast<double>(i);
        const double sx = a.m[0] * x + a.m[1] * y + a.m[2];
        const double sy = a.m[3] * x + a.m[4] * y + a.m[5];
        const bool is_far = !(std::fabs(sx) < far && std::fabs(sy) < far);
        for (int64_t c = 0; c < s.c; ++c) {
          double v;
          if (is_far) {
            v = CastValue(params.fill, src.dtype);
          } else if (params.interp == Interp::kNearest) {
            const auto ix = static_cast<int64_t>(std::floor(sx + 0.5));
            const auto iy = static_cast<int64_t>(std::floor(sy + 0.5));
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
          out[((n * s.h + i) * s.w + j) * s.c + c] = v;
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
          x = t == DType::kFloat16 ? RoundToHalf(scaled) : scaled;
          break;
        }
        case ElementwiseKind::kClamp: {
          const double inf = std::numeric_limits<double>::infinity();
          const double lo = op.has_lo ? CastValue(op.lo, t) : -inf;
          const double hi = op.has_hi ? CastValue(op.hi, t) : inf;
          x = x < lo ? lo : (x > hi ? hi : x);
          break;
        }
        case ElementwiseKind::kCast:
          x = CastValue(x, op.to);
          t = op.to;
          break;
      }
    }
    values[e] = x;
  }
  return values;
}

}  // namespace tensorprep::kernels::reference
