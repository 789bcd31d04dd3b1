// ResampleAaCpu against the reference (kernels/reference/resample_reference.h), against values
// computed with torch, and against itself: thread counts, mirrored maps, the per-pixel
// arithmetic of the CUDA kernel (resample_taps.h) run on the host, and broken preconditions.
#include "kernels/resample/resample.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/common/thread_pool.h"
#include "kernels/flip/flip.h"
#include "kernels/reference/reference.h"
#include "kernels/reference/resample_reference.h"
#include "kernels/resample/resample_taps.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::kernels {
namespace {

using testing::Buffer;
using testing::FromValues;
using testing::RandomBuffer;

constexpr DType kAllDTypes[] = {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16};

BatchShape OutShape(const BatchShape& s, int64_t h, int64_t w) { return {s.n, h, w, s.c}; }

// Allowed |kernel - reference| for one element:
//  - uint8, int32: 1. The kernel sums in float (uint8) or double (int32) in its own order, the
//    reference in double over the 2-D product; a sum within rounding of k + 0.5 may round to
//    either neighbour.
//  - float32: 1e-5 for sources in [-1, 1]. Each pass sums at most 2 * support + 1 products in
//    float with weights rounded to float: with support <= 10.5 here that is at most about
//    23 * 2^-24 * 1 = 1.4e-6 per pass; 1e-5 leaves margin while still catching a wrong tap or
//    weight (errors of 1e-3 and more with these sources).
//  - float16: one binary16 step at the value (float sum and double sum rounded to binary16 can
//    fall on either side of a boundary).
double Tolerance(DType dtype, double expected) {
  switch (dtype) {
    case DType::kUInt8:
    case DType::kInt32:
      return 1;
    case DType::kFloat32:
      return 1e-5;
    case DType::kFloat16:
      return testing::HalfSpacing(expected);
  }
  return 0;
}

// Runs ResampleAaCpu inline and on pools of 1 and 2 threads; expects identical bytes from all
// three and returns the inline result.
Buffer RunAllPools(const Buffer& src, int64_t out_h, int64_t out_w,
                   absl::Span<const ResampleMap> maps) {
  Buffer out(src.dtype(), OutShape(src.shape(), out_h, out_w));
  const absl::Status st = ResampleAaCpu(src.view(), out.mutable_view(), maps, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    Buffer again(src.dtype(), out.shape());
    const absl::Status st2 = ResampleAaCpu(src.view(), again.mutable_view(), maps, &pool);
    EXPECT_TRUE(st2.ok()) << st2;
    EXPECT_EQ(again.bytes(), out.bytes()) << "threads=" << threads << " changed the result";
  }
  return out;
}

void ExpectMatchesReference(const Buffer& src, const Buffer& out,
                            absl::Span<const ResampleMap> maps) {
  const std::vector<double> want =
      reference::ResampleAa(src.view(), maps, out.shape().h, out.shape().w);
  const std::vector<double> got = reference::ToDoubles(out.view());
  ASSERT_EQ(want.size(), got.size());
  int reported = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = Tolerance(src.dtype(), want[i]);
    const bool same =
        (std::isnan(want[i]) && std::isnan(got[i])) || std::fabs(got[i] - want[i]) <= tol;
    if (!same && reported++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", reference " << want[i]
                    << " (tolerance " << tol << ")";
    }
  }
}

