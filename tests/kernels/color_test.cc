// ColorCpu against the reference (kernels/reference/color_reference.h), exactly, for every kind,
// dtype, factor edge, per-sample chain order, output channel count, shape and thread count; a few
// values from torchvision itself; in-place use; the binary16 rounding the kernels use between
// steps against the project's encoder; and the preconditions.
#include "kernels/color/color.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/color/color_math.h"
#include "kernels/common/half.h"
#include "kernels/common/thread_pool.h"
#include "kernels/reference/color_reference.h"
#include "kernels/reference/reference.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::kernels {
namespace {

using testing::Buffer;
using testing::FromValues;
using testing::RandomBuffer;

using Chain = std::vector<ColorAdjust>;

ColorAdjust Bright(double f) { return {ColorKind::kBrightness, f}; }
ColorAdjust Contr(double f) { return {ColorKind::kContrast, f}; }
ColorAdjust Sat(double f) { return {ColorKind::kSaturation, f}; }
ColorAdjust HueBy(double f) { return {ColorKind::kHue, f}; }
ColorAdjust Gray() { return {ColorKind::kGrayscale, 0}; }

std::string ChainName(const Chain& c) {
  std::string s;
  for (const ColorAdjust& a : c) {
    absl::StrAppend(&s, s.empty() ? "" : ",", ColorKindName(a.kind));
    if (a.kind != ColorKind::kGrayscale) absl::StrAppend(&s, "(", a.factor, ")");
  }
  return s.empty() ? "(empty)" : s;
}

// NaN matches NaN; otherwise values must be equal (-0 equals 0).
void ExpectSameValues(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool same = (std::isnan(got[i]) && std::isnan(want[i])) || got[i] == want[i];
    if (!same && reported++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", expected " << want[i];
    }
  }
  EXPECT_EQ(reported, 0) << "elements differing";
}

// Runs ColorCpu with `threads` (0: no pool) and checks it against the reference; returns the bytes.
std::vector<unsigned char> RunAndCheck(const Buffer& src, const std::vector<Chain>& chains,
                                       int64_t out_c, int threads) {
  BatchShape out_shape = src.shape();
  out_shape.c = out_c;
  Buffer dst(src.dtype(), out_shape);
  std::unique_ptr<ThreadPool> pool;
  if (threads > 0) pool = std::make_unique<ThreadPool>(threads);
  const absl::Status st = ColorCpu(src.view(), dst.mutable_view(), chains, pool.get());
  EXPECT_TRUE(st.ok()) << st;
  ExpectSameValues(reference::ToDoubles(dst.view()), reference::Color(src.view(), chains, out_c));
  return dst.bytes();
}

// Every kind alone, at its edges and beyond, and chains: the four of a colour jitter in several
// orders, contrast twice, grayscale in the middle and at the end.
std::vector<Chain> SingleChains() {
  std::vector<Chain> out = {{}, {Gray()}};
  for (double f : {0.0, 0.3, 0.5, 1.0, 1.7, 5.0, 1000.0, kMaxColorFactor}) {
    out.push_back({Bright(f)});
    out.push_back({Contr(f)});
    out.push_back({Sat(f)});
  }
  for (double f : {-0.5, -0.37, -0.01, 0.0, 1e-6, 0.1, 0.25, 0.5}) out.push_back({HueBy(f)});
  out.push_back({Bright(1.3), Contr(0.7), Sat(1.6), HueBy(0.2)});
  out.push_back({HueBy(-0.3), Sat(0.4), Contr(1.8), Bright(0.6)});
  out.push_back({Contr(0.5), HueBy(0.45), Contr(2.0), Gray(), Bright(1.2)});
  out.push_back({Sat(0.0), Gray(), HueBy(0.3), Sat(2.0)});
  out.push_back({Contr(1.5)});
  return out;
}

// Per-sample chains for n samples: the jitter's four kinds in a different order per sample (the
// permutations of colour jitter), with factors that differ per sample.
std::vector<Chain> JitterChains(int64_t n, bool end_gray) {
  std::vector<Chain> out;
  std::mt19937 rng(static_cast<unsigned>(n) * 7 + 1);
  std::uniform_real_distribution<double> factor(0.4, 1.6), hue(-0.5, 0.5);
  for (int64_t i = 0; i < n; ++i) {
    Chain c = {Bright(factor(rng)), Contr(factor(rng)), Sat(factor(rng)), HueBy(hue(rng))};
    std::shuffle(c.begin(), c.end(), rng);
    if (i % 3 == 2) c.erase(c.begin() + 1);  // a chain with a step left out
    if (end_gray) c.push_back(Gray());
    out.push_back(c);
  }
  return out;
}

