// The shared scalar pieces every backend and the reference use (kernels/common/numerics.h,
// kernels/warp/sampling.h, CheckOperand, kernels/common/checks.h), each tested once here against
// expectations that come from elsewhere: values numpy 1.26 gives for the same conversion
// (np.rint + np.clip, astype(np.float16), astype(np.float32)), numpy.pad's index patterns for the
// border modes, and the rules as the headers state them. The CPU, CUDA and reference tests then
// compare whole kernels bit for bit, which these pieces no longer need to be checked through.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/common/checks.h"
#include "kernels/common/numerics.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/warp/sampling.h"

namespace tensorprep::kernels {
namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

bool SameValue(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b && std::signbit(a) == std::signbit(b);
}

// ---- Rounding to integers ------------------------------------------------------------------------

TEST(Numerics, SaturatingRoundsTiesToEven) {
  struct Case {
    double in;
    uint8_t u8;  // np.clip(np.rint(in), 0, 255)
    int32_t i32;  // np.clip(np.rint(in), -2**31, 2**31 - 1)
  };
  for (const Case& c : {Case{0.5, 0, 0}, Case{1.5, 2, 2}, Case{2.5, 2, 2}, Case{-0.5, 0, 0},
                        Case{-1.5, 0, -2}, Case{-2.5, 0, -2}, Case{3.49999, 3, 3},
                        Case{254.5, 254, 254}, Case{255.5, 255, 256}, Case{300.7, 255, 301},
                        Case{-1e300, 0, -2147483647 - 1}, Case{1e300, 255, 2147483647},
                        Case{2147483646.5, 255, 2147483646}, Case{2147483647.4, 255, 2147483647},
                        Case{-2147483648.6, 0, -2147483647 - 1}, Case{-kInf, 0, -2147483647 - 1},
                        Case{kInf, 255, 2147483647}, Case{-0.0, 0, 0}}) {
    EXPECT_EQ(SaturateU8(c.in), c.u8) << c.in;
    EXPECT_EQ(SaturateI32(c.in), c.i32) << c.in;
    if (std::fabs(c.in) < 1e30) {
      EXPECT_EQ(SaturateU8(static_cast<float>(c.in)), SaturateU8(static_cast<double>(
                                                          static_cast<float>(c.in))))
          << c.in;
    }
  }
  // The float overload on values that need all of float's bits.
  EXPECT_EQ(SaturateU8(127.5f), 128);
  EXPECT_EQ(SaturateU8(128.5f), 128);
  EXPECT_EQ(SaturateU8(std::nextafter(128.5f, 0.0f)), 128);
  EXPECT_EQ(SaturateU8(std::nextafter(128.5f, 1e9f)), 129);
}

TEST(Numerics, RoundEvenSmallMatchesRintInItsRange) {
  for (double v : {0.5, 1.5, -2.5, 1e15 + 0.5, -(1e15 + 1.5), 2251799813685247.5,
                   -2251799813685248.0, 0.49999999999999994}) {
    EXPECT_EQ(RoundEvenSmall(v), std::rint(v)) << v;
  }
  for (float v : {0.5f, 2.5f, -3.5f, 4194303.5f, -4194304.0f, 0.49999997f}) {
    EXPECT_EQ(RoundEvenSmall(v), std::rint(v)) << v;
  }
}

// ---- binary16 from double ----------------------------------------------------------------------

TEST(Numerics, RoundToHalfGridRoundsOnceFromDouble) {
  struct Case {
    double in;
    double want;  // np.array([in], np.float64).astype(np.float16), as a double
  };
  const double tie = 1.00048828125;  // halfway between 1 and 1 + 2^-10
  for (const Case& c : {
           Case{tie, 1.0},                                 // tie: to even
           Case{std::nextafter(tie, 2.0), 1.0009765625},  // just above: up (through float: 1.0)
           Case{1.000732421875, 1.0009765625},
           Case{2049.0000000001, 2050.0},  // through float this would tie and go to 2048
           Case{0.1, 0.0999755859375},
           Case{1.0 / 3.0, 0.333251953125},
           Case{65519.99, 65504.0},
           Case{-1.0009765625, -1.0009765625},
           Case{0.500244140625, 0.5},
           Case{1e-300, 0.0},
           Case{std::ldexp(1.0, -25), 0.0},                             // tie with 0: to even
           Case{std::ldexp(1.0, -25) * (1 + std::ldexp(1.0, -40)), std::ldexp(1.0, -24)},
           Case{std::ldexp(3.0, -25), std::ldexp(2.0, -24)},           // 1.5 ulp: to even
           Case{-0.0, -0.0},
           Case{65520.0, 65536.0},  // the grid goes on: callers saturate or overflow
       }) {
    EXPECT_TRUE(SameValue(RoundToHalfGrid(c.in), c.want))
        << c.in << ": got " << RoundToHalfGrid(c.in) << ", want " << c.want;
  }
}

// The two binary16 roundings (half.h's bit-level FloatToHalf, numerics.h's RoundToHalfGrid) are
// written independently; on every float whose rounding stays finite they must agree.
TEST(Numerics, RoundToHalfGridAgreesWithFloatToHalfOnFloats) {
  int failures = 0;
  for (uint32_t bits = 0; bits < 0x477ff000u && failures < 10; bits += 997) {
    for (const uint32_t sign : {0u, 0x80000000u}) {
      const float f = BitsToFloat(bits | sign);
      const double want = HalfToFloat(FloatToHalf(f));
      if (!SameValue(RoundToHalfGrid(f), want)) {
        ++failures;
        ADD_FAILURE() << f << ": got " << RoundToHalfGrid(f) << ", want " << want;
      }
    }
  }
}

// ---- kCast -------------------------------------------------------------------------------------

TEST(Numerics, CastDoubleFollowsTheCastRules) {
  struct Case {  // np.clip(np.rint(in), ...), np.float32(in), np.float16(np.clip(in, +-65504))
    double in;
    double u8, i32, f32, f16;
  };
  const double big_tie = 2.98023223876953125e-8;  // 2^-25: between 0 and the smallest subnormal
  const double f32_max = std::numeric_limits<float>::max();
  for (const Case& c : {
           Case{0.5, 0, 0, 0.5, 0.5},
           Case{-2.5, 0, -2, -2.5, -2.5},
           Case{255.5, 255, 256, 255.5, 255.5},
           Case{kNaN, 0, 0, kNaN, kNaN},  // NaN -> 0 for integers, stays NaN otherwise
           Case{kInf, 255, 2147483647, kInf, kInf},
           Case{-kInf, 0, -2147483648.0, -kInf, -kInf},
           Case{65519.99, 255, 65520, 65519.98828125, 65504},  // float16 saturates, no inf
           Case{65520.0, 255, 65520, 65520, 65504},
           Case{-1e300, 0, -2147483648.0, -kInf, -65504},
           Case{1.0000000596046448, 1, 1, 1.0, 1},  // float32 tie: to even
           Case{1.0004882812500002, 1, 1, 1.00048828125, 1.0009765625},
           Case{big_tie, 0, 0, big_tie, 0},
           Case{2147483647.5, 255, 2147483647, 2147483648.0, 65504},
           Case{3.4028235677973366e38, 255, 2147483647, kInf, 65504},  // float32 overflows
           Case{f32_max, 255, 2147483647, f32_max, 65504},
           Case{-0.0, 0, 0, -0.0, -0.0},
       }) {
    EXPECT_TRUE(SameValue(CastDouble(c.in, DType::kUInt8), c.u8)) << c.in;
    EXPECT_TRUE(SameValue(CastDouble(c.in, DType::kInt32), c.i32)) << c.in;
    EXPECT_TRUE(SameValue(CastDouble(c.in, DType::kFloat32), c.f32)) << c.in;
    EXPECT_TRUE(SameValue(CastDouble(c.in, DType::kFloat16), c.f16))
        << c.in << ": got " << CastDouble(c.in, DType::kFloat16);
  }
}

TEST(Numerics, FromDoubleOfACastValueIsExact) {
  for (double v : {0.0, -3.75, 1.0009765625, 65504.0, 255.0, -2147483648.0}) {
    EXPECT_EQ(ToDouble(FromDouble<Half>(CastDouble(v, DType::kFloat16))),
              CastDouble(v, DType::kFloat16));
    EXPECT_EQ(ToDouble(FromDouble<float>(CastDouble(v, DType::kFloat32))),
              CastDouble(v, DType::kFloat32));
    EXPECT_EQ(ToDouble(FromDouble<int32_t>(CastDouble(v, DType::kInt32))),
              CastDouble(v, DType::kInt32));
    EXPECT_EQ(ToDouble(FromDouble<uint8_t>(CastDouble(v, DType::kUInt8))),
              CastDouble(v, DType::kUInt8));
  }
}

// ---- Border resolution -------------------------------------------------------------------------

// np.pad(np.arange(n), 7, mode=...) (constant with constant_values=-1): the index each position
// from -7 to n + 6 takes. skimage's modes of the same names (warp.h) are numpy.pad's.
TEST(Border, EveryModeAtTinySizesMatchesNumpyPad) {
  struct Case {
    int64_t n;
    Border border;
    std::vector<int64_t> want;  // positions -7 .. n + 6
  };
  const std::vector<Case> cases = {
      {1, Border::kConstant, {-1, -1, -1, -1, -1, -1, -1, 0, -1, -1, -1, -1, -1, -1, -1}},
      {1, Border::kEdge, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
      {1, Border::kReflect, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
      {1, Border::kReflect101, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
      {1, Border::kWrap, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
      {2, Border::kConstant, {-1, -1, -1, -1, -1, -1, -1, 0, 1, -1, -1, -1, -1, -1, -1, -1}},
      {2, Border::kEdge, {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}},
      {2, Border::kReflect, {1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0}},
      {2, Border::kReflect101, {1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0}},
      {2, Border::kWrap, {1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0}},
      {3, Border::kConstant, {-1, -1, -1, -1, -1, -1, -1, 0, 1, 2, -1, -1, -1, -1, -1, -1, -1}},
      {3, Border::kEdge, {0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2}},
      {3, Border::kReflect, {0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2, 2}},
      {3, Border::kReflect101, {1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, 1}},
      {3, Border::kWrap, {2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0}},
  };
  for (const Case& c : cases) {
    ASSERT_EQ(static_cast<int64_t>(c.want.size()), c.n + 14);
    for (int64_t i = -7; i < c.n + 7; ++i) {
      EXPECT_EQ(ResolveBorder(i, c.n, c.border), c.want[i + 7])
          << "n=" << c.n << " border=" << static_cast<int>(c.border) << " i=" << i;
    }
  }
}

TEST(Border, FarIndicesStayInRange) {
  const int64_t far = int64_t{1} << 52;
  EXPECT_EQ(ResolveBorder(-far, 3, Border::kWrap), 2);     // -2^52 = 2 (mod 3)
  EXPECT_EQ(ResolveBorder(far + 1, 3, Border::kWrap), 2);  // 2^52 = 1 (mod 3)
  EXPECT_EQ(ResolveBorder(-far, 3, Border::kEdge), 0);
  EXPECT_EQ(ResolveBorder(far, 3, Border::kEdge), 2);
  EXPECT_EQ(ResolveBorder(far, 3, Border::kReflect), 1);     // 2^52 = 4 (mod 6): 6 - 1 - 4
  EXPECT_EQ(ResolveBorder(far, 3, Border::kReflect101), 0);  // 2^52 = 0 (mod 4)
  EXPECT_EQ(ResolveBorder(-far, 3, Border::kConstant), -1);
  EXPECT_EQ(ResolveBorder(0, 3, static_cast<Border>(9)), 0);  // inside: no border involved
  EXPECT_EQ(ResolveBorder(-1, 3, static_cast<Border>(9)), -1);
}

TEST(Border, FarPositionsAreThoseBeyond2To52OrNotFinite) {
  const double far = 4503599627370496.0;  // 2^52
  EXPECT_FALSE(IsFarPosition(0, 0));
  EXPECT_FALSE(IsFarPosition(std::nextafter(far, 0.0), -std::nextafter(far, 0.0)));
  EXPECT_TRUE(IsFarPosition(far, 0));
  EXPECT_TRUE(IsFarPosition(0, -far));
  EXPECT_TRUE(IsFarPosition(kNaN, 0));
  EXPECT_TRUE(IsFarPosition(0, kInf));
}

TEST(Sampling, SourcePositionSumsLeftToRight) {
  const double m[6] = {0.5, 0.25, 3, -1, 2, 0.125};
  EXPECT_EQ(SourceX(m, 2, 4), 5.0);    // 1 + 1 + 3
  EXPECT_EQ(SourceY(m, 2, 4), 6.125);  // -2 + 8 + 0.125
  // 1e16 + 3 rounds to 1e16 + 4 (a tie, to even), so the sum is 4; adding the offset to the
  // first product before the second would give 3.
  const double far[6] = {1e16, 3, -1e16, 3, 1e16, -1e16};
  EXPECT_EQ(SourceX(far, 1, 1), 4.0);
  EXPECT_EQ(SourceY(far, 1, 1), 4.0);
}

TEST(Sampling, NearestTapIsFloorOfSPlusHalf) {
  EXPECT_EQ(FloorToInt(-0.5), -1);
  EXPECT_EQ(FloorToInt(-1.0), -1);
  EXPECT_EQ(FloorToInt(2.999), 2);
  EXPECT_EQ(FloorToInt(4503599627370495.5), 4503599627370495);
  EXPECT_EQ(FloorToInt(-4503599627370495.5), -4503599627370496);
  EXPECT_EQ(NearestIndex(2.5), 3);  // halves go up, not to even
  EXPECT_EQ(NearestIndex(-0.5), 0);
  EXPECT_EQ(NearestIndex(-1.5), -1);
  EXPECT_EQ(NearestIndex(-0.50000000000000011), -1);
  EXPECT_EQ(NearestIndex(1.4999999), 1);
}

TEST(Sampling, BilinearWeightsBlendAndRounding) {
  const BilinearWeights<float> w = MakeBilinearWeights<float>(0.25, 0.5);
  EXPECT_EQ(w.w00, 0.375f);  // (1 - 0.25) * (1 - 0.5)
  EXPECT_EQ(w.w01, 0.125f);  // 0.25 * (1 - 0.5)
  EXPECT_EQ(w.w10, 0.375f);  // (1 - 0.25) * 0.5
  EXPECT_EQ(w.w11, 0.125f);  // 0.25 * 0.5
  EXPECT_EQ(BlendTaps(1.0f, 2.0f, 3.0f, 4.0f, w), 2.25f);
  // Weights are computed in double and rounded once to the blend type.
  const BilinearWeights<float> third = MakeBilinearWeights<float>(1.0 / 3.0, 0.0);
  EXPECT_EQ(third.w00, static_cast<float>(1.0 - 1.0 / 3.0));
  EXPECT_EQ(third.w10, 0.0f);
  const BilinearWeights<double> exact = MakeBilinearWeights<double>(1.0 / 3.0, 0.0);
  EXPECT_EQ(exact.w01, 1.0 / 3.0);
  // A tap of weight 0 still contributes: NaN and infinity propagate.
  EXPECT_TRUE(std::isnan(BlendTaps(1.0f, 2.0f, 3.0f, std::nanf(""), w)));
  const BilinearWeights<float> corner = MakeBilinearWeights<float>(0.0, 0.0);
  EXPECT_TRUE(std::isnan(BlendTaps(1.0f, std::numeric_limits<float>::infinity(), 3.0f, 4.0f,
                                   corner)));  // inf * 0
  // Summed in the blend type: in float, 2^24 + 1 rounds back to 2^24 (ties to even).
  const BilinearWeights<float> half = MakeBilinearWeights<float>(0.5, 0.0);
  EXPECT_EQ(BlendTaps(33554432.0f, 2.0f, 0.0f, 0.0f, half), 16777216.0f);

  EXPECT_EQ(RoundBlend<uint8_t>(2.5f), 2);
  EXPECT_EQ(RoundBlend<uint8_t>(3.5f), 4);
  EXPECT_EQ(RoundBlend<uint8_t>(-1.0f), 0);
  EXPECT_EQ(RoundBlend<uint8_t>(300.0f), 255);
  EXPECT_EQ(RoundBlend<int32_t>(-2.5), -2);
  EXPECT_EQ(RoundBlend<int32_t>(3e9), 2147483647);
  EXPECT_EQ(RoundBlend<float>(0.1f), 0.1f);
  EXPECT_EQ(RoundBlend<Half>(1.00048828125f).bits, 0x3c00);  // a tie: to even
  EXPECT_EQ(RoundBlend<Half>(70000.0f).bits, 0x7c00);        // overflow: infinity
}

// ---- Operand and view checks -------------------------------------------------------------------

TEST(CheckOperand, AppliesEachRuleInOrder) {
  using P = OperandProblem;
  auto check = [](std::vector<double> v, int64_t channels, DType dtype, bool nonzero) {
    return CheckOperand(v, channels, dtype, nonzero);
  };
  EXPECT_TRUE(check({1}, 3, DType::kUInt8, false).ok());
  EXPECT_TRUE(check({1, 2, 3}, 3, DType::kFloat16, true).ok());
  EXPECT_EQ(check({1, 2}, 3, DType::kUInt8, false).kind, P::kLength);
  EXPECT_EQ(check({}, 1, DType::kUInt8, false).kind, P::kLength);
  const P not_finite = check({1, kNaN, 0}, 3, DType::kInt32, true);
  EXPECT_EQ(not_finite.kind, P::kNotFinite);
  EXPECT_EQ(not_finite.index, 1u);
  const P zero = check({1, 2, 0}, 3, DType::kInt32, true);
  EXPECT_EQ(zero.kind, P::kZero);
  EXPECT_EQ(zero.index, 2u);
  EXPECT_TRUE(check({0}, 1, DType::kInt32, false).ok());  // zero is fine where not a divisor
  // Float32 rounding matters only on floating dtypes (integer ones compute in double).
  EXPECT_TRUE(check({1e39, 1e-60}, 2, DType::kInt32, true).ok());
  EXPECT_EQ(check({1e39}, 1, DType::kFloat32, false).kind, P::kNotFiniteInFloat32);
  EXPECT_EQ(check({1e-60}, 1, DType::kFloat16, true).kind, P::kZeroInFloat32);
  EXPECT_TRUE(check({1e-60}, 1, DType::kFloat16, false).ok());
  EXPECT_EQ(check({kInf}, 1, DType::kFloat32, false).kind, P::kNotFinite);
}

TEST(Checks, BrokenViewsAreInternalAndNamed) {
  float a[8] = {};
  float b[8] = {};
  const ConstTensorView src{DType::kFloat32, {1, 2, 2, 2}, a};
  const auto internal = absl::StatusCode::kInternal;
  EXPECT_TRUE(CheckSourceView("F", src).ok());
  absl::Status st = CheckSourceView("F", ConstTensorView{DType::kFloat32, {1, 0, 2, 2}, a});
  EXPECT_EQ(st.code(), internal);
  EXPECT_EQ(st.message(), "F: src shape (1, 0, 2, 2); expected every dimension >= 1");
  EXPECT_EQ(CheckSourceView("F", ConstTensorView{DType::kFloat32, {1, 2, 2, 2}, nullptr}).code(),
            internal);

  const TensorView distinct{DType::kFloat32, {1, 2, 2, 2}, b};
  const TensorView same{DType::kFloat32, {1, 2, 2, 2}, a};
  const TensorView same_int{DType::kInt32, {1, 2, 2, 2}, a};
  const TensorView shifted{DType::kFloat32, {1, 2, 2, 2}, a + 1};
  const TensorView narrower{DType::kUInt8, {1, 2, 2, 2}, a};
  EXPECT_TRUE(CheckDestinationView("F", src, distinct, DType::kFloat32, Aliasing::kDistinct).ok());
  EXPECT_TRUE(CheckDestinationView("F", src, same, DType::kFloat32, Aliasing::kSameAllowed).ok());
  EXPECT_TRUE(
      CheckDestinationView("F", src, same_int, DType::kInt32, Aliasing::kSameAllowed).ok());
  st = CheckDestinationView("F", src, same, DType::kFloat32, Aliasing::kDistinct);
  EXPECT_EQ(st.code(), internal);
  EXPECT_EQ(st.message(), "F: src and dst overlap; expected distinct memory");
  EXPECT_EQ(CheckDestinationView("F", src, shifted, DType::kFloat32, Aliasing::kSameAllowed).code(),
            internal);
  EXPECT_EQ(CheckDestinationView("F", src, narrower, DType::kUInt8, Aliasing::kSameAllowed).code(),
            internal);
  st = CheckDestinationView("F", src, distinct, DType::kInt32, Aliasing::kDistinct);
  EXPECT_EQ(st.message(), "F: dst dtype float32; expected int32");
  st = CheckDestinationView("F", src, TensorView{DType::kFloat32, {1, 2, 4, 1}, b},
                            DType::kFloat32, Aliasing::kDistinct);
  EXPECT_EQ(st.message(), "F: dst shape (1, 2, 4, 1); expected src shape (1, 2, 2, 2)");
  EXPECT_EQ(CheckDestinationView("F", src, TensorView{DType::kFloat32, {1, 2, 2, 2}, nullptr},
                                 DType::kFloat32, Aliasing::kDistinct)
                .code(),
            internal);

  EXPECT_TRUE(CheckPerSampleCount("F", "maps", 1, 5).ok());
  EXPECT_TRUE(CheckPerSampleCount("F", "maps", 5, 5).ok());
  st = CheckPerSampleCount("F", "maps", 0, 5);
  EXPECT_EQ(st.code(), internal);
  EXPECT_EQ(st.message(), "F: 0 maps; expected 1 or 5 (one per sample)");
}

}  // namespace
}  // namespace tensorprep::kernels
