// binary16 conversions in kernels/common/half.h against the reference's own encoder/decoder,
// for every bit pattern and at every rounding boundary.
#include "kernels/common/half.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/reference.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::kernels {
namespace {

// Bits the reference writes for each value (its cast saturates; callers stay below 65504).
std::vector<uint16_t> ReferenceBits(const std::vector<double>& values) {
  const BatchShape shape{1, 1, static_cast<int64_t>(values.size()), 1};
  testing::Buffer b = testing::FromValues(DType::kFloat16, shape, values);
  std::vector<uint16_t> bits(values.size());
  std::memcpy(bits.data(), b.view().data, 2 * values.size());
  return bits;
}

TEST(Half, EveryPatternWidensLikeTheReference) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  const ConstTensorView view{DType::kFloat16, BatchShape{1, 1, 65536, 1}, all.data()};
  const std::vector<double> want = reference::ToDoubles(view);
  for (uint32_t i = 0; i < 65536; ++i) {
    const float got = HalfToFloat(Half{static_cast<uint16_t>(i)});
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << i;
    } else {
      EXPECT_EQ(got, want[i]) << std::hex << i;
      EXPECT_EQ(std::signbit(got), std::signbit(want[i])) << std::hex << i;
    }
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

// For each pair of neighbouring finite binary16 values: the midpoint (a tie: to even) and the
// floats just either side of it.
TEST(Half, NarrowsAtEveryRoundingBoundaryLikeTheReference) {
  std::vector<double> values;
  for (uint32_t bits = 0; bits < 0x7bffu; ++bits) {  // up to the value below 65504
    const double lo = HalfToFloat(Half{static_cast<uint16_t>(bits)});
    const double hi = HalfToFloat(Half{static_cast<uint16_t>(bits + 1)});
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: 12 significant bits
    for (float v :
         {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), static_cast<float>(lo)}) {
      values.push_back(v);
      values.push_back(-v);
    }
  }
  const std::vector<uint16_t> want = ReferenceBits(values);
  int failures = 0;
  for (size_t i = 0; i < values.size() && failures < 10; ++i) {
    const uint16_t got = FloatToHalf(static_cast<float>(values[i])).bits;
    if (got != want[i]) {
      ++failures;
      ADD_FAILURE() << "value " << values[i] << ": got 0x" << std::hex << got << ", want 0x"
                    << want[i];
    }
  }
}

TEST(Half, NarrowsRandomFloatsLikeTheReference) {
  std::mt19937 rng(42);
  std::vector<double> values;
  while (values.size() < 500000) {
    const uint32_t u = static_cast<uint32_t>(rng());
    float f;
    std::memcpy(&f, &u, 4);
    if (std::isfinite(f) && std::fabs(f) < 65504.0f) values.push_back(f);
    // Bias towards the binary16 range: a random exponent in [-26, 16).
    values.push_back(std::ldexp(static_cast<double>(static_cast<float>(rng()) / 4294967296.0f),
                                static_cast<int>(rng() % 42) - 26));
  }
  for (double& v : values) v = std::fmin(v, 65503.0);
  const std::vector<uint16_t> want = ReferenceBits(values);
  int failures = 0;
  for (size_t i = 0; i < values.size() && failures < 10; ++i) {
    const uint16_t got = FloatToHalf(static_cast<float>(values[i])).bits;
    if (got != want[i]) {
      ++failures;
      ADD_FAILURE() << "value " << values[i] << ": got 0x" << std::hex << got << ", want 0x"
                    << want[i];
    }
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
