// The per-element arithmetic of the CUDA kernels, written once for host and device (TP_HD) and
// free of CUDA headers: the .cu kernels only loop over elements and call these functions, and the
// tests run the very same functions on the host (no GPU needed) against the reference.
//
// A value travelling through a kernel is held as a double that is exactly a member of its current
// dtype (uint8, int32, float32 and float16 values are all exact in double). Each op computes in the
// precision its dtype prescribes (elementwise.h) and rounds back, so a fused chain rounds exactly
// as the ops do when run one by one. No fused multiply-add: device arithmetic goes through the
// round-to-nearest intrinsics, and the library is also compiled with --fmad=false.
#ifndef TENSORPREP_KERNELS_CUDA_KERNEL_MATH_H_
#define TENSORPREP_KERNELS_CUDA_KERNEL_MATH_H_

#include <math.h>

#include <cstdint>

#include "kernels/common/half.h"
#include "kernels/common/host_device.h"
#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels::cuda::detail {

// ---- Correctly rounded scalar arithmetic, never contracted ----------------------------------

TP_HD double AddRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
TP_HD double SubRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
TP_HD double MulRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
TP_HD double DivRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
TP_HD float AddRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
TP_HD float SubRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
TP_HD float MulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
TP_HD float DivRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// ---- Element types --------------------------------------------------------------------------

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<uint8_t> {
  static constexpr DType kValue = DType::kUInt8;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType kValue = DType::kInt32;
};
template <>
struct DTypeOf<float> {
  static constexpr DType kValue = DType::kFloat32;
};
template <>
struct DTypeOf<Half> {
  static constexpr DType kValue = DType::kFloat16;
};

TP_HD double ToDouble(uint8_t v) { return static_cast<double>(v); }
TP_HD double ToDouble(int32_t v) { return static_cast<double>(v); }
TP_HD double ToDouble(float v) { return static_cast<double>(v); }
TP_HD double ToDouble(Half v) { return static_cast<double>(HalfToFloat(v)); }

// `v` must already be exactly a member of T (every value produced by the functions below is).
template <typename T>
TP_HD T FromDouble(double v);
template <>
TP_HD uint8_t FromDouble<uint8_t>(double v) {
  return static_cast<uint8_t>(v);
}
template <>
TP_HD int32_t FromDouble<int32_t>(double v) {
  return static_cast<int32_t>(v);
}
template <>
TP_HD float FromDouble<float>(double v) {
  return static_cast<float>(v);
}
template <>
TP_HD Half FromDouble<Half>(double v) {
  return FloatToHalf(static_cast<float>(v));
}

// ---- Conversions (kCast's rules, elementwise.h) -----------------------------------------------

TP_HD bool IsNan(double x) { return x != x; }

// Rounds to nearest (ties to even) and saturates to [lo, hi]; NaN gives 0.
TP_HD double RoundSaturate(double x, double lo, double hi) {
  if (IsNan(x)) return 0.0;
  const double r = rint(x);
  return r < lo ? lo : (r > hi ? hi : r);
}

// float -> float16 -> float, round to nearest even; overflow gives +-inf (plain arithmetic).
TP_HD float RoundToHalf(float f) { return HalfToFloat(FloatToHalf(f)); }

// `x` rounded to the nearest binary16 value (ties to even) directly from double, for finite
// |x| <= 65504 (rounding through float first could round twice).
TP_HD double RoundDoubleToHalfGrid(double x) {
  const double mag = fabs(x);
  int e = 0;
  frexp(mag, &e);                             // mag = f * 2^e, f in [0.5, 1)
  const int q = e - 11 > -24 ? e - 11 : -24;  // exponent of the binary16 spacing at mag
  return copysign(ldexp(rint(ldexp(mag, -q)), q), x);
}

// The value kCast produces from `x` (any double) converted to `to`, returned as a double.
// -> float16 saturates finite values at +-65504; inf and NaN stay.
TP_HD double CastDouble(double x, DType to) {
  switch (to) {
    case DType::kUInt8:
      return RoundSaturate(x, 0.0, 255.0);
    case DType::kInt32:
      return RoundSaturate(x, -2147483648.0, 2147483647.0);
    case DType::kFloat32:
      return static_cast<double>(static_cast<float>(x));
    case DType::kFloat16: {
      if (!(x - x == 0.0))
        return static_cast<double>(HalfToFloat(FloatToHalf(static_cast<float>(x))));
      const double clamped = x < -65504.0 ? -65504.0 : (x > 65504.0 ? 65504.0 : x);
      return RoundDoubleToHalfGrid(clamped);
    }
  }
  return 0.0;
}