// The CUDA kernel's per-pixel arithmetic (resample::ResamplePixel) run on the host over every
// output pixel, with the tables the launcher builds.
Buffer RunPixelPath(const Buffer& src, int64_t out_h, int64_t out_w,
                    absl::Span<const ResampleMap> maps) {
  Buffer out(src.dtype(), OutShape(src.shape(), out_h, out_w));
  absl::StatusOr<resample::Tables> tables =
      resample::BuildTables("test", src.shape(), out_h, out_w, maps);
  EXPECT_TRUE(tables.ok()) << tables.status();
  if (!tables.ok()) return out;
  resample::PixelArgs a;
  a.src = src.view().data;
  a.dst = out.mutable_view().data;
  a.n = src.shape().n;
  a.h = static_cast<int32_t>(src.shape().h);
  a.w = static_cast<int32_t>(src.shape().w);
  a.c = static_cast<int32_t>(src.shape().c);
  a.out_h = static_cast<int32_t>(out_h);
  a.out_w = static_cast<int32_t>(out_w);
  a.map_stride = maps.size() == 1 ? 0 : 1;
  a.x_spans = tables->x_spans.data();
  a.y_spans = tables->y_spans.data();
  a.weights = src.dtype() == DType::kInt32 ? static_cast<const void*>(tables->weights.data())
                                           : static_cast<const void*>(tables->weights_f.data());
  for (int64_t n = 0; n < a.n; ++n) {
    for (int64_t y = 0; y < out_h; ++y) {
      for (int64_t x = 0; x < out_w; ++x) {
        switch (src.dtype()) {
          case DType::kUInt8:
            resample::ResamplePixel<uint8_t>(a, n, y, x);
            break;
          case DType::kInt32:
            resample::ResamplePixel<int32_t>(a, n, y, x);
            break;
          case DType::kFloat32:
            resample::ResamplePixel<float>(a, n, y, x);
            break;
          case DType::kFloat16:
            resample::ResamplePixel<Half>(a, n, y, x);
            break;
        }
      }
    }
  }
  return out;
}

// Whole-axis resize of `size` pixels onto `out`, as torchvision's resize does.
AxisMap Whole(int64_t size, int64_t out) {
  return AxisMapForWindow(0, static_cast<double>(size), out, false);
}

struct Case {
  std::string name;
  BatchShape src;
  int64_t out_h, out_w;
  std::vector<ResampleMap> maps;
};

// Shrink factors 1 to 10 per axis (and enlargements), mirrored axes, crops given by offsets,
// per-sample maps; 1, 3 and 4 channels (and 2, the generic channel loop).
std::vector<Case> Cases() {
  std::vector<Case> cases;
  auto resize = [&](BatchShape s, int64_t oh, int64_t ow) {
    cases.push_back({absl::StrCat("resize ", testing::ShapeName(s), " -> ", oh, "x", ow),
                     s,
                     oh,
                     ow,
                     {ResampleMap{Whole(s.w, ow), Whole(s.h, oh)}}});
  };
  resize({1, 30, 30, 3}, 30, 30);  // factor 1
  resize({1, 30, 30, 3}, 20, 20);  // 1.5
  resize({2, 32, 48, 1}, 16, 24);  // 2
  resize({1, 37, 41, 4}, 10, 11);  // ~3.7
  resize({1, 64, 64, 3}, 8, 8);    // 8
  resize({1, 50, 70, 1}, 5, 7);    // 10
  resize({1, 29, 31, 2}, 13, 5);   // per-axis factors 2.2 and 6.2, two channels
  resize({1, 24, 20, 3}, 9, 41);   // x enlarged, y shrunk
  resize({1, 9, 40, 3}, 20, 13);   // y enlarged, x shrunk
  resize({1, 17, 23, 3}, 1, 1);    // everything onto one pixel
  resize({1, 1, 1, 3}, 1, 1);
  resize({1, 1, 12, 1}, 1, 5);
  resize({1, 12, 1, 4}, 5, 1);
  // Mirrored axes (a flip after the resize).
  for (int f = 1; f < 4; ++f) {
    BatchShape s{1, 33, 27, 3};
    cases.push_back({absl::StrCat("mirror ", f),
                     s,
                     10,
                     12,
                     {ResampleMap{AxisMapForWindow(0, 27, 12, (f & 1) != 0),
                                  AxisMapForWindow(0, 33, 10, (f & 2) != 0)}}});
  }
  // Crops: a window inside the image, given by its offset, shrunk by 2.35 and 4.
  {
    BatchShape s{1, 40, 50, 3};
    cases.push_back({"crop",
                     s,
                     7,
                     9,
                     {ResampleMap{AxisMapForWindow(6.5, 36, 9, false),
                                  AxisMapForWindow(11, 16.45, 7, false)}}});
    cases.push_back(
        {"crop mirrored",
         s,
         7,
         9,
         {ResampleMap{AxisMapForWindow(6.5, 36, 9, true), AxisMapForWindow(11, 16.45, 7, false)}}});
  }
  // Hand-written maps: arbitrary scale and offset, footprints that leave the image on one side;
  // then the same with tap windows (one reaching past the image).
  cases.push_back({"free maps", {1, 25, 19, 1}, 6, 7, {ResampleMap{{2.7, -1.3}, {-3.9, 23.2}}}});
  cases.push_back({"free maps, windows",
                   {1, 25, 19, 1},
                   6,
                   7,
                   {ResampleMap{{2.7, -1.3, 0, 16}, {-3.9, 23.2, 4, 40}}}});
  // A crop given by its offset only (no tap window): its footprint reads past the crop's edges.
  cases.push_back(
      {"crop without window", {1, 40, 50, 3}, 7, 9, {ResampleMap{{4.0, 8.0}, {2.35, 12.175}}}});
  // A batch with one map per sample, each a different crop, shrink and mirror.
  {
    BatchShape s{3, 36, 44, 3};
    cases.push_back(
        {"batch per-sample maps",
         s,
         8,
         10,
         {ResampleMap{Whole(44, 10), Whole(36, 8)},
          ResampleMap{AxisMapForWindow(4, 30, 10, true), AxisMapForWindow(2.5, 20, 8, false)},
          ResampleMap{AxisMapForWindow(0, 11, 10, false), AxisMapForWindow(1, 34.9, 8, true)}}});
  }
  return cases;
}

