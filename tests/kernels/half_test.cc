// binary16 conversions in kernels/common/half.h, the project's one encoder and decoder, against
// independent expectations: the format's definition (IEEE 754 binary16: 1 sign, 5 exponent bits
// biased by 15, 10 fraction bits) for every bit pattern, the definition of round-to-nearest-even
// at every rounding boundary, and values numpy 1.26 gives (np.float32(x).astype(np.float16)).
#include "kernels/common/half.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace tensorprep::kernels {
namespace {

// The value of a bit pattern from the format's definition, in double.
double DefinitionValue(uint16_t bits) {
  const int sign = bits >> 15;
  const int exponent = (bits >> 10) & 0x1f;
  const int fraction = bits & 0x3ff;
  double magnitude;
  if (exponent == 0x1f) {
    magnitude = fraction == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(fraction, -24);  // subnormal: 0.fraction * 2^-14
  } else {
    magnitude = std::ldexp(1024 + fraction, exponent - 25);  // 1.fraction * 2^(exponent - 15)
  }
  return sign ? -magnitude : magnitude;
}

// Whether `got` is what round-to-nearest-even gives for `f` (finite, |f| < 65520, so the result
// is finite): no finite binary16 value is nearer, and on a tie the fraction is even.
bool IsNearestEven(float f, uint16_t got) {
  if ((got & 0x7c00u) == 0x7c00u) return false;
  const double x = f;  // every float and binary16 difference below is exact in double
  const double v = DefinitionValue(got);
  if (std::signbit(v) != std::signbit(x)) return false;
  const double d = std::fabs(x - v);
  // The neighbours of `got` in magnitude (the next one up may be 65536's pattern: infinity).
  const uint16_t mag = got & 0x7fffu;
  for (const int step : {-1, 1}) {
    if (mag == 0 && step < 0) continue;
    const uint16_t other_mag = static_cast<uint16_t>(mag + step);
    const double other = other_mag == 0x7c00u ? 65536.0 : DefinitionValue(other_mag);
    const double od = std::fabs(std::fabs(x) - other);
    if (od < d) return false;
    if (od == d && (mag & 1u) != 0) return false;  // a tie must land on the even fraction
  }
  return true;
}

TEST(Half, EveryPatternWidensAsTheFormatDefines) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const double want = DefinitionValue(static_cast<uint16_t>(i));
    const float got = HalfToFloat(Half{static_cast<uint16_t>(i)});
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << i;
    } else {
      EXPECT_EQ(got, want) << std::hex << i;
      EXPECT_EQ(std::signbit(got), std::signbit(want)) << std::hex << i;
    }
  }
}

TEST(Half, TableWidensEveryPatternAsHalfToFloat) {
  const float* table = HalfToFloatTable();
  for (uint32_t i = 0; i < 65536; ++i) {
    const float want = HalfToFloat(Half{static_cast<uint16_t>(i)});
    EXPECT_EQ(std::memcmp(&table[i], &want, sizeof(float)), 0) << std::hex << i;
  }
}

TEST(Half, EveryPatternRoundTrips) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const Half h{static_cast<uint16_t>(i)};
    const float f = HalfToFloat(h);
    const Half back = FloatToHalf(f);
    if (std::isnan(f)) {
      EXPECT_EQ(back.bits & 0x7c00u, 0x7c00u) << std::hex << i;
      EXPECT_NE(back.bits & 0x3ffu, 0u) << std::hex << i;  // still NaN
    } else {
      EXPECT_EQ(back.bits, h.bits) << std::hex << i;
    }
  }
}