// ---- Element-wise chains ----------------------------------------------------------------------

// One op of a chain as the kernels see it (built on the host by BuildChainTable, op_table.h).
struct DeviceOp {
  ElementwiseKind kind = ElementwiseKind::kAdd;
  DType in = DType::kFloat32;  // dtype of the value entering this op
  DType to = DType::kFloat32;  // kCast only
  uint8_t has_lo = 0;
  uint8_t has_hi = 0;
  int32_t a_offset = 0;  // into OpChain::values; a_count is 1 (broadcast) or C
  int32_t a_count = 0;
  int32_t b_offset = 0;
  int32_t b_count = 0;
  double lo = 0;  // clamp bounds, already converted to `in` as kCast would
  double hi = 0;
};

struct OpChain {
  const DeviceOp* ops = nullptr;
  const double* values = nullptr;
  int32_t count = 0;
};

template <typename F>
TP_HD F Arith(ElementwiseKind kind, F x, F a) {
  switch (kind) {
    case ElementwiseKind::kAdd:
      return AddRn(x, a);
    case ElementwiseKind::kSubtract:
      return SubRn(x, a);
    case ElementwiseKind::kMultiply:
      return MulRn(x, a);
    default:  // kDivide
      return DivRn(x, a);
  }
}

TP_HD double PerChannel(const double* values, int32_t offset, int32_t count, int c) {
  return values[offset + (count == 1 ? 0 : c)];
}

// Applies `op` to `v` (a member of op.in) of channel `c`.
TP_HD double ApplyOp(const DeviceOp& op, const double* values, double v, int c) {
  const bool floating = op.in == DType::kFloat32 || op.in == DType::kFloat16;
  switch (op.kind) {
    case ElementwiseKind::kAdd:
    case ElementwiseKind::kSubtract:
    case ElementwiseKind::kMultiply:
    case ElementwiseKind::kDivide: {
      const double a = PerChannel(values, op.a_offset, op.a_count, c);
      if (floating) {
        const float r = Arith(op.kind, static_cast<float>(v), static_cast<float>(a));
        return op.in == DType::kFloat16 ? RoundToHalf(r) : r;
      }
      return CastDouble(Arith(op.kind, v, a), op.in);
    }
    case ElementwiseKind::kNormalize: {  // floating only (validated on the host)
      const float mean = static_cast<float>(PerChannel(values, op.a_offset, op.a_count, c));
      const float stddev = static_cast<float>(PerChannel(values, op.b_offset, op.b_count, c));
      const float r = DivRn(SubRn(static_cast<float>(v), mean), stddev);
      return op.in == DType::kFloat16 ? RoundToHalf(r) : r;
    }
    case ElementwiseKind::kClamp:
      // NaN compares false both ways and stays NaN.
      if (op.has_lo && v < op.lo) return op.lo;
      if (op.has_hi && v > op.hi) return op.hi;
      return v;
    case ElementwiseKind::kCast:
      return CastDouble(v, op.to);
  }
  return v;
}

TP_HD double ApplyChain(const OpChain& chain, double v, int c) {
  for (int32_t i = 0; i < chain.count; ++i) v = ApplyOp(chain.ops[i], chain.values, v, c);
  return v;
}

struct ElementwiseArgs {
  const void* src = nullptr;
  void* dst = nullptr;  // may equal src (same-size dtypes)
  int64_t total = 0;    // elements
  int32_t channels = 1;
  OpChain chain;
};

// Element `i` (of channel c = i % channels).
template <typename TIn, typename TOut>
TP_HD void ElementwiseElement(const ElementwiseArgs& a, int64_t i, int c) {
  const double v = ToDouble(static_cast<const TIn*>(a.src)[i]);
  static_cast<TOut*>(a.dst)[i] = FromDouble<TOut>(ApplyChain(a.chain, v, c));
}