class ResampleVsReference : public ::testing::TestWithParam<DType> {};

TEST_P(ResampleVsReference, Cases) {
  const DType dtype = GetParam();
  double lo, hi;
  testing::DefaultRange(dtype, &lo, &hi);
  uint64_t seed = 11;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    const Buffer src = RandomBuffer(dtype, c.src, seed++, lo, hi);
    const Buffer out = RunAllPools(src, c.out_h, c.out_w, c.maps);
    ExpectMatchesReference(src, out, c.maps);
    // The CUDA kernel's arithmetic gives the same bits as the CPU passes.
    EXPECT_EQ(RunPixelPath(src, c.out_h, c.out_w, c.maps).bytes(), out.bytes());
  }
}

// A large image on a pool of 2: several row bands per sample, and whole-sample tasks.
TEST_P(ResampleVsReference, BandsAndSamples) {
  const DType dtype = GetParam();
  double lo, hi;
  testing::DefaultRange(dtype, &lo, &hi);
  for (int64_t n : {1, 9}) {
    const BatchShape s{n, 150, 130, 3};
    const Buffer src = RandomBuffer(dtype, s, 5 + n, lo, hi);
    const std::vector<ResampleMap> maps = {ResampleMap{Whole(130, 128), Whole(150, 140)}};
    const Buffer out = RunAllPools(src, 140, 128, maps);
    ExpectMatchesReference(src, out, maps);
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, ResampleVsReference, ::testing::ValuesIn(kAllDTypes),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TEST(ResampleAaCpu, AxisMapForWindow) {
  const AxisMap whole = AxisMapForWindow(0, 256, 224, false);
  EXPECT_DOUBLE_EQ(whole.scale, 256.0 / 224.0);
  EXPECT_DOUBLE_EQ(whole.offset, (256.0 / 224.0 - 1) / 2);
  const AxisMap crop = AxisMapForWindow(10, 20, 5, false);  // pixels of 4 source pixels each
  EXPECT_EQ(crop.scale, 4);
  EXPECT_EQ(crop.offset, 11.5);  // the centre of source pixels 10..13
  EXPECT_EQ(crop.tap_begin, 10);
  EXPECT_EQ(crop.tap_end, 30);
  const AxisMap mirrored = AxisMapForWindow(10, 20, 5, true);
  EXPECT_EQ(mirrored.scale, -4);
  EXPECT_EQ(mirrored.offset, 27.5);  // output 0 shows the last window, pixels 26..29
  EXPECT_EQ(mirrored.tap_begin, 10);
  EXPECT_EQ(mirrored.tap_end, 30);
  const AxisMap fractional = AxisMapForWindow(2.5, 7.25, 3, false);
  EXPECT_EQ(fractional.tap_begin, 2);
  EXPECT_EQ(fractional.tap_end, 10);
}

// A crop with its tap window is the crop resized on its own: the same bits as copying the crop
// out first and resizing the whole copy (whose taps the image's edges clip).
TEST(ResampleAaCpu, WindowIsCropThenResize) {
  for (DType dtype : kAllDTypes) {
    double lo, hi;
    testing::DefaultRange(dtype, &lo, &hi);
    const Buffer src = RandomBuffer(dtype, {1, 40, 50, 3}, 21, lo, hi);
    const int64_t top = 7, left = 9, ch = 25, cw = 33;
    std::vector<double> all = reference::ToDoubles(src.view()), crop;
    for (int64_t i = top; i < top + ch; ++i) {
      for (int64_t j = left; j < left + cw; ++j) {
        for (int64_t c = 0; c < 3; ++c) crop.push_back(all[(i * 50 + j) * 3 + c]);
      }
    }
    const Buffer cropped = FromValues(dtype, {1, ch, cw, 3}, crop);
    for (bool mirror : {false, true}) {
      const Buffer want = RunAllPools(
          cropped, 10, 8,
          {ResampleMap{AxisMapForWindow(0, cw, 8, mirror), AxisMapForWindow(0, ch, 10, false)}});
      const Buffer got = RunAllPools(src, 10, 8,
                                     {ResampleMap{AxisMapForWindow(left, cw, 8, mirror),
                                                  AxisMapForWindow(top, ch, 10, false)}});
      EXPECT_EQ(got.bytes(), want.bytes()) << DTypeName(dtype) << " mirror " << mirror;
    }
  }
}

// Identity maps copy exactly, whatever the values (weight 1 on one tap, no other tap).
TEST(ResampleAaCpu, IdentityCopies) {
  for (DType dtype : kAllDTypes) {
    double lo, hi;
    testing::DefaultRange(dtype, &lo, &hi);
    const Buffer src = RandomBuffer(dtype, {2, 7, 9, 3}, 3, lo, hi);
    const Buffer out = RunAllPools(src, 7, 9, {ResampleMap{}});
    EXPECT_EQ(out.bytes(), src.bytes()) << DTypeName(dtype);
  }
  std::vector<double> v(2 * 3 * 1, 0.25);
  v[1] = std::numeric_limits<double>::quiet_NaN();
  v[4] = std::numeric_limits<double>::infinity();
  const Buffer src = FromValues(DType::kFloat32, {1, 2, 3, 1}, v);
  EXPECT_EQ(RunAllPools(src, 2, 3, {ResampleMap{}}).bytes(), src.bytes());
}

// A mirrored map equals the unmirrored result flipped, bit for bit, where the centres agree
// exactly (dyadic scales and offsets here).
TEST(ResampleAaCpu, MirrorIsFlipBitForBit) {
  for (DType dtype : kAllDTypes) {
    double lo, hi;
    testing::DefaultRange(dtype, &lo, &hi);
    const Buffer src = RandomBuffer(dtype, {2, 32, 40, 3}, 9, lo, hi);
    const ResampleMap plain{AxisMapForWindow(0, 40, 10, false), AxisMapForWindow(0, 32, 16, false)};
    const Buffer out = RunAllPools(src, 16, 10, {plain});
    for (int f = 1; f < 4; ++f) {
      const bool h = (f & 1) != 0, v = (f & 2) != 0;
      const ResampleMap mirrored{AxisMapForWindow(0, 40, 10, h), AxisMapForWindow(0, 32, 16, v)};
      const Buffer got = RunAllPools(src, 16, 10, {mirrored});
      Buffer want(dtype, out.shape());
      ASSERT_TRUE(FlipCpu(out.view(), want.mutable_view(), {FlipFlags{h, v}}, nullptr).ok());
      EXPECT_EQ(got.bytes(), want.bytes()) << DTypeName(dtype) << " flags " << f;
    }
  }
}

// A constant image stays constant (uint8, int32 exactly; the normalised float weights may sum
// to 1 +- a few ulp, so floats within 1e-6).
TEST(ResampleAaCpu, ConstantStaysConstant) {
  for (DType dtype : kAllDTypes) {
    const double value = dtype == DType::kUInt8 ? 255 : (dtype == DType::kInt32 ? -77777 : 0.75);
    const Buffer src = FromValues(dtype, {1, 45, 38, 3}, std::vector<double>(45 * 38 * 3, value));
    const std::vector<ResampleMap> maps = {
        ResampleMap{AxisMapForWindow(1.25, 33.3, 7, true), AxisMapForWindow(0, 45, 6, false)}};
    const std::vector<double> got = reference::ToDoubles(RunAllPools(src, 6, 7, maps).view());
    for (double g : got) {
      EXPECT_NEAR(g, value, IsFloating(dtype) ? 1e-6 : 0.0) << DTypeName(dtype);
    }
  }
}

// Values computed with torch 1.13: torch.nn.functional.interpolate(x, size, mode='bilinear',
// antialias=True, align_corners=False) on float32 NCHW, and torchvision 0.14's
// transforms.functional.resize(x, size, antialias=True) on uint8 (which converts to float32,
// interpolates and rounds). Source: one channel, h x w, x[i][j] = ((7 * i + 3 * j) % 11) / 10
// (float32) and (37 * i + 91 * j) % 256 (uint8).
std::vector<double> Pattern(int64_t h, int64_t w, bool u8) {
  std::vector<double> v;
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < w; ++j) {
      v.push_back(u8 ? static_cast<double>((37 * i + 91 * j) % 256)
                     : static_cast<double>(static_cast<float>(((7 * i + 3 * j) % 11) / 10.0)));
    }
  }
  return v;
}