// For each pair of neighbouring finite binary16 values: the midpoint (a tie: to even), the floats
// just either side of it, and the value itself.
TEST(Half, NarrowsToNearestEvenAtEveryRoundingBoundary) {
  int failures = 0;
  for (uint32_t bits = 0; bits < 0x7bffu && failures < 10; ++bits) {
    const double lo = DefinitionValue(static_cast<uint16_t>(bits));
    const double hi = DefinitionValue(static_cast<uint16_t>(bits + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: 12 significant bits
    for (float v :
         {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), static_cast<float>(lo)}) {
      for (float f : {v, -v}) {
        const uint16_t got = FloatToHalf(f).bits;
        if (!IsNearestEven(f, got)) {
          ++failures;
          ADD_FAILURE() << "value " << f << ": got 0x" << std::hex << got;
        }
      }
    }
  }
}

TEST(Half, NarrowsRandomFloatsToNearestEven) {
  std::mt19937 rng(42);
  int failures = 0;
  for (int i = 0; i < 500000 && failures < 10; ++i) {
    const uint32_t u = static_cast<uint32_t>(rng());
    float f;
    std::memcpy(&f, &u, 4);
    // Biased towards the binary16 range too: a random exponent in [-26, 16).
    const float g = std::ldexp(static_cast<float>(rng()) / 4294967296.0f,
                               static_cast<int>(rng() % 42) - 26);
    for (float v : {f, g}) {
      if (!(std::fabs(v) < 65520.0f)) continue;
      const uint16_t got = FloatToHalf(v).bits;
      if (!IsNearestEven(v, got)) {
        ++failures;
        ADD_FAILURE() << "value " << v << ": got 0x" << std::hex << got;
      }
    }
  }
}

// np.array([x], np.float32).astype(np.float16).view(np.uint16), numpy 1.26.
TEST(Half, NarrowsLikeNumpy) {
  struct Case {
    float in;
    uint16_t bits;
  };
  for (const Case& c : {Case{0.1f, 0x2e66}, Case{1.0f / 3.0f, 0x3555}, Case{3.14159265f, 0x4248},
                        Case{1000.5f, 0x63d1}, Case{2049.0f, 0x6800}, Case{2051.0f, 0x6802},
                        Case{12345.678f, 0x7207}, Case{-0.33325195f, 0xb555},
                        Case{1e-8f, 0x0000}, Case{5.9604645e-08f, 0x0001},
                        Case{65519.996f, 0x7bff}, Case{65520.0f, 0x7c00}, Case{-1e10f, 0xfc00}}) {
    EXPECT_EQ(FloatToHalf(c.in).bits, c.bits) << c.in;
  }
}

TEST(Half, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToHalf(65504.0f).bits, 0x7bffu);
  EXPECT_EQ(FloatToHalf(65519.996f).bits, 0x7bffu);  // below the tie: rounds down
  EXPECT_EQ(FloatToHalf(65520.0f).bits, 0x7c00u);    // the tie rounds to even: overflow
  EXPECT_EQ(FloatToHalf(-1e10f).bits, 0xfc00u);
  EXPECT_EQ(FloatToHalf(inf).bits, 0x7c00u);
  EXPECT_EQ(FloatToHalf(-inf).bits, 0xfc00u);
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::nanf("")))));
  EXPECT_EQ(FloatToHalf(-0.0f).bits, 0x8000u);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)).bits, 0x0001u);  // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)).bits, 0x0000u);  // tie between 0 and it: even
  EXPECT_EQ(FloatToHalf(std::nextafter(std::ldexp(1.0f, -25), 1.0f)).bits, 0x0001u);
  EXPECT_EQ(FloatToHalf(std::ldexp(3.0f, -25)).bits, 0x0002u);  // tie 1.5 ulp: to even (2)
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)).bits, 0x0400u);  // smallest normal
  EXPECT_EQ(FloatToHalf(1.0f).bits, 0x3c00u);
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)).bits, 0x3c00u);  // tie: to even
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)).bits, 0x3c02u);
  EXPECT_EQ(HalfToFloat(Half{0x7bff}), 65504.0f);
  EXPECT_EQ(HalfToFloat(Half{0x0001}), std::ldexp(1.0f, -24));
}

}  // namespace
}  // namespace tensorprep::kernels