// ---- Flip -------------------------------------------------------------------------------------

struct FlipArgs {
  const void* src = nullptr;
  void* dst = nullptr;
  int64_t n = 0;
  int32_t h = 0, w = 0, c = 0;
  const uint8_t* flags = nullptr;  // 2 bytes per entry: horizontal, vertical
  int64_t flag_stride = 0;         // entries per sample: 0 (one entry for all) or 1
};

// All channels of output pixel (x, y) of sample n. T only carries the element size.
template <typename T>
TP_HD void FlipPixel(const FlipArgs& a, int64_t n, int64_t y, int64_t x) {
  const uint8_t* f = a.flags + 2 * (n * a.flag_stride);
  const int64_t sx = f[0] ? a.w - 1 - x : x;
  const int64_t sy = f[1] ? a.h - 1 - y : y;
  const T* s = static_cast<const T*>(a.src) + ((n * a.h + sy) * a.w + sx) * a.c;
  T* d = static_cast<T*>(a.dst) + ((n * a.h + y) * a.w + x) * a.c;
  for (int32_t ch = 0; ch < a.c; ++ch) d[ch] = s[ch];
}

// ---- Warp -------------------------------------------------------------------------------------

struct WarpArgs {
  const void* src = nullptr;
  void* dst = nullptr;
  int64_t n = 0;
  int32_t h = 0, w = 0, c = 0;
  const double* affines = nullptr;  // 6 doubles per entry (Affine::m)
  int64_t affine_stride = 0;        // entries per sample: 0 (one entry for all) or 1
  Interp interp = Interp::kBilinear;
  Border border = Border::kConstant;
  double fill = 0;  // already converted to the source dtype
  OpChain chain;    // applied to each sampled value before it is stored (may be empty)
};

// Positions at or beyond 2^52 pixels, or not finite, sample the fill value whatever the border
// (warp.h): there a double has no fraction left, and the integer conversion stays defined.
TP_HD bool IsFar(double sx, double sy) {
  const double kFar = 4503599627370496.0;  // 2^52
  return !(fabs(sx) < kFar && fabs(sy) < kFar);
}

// Index `i` along an axis of `n` pixels resolved through `border`; -1 means "use the fill value".
TP_HD int64_t ResolveIndex(int64_t i, int64_t n, Border border) {
  if (i >= 0 && i < n) return i;
  switch (border) {
    case Border::kConstant:
      return -1;
    case Border::kEdge:
      return i < 0 ? 0 : n - 1;
    case Border::kWrap: {
      int64_t m = i % n;
      return m < 0 ? m + n : m;
    }
    case Border::kReflect: {  // cba|abc|cba: period 2n
      const int64_t p = 2 * n;
      int64_t m = i % p;
      if (m < 0) m += p;
      return m < n ? m : p - 1 - m;
    }
    case Border::kReflect101: {  // cb|abc|ba: period 2n - 2
      if (n == 1) return 0;
      const int64_t p = 2 * n - 2;
      int64_t m = i % p;
      if (m < 0) m += p;
      return m < n ? m : p - m;
    }
  }
  return -1;
}

// The blend arithmetic of each source dtype (warp.h): uint8, float32 and float16 blend in float,
// int32 in double; the weights are computed in double and rounded to the blend type.
template <typename T>
struct BlendType {
  using Type = float;
};
template <>
struct BlendType<int32_t> {
  using Type = double;
};

// Blends four taps (already values of T) with the fractional offsets (fx, fy), summing
// v00*w00 + v01*w01 + v10*w10 + v11*w11 left to right like the CPU backend, and rounds the result
// to T (integers to nearest even, saturated; float16 once, overflow to inf).
template <typename T>
TP_HD double Blend(double v00, double v01, double v10, double v11, double fx, double fy) {
  using Acc = typename BlendType<T>::Type;
  const double gx = SubRn(1.0, fx), gy = SubRn(1.0, fy);
  const Acc w00 = static_cast<Acc>(MulRn(gx, gy));
  const Acc w01 = static_cast<Acc>(MulRn(fx, gy));
  const Acc w10 = static_cast<Acc>(MulRn(gx, fy));
  const Acc w11 = static_cast<Acc>(MulRn(fx, fy));
  Acc v = MulRn(static_cast<Acc>(v00), w00);
  v = AddRn(v, MulRn(static_cast<Acc>(v01), w01));
  v = AddRn(v, MulRn(static_cast<Acc>(v10), w10));
  v = AddRn(v, MulRn(static_cast<Acc>(v11), w11));
  const DType dtype = DTypeOf<T>::kValue;
  if (dtype == DType::kFloat16) return static_cast<double>(RoundToHalf(static_cast<float>(v)));
  if (dtype == DType::kFloat32) return static_cast<double>(v);
  return RoundSaturate(static_cast<double>(v), dtype == DType::kUInt8 ? 0.0 : -2147483648.0,
                       dtype == DType::kUInt8 ? 255.0 : 2147483647.0);
}