TEST(ResampleAaCpu, MatchesTorchFloat32) {
  struct Golden {
    int64_t h, w, out_h, out_w;
    std::vector<double> values;
  };
  const Golden goldens[] = {
      {6,
       8,
       3,
       3,
       {0.5131579, 0.4799320, 0.5315790, 0.5690790, 0.4494048, 0.5657895, 0.5195489, 0.4469388,
        0.5379699}},
      {10,
       7,
       4,
       3,
       {0.5285714, 0.5058824, 0.4392858, 0.5671428, 0.4451765, 0.5422857, 0.4831428, 0.4750588,
        0.5620000, 0.3964286, 0.5588235, 0.4892857}},
      // Rows enlarged (4 -> 7), columns shrunk.
      {4, 10, 7, 3, {0.3915254, 0.5166667, 0.5559322, 0.4817192, 0.4750000, 0.5395883, 0.6260291,
                     0.4083334, 0.5134382, 0.5838983, 0.4750000, 0.5432203, 0.5244552, 0.5404761,
                     0.5676755, 0.5302663, 0.4642857, 0.4989104, 0.5338983, 0.4166667, 0.4559322}},
  };
  for (const Golden& g : goldens) {
    SCOPED_TRACE(absl::StrCat(g.h, "x", g.w, " -> ", g.out_h, "x", g.out_w));
    const Buffer src = FromValues(DType::kFloat32, {1, g.h, g.w, 1}, Pattern(g.h, g.w, false));
    const Buffer out =
        RunAllPools(src, g.out_h, g.out_w, {ResampleMap{Whole(g.w, g.out_w), Whole(g.h, g.out_h)}});
    const std::vector<double> got = reference::ToDoubles(out.view());
    ASSERT_EQ(got.size(), g.values.size());
    // Printed with 7 decimals; torch computes its centres and weights in float32 (measured
    // differences here: at most 1.2e-7).
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], g.values[i], 1e-6) << i;
  }
}

