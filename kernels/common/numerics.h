// The scalar numerics that every backend and the reference share, written once for host and
// device (TP_HD) and free of CUDA headers: correctly rounded arithmetic, rounding to integers with
// saturation, rounding to binary16 from double, kCast's conversion rules (elementwise.h) and the
// element types' exact conversions to and from double. The CPU kernels inline these into their
// loops, the CUDA kernels call them per element, the CUDA host code uses them to prepare
// arguments, and the reference (kernels/reference) composes them element by element.
//
// Because every backend's results are compared bit for bit, nothing here may be contracted into a
// fused multiply-add: the build passes -ffp-contract=off to the host compiler and --fmad=false to
// nvcc, and device code goes through the round-to-nearest intrinsics besides. All functions assume
// the default floating-point environment (round to nearest, no flush of subnormals to zero).
//
// Tested once against independent expectations (known values, the format's definition) in
// tests/kernels/numerics_test.cc and tests/kernels/half_test.cc. Pure functions: thread-safe.
#ifndef TENSORPREP_KERNELS_COMMON_NUMERICS_H_
#define TENSORPREP_KERNELS_COMMON_NUMERICS_H_

#include <math.h>

#include <cstdint>

#include "kernels/common/half.h"
#include "kernels/common/host_device.h"
#include "kernels/common/tensor.h"

namespace tensorprep::kernels {

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

TP_HD bool IsNan(double x) { return x != x; }

// ---- Rounding to integers -----------------------------------------------------------------------

// Round to nearest, ties to even, for |v| <= 2^51 (double) or 2^22 (float): adding and removing
// 1.5 * 2^52 (1.5 * 2^23) leaves no fraction bits, so the addition rounds v as the default mode
// does. Cheaper than rint in the CPU kernels' vectorised loops, and the same on the device.
TP_HD double RoundEvenSmall(double v) {
  return SubRn(AddRn(v, 6755399441055744.0), 6755399441055744.0);
}
TP_HD float RoundEvenSmall(float v) { return SubRn(AddRn(v, 12582912.0f), 12582912.0f); }

// v (not NaN) saturated to [0, 255] and rounded to nearest, ties to even.
TP_HD uint8_t SaturateU8(float v) {
  v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
  return static_cast<uint8_t>(static_cast<int32_t>(RoundEvenSmall(v)));
}
TP_HD uint8_t SaturateU8(double v) {
  v = v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v);
  return static_cast<uint8_t>(static_cast<int32_t>(RoundEvenSmall(v)));
}
// v (not NaN) saturated to [-2^31, 2^31 - 1] and rounded to nearest, ties to even.
TP_HD int32_t SaturateI32(double v) {
  v = v < -2147483648.0 ? -2147483648.0 : (v > 2147483647.0 ? 2147483647.0 : v);
  return static_cast<int32_t>(RoundEvenSmall(v));
}

// ---- binary16 ---------------------------------------------------------------------------------

// The nearest binary16 value to finite `x` (ties to even), as a double, rounded directly from the
// double: narrowing through float first could round twice. Magnitudes from 65520 up round on the
// top exponent's grid (to 65536 and beyond), not to infinity: the caller saturates (kCast) or
// overflows (IEEE arithmetic) as its op prescribes. Signed zeros keep their sign.
TP_HD double RoundToHalfGrid(double x) {
  const double mag = fabs(x);
  int e = 0;
  frexp(mag, &e);                             // mag = f * 2^e, f in [0.5, 1)
  const int q = e - 11 > -24 ? e - 11 : -24;  // exponent of the binary16 spacing at mag
  return copysign(ldexp(rint(ldexp(mag, -q)), q), x);
}

// ---- kCast (elementwise.h) ----------------------------------------------------------------------

// The value kCast produces from `x` (any double) converted to `to`, as a double: integers round
// to nearest (ties to even) and saturate, NaN gives 0; float32 rounds to nearest; float16 rounds to
// nearest even and saturates finite values at +-65504, while infinities and NaN stay.
TP_HD double CastDouble(double x, DType to) {
  switch (to) {
    case DType::kUInt8:
      return IsNan(x) ? 0.0 : static_cast<double>(SaturateU8(x));
    case DType::kInt32:
      return IsNan(x) ? 0.0 : static_cast<double>(SaturateI32(x));
    case DType::kFloat32:
      return static_cast<double>(static_cast<float>(x));
    case DType::kFloat16: {
      if (!(x - x == 0.0)) return x;  // infinity or NaN
      return RoundToHalfGrid(x < -65504.0 ? -65504.0 : (x > 65504.0 ? 65504.0 : x));
    }
  }
  return 0.0;
}

// ---- Element types ------------------------------------------------------------------------------

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

// Exact: every value of every dtype is a double.
TP_HD double ToDouble(uint8_t v) { return static_cast<double>(v); }
TP_HD double ToDouble(int32_t v) { return static_cast<double>(v); }
TP_HD double ToDouble(float v) { return static_cast<double>(v); }
TP_HD double ToDouble(Half v) { return static_cast<double>(HalfToFloat(v)); }

// `v` must already be exactly a member of T (CastDouble(x, DTypeOf<T>::kValue) always is); the
// conversion is then exact.
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

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_COMMON_NUMERICS_H_