// Images: uniform values of the dtype's nominal range; for the floating dtypes also values beyond
// it; and pixels drawn from a small palette, so that channels tie (gray pixels, two equal maxima).
std::vector<Buffer> Images(DType dtype, const BatchShape& shape, uint64_t seed) {
  std::vector<Buffer> out;
  const double hi = dtype == DType::kUInt8 ? 255 : 1;
  out.push_back(RandomBuffer(dtype, shape, seed, 0, hi));
  if (dtype != DType::kUInt8) out.push_back(RandomBuffer(dtype, shape, seed + 1, -0.5, 1.5));
  std::mt19937 rng(static_cast<unsigned>(seed));
  const double palette[] = {0, 0.25 * hi, 0.5 * hi, hi, dtype == DType::kUInt8 ? 17 : 0.3};
  std::vector<double> v(static_cast<size_t>(shape.elements()));
  for (double& x : v) x = palette[rng() % 5];
  out.push_back(FromValues(dtype, shape, v));
  return out;
}

class ColorVsReference : public ::testing::TestWithParam<DType> {};

TEST_P(ColorVsReference, EveryKindFactorAndShape) {
  const DType dtype = GetParam();
  const std::vector<BatchShape> shapes = {{1, 1, 1, 3}, {1, 7, 13, 3}, {5, 7, 13, 3},
                                          {2, 3, 300, 3}};  // rows longer than a tile
  uint64_t seed = 1;
  for (const BatchShape& shape : shapes) {
    for (const Buffer& src : Images(dtype, shape, seed++)) {
      for (const Chain& chain : SingleChains()) {
        SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " ", ChainName(chain)));
        const auto bytes = RunAndCheck(src, {chain}, 3, 0);
        EXPECT_EQ(RunAndCheck(src, {chain}, 3, 2), bytes) << "2 threads";
        if (!chain.empty() && chain.back().kind == ColorKind::kGrayscale) {
          RunAndCheck(src, {chain}, 1, 0);
        }
      }
    }
  }
}

TEST_P(ColorVsReference, PerSampleChainsAndThreads) {
  const DType dtype = GetParam();
  uint64_t seed = 100;
  for (const BatchShape& shape : {BatchShape{1, 7, 13, 3}, BatchShape{5, 7, 13, 3},
                                  BatchShape{5, 1, 1, 3}, BatchShape{3, 20, 17, 3}}) {
    for (const Buffer& src : Images(dtype, shape, seed++)) {
      for (const bool end_gray : {false, true}) {
        const std::vector<Chain> chains = JitterChains(shape.n, end_gray);
        SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " end_gray=", end_gray));
        for (const int64_t out_c : {int64_t{3}, int64_t{1}}) {
          if (out_c == 1 && !end_gray) continue;
          const auto bytes = RunAndCheck(src, chains, out_c, 0);
          for (int threads : {1, 2, 3}) {
            EXPECT_EQ(RunAndCheck(src, chains, out_c, threads), bytes) << threads << " threads";
          }
        }
      }
    }
  }
}

// One large sample and fewer samples than threads: the passes run in row bands over the pool;
// the contrast mean must not depend on the banding.
TEST_P(ColorVsReference, LargeSamplesInBands) {
  const DType dtype = GetParam();
  const std::vector<Chain> chains = {{Sat(1.4), Contr(0.6), HueBy(-0.2), Contr(1.3), Gray()}};
  for (const BatchShape& shape : {BatchShape{1, 230, 301, 3}, BatchShape{2, 129, 517, 3}}) {
    const Buffer src = Images(dtype, shape, 7)[0];
    SCOPED_TRACE(testing::ShapeName(shape));
    const auto one = RunAndCheck(src, chains, 1, 0);
    EXPECT_EQ(RunAndCheck(src, chains, 1, 2), one);
    EXPECT_EQ(RunAndCheck(src, chains, 1, 4), one);
    const auto three = RunAndCheck(src, chains, 3, 0);
    EXPECT_EQ(RunAndCheck(src, chains, 3, 3), three);
  }
}