TEST(ResampleAaCpu, MatchesTorchUInt8) {
  struct Golden {
    int64_t h, w, out_h, out_w;
    std::vector<double> values;
  };
  const Golden goldens[] = {
      {8, 10, 3, 4, {102, 115, 130, 142, 132, 112, 121, 131, 116, 129, 106, 126}},
      {12, 12, 5, 5, {99,  111, 130, 147, 130, 131, 113, 121, 131, 141, 121, 129, 107,
                      124, 130, 107, 119, 129, 107, 124, 140, 114, 120, 122, 97}},
      {5, 16, 9, 3, {95,  128, 152, 108, 135, 138, 128, 146, 115, 114, 134, 124, 91, 117,
                     142, 111, 137, 133, 127, 148, 127, 125, 121, 134, 124, 105, 138}},
  };
  for (const Golden& g : goldens) {
    SCOPED_TRACE(absl::StrCat(g.h, "x", g.w, " -> ", g.out_h, "x", g.out_w));
    const Buffer src = FromValues(DType::kUInt8, {1, g.h, g.w, 1}, Pattern(g.h, g.w, true));
    const Buffer out =
        RunAllPools(src, g.out_h, g.out_w, {ResampleMap{Whole(g.w, g.out_w), Whole(g.h, g.out_h)}});
    EXPECT_EQ(reference::ToDoubles(out.view()), g.values);
  }
}