// All channels of output pixel (x, y) of sample n: sample the source in TIn, run the chain,
// store as TOut.
template <typename TIn, typename TOut>
TP_HD void WarpPixel(const WarpArgs& a, int64_t n, int64_t y, int64_t x) {
  const int64_t w = a.w, h = a.h, channels = a.c;
  const TIn* src = static_cast<const TIn*>(a.src) + n * h * w * channels;
  TOut* dst = static_cast<TOut*>(a.dst) + ((n * h + y) * w + x) * channels;
  const double* m = a.affines + 6 * (n * a.affine_stride);
  const double xd = static_cast<double>(x), yd = static_cast<double>(y);
  const double sx = AddRn(AddRn(MulRn(m[0], xd), MulRn(m[1], yd)), m[2]);
  const double sy = AddRn(AddRn(MulRn(m[3], xd), MulRn(m[4], yd)), m[5]);

  if (IsFar(sx, sy)) {
    for (int32_t ch = 0; ch < a.c; ++ch)
      dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, a.fill, ch));
    return;
  }
  if (a.interp == Interp::kNearest) {
    const auto ix = ResolveIndex(static_cast<int64_t>(floor(AddRn(sx, 0.5))), w, a.border);
    const auto iy = ResolveIndex(static_cast<int64_t>(floor(AddRn(sy, 0.5))), h, a.border);
    if (ix < 0 || iy < 0) {
      for (int32_t ch = 0; ch < a.c; ++ch)
        dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, a.fill, ch));
      return;
    }
    const TIn* p = src + (iy * w + ix) * channels;
    for (int32_t ch = 0; ch < a.c; ++ch) {
      dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, ToDouble(p[ch]), ch));
    }
    return;
  }

  const double floor_x = floor(sx), floor_y = floor(sy);
  const double fx = SubRn(sx, floor_x), fy = SubRn(sy, floor_y);
  const auto x0 = static_cast<int64_t>(floor_x), y0 = static_cast<int64_t>(floor_y);
  const int64_t cx0 = ResolveIndex(x0, w, a.border), cx1 = ResolveIndex(x0 + 1, w, a.border);
  const int64_t cy0 = ResolveIndex(y0, h, a.border), cy1 = ResolveIndex(y0 + 1, h, a.border);
  // Element offsets of the four taps (channel 0), -1 for a tap that takes the fill value.
  const int64_t o00 = (cy0 < 0 || cx0 < 0) ? -1 : (cy0 * w + cx0) * channels;
  const int64_t o01 = (cy0 < 0 || cx1 < 0) ? -1 : (cy0 * w + cx1) * channels;
  const int64_t o10 = (cy1 < 0 || cx0 < 0) ? -1 : (cy1 * w + cx0) * channels;
  const int64_t o11 = (cy1 < 0 || cx1 < 0) ? -1 : (cy1 * w + cx1) * channels;
  for (int32_t ch = 0; ch < a.c; ++ch) {
    const double p00 = o00 < 0 ? a.fill : ToDouble(src[o00 + ch]);
    const double p01 = o01 < 0 ? a.fill : ToDouble(src[o01 + ch]);
    const double p10 = o10 < 0 ? a.fill : ToDouble(src[o10 + ch]);
    const double p11 = o11 < 0 ? a.fill : ToDouble(src[o11 + ch]);
    const double v = Blend<TIn>(p00, p01, p10, p11, fx, fy);
    dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, v, ch));
  }
}

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_KERNEL_MATH_H_
