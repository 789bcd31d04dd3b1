// IEEE 754 binary16 storage type with its conversions to and from float, identical on host and
// device: the one binary16 encoder and decoder of the project (kernels/common/numerics.h rounds
// doubles onto the binary16 grid). Tested against the format's definition and known values in
// tests/kernels/half_test.cc.
#ifndef TENSORPREP_KERNELS_COMMON_HALF_H_
#define TENSORPREP_KERNELS_COMMON_HALF_H_

#include <cstdint>
#include <cstring>

#include "kernels/common/host_device.h"

namespace tensorprep::kernels {

// Two bytes holding a binary16 value. Arithmetic is done by converting to float.
struct Half {
  uint16_t bits;
};
static_assert(sizeof(Half) == 2, "Half must be two bytes");

TP_HD uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

TP_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Exact widening conversion.
TP_HD float HalfToFloat(Half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return BitsToFloat(sign);  // signed zero
  // Subnormal half: value = mant * 2^-24, exact in float.
  const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

// Round-to-nearest-even narrowing. Overflow gives +-inf, NaN stays NaN (quiet).
TP_HD Half FloatToHalf(float f) {
  const uint32_t u = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return Half{static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u))};
  }
  if (abs >= 0x477ff000u) return Half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds past 65504
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    if (abs < 0x33000000u) return Half{sign};  // below half of the smallest subnormal
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exp;  // 14..24 for this range
    uint32_t result = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (result & 1u))) ++result;
    return Half{static_cast<uint16_t>(sign | result)};
  }
  // Normal: rebias exponent, round the 13 dropped mantissa bits to nearest even.
  uint32_t v = abs - 0x38000000u;  // exponent 127 -> 15
  const uint32_t rem = v & 0x1fffu;
  v >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (v & 1u))) ++v;  // may carry into the exponent: fine
  return Half{static_cast<uint16_t>(sign | v)};
}

// `f` rounded to the nearest binary16 value (ties to even, overflow to +-inf), kept in a float:
// what one float16 op stores after computing in float32.
TP_HD float RoundFloatToHalf(float f) { return HalfToFloat(FloatToHalf(f)); }

// HalfToFloat of every bit pattern, built on first use (thread-safe) and kept for the process:
// host loops widen with one load instead of a branchy decode. Host only. One table for the
// program (an inline function's static); inline, because an out-of-line call changed the code
// of the element-wise tile loop around it (about 5 more instructions per tile, measured).
inline const float* HalfToFloatTable() {
  static const float* const table = [] {
    static float t[65536];
    for (uint32_t i = 0; i < 65536; ++i) t[i] = HalfToFloat(Half{static_cast<uint16_t>(i)});
    return t;
  }();
  return table;
}

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_COMMON_HALF_H_