// Broken preconditions are INTERNAL (kernels/common/checks.h): requests are validated upstream.
TEST(ResampleAaCpu, PreconditionsAreInternal) {
  Buffer src = RandomBuffer(DType::kFloat32, {2, 8, 8, 3}, 1, 0, 1);
  Buffer dst(DType::kFloat32, {2, 4, 4, 3});
  const ResampleMap good{Whole(8, 4), Whole(8, 4)};
  auto expect_internal = [](const absl::Status& st, const char* what) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << what << ": " << st;
  };
  EXPECT_TRUE(ResampleAaCpu(src.view(), dst.mutable_view(), {good}, nullptr).ok());
  expect_internal(ResampleAaCpu(src.view(), dst.mutable_view(), {}, nullptr), "no maps");
  expect_internal(ResampleAaCpu(src.view(), dst.mutable_view(), {good, good, good}, nullptr),
                  "3 maps for 2 samples");
  for (double bad :
       {0.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    ResampleMap m = good;
    m.x.scale = bad;
    expect_internal(ResampleAaCpu(src.view(), dst.mutable_view(), {m}, nullptr), "x scale");
    m = good;
    m.y.offset = bad == 0.0 ? std::numeric_limits<double>::quiet_NaN() : bad;
    expect_internal(ResampleAaCpu(src.view(), dst.mutable_view(), {m}, nullptr), "y offset");
  }
  // A footprint wholly outside the image (left of it, then below it).
  ResampleMap outside = good;
  outside.x.offset = -3;
  expect_internal(ResampleAaCpu(src.view(), dst.mutable_view(), {outside}, nullptr), "left");
  outside = good;
  outside.y.offset = 4;  // rows 4, 6, 8, 10 with support 2: row 10 reaches nothing
  expect_internal(ResampleAaCpu(src.view(), dst.mutable_view(), {outside}, nullptr), "below");
  outside = good;
  outside.x.tap_begin = 8;  // a tap window past the image's last column
  outside.x.tap_end = 12;
  expect_internal(ResampleAaCpu(src.view(), dst.mutable_view(), {outside}, nullptr), "window");

  Buffer wrong_n(DType::kFloat32, {1, 4, 4, 3});
  expect_internal(ResampleAaCpu(src.view(), wrong_n.mutable_view(), {good}, nullptr), "dst n");
  Buffer wrong_c(DType::kFloat32, {2, 4, 4, 1});
  expect_internal(ResampleAaCpu(src.view(), wrong_c.mutable_view(), {good}, nullptr), "dst c");
  Buffer wrong_dtype(DType::kFloat16, {2, 4, 4, 3});
  expect_internal(ResampleAaCpu(src.view(), wrong_dtype.mutable_view(), {good}, nullptr),
                  "dst dtype");
  TensorView empty = dst.mutable_view();
  empty.shape.h = 0;
  expect_internal(ResampleAaCpu(src.view(), empty, {good}, nullptr), "dst h 0");
  TensorView null_dst = dst.mutable_view();
  null_dst.data = nullptr;
  expect_internal(ResampleAaCpu(src.view(), null_dst, {good}, nullptr), "null dst");
  ConstTensorView null_src = src.view();
  null_src.data = nullptr;
  expect_internal(ResampleAaCpu(null_src, dst.mutable_view(), {good}, nullptr), "null src");
  // dst inside src's memory.
  TensorView overlap{DType::kFloat32, {2, 4, 4, 3}, src.mutable_view().data};
  expect_internal(ResampleAaCpu(src.view(), overlap, {good}, nullptr), "overlap");
}

}  // namespace
}  // namespace tensorprep::kernels