TEST_P(ColorVsReference, InPlace) {
  const DType dtype = GetParam();
  const BatchShape shape{3, 9, 11, 3};
  const Buffer src = Images(dtype, shape, 21)[0];
  const std::vector<Chain> chains = JitterChains(3, true);
  Buffer inout = src;
  ThreadPool pool(2);
  ASSERT_TRUE(ColorCpu(inout.view(), inout.mutable_view(), chains, &pool).ok());
  ExpectSameValues(reference::ToDoubles(inout.view()), reference::Color(src.view(), chains, 3));
}

INSTANTIATE_TEST_SUITE_P(All, ColorVsReference,
                         ::testing::Values(DType::kUInt8, DType::kFloat32, DType::kFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// Values torchvision 0.14 (torch 1.13, CPU) gives, computed once with
//   img = torch.tensor([[[10, 200], [90, 255]], [[120, 30], [90, 0]], [[250, 60], [90, 128]]],
//                      dtype=torch.uint8)          # (C, H, W): pixels (10,120,250) (200,30,60)
//                                                  # (90,90,90) (255,0,128)
//   F.adjust_brightness(img, 1.37), F.adjust_contrast(img, 0.61),
//   F.adjust_saturation(img, 1.9), F.adjust_hue(img, 0.23), F.adjust_hue(img, -0.5),
//   F.rgb_to_grayscale(img), a chain of calls (below) and, on img.float() / 255, the same
// (torchvision.transforms.functional as F), printed in HWC order (float32 with 9 digits). An independent check of
// the reference and the kernel together.
TEST(ColorTorchvisionValues, SmallImage) {
  const BatchShape shape{1, 2, 2, 3};
  const std::vector<double> u8 = {10, 120, 250, 200, 30, 60, 90, 90, 90, 255, 0, 128};
  struct Case {
    Chain chain;
    int64_t out_c;
    std::vector<double> want_u8;
    std::vector<float> want_f32;
  };
  const std::vector<Case> cases = {
      {{Bright(1.37)}, 3,
       {13, 164, 255, 255, 41, 82, 123, 123, 123, 255, 0, 175},
       {0.0537254922f, 0.644705892f, 1.0f, 1.0f, 0.161176473f, 0.322352946f, 0.483529419f,
        0.483529419f, 0.483529419f, 1.0f, 0.0f, 0.687686324f}},
      {{Contr(0.61)}, 3,
       {41, 108, 187, 157, 53, 72, 90, 90, 90, 191, 35, 113},
       {0.164230376f, 0.427367628f, 0.738348007f, 0.618740201f, 0.21207352f, 0.283838212f,
        0.35560292f, 0.35560292f, 0.35560292f, 0.750308812f, 0.140308812f, 0.446504891f}},
      {{Sat(1.9)}, 3,
       {0, 137, 255, 255, 0, 38, 90, 90, 90, 255, 0, 162},
       {0.0f, 0.534368217f, 1.0f, 1.0f, 0.0f, 0.149776459f, 0.352972984f, 0.352972984f,
        0.352972984f, 1.0f, 0.0f, 0.633214355f}},
      {{HueBy(0.23)}, 3,
       {231, 10, 250, 165, 200, 29, 90, 90, 90, 255, 223, 0},
       {0.90666616f, 0.0392157063f, 0.980392158f, 0.64862746f, 0.784313738f, 0.117647044f,
        0.352941185f, 0.352941185f, 0.352941185f, 1.0f, 0.87803936f, 0.0f}},
      {{HueBy(-0.5)}, 3,
       {250, 139, 10, 29, 200, 169, 90, 90, 90, 0, 255, 127},
       {0.980392158f, 0.549019039f, 0.0392157063f, 0.117647044f, 0.784313738f, 0.666666567f,
        0.352941185f, 0.352941185f, 0.352941185f, 0.0f, 1.0f, 0.498039246f}},
      {{Gray()}, 1,
       {101, 84, 89, 90},
       {0.399721593f, 0.330313742f, 0.352905869f, 0.356123537f}},
      // rgb_to_grayscale(adjust_brightness(adjust_contrast(adjust_hue(adjust_saturation(
      //     img, 0.4), -0.12), 1.6), 0.8), num_output_channels=3)
      {{Sat(0.4), HueBy(-0.12), Contr(1.6), Bright(0.8), Gray()}, 3,
       {117, 117, 117, 66, 66, 66, 65, 65, 65, 65, 65, 65},
       {0.466763079f, 0.466763079f, 0.466763079f, 0.262521178f, 0.262521178f, 0.262521178f,
        0.263420701f, 0.263420701f, 0.263420701f, 0.262640476f, 0.262640476f, 0.262640476f}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(ChainName(c.chain));
    const Buffer src8 = FromValues(DType::kUInt8, shape, u8);
    Buffer out8(DType::kUInt8, {1, 2, 2, c.out_c});
    ASSERT_TRUE(ColorCpu(src8.view(), out8.mutable_view(), {c.chain}, nullptr).ok());
    ExpectSameValues(reference::ToDoubles(out8.view()), c.want_u8);
    std::vector<double> f(u8.size());
    for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(u8[i]) / 255.0f;
    const Buffer src32 = FromValues(DType::kFloat32, shape, f);
    Buffer out32(DType::kFloat32, {1, 2, 2, c.out_c});
    ASSERT_TRUE(ColorCpu(src32.view(), out32.mutable_view(), {c.chain}, nullptr).ok());
    std::vector<double> want32(c.want_f32.begin(), c.want_f32.end());
    ExpectSameValues(reference::ToDoubles(out32.view()), want32);
  }
}

// The branch-free binary16 rounding the kernels apply between steps against the project's encoder
// (tests/kernels/half_test.cc checks that one against the format's definition), over a sweep of
// float bit patterns and the values around every binary16 boundary.
TEST(ColorMath, RoundHalfGridMatchesEncoder) {
  const auto same = [](float a, float b) {
    return (std::isnan(a) && std::isnan(b)) || FloatBits(a) == FloatBits(b);
  };
  int bad = 0;
  for (uint64_t u = 0; u <= 0xffffffffu; u += 4099) {
    const float v = BitsToFloat(static_cast<uint32_t>(u));
    if (!same(color::RoundHalfGrid(v), RoundFloatToHalf(v)) && bad++ < 5) {
      ADD_FAILURE() << "bits 0x" << std::hex << u;
    }
  }
  for (uint32_t h = 0; h < 0x10000u; ++h) {  // each binary16 value, the midpoints and neighbours
    const float x = HalfToFloat(Half{static_cast<uint16_t>(h)});
    const float next = HalfToFloat(Half{static_cast<uint16_t>((h & 0x7fffu) == 0x7bffu ? h : h + 1)});
    const float mid = x + (next - x) / 2;
    for (const float v : {x, mid, std::nextafter(mid, -HUGE_VALF), std::nextafter(mid, HUGE_VALF),
                          std::nextafter(x, HUGE_VALF), std::nextafter(x, -HUGE_VALF)}) {
      if (!same(color::RoundHalfGrid(v), RoundFloatToHalf(v)) && bad++ < 5) {
        ADD_FAILURE() << "half 0x" << std::hex << h << " value " << v;
      }
    }
  }
  for (const float v : {65503.0f, 65504.0f, 65519.0f, 65519.996f, 65520.0f, 65536.0f, 1e30f,
                        HUGE_VALF, -65520.0f, 5.9604645e-8f, 2.9802322e-8f, 2.98023259e-8f,
                        1e-40f, -0.0f}) {
    EXPECT_TRUE(same(color::RoundHalfGrid(v), RoundFloatToHalf(v))) << v;
  }
  EXPECT_EQ(bad, 0);
}

// Broken preconditions answer INTERNAL naming the problem (kernels/common/checks.h).
TEST(ColorPreconditions, AnswerInternalNamingTheProblem) {
  const BatchShape shape{2, 3, 4, 3};
  Buffer src(DType::kUInt8, shape);
  Buffer dst(DType::kUInt8, shape);
  const auto expect = [](const absl::Status& st, const std::string& what) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
    EXPECT_NE(st.message().find("ColorCpu: "), std::string::npos) << st;
    EXPECT_NE(st.message().find(what), std::string::npos) << st << " lacks " << what;
  };
  const std::vector<Chain> ok = {{Bright(1.1)}};
  ASSERT_TRUE(ColorCpu(src.view(), dst.mutable_view(), ok, nullptr).ok());

  Buffer ints(DType::kInt32, shape), ints_out(DType::kInt32, shape);
  expect(ColorCpu(ints.view(), ints_out.mutable_view(), ok, nullptr), "src dtype int32");
  Buffer four(DType::kUInt8, {2, 3, 4, 4}), four_out(DType::kUInt8, {2, 3, 4, 4});
  expect(ColorCpu(four.view(), four_out.mutable_view(), ok, nullptr), "src has 4 channels");
  const ConstTensorView empty{DType::kUInt8, {0, 3, 4, 3}, src.view().data};
  expect(ColorCpu(empty, dst.mutable_view(), ok, nullptr), "expected every dimension >= 1");
  expect(ColorCpu(src.view(), dst.mutable_view(), {}, nullptr), "0 colour chains");
  expect(ColorCpu(src.view(), dst.mutable_view(), std::vector<Chain>(3), nullptr),
         "3 colour chains; expected 1 or 2");
  expect(ColorCpu(src.view(), dst.mutable_view(), {{Bright(-0.1)}}, nullptr),
         "chains[0][0] (brightness): factor -0.1; expected within [0, 1e+30]");
  expect(ColorCpu(src.view(), dst.mutable_view(), {{Sat(1), Contr(NAN)}}, nullptr),
         "chains[0][1] (contrast): factor nan");
  expect(ColorCpu(src.view(), dst.mutable_view(), {{Sat(2e30)}}, nullptr), "(saturation)");
  expect(ColorCpu(src.view(), dst.mutable_view(), {{Gray()}, {HueBy(0.51)}}, nullptr),
         "chains[1][0] (hue): factor 0.51; expected within [-0.5, 0.5]");
  expect(ColorCpu(src.view(), dst.mutable_view(), {{ColorAdjust{static_cast<ColorKind>(9), 1}}},
                  nullptr),
         "kind 9 is unknown");
  Buffer one(DType::kUInt8, {2, 3, 4, 1});
  expect(ColorCpu(src.view(), one.mutable_view(), {{Gray()}, {Gray(), Bright(1)}}, nullptr),
         "chains[1] does not end with grayscale");
  expect(ColorCpu(src.view(), one.mutable_view(), {Chain{}}, nullptr), "does not end with grayscale");
  Buffer two(DType::kUInt8, {2, 3, 4, 2});
  expect(ColorCpu(src.view(), two.mutable_view(), ok, nullptr), "dst has 2 channels");
  Buffer wrong(DType::kUInt8, {2, 4, 3, 3});
  expect(ColorCpu(src.view(), wrong.mutable_view(), ok, nullptr), "dst shape (2, 4, 3, 3)");
  Buffer floats(DType::kFloat32, shape);
  expect(ColorCpu(src.view(), floats.mutable_view(), ok, nullptr), "dst dtype float32");
  const TensorView null_dst{DType::kUInt8, shape, nullptr};
  expect(ColorCpu(src.view(), null_dst, ok, nullptr), "dst data is null");
  const TensorView shifted{DType::kUInt8, shape,
                           static_cast<unsigned char*>(src.mutable_view().data) + 3};
  expect(ColorCpu(src.view(), shifted, ok, nullptr), "src and dst overlap");
  // One channel written over the source's own memory is not an in-place use either.
  const TensorView gray_in_place{DType::kUInt8, {2, 3, 4, 1}, src.mutable_view().data};
  expect(ColorCpu(src.view(), gray_in_place, {{Gray()}}, nullptr), "src and dst overlap");
  // The same checks as a function of their own, for the CUDA launcher and the registry.
  EXPECT_TRUE(CheckColorChains("f", src.view(), 1, {{Gray()}}).ok());
  EXPECT_FALSE(ColorFactorValid(ColorKind::kHue, -0.5000001));
  EXPECT_TRUE(ColorFactorValid(ColorKind::kHue, -0.5));
  EXPECT_TRUE(ColorFactorValid(ColorKind::kGrayscale, NAN));
  EXPECT_TRUE(ColorFactorValid(ColorKind::kContrast, 0));
  EXPECT_FALSE(ColorFactorValid(ColorKind::kContrast, INFINITY));
}

}  // namespace
}  // namespace tensorprep::kernels
