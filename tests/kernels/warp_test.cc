// WarpAffineCpu against the reference, plus checks that do not go through the reference: the
// rotation direction on hand-computed grids, OpenCV's warpAffine and resize, label sets, identity
// and flips, crops as exact copies and pads through every border; outputs of the source's size
// and of other sizes; every row loop against the portable one bit for bit.
#include "kernels/warp/warp.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/common/numerics.h"
#include "kernels/common/thread_pool.h"
#include "kernels/flip/flip.h"
#include "kernels/reference/reference.h"
#include "kernels/warp/sampling.h"
#include "kernels/warp/warp_isa.h"
#include "kernels/warp/warp_rows.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::kernels {
namespace {

using testing::Buffer;
using testing::BorderName;
using testing::FromValues;
using testing::RandomBuffer;


// Allowed |fast - reference| for one element.
//  - nearest: 0, it only copies values.
//  - uint8 bilinear: 1. The kernel blends in float, the reference in double; a blend within float
//    rounding of k + 0.5 may round to either neighbour.
//  - int32 bilinear: 1, for the same reason at double precision (the kernel also blends in
//    double, so in practice it is exact).
//  - float32 bilinear: 1e-5. The kernel rounds the four weights to float (relative error 2^-24
//    each) and does four products and three sums in float: at most about 8 * 2^-24 * max|v|, with
//    |v| <= 3.5 in these tests (source in [-1, 1], fill 3.5) that is 1.7e-6; 1e-5 leaves margin
//    while still catching any wrong tap or weight (errors of at least 1e-3 here).
//  - float16 bilinear: one binary16 step at the value: the float blend and the double blend can
//    fall on either side of a rounding boundary.
double Tolerance(DType dtype, Interp interp, double expected) {
  if (interp == Interp::kNearest) return 0;
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

// Runs WarpAffineCpu inline and on pools of 1 and 3 threads; expects identical bytes from all
// three and returns the inline result.
Buffer RunAllPools(const Buffer& src, absl::Span<const Affine> maps, const WarpParams& params) {
  Buffer out(src.dtype(), src.shape());
  EXPECT_TRUE(WarpAffineCpu(src.view(), out.mutable_view(), maps, params, nullptr).ok());
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    Buffer again(src.dtype(), src.shape());
    const absl::Status st = WarpAffineCpu(src.view(), again.mutable_view(), maps, params, &pool);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_EQ(again.bytes(), out.bytes()) << "threads=" << threads << " changed the result";
  }
  return out;
}

// Compares a result (of any output height and width) with the reference; reports the first few
// differences.
void ExpectMatchesReference(const Buffer& src, const Buffer& out, absl::Span<const Affine> maps,
                            const WarpParams& params) {
  const std::vector<double> want =
      reference::WarpAffine(src.view(), maps, params, out.shape().h, out.shape().w);
  const std::vector<double> got = reference::ToDoubles(out.view());
  ASSERT_EQ(want.size(), got.size());
  int reported = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = Tolerance(src.dtype(), params.interp, want[i]);
    const bool same =
        (std::isnan(want[i]) && std::isnan(got[i])) || std::fabs(got[i] - want[i]) <= tol;
    if (!same && reported++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", reference " << want[i]
                    << " (tolerance " << tol << ")";
    }
  }
}

using WarpCase = std::tuple<DType, Interp, Border>;

class WarpVsReference : public ::testing::TestWithParam<WarpCase> {};

TEST_P(WarpVsReference, ShapesAnglesAndMaps) {
  const auto [dtype, interp, border] = GetParam();
  const std::vector<BatchShape> shapes = {
      {1, 1, 1, 1},   {1, 2, 3, 1}, {1, 7, 5, 3},
      {2, 17, 13, 4}, {1, 9, 9, 1}, {1, 6, 5, 2},  // C = 2 takes the generic channel path
      {1, 48, 64, 3},
  };
  const double angles[] = {0, 90, 180, 270, -30, 30, 359.5, 45};
  double lo, hi;
  testing::DefaultRange(dtype, &lo, &hi);
  WarpParams params;
  params.interp = interp;
  params.border = border;
  params.fill = 3.5;  // uint8/int32: 4 (ties to even)
  uint64_t seed = 1;
  for (const BatchShape& shape : shapes) {
    const Buffer src = RandomBuffer(dtype, shape, seed++, lo, hi);
    std::vector<std::vector<Affine>> map_sets;
    for (double angle : angles) {
      map_sets.push_back({RotationInverse(angle, shape.h, shape.w)});
    }
    // Rotations composed with a mirror (as the planner builds rotate + flip): the kernel walks
    // these the other way round, which must not show in the values.
    for (double angle : {30.0, -30.0, 150.0}) {
      for (int f = 1; f < 4; ++f) {
        map_sets.push_back({RotationInverse(angle, shape.h, shape.w)
                                .Then(FlipInverse((f & 1) != 0, (f & 2) != 0, shape.h, shape.w))});
      }
    }
    // Scaled, sheared and shifted maps reach several periods beyond the image, so that reflect
    // and wrap are exercised far from the edge.
    Affine far_map;
    far_map.m[0] = 2.3, far_map.m[1] = 0.4, far_map.m[2] = -13.7;
    far_map.m[3] = -0.6, far_map.m[4] = 1.7, far_map.m[5] = 21.2;
    map_sets.push_back({far_map});
    Affine shrink;
    shrink.m[0] = 0.37, shrink.m[1] = -0.21, shrink.m[2] = 1.25;
    shrink.m[3] = 0.18, shrink.m[4] = 0.41, shrink.m[5] = -0.75;
    map_sets.push_back({shrink});
    if (shape.n == 2) {  // one map per sample
      map_sets.push_back({RotationInverse(30, shape.h, shape.w), far_map});
    }
    for (const auto& maps : map_sets) {
      SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " map[0]=(", maps[0].m[0], ", ",
                                maps[0].m[1], ", ", maps[0].m[2], ", ", maps[0].m[3], ", ",
                                maps[0].m[4], ", ", maps[0].m[5], ") maps=", maps.size()));
      const Buffer out = RunAllPools(src, maps, params);
      ExpectMatchesReference(src, out, maps, params);
    }
  }
}

std::string CaseName(const ::testing::TestParamInfo<WarpCase>& info) {
  const auto [dtype, interp, border] = info.param;
  return absl::StrCat(DTypeName(dtype), "_", interp == Interp::kNearest ? "nearest" : "bilinear",
                      "_", BorderName(border));
}

INSTANTIATE_TEST_SUITE_P(All, WarpVsReference,
                         ::testing::Combine(::testing::Values(DType::kUInt8, DType::kInt32,
                                                              DType::kFloat32, DType::kFloat16),
                                            ::testing::Values(Interp::kNearest, Interp::kBilinear),
                                            ::testing::Values(Border::kConstant, Border::kEdge,
                                                              Border::kReflect, Border::kReflect101,
                                                              Border::kWrap)),
                         CaseName);

// Several row bands per sample and several samples: the task split must not show in the result.
TEST(WarpAffineCpu, BandsAndSamplesMatchReference) {
  const BatchShape shape{2, 200, 120, 3};
  for (DType dtype : {DType::kUInt8, DType::kFloat32}) {
    for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
      double lo, hi;
      testing::DefaultRange(dtype, &lo, &hi);
      const Buffer src = RandomBuffer(dtype, shape, 99, lo, hi);
      const std::vector<Affine> maps = {RotationInverse(33, shape.h, shape.w),
                                        RotationInverse(-71, shape.h, shape.w)};
      WarpParams params;
      params.interp = interp;
      params.border = Border::kReflect;
      const Buffer out = RunAllPools(src, maps, params);
      ExpectMatchesReference(src, out, maps, params);
    }
  }
}

// 0..8 in a 3x3 grid; rotation about the centre pixel by multiples of 90 degrees is a pure
// permutation, written out here by hand (np.rot90 is counter-clockwise too).
TEST(RotationConvention, QuarterTurnsOnHandComputedGrid) {
  const BatchShape shape{1, 3, 3, 1};
  const std::vector<double> grid = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  struct Case {
    double angle;
    std::vector<double> want;
  };
  const Case cases[] = {
      // Counter-clockwise: the top-right pixel (2) moves to the top-left.
      {90, {2, 5, 8, 1, 4, 7, 0, 3, 6}},  {-90, {6, 3, 0, 7, 4, 1, 8, 5, 2}},
      {270, {6, 3, 0, 7, 4, 1, 8, 5, 2}}, {180, {8, 7, 6, 5, 4, 3, 2, 1, 0}},
      {450, {2, 5, 8, 1, 4, 7, 0, 3, 6}}, {0, {0, 1, 2, 3, 4, 5, 6, 7, 8}},
  };
  for (DType dtype : {DType::kUInt8, DType::kFloat32, DType::kInt32, DType::kFloat16}) {
    const Buffer src = FromValues(dtype, shape, grid);
    for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
      for (const Case& c : cases) {
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " angle ", c.angle, " bilinear ",
                                  interp == Interp::kBilinear));
        const Affine m = RotationInverse(c.angle, 3, 3);
        WarpParams params;
        params.interp = interp;
        params.border = Border::kConstant;
        Buffer out(dtype, shape);
        ASSERT_TRUE(WarpAffineCpu(src.view(), out.mutable_view(), {m}, params, nullptr).ok());
        EXPECT_EQ(reference::ToDoubles(out.view()), c.want);
      }
    }
  }
}

// 45 degrees counter-clockwise on the same grid, nearest. Output pixel (row 1, col 2), one step
// right of the centre, samples centre + (cos 45, sin 45) = (1.707, 1.707) -> pixel (2, 2) = 8: the
// bottom-right corner has turned up to the right. Output (row 0, col 1), one step above the
// centre, samples centre + (sin 45, -cos 45) -> (col 2, row 0) = 2: the top-right corner has turned
// up to the top.
TEST(RotationConvention, FortyFiveDegreesOnHandComputedGrid) {
  const BatchShape shape{1, 3, 3, 1};
  const Buffer src = FromValues(DType::kFloat32, shape, {0, 1, 2, 3, 4, 5, 6, 7, 8});
  WarpParams params;
  params.interp = Interp::kNearest;
  Buffer out(DType::kFloat32, shape);
  ASSERT_TRUE(
      WarpAffineCpu(src.view(), out.mutable_view(), {RotationInverse(45, 3, 3)}, params, nullptr)
          .ok());
  const float* o = out.view().as<float>();
  EXPECT_EQ(o[1 * 3 + 2], 8);
  EXPECT_EQ(o[0 * 3 + 1], 2);
  EXPECT_EQ(o[1 * 3 + 1], 4);  // the centre stays
}

TEST(RotationInverse, QuarterTurnsAreExact) {
  const Affine a = RotationInverse(90, 5, 7);
  EXPECT_EQ(a.m[0], 0);
  EXPECT_EQ(a.m[1], -1);
  EXPECT_EQ(a.m[3], 1);
  EXPECT_EQ(a.m[4], 0);
  // Centre (3, 2) maps to itself.
  EXPECT_EQ(a.m[0] * 3 + a.m[1] * 2 + a.m[2], 3);
  EXPECT_EQ(a.m[3] * 3 + a.m[4] * 2 + a.m[5], 2);
  for (double angle : {-270.0, 450.0, 810.0}) {
    const Affine b = RotationInverse(angle, 5, 7);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(b.m[i], a.m[i]) << angle;
  }
  const Affine half = RotationInverse(180, 4, 6);
  EXPECT_EQ(half.m[0], -1);
  EXPECT_EQ(half.m[2], 5);  // x -> 5 - x
  EXPECT_EQ(half.m[5], 3);  // y -> 3 - y
}

// A smooth test image, so that OpenCV's 1/32-pixel position quantisation costs little.
Buffer SmoothImage(DType dtype, BatchShape shape, double scale) {
  std::vector<double> v(static_cast<size_t>(shape.elements()));
  for (int64_t y = 0; y < shape.h; ++y) {
    for (int64_t x = 0; x < shape.w; ++x) {
      for (int64_t c = 0; c < shape.c; ++c) {
        v[(y * shape.w + x) * shape.c + c] =
            scale * (0.5 + 0.4 * std::sin(x / 5.0 + c) * std::cos(y / 7.0 - c));
      }
    }
  }
  return FromValues(dtype, shape, v);
}

double MaxAbsDiff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// An independent check of the convention and of bilinear sampling: OpenCV's warpAffine with
// cv::getRotationMatrix2D (forward matrix, OpenCV inverts it) and with our inverse matrix plus
// WARP_INVERSE_MAP. OpenCV quantises positions to 1/32 pixel: with this image's gradients
// (<= 0.08 per pixel at scale 1) the difference stays below 0.08 / 32 per axis ~ 0.005; uint8 adds
// OpenCV's fixed-point weights and a rounding step, hence 3 levels. The mirrored angle must
// differ by far more, so the comparison can tell the two directions apart.
TEST(WarpAffineCpu, AgreesWithOpenCvRotation) {
  const BatchShape shape{1, 48, 64, 3};
  for (DType dtype : {DType::kFloat32, DType::kUInt8}) {
    const double scale = dtype == DType::kUInt8 ? 255.0 : 1.0;
    const double tol = dtype == DType::kUInt8 ? 3.0 : 0.005;
    const Buffer src = SmoothImage(dtype, shape, scale);
    const int cv_type = dtype == DType::kUInt8 ? CV_8UC3 : CV_32FC3;
    const cv::Mat cv_src(static_cast<int>(shape.h), static_cast<int>(shape.w), cv_type,
                         const_cast<void*>(src.view().data));
    for (double angle : {30.0, -30.0, 45.0, 10.0, 123.0}) {
      SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " angle ", angle));
      WarpParams params;
      params.interp = Interp::kBilinear;
      params.border = Border::kEdge;
      const Affine inv = RotationInverse(angle, shape.h, shape.w);
      Buffer ours(dtype, shape);
      ASSERT_TRUE(WarpAffineCpu(src.view(), ours.mutable_view(), {inv}, params, nullptr).ok());
      const std::vector<double> got = reference::ToDoubles(ours.view());

      const cv::Point2f centre((shape.w - 1) / 2.0f, (shape.h - 1) / 2.0f);
      cv::Mat forward = cv::getRotationMatrix2D(centre, angle, 1.0);
      cv::Mat cv_dst;
      cv::warpAffine(cv_src, cv_dst, forward, cv_src.size(), cv::INTER_LINEAR,
                     cv::BORDER_REPLICATE);
      const ConstTensorView cv_view{dtype, shape, cv_dst.data};
      EXPECT_LE(MaxAbsDiff(got, reference::ToDoubles(cv_view)), tol);

      cv::Mat inverse_m =
          (cv::Mat_<double>(2, 3) << inv.m[0], inv.m[1], inv.m[2], inv.m[3], inv.m[4], inv.m[5]);
      cv::Mat cv_dst2;
      cv::warpAffine(cv_src, cv_dst2, inverse_m, cv_src.size(),
                     cv::INTER_LINEAR | cv::WARP_INVERSE_MAP, cv::BORDER_REPLICATE);
      const ConstTensorView cv_view2{dtype, shape, cv_dst2.data};
      EXPECT_LE(MaxAbsDiff(got, reference::ToDoubles(cv_view2)), tol);

      // The opposite direction is far off: the check above can fail.
      cv::Mat mirrored = cv::getRotationMatrix2D(centre, -angle, 1.0);
      cv::Mat cv_dst3;
      cv::warpAffine(cv_src, cv_dst3, mirrored, cv_src.size(), cv::INTER_LINEAR,
                     cv::BORDER_REPLICATE);
      const ConstTensorView cv_view3{dtype, shape, cv_dst3.data};
      EXPECT_GT(MaxAbsDiff(got, reference::ToDoubles(cv_view3)), 20 * tol);
    }
  }
}

// Half-way blends are exact in both float and double, so integer outputs must round them to even
// exactly (the +-1 tolerance above cannot see this).
TEST(WarpAffineCpu, BilinearRoundsExactTiesToEven) {
  const BatchShape shape{1, 1, 6, 1};
  Affine half_step;
  half_step.m[2] = 0.5;  // every output samples half-way between two source pixels
  WarpParams params;
  params.interp = Interp::kBilinear;
  params.border = Border::kEdge;
  for (DType dtype : {DType::kUInt8, DType::kInt32}) {
    const Buffer src = FromValues(dtype, shape, {0, 1, 2, 3, 4, 5});
    Buffer out(dtype, shape);
    ASSERT_TRUE(WarpAffineCpu(src.view(), out.mutable_view(), {half_step}, params, nullptr).ok());
    // 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, 4.5 -> 4, and the edge pixel 5.
    EXPECT_EQ(reference::ToDoubles(out.view()), (std::vector<double>{0, 2, 2, 4, 4, 5}))
        << DTypeName(dtype);
  }
}

// A segmentation label map warped with nearest keeps only label values (and the fill label).
TEST(WarpAffineCpu, NearestKeepsLabelSet) {
  const BatchShape shape{2, 37, 29, 1};
  const std::vector<double> labels = {-3, 0, 7, 42, 1000000};
  std::vector<double> v(static_cast<size_t>(shape.elements()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = labels[(i * 7 + i / 29) % labels.size()];
  const Buffer src = FromValues(DType::kInt32, shape, v);
  const std::set<int32_t> allowed = {-3, 0, 7, 42, 1000000, 255};
  for (Border border :
       {Border::kConstant, Border::kEdge, Border::kReflect, Border::kReflect101, Border::kWrap}) {
    for (double angle : {30.0, -17.5, 45.0, 200.0}) {
      WarpParams params;
      params.interp = Interp::kNearest;
      params.border = border;
      params.fill = 255;
      Buffer out(DType::kInt32, shape);
      ThreadPool pool(3);
      ASSERT_TRUE(WarpAffineCpu(src.view(), out.mutable_view(),
                                {RotationInverse(angle, shape.h, shape.w)}, params, &pool)
                      .ok());
      const int32_t* o = out.view().as<int32_t>();
      for (int64_t i = 0; i < shape.elements(); ++i) {
        ASSERT_TRUE(allowed.count(o[i]))
            << BorderName(border) << " angle " << angle << ": value " << o[i] << " at " << i;
      }
    }
  }
}

// The identity map copies exactly with either interpolation, and a flip map equals FlipCpu.
TEST(WarpAffineCpu, IdentityAndFlipMapsAreExact) {
  const BatchShape shape{2, 11, 8, 3};
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    double lo, hi;
    testing::DefaultRange(dtype, &lo, &hi);
    const Buffer src = RandomBuffer(dtype, shape, 5, lo, hi);
    for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
      for (Border border : {Border::kConstant, Border::kEdge, Border::kWrap}) {
        WarpParams params;
        params.interp = interp;
        params.border = border;
        Buffer out(dtype, shape);
        ASSERT_TRUE(
            WarpAffineCpu(src.view(), out.mutable_view(), {Affine{}}, params, nullptr).ok());
        EXPECT_EQ(out.bytes(), src.bytes()) << DTypeName(dtype);

        for (int f = 1; f < 4; ++f) {
          const FlipFlags flags{(f & 1) != 0, (f & 2) != 0};
          Buffer warped(dtype, shape);
          ASSERT_TRUE(
              WarpAffineCpu(src.view(), warped.mutable_view(),
                            {FlipInverse(flags.horizontal, flags.vertical, shape.h, shape.w)},
                            params, nullptr)
                  .ok());
          Buffer flipped(dtype, shape);
          ASSERT_TRUE(FlipCpu(src.view(), flipped.mutable_view(), {flags}, nullptr).ok());
          EXPECT_EQ(warped.bytes(), flipped.bytes()) << DTypeName(dtype) << " flip " << f;
        }
      }
    }
  }
}

// A warp whose map has a mirror composed into it writes exactly the bytes of the unmirrored warp
// followed by FlipCpu: with these maps' dyadic coefficients both evaluate every output pixel's
// source position exactly, to the same double, so any difference comes from the kernel (its
// traversal order, its interior and border paths), not from rounding. Covers warp-then-flip
// (rotate + flip in a pipeline) and flip-then-warp; the latter only for a map whose source x is
// an integer and whose source y is never half-way between rows, because otherwise mirroring the
// source legitimately changes bits (it reorders a bilinear sum of four terms, and moves nearest's
// ties, which round up, to the other side).
TEST(WarpAffineCpu, MirroredWarpEqualsWarpAndFlip) {
  const BatchShape shape{2, 37, 45, 3};
  Affine skew;  // scale, shear and a fractional shift, all exact in a few bits
  skew.m[0] = 0.8125, skew.m[1] = -0.375, skew.m[2] = 6.3125;
  skew.m[3] = 0.28125, skew.m[4] = 0.9375, skew.m[5] = -4.15625;
  Affine integral_x;  // source x an integer at every pixel; source y k/4 + 1/8, never a tie
  integral_x.m[0] = 1, integral_x.m[1] = -1, integral_x.m[2] = 17;
  integral_x.m[3] = 0.25, integral_x.m[4] = 0.75, integral_x.m[5] = -3.875;
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    double lo, hi;
    testing::DefaultRange(dtype, &lo, &hi);
    const Buffer src = RandomBuffer(dtype, shape, 21, lo, hi);
    for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
      for (Border border : {Border::kConstant, Border::kEdge, Border::kReflect, Border::kReflect101,
                            Border::kWrap}) {
        WarpParams params;
        params.interp = interp;
        params.border = border;
        params.fill = 0.5;
        for (int f = 1; f < 4; ++f) {
          const FlipFlags flags{(f & 1) != 0, (f & 2) != 0};
          const Affine mirror = FlipInverse(flags.horizontal, flags.vertical, shape.h, shape.w);
          SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " ", BorderName(border), " interp ",
                                    static_cast<int>(interp), " flip ", f));
          // Warp, then flip: out(p) = warped(mirror(p)) = src(skew(mirror(p))).
          const Buffer warped = RunAllPools(src, {skew}, params);
          Buffer warp_then_flip(dtype, shape);
          ASSERT_TRUE(FlipCpu(warped.view(), warp_then_flip.mutable_view(), {flags}, nullptr).ok());
          const Buffer composed = RunAllPools(src, {skew.Then(mirror)}, params);
          EXPECT_EQ(composed.bytes(), warp_then_flip.bytes()) << "warp then flip";

          // Flip, then warp: out(p) = flipped(m(p)) = src(mirror(m(p))).
          Buffer flipped(dtype, shape);
          ASSERT_TRUE(FlipCpu(src.view(), flipped.mutable_view(), {flags}, nullptr).ok());
          const Buffer flip_then_warp = RunAllPools(flipped, {integral_x}, params);
          const Buffer composed2 = RunAllPools(src, {mirror.Then(integral_x)}, params);
          EXPECT_EQ(composed2.bytes(), flip_then_warp.bytes()) << "flip then warp";
        }
      }
    }
  }
}

// Positions beyond 2^52 (a degenerate map) sample the fill value whatever the border.
TEST(WarpAffineCpu, FarPositionsGiveFill) {
  const BatchShape shape{1, 4, 5, 2};
  const Buffer src = RandomBuffer(DType::kFloat32, shape, 3, -1, 1);
  Affine far;
  far.m[2] = 1e17;
  Affine inf;
  inf.m[0] = 1e308, inf.m[1] = 1e308;  // overflows to infinity
  const Affine maps[] = {far, inf};
  for (int k = 0; k < 2; ++k) {
    const Affine& m = maps[k];
    for (Border border : {Border::kEdge, Border::kWrap, Border::kReflect}) {
      for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
        WarpParams params;
        params.interp = interp;
        params.border = border;
        params.fill = -2.5;
        Buffer out(DType::kFloat32, shape);
        ASSERT_TRUE(WarpAffineCpu(src.view(), out.mutable_view(), {m}, params, nullptr).ok());
        const std::vector<double> got = reference::ToDoubles(out.view());
        const std::vector<double> want = reference::WarpAffine(src.view(), {m}, params);
        EXPECT_EQ(got, want);
        // The first pixel (x = y = 0) of the overflowing map is not far: skip it.
        for (size_t i = (k == 1 ? 2 : 0); i < got.size(); ++i) EXPECT_EQ(got[i], -2.5);
      }
    }
  }
}

TEST(WarpAffineCpu, FillIsCastToTheDtype) {
  const BatchShape shape{1, 2, 2, 1};
  struct Case {
    DType dtype;
    double fill;
    double want;
  };
  for (const Case& c :
       {Case{DType::kUInt8, 2.5, 2}, Case{DType::kUInt8, -7, 0}, Case{DType::kUInt8, 300, 255},
        Case{DType::kInt32, -3.5, -4}, Case{DType::kInt32, 1e12, 2147483647.0},
        Case{DType::kFloat16, 1e6, 65504}, Case{DType::kFloat16, 0.1, 0.0999755859375},
        Case{DType::kFloat32, 0.1, static_cast<float>(0.1)}}) {
    const Buffer src = RandomBuffer(c.dtype, shape, 1, 0, 1);
    Affine away;
    away.m[2] = 100;  // everything outside
    WarpParams params;
    params.interp = Interp::kBilinear;
    params.border = Border::kConstant;
    params.fill = c.fill;
    Buffer out(c.dtype, shape);
    ASSERT_TRUE(WarpAffineCpu(src.view(), out.mutable_view(), {away}, params, nullptr).ok());
    for (double v : reference::ToDoubles(out.view())) {
      EXPECT_EQ(v, c.want) << DTypeName(c.dtype) << " fill " << c.fill;
    }
  }
}

// Broken preconditions are INTERNAL (kernels/common/checks.h): requests are validated upstream.
TEST(WarpAffineCpu, RejectsMismatchedViews) {
  const BatchShape shape{2, 4, 4, 1};
  const Buffer src = RandomBuffer(DType::kFloat32, shape, 1, 0, 1);
  WarpParams params;
  const Affine id;
  {
    Buffer dst(DType::kUInt8, shape);
    const absl::Status st = WarpAffineCpu(src.view(), dst.mutable_view(), {id}, params, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("dst dtype uint8"), std::string::npos) << st;
  }
  // The output's height and width are free; its batch size and channel count are src's.
  for (const BatchShape& bad :
       {BatchShape{2, 4, 4, 3}, BatchShape{3, 4, 4, 1}, BatchShape{1, 4, 4, 1},
        BatchShape{2, 0, 4, 1}, BatchShape{2, 4, 0, 1}}) {
    Buffer dst(DType::kFloat32, BatchShape{3, 5, 5, 3});  // room for every shape above
    TensorView dv = dst.mutable_view();
    dv.shape = bad;
    const absl::Status st = WarpAffineCpu(src.view(), dv, {id}, params, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << testing::ShapeName(bad);
    EXPECT_NE(st.message().find(
                  absl::StrCat("dst shape (", bad.n, ", ", bad.h, ", ", bad.w, ", ", bad.c, ")")),
              std::string::npos)
        << st;
  }
  for (const BatchShape& good :
       {BatchShape{2, 4, 5, 1}, BatchShape{2, 1, 1, 1}, BatchShape{2, 9, 3, 1}}) {
    Buffer dst(DType::kFloat32, good);
    EXPECT_TRUE(WarpAffineCpu(src.view(), dst.mutable_view(), {id}, params, nullptr).ok())
        << testing::ShapeName(good);
  }
  {
    // A smaller output inside the source's bytes still overlaps.
    Buffer same(DType::kFloat32, shape);
    TensorView inside = same.mutable_view();
    inside.shape = BatchShape{2, 1, 2, 1};
    inside.data = static_cast<float*>(inside.data) + 5;
    const absl::Status st = WarpAffineCpu(same.view(), inside, {id}, params, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("overlap"), std::string::npos) << st;
  }
  {
    Buffer dst(DType::kFloat32, BatchShape{2, 3, 3, 1});
    TensorView dv = dst.mutable_view();
    dv.data = nullptr;
    const absl::Status st = WarpAffineCpu(src.view(), dv, {id}, params, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("dst data is null"), std::string::npos) << st;
  }
  {
    Buffer dst(DType::kFloat32, shape);
    const std::vector<Affine> three(3);
    const absl::Status st = WarpAffineCpu(src.view(), dst.mutable_view(), three, params, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("3 affine maps; expected 1 or 2"), std::string::npos) << st;
  }
  {
    Buffer same(DType::kFloat32, shape);
    const absl::Status st = WarpAffineCpu(same.view(), same.mutable_view(), {id}, params, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("overlap"), std::string::npos) << st;
  }
  {
    const ConstTensorView empty{DType::kFloat32, BatchShape{0, 4, 4, 1}, src.view().data};
    Buffer dst(DType::kFloat32, shape);
    TensorView dv = dst.mutable_view();
    dv.shape.n = 0;
    const absl::Status st = WarpAffineCpu(empty, dv, {id}, params, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  }
}

// ---- Outputs whose height and width differ from the source's -----------------------------------

// The source box [top, top + box_h) x [left, left + box_w) resized to out_h x out_w with
// torchvision's half-pixel centres (resize with antialias off, and random resized crop): output
// x samples sx = left + s * x + 0.5 * s - 0.5 with s = box_w / out_w, and y likewise.
Affine ResizedCropMap(double top, double left, double box_h, double box_w, int64_t out_h,
                      int64_t out_w) {
  const double sx = box_w / static_cast<double>(out_w);
  const double sy = box_h / static_cast<double>(out_h);
  Affine m;
  m.m[0] = sx, m.m[1] = 0, m.m[2] = left + 0.5 * sx - 0.5;
  m.m[3] = 0, m.m[4] = sy, m.m[5] = top + 0.5 * sy - 0.5;
  return m;
}

// The whole h x w source resized to out_h x out_w.
Affine ResizeMap(int64_t h, int64_t w, int64_t out_h, int64_t out_w) {
  return ResizedCropMap(0, 0, static_cast<double>(h), static_cast<double>(w), out_h, out_w);
}

// Output pixel (x, y) samples source pixel (x + dx, y + dy): a crop whose top-left corner is
// (dx, dy), or for negative offsets a pad by -dx columns on the left and -dy rows on top.
Affine Translate(int64_t dx, int64_t dy) {
  Affine m;
  m.m[2] = static_cast<double>(dx);
  m.m[5] = static_cast<double>(dy);
  return m;
}

// Runs WarpAffineCpu into an out_h x out_w output inline and on pools of 1 and 2 threads;
// expects identical bytes from all three and returns the inline result.
Buffer RunSized(const Buffer& src, int64_t out_h, int64_t out_w, absl::Span<const Affine> maps,
                const WarpParams& params) {
  static ThreadPool one(1);
  static ThreadPool two(2);
  const BatchShape shape{src.shape().n, out_h, out_w, src.shape().c};
  Buffer out(src.dtype(), shape);
  const absl::Status st = WarpAffineCpu(src.view(), out.mutable_view(), maps, params, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  for (ThreadPool* pool : {&one, &two}) {
    Buffer again(src.dtype(), shape);
    const absl::Status st2 = WarpAffineCpu(src.view(), again.mutable_view(), maps, params, pool);
    EXPECT_TRUE(st2.ok()) << st2;
    EXPECT_EQ(again.bytes(), out.bytes()) << pool->size() << " threads changed the result";
  }
  return out;
}

class WarpOutputSizes : public ::testing::TestWithParam<WarpCase> {};

// Resize (down, up, to 1 x N and N x 1), resized crops, integer crops and pads, a rotation
// composed with a resize, and per-sample maps, against the reference at output sizes other than
// the source's.
TEST_P(WarpOutputSizes, ResizeCropPadMatchReference) {
  const auto [dtype, interp, border] = GetParam();
  double lo, hi;
  testing::DefaultRange(dtype, &lo, &hi);
  const WarpParams params{interp, border, 3.5};
  uint64_t seed = 40;
  for (int64_t c : {1, 2, 3, 4}) {  // 2: the generic channel loops
    for (const auto& [n, h, w] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
             {1, 1, 1}, {1, 7, 5}, {3, 17, 13}, {1, 30, 70}}) {
      const BatchShape shape{n, h, w, c};
      const Buffer src = RandomBuffer(dtype, shape, seed++, lo, hi);
      for (const auto& [oh, ow] : std::vector<std::pair<int64_t, int64_t>>{{1, 1},
                                                                           {1, 9},
                                                                           {6, 1},
                                                                           {h / 2 + 1, w / 3 + 1},
                                                                           {2 * h + 3, 2 * w + 1},
                                                                           {h + 4, 67}}) {
        std::vector<std::vector<Affine>> map_sets = {
            {ResizeMap(h, w, oh, ow)},
            {ResizedCropMap(0.25 * h, 0.1 * w, 0.6 * h, 0.7 * w, oh, ow)},
            {Translate((w - ow) / 2, (h - oh) / 2)},  // centre crop, or centred pad
            {Translate(-3, -2)},                      // pad top and left, crop or pad the rest
            {RotationInverse(30, h, w).Then(ResizeMap(h, w, oh, ow))},
        };
        if (n > 1) {  // one map per sample, as random resized crop draws them
          map_sets.push_back({ResizedCropMap(1, 2, h - 1.5, w - 2.25, oh, ow), Translate(1, 0),
                              ResizeMap(h, w, oh, ow)});
        }
        for (const auto& maps : map_sets) {
          SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " -> ", oh, "x", ow, " map[0]=(",
                                    maps[0].m[0], ", ", maps[0].m[1], ", ", maps[0].m[2], ", ",
                                    maps[0].m[3], ", ", maps[0].m[4], ", ", maps[0].m[5],
                                    ") maps=", maps.size()));
          const Buffer out = RunSized(src, oh, ow, maps, params);
          ExpectMatchesReference(src, out, maps, params);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, WarpOutputSizes,
                         ::testing::Combine(::testing::Values(DType::kUInt8, DType::kInt32,
                                                              DType::kFloat32, DType::kFloat16),
                                            ::testing::Values(Interp::kNearest, Interp::kBilinear),
                                            ::testing::Values(Border::kConstant, Border::kEdge,
                                                              Border::kReflect, Border::kReflect101,
                                                              Border::kWrap)),
                         CaseName);

// A crop (an integer translation into a smaller output) copies its box exactly, with either
// interpolation and any border: bilinear weights are then (1, 0, 0, 0), and a tap of weight 0
// beyond the box's last column or row adds nothing. Expected bytes come straight from the source.
TEST(WarpOutputSizes, CropIsAnExactCopyOfTheBox) {
  struct Box {
    int64_t top, left, h, w;
  };
  const int64_t h = 23, w = 70;
  const Box boxes[] = {{0, 0, 23, 70}, {3, 5, 10, 64}, {0, 0, 1, 70}, {0, 69, 23, 1},
                       {22, 69, 1, 1}, {7, 1, 16, 69}, {4, 2, 9, 13}};
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    for (int64_t c : {1, 2, 3, 4}) {
      const BatchShape shape{2, h, w, c};
      double lo, hi;
      testing::DefaultRange(dtype, &lo, &hi);
      const Buffer src = RandomBuffer(dtype, shape, 8 + c, lo, hi);
      const size_t px = static_cast<size_t>(c) * DTypeSize(dtype);
      for (const Box& b : boxes) {
        // Sample 1 takes the box shifted up and left where there is room (per-sample maps).
        const Box b1{b.top > 0 ? b.top - 1 : b.top, b.left > 0 ? b.left - 1 : b.left, b.h, b.w};
        const std::vector<Affine> maps = {Translate(b.left, b.top), Translate(b1.left, b1.top)};
        std::vector<unsigned char> want;
        for (int64_t sample = 0; sample < 2; ++sample) {
          const Box& box = sample == 0 ? b : b1;
          for (int64_t y = box.top; y < box.top + box.h; ++y) {
            const unsigned char* row = src.bytes().data() + ((sample * h + y) * w + box.left) * px;
            want.insert(want.end(), row, row + box.w * px);
          }
        }
        for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
          for (Border border : {Border::kConstant, Border::kEdge, Border::kReflect101}) {
            const Buffer out = RunSized(src, b.h, b.w, maps, WarpParams{interp, border, 3.5});
            const auto* got = static_cast<const unsigned char*>(out.view().data);
            ASSERT_EQ(out.view().bytes(), want.size());
            EXPECT_TRUE(std::equal(want.begin(), want.end(), got))
                << DTypeName(dtype) << " c " << c << " box " << b.top << "," << b.left << " " << b.h
                << "x" << b.w << " interp " << static_cast<int>(interp) << " border "
                << BorderName(border);
          }
        }
      }
    }
  }
}

// A pad (an integer translation into a larger output) keeps the source exactly where it lands and
// fills every side through the border: the fill value (cast to the dtype) for kConstant, else the
// source pixel the border mode maps the position to, with either interpolation. Pads wider than
// the source reach several periods of reflect and wrap.
TEST(WarpOutputSizes, PadPlacesTheSourceAndResolvesEveryBorder) {
  struct Pad {
    int64_t top, left, bottom, right;
  };
  const Pad pads[] = {{3, 4, 2, 9}, {0, 0, 5, 0}, {6, 1, 0, 0}, {12, 15, 12, 15}, {0, 70, 0, 1}};
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    for (int64_t c : {1, 3, 4}) {
      const BatchShape shape{2, 5, 7, c};
      double lo, hi;
      testing::DefaultRange(dtype, &lo, &hi);
      const Buffer src = RandomBuffer(dtype, shape, 30 + c, lo, hi);
      const std::vector<double> values = reference::ToDoubles(src.view());
      const double fill = 300.7;
      const double cast_fill = CastDouble(fill, dtype);
      for (const Pad& p : pads) {
        const int64_t oh = shape.h + p.top + p.bottom;
        const int64_t ow = shape.w + p.left + p.right;
        for (Border border : {Border::kConstant, Border::kEdge, Border::kReflect,
                              Border::kReflect101, Border::kWrap}) {
          std::vector<double> want;
          for (int64_t n = 0; n < shape.n; ++n) {
            for (int64_t i = 0; i < oh; ++i) {
              for (int64_t j = 0; j < ow; ++j) {
                const int64_t y = ResolveBorder(i - p.top, shape.h, border);
                const int64_t x = ResolveBorder(j - p.left, shape.w, border);
                for (int64_t k = 0; k < c; ++k) {
                  want.push_back(x < 0 || y < 0
                                     ? cast_fill
                                     : values[((n * shape.h + y) * shape.w + x) * c + k]);
                }
              }
            }
          }
          for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
            const Buffer out = RunSized(src, oh, ow, {Translate(-p.left, -p.top)},
                                        WarpParams{interp, border, fill});
            EXPECT_EQ(reference::ToDoubles(out.view()), want)
                << DTypeName(dtype) << " c " << c << " pad " << p.top << "," << p.left << ","
                << p.bottom << "," << p.right << " border " << BorderName(border) << " interp "
                << static_cast<int>(interp);
          }
        }
      }
    }
  }
}

// An independent check of the resize convention: cv::resize with INTER_LINEAR uses the same
// half-pixel centres as torchvision and clamps taps to the image (the edge border). float32:
// OpenCV blends with float weights, so only float rounding differs (values in [0, 1]: 1e-5).
// uint8: OpenCV's weights are fixed-point (11 bits), so a result may land one level off.
TEST(WarpOutputSizes, ResizeAgreesWithOpenCv) {
  const BatchShape shape{1, 48, 64, 3};
  for (DType dtype : {DType::kFloat32, DType::kUInt8}) {
    const double scale = dtype == DType::kUInt8 ? 255.0 : 1.0;
    const double tol = dtype == DType::kUInt8 ? 1.0 : 1e-5;
    const Buffer src = SmoothImage(dtype, shape, scale);
    const cv::Mat cv_src(static_cast<int>(shape.h), static_cast<int>(shape.w),
                         dtype == DType::kUInt8 ? CV_8UC3 : CV_32FC3,
                         const_cast<void*>(src.view().data));
    for (const auto& [oh, ow] :
         std::vector<std::pair<int, int>>{{20, 30}, {101, 77}, {48, 129}, {17, 64}, {1, 5}}) {
      SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " -> ", oh, "x", ow));
      const Affine map = ResizeMap(shape.h, shape.w, oh, ow);
      const Buffer ours =
          RunSized(src, oh, ow, {map}, WarpParams{Interp::kBilinear, Border::kEdge, 0});
      cv::Mat cv_dst;
      cv::resize(cv_src, cv_dst, cv::Size(ow, oh), 0, 0, cv::INTER_LINEAR);
      const ConstTensorView cv_view{dtype, BatchShape{1, oh, ow, 3}, cv_dst.data};
      EXPECT_LE(MaxAbsDiff(reference::ToDoubles(ours.view()), reference::ToDoubles(cv_view)), tol);
    }
  }
}

// ---- Every row loop this CPU has writes the portable loops' bits -------------------------------

// Maps that reach every path of the row loops: interior pixels, taps straddling each edge, the
// image's last pixel as a bottom-right tap (the vector loads' one guarded case), walks in all four
// directions, magnifications, minifications, translations out of the image, and far or
// non-finite positions.
std::vector<Affine> IsaMaps(int64_t h, int64_t w) {
  std::vector<Affine> maps;
  for (double angle : {0.0, 30.0, -71.0, 90.0, 135.0, 180.0, 211.0, 300.5}) {
    maps.push_back(RotationInverse(angle, h, w));
    maps.push_back(FlipInverse(true, false, h, w).Then(RotationInverse(angle, h, w)));
    maps.push_back(FlipInverse(false, true, h, w).Then(RotationInverse(angle, h, w)));
  }
  Affine shift;  // a half-pixel shift: the last pixel is the bottom-right tap of (w-2, h-2)
  shift.m[2] = 0.5;
  shift.m[5] = 0.5;
  maps.push_back(shift);
  Affine zoom;  // magnify 3x about the origin, then move 40% out of the image
  zoom.m[0] = 1.0 / 3;
  zoom.m[4] = 1.0 / 3;
  zoom.m[2] = -0.4 * static_cast<double>(w);
  zoom.m[5] = 0.25;
  maps.push_back(zoom);
  Affine shrink;  // minify 2.7x with a shear
  shrink.m[0] = 2.7;
  shrink.m[1] = 0.3;
  shrink.m[3] = -0.2;
  shrink.m[4] = 2.7;
  shrink.m[5] = -3.25;
  maps.push_back(shrink);
  // sx = -0.0 at x = 0 (every other x is left of the image): with the source's -0.0 at (0, 0),
  // the blend's sign of zero shows whether fx kept the sign the scalar code gives it.
  Affine negative_zero;
  negative_zero.m[0] = -1.0;
  negative_zero.m[1] = -0.0;
  negative_zero.m[2] = -0.0;
  maps.push_back(negative_zero);
  Affine far;  // far positions beyond a few columns
  far.m[0] = 1e15;
  maps.push_back(far);
  Affine nan;
  nan.m[2] = std::nan("");
  maps.push_back(nan);
  Affine inf;
  inf.m[4] = INFINITY;
  maps.push_back(inf);
  return maps;
}

// Bytes of a warp result with every float32 NaN made one NaN: the row loops promise the same
// bits except for which NaN a blend of two NaN-making taps yields (warp_isa.h).
std::vector<unsigned char> NanFolded(const Buffer& b) {
  std::vector<unsigned char> bytes = b.bytes();
  if (b.dtype() == DType::kFloat32) {
    for (size_t i = 0; i + 4 <= bytes.size(); i += 4) {
      float f;
      std::memcpy(&f, &bytes[i], 4);
      if (std::isnan(f)) {
        const uint32_t canonical = 0x7fc00000u;
        std::memcpy(&bytes[i], &canonical, 4);
      }
    }
  }
  return bytes;
}

TEST(WarpIsa, EveryIsaWritesThePortableBits) {
  if (!WarpIsaSupported(WarpIsa::kAvx2)) GTEST_SKIP() << "this CPU has no AVX2";
  const std::vector<std::pair<int64_t, int64_t>> sizes = {{1, 1},   {2, 2},   {3, 5}, {7, 2},
                                                          {17, 13}, {9, 16}, {70, 131}};
  int checked = 0;
  for (DType dtype : {DType::kUInt8, DType::kFloat32, DType::kFloat16, DType::kInt32}) {
    for (int64_t c : {1, 2, 3, 4}) {
      for (const auto& [h, w] : sizes) {
        const BatchShape shape{1, h, w, c};
        double lo, hi;
        testing::DefaultRange(dtype, &lo, &hi);
        Buffer src = RandomBuffer(dtype, shape, 7 + h * 31 + w + c, lo, hi);
        if (dtype == DType::kFloat32) {  // signed zeros and non-finite taps propagate alike
          auto* f = static_cast<float*>(src.mutable_view().data);
          const int64_t e = shape.elements();
          f[0] = -0.0f;
          if (e > 5) f[e / 2] = std::nanf("");
          if (e > 7) f[e / 3] = -INFINITY;
          if (e > 11) f[e - 1] = -0.0f;
          if (e > 20) {  // a NaN beside an infinity: both make NaNs in one blend
            const uint32_t payload = 0x7fc00001u;
            std::memcpy(&f[e / 4], &payload, 4);
            f[e / 4 + c] = INFINITY;
          }
        }
        for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
          for (Border border : {Border::kConstant, Border::kEdge, Border::kReflect,
                                Border::kReflect101, Border::kWrap}) {
            // Fills: in range, and for the edge and constant borders' fill paths also out of
            // uint8's range, NaN, infinite and -0.
            const double fills[] = {77.0, -0.5, 300.7, -5.0, std::nan(""), -INFINITY, -0.0};
            const double fill = fills[(h + w + c + static_cast<int>(border) * 3 +
                                       static_cast<int>(interp)) % 7];
            const WarpParams params{interp, border, fill};
            for (const Affine& map : IsaMaps(h, w)) {
              Buffer portable(dtype, shape);
              Buffer avx2(dtype, shape);
              WarpAffineRowsCpuIsa(WarpIsa::kPortable, src.view(), 0, 0, h, map, params,
                                   portable.mutable_view().data);
              WarpAffineRowsCpuIsa(WarpIsa::kAvx2, src.view(), 0, 0, h, map, params,
                                   avx2.mutable_view().data);
              Buffer streamed(dtype, shape);
              WarpAffineRowsCpuIsa(WarpIsa::kAvx2, src.view(), 0, 0, h, map, params,
                                   streamed.mutable_view().data, WarpStores::kStreamed);
              ASSERT_EQ(avx2.bytes(), streamed.bytes()) << "non-temporal stores";
              ASSERT_EQ(NanFolded(portable), NanFolded(avx2))
                  << testing::ShapeName(shape) << " dtype " << static_cast<int>(dtype)
                  << " interp " << static_cast<int>(interp) << " border " << BorderName(border)
                  << " map " << map.m[0] << " " << map.m[1] << " " << map.m[2] << " " << map.m[3]
                  << " " << map.m[4] << " " << map.m[5];
              ++checked;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 4 * 4 * 7 * 2 * 5 * 31);
}

// Maps for outputs of out_h x out_w from an h x w source: a subset of IsaMaps (rotations with and
// without mirrors, and every special map) plus resizes, crops and pads into the output.
std::vector<Affine> SizedIsaMaps(int64_t h, int64_t w, int64_t out_h, int64_t out_w) {
  const std::vector<Affine> all = IsaMaps(h, w);
  std::vector<Affine> maps;
  for (size_t i = 0; i < all.size(); ++i) {
    if (i >= 24 || i % 8 == 1 || i % 8 == 5) maps.push_back(all[i]);  // 30 and 135 degrees
  }
  maps.push_back(ResizeMap(h, w, out_h, out_w));
  maps.push_back(ResizedCropMap(0.3 * h, 0.2 * w, 0.5 * h, 0.7 * w, out_h, out_w));
  maps.push_back(Translate((w - out_w) / 2, (h - out_h) / 2));
  maps.push_back(Translate(-5, -3));
  maps.push_back(RotationInverse(-20, h, w).Then(ResizeMap(h, w, out_h, out_w)));
  return maps;
}

// The row loops at output sizes other than the source's: smaller and larger, one row, one
// column, widths that are and are not whole column blocks. Every ISA and kind of store writes the
// portable bits, and nothing after the last output row.
TEST(WarpIsa, OtherOutputSizesWriteThePortableBits) {
  if (!WarpIsaSupported(WarpIsa::kAvx2)) GTEST_SKIP() << "this CPU has no AVX2";
  const std::vector<std::pair<int64_t, int64_t>> sizes = {
      {1, 1}, {3, 5}, {17, 13}, {9, 16}, {70, 131}};
  int checked = 0;
  for (DType dtype : {DType::kUInt8, DType::kFloat32}) {
    for (int64_t c : {1, 3, 4}) {
      for (const auto& [h, w] : sizes) {
        const BatchShape shape{1, h, w, c};
        Buffer src = RandomBuffer(dtype, shape, 3 + h * 31 + w + c, dtype == DType::kUInt8 ? 0 : -1,
                                  dtype == DType::kUInt8 ? 255 : 1);
        if (dtype == DType::kFloat32 && shape.elements() > 11) {
          auto* f = static_cast<float*>(src.mutable_view().data);
          f[0] = -0.0f;
          f[shape.elements() / 2] = std::nanf("");
          f[shape.elements() / 3] = INFINITY;
        }
        for (const auto& [oh, ow] : std::vector<std::pair<int64_t, int64_t>>{{1, 1},
                                                                             {1, 67},
                                                                             {33, 1},
                                                                             {h / 2 + 1, w / 3 + 1},
                                                                             {2 * h + 1, 2 * w + 9},
                                                                             {5, 64}}) {
          const BatchShape out_shape{1, oh, ow, c};
          const size_t out_bytes = static_cast<size_t>(out_shape.elements()) * DTypeSize(dtype);
          for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
            for (Border border : {Border::kConstant, Border::kEdge, Border::kReflect,
                                  Border::kReflect101, Border::kWrap}) {
              const double fills[] = {77.0, -0.5, 300.7, std::nan(""), -0.0};
              const WarpParams params{interp, border,
                                      fills[(oh + ow + c + static_cast<int>(border)) % 5]};
              for (const Affine& map : SizedIsaMaps(h, w, oh, ow)) {
                Buffer portable(dtype, out_shape);
                WarpAffineRowsCpuIsa(WarpIsa::kPortable, src.view(), 0, 0, oh, ow, map, params,
                                     portable.mutable_view().data);
                for (WarpStores stores : {WarpStores::kCached, WarpStores::kStreamed}) {
                  // Guard bytes after the output: the loops write out_h rows of out_w pixels.
                  std::vector<unsigned char> out(out_bytes + 64, 0xa5);
                  WarpAffineRowsCpuIsa(WarpIsa::kAvx2, src.view(), 0, 0, oh, ow, map, params,
                                       out.data(), stores);
                  for (size_t i = out_bytes; i < out.size(); ++i) ASSERT_EQ(out[i], 0xa5);
                  Buffer avx2(dtype, out_shape);
                  std::memcpy(avx2.mutable_view().data, out.data(), out_bytes);
                  ASSERT_EQ(NanFolded(portable), NanFolded(avx2))
                      << testing::ShapeName(shape) << " -> " << oh << "x" << ow << " dtype "
                      << DTypeName(dtype) << " interp " << static_cast<int>(interp) << " border "
                      << BorderName(border) << " streamed " << (stores == WarpStores::kStreamed)
                      << " map " << map.m[0] << " " << map.m[1] << " " << map.m[2] << " "
                      << map.m[3] << " " << map.m[4] << " " << map.m[5];
                }
                ++checked;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 2 * 3 * 5 * 6 * 2 * 5 * 18);
}

// Bands of rows (the CPU backend's fused path), on every ISA, write what the portable loops
// write for the whole image, including bands that start and end inside a column block's walk,
// one-channel rows (the fused edge-border rows and the gathers) and the fill paths.
TEST(WarpIsa, BandsEqualPortableWholeImage) {
  for (int64_t c : {1, 3}) {
    const BatchShape shape{2, 45, 128, c};
    for (DType dtype : {DType::kUInt8, DType::kFloat32}) {
      const Buffer src = RandomBuffer(dtype, shape, 5, 0, dtype == DType::kUInt8 ? 255 : 1);
      for (Border border : {Border::kEdge, Border::kConstant, Border::kReflect101}) {
        for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
          const WarpParams params{interp, border, 9};
          for (const Affine& map : {RotationInverse(-23, shape.h, shape.w),
                                    FlipInverse(true, true, shape.h, shape.w)
                                        .Then(RotationInverse(37, shape.h, shape.w))}) {
            const int64_t row_bytes = shape.w * shape.c * DTypeSize(dtype);
            Buffer whole(dtype, shape);
            auto* wb = static_cast<unsigned char*>(whole.mutable_view().data);
            for (int64_t n = 0; n < shape.n; ++n) {
              WarpAffineRowsCpuIsa(WarpIsa::kPortable, src.view(), n, 0, shape.h, map, params,
                                   wb + n * shape.h * row_bytes);
            }
            for (WarpIsa isa : {WarpIsa::kPortable, WarpIsa::kAvx2}) {
              if (!WarpIsaSupported(isa)) continue;
              Buffer banded(dtype, shape);
              auto* bb = static_cast<unsigned char*>(banded.mutable_view().data);
              for (int64_t n = 0; n < shape.n; ++n) {
                for (int64_t y = 0; y < shape.h; y += 7) {
                  const int64_t end = std::min<int64_t>(shape.h, y + 7);
                  WarpAffineRowsCpuIsa(isa, src.view(), n, y, end, map, params,
                                       bb + (n * shape.h + y) * row_bytes);
                }
              }
              EXPECT_EQ(whole.bytes(), banded.bytes())
                  << "isa " << static_cast<int>(isa) << " c " << c << " border "
                  << BorderName(border) << " interp " << static_cast<int>(interp);
            }
          }
        }
      }
    }
  }
}

// Bands of an output narrower or wider than the source, through the public row entry point
// (the CPU backend's fused path) and every ISA, write what the portable loops write for the whole
// output, and what WarpAffineCpu writes.
TEST(WarpIsa, BandsAtOtherOutputSizesEqualPortableWholeImage) {
  for (int64_t c : {1, 3}) {
    const BatchShape shape{2, 45, 128, c};
    for (DType dtype : {DType::kUInt8, DType::kFloat32, DType::kFloat16}) {
      const Buffer src = RandomBuffer(dtype, shape, 6, 0, dtype == DType::kUInt8 ? 255 : 1);
      for (const auto& [oh, ow] :
           std::vector<std::pair<int64_t, int64_t>>{{37, 150}, {60, 20}, {1, 200}, {50, 1}}) {
        const BatchShape out_shape{2, oh, ow, c};
        const int64_t row_bytes = ow * c * DTypeSize(dtype);
        for (Border border : {Border::kEdge, Border::kConstant, Border::kReflect101}) {
          for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
            const WarpParams params{interp, border, 9};
            const std::vector<Affine> maps = {
                ResizeMap(shape.h, shape.w, oh, ow),
                RotationInverse(37, shape.h, shape.w).Then(Translate(-7, 4))};
            Buffer whole(dtype, out_shape);
            auto* wb = static_cast<unsigned char*>(whole.mutable_view().data);
            for (int64_t n = 0; n < shape.n; ++n) {
              WarpAffineRowsCpuIsa(WarpIsa::kPortable, src.view(), n, 0, oh, ow, maps[n], params,
                                   wb + n * oh * row_bytes);
            }
            Buffer kernel(dtype, out_shape);
            ASSERT_TRUE(
                WarpAffineCpu(src.view(), kernel.mutable_view(), maps, params, nullptr).ok());
            EXPECT_EQ(whole.bytes(), kernel.bytes());
            for (int isa = -1; isa < 2; ++isa) {  // -1: WarpAffineRowsCpu's own choice
              if (isa >= 0 && !WarpIsaSupported(static_cast<WarpIsa>(isa))) continue;
              Buffer banded(dtype, out_shape);
              auto* bb = static_cast<unsigned char*>(banded.mutable_view().data);
              for (int64_t n = 0; n < shape.n; ++n) {
                for (int64_t y = 0; y < oh; y += 7) {
                  const int64_t end = std::min<int64_t>(oh, y + 7);
                  void* rows = bb + (n * oh + y) * row_bytes;
                  if (isa < 0) {
                    WarpAffineRowsCpu(src.view(), n, y, end, ow, maps[n], params, rows);
                  } else {
                    WarpAffineRowsCpuIsa(static_cast<WarpIsa>(isa), src.view(), n, y, end, ow,
                                         maps[n], params, rows);
                  }
                }
              }
              EXPECT_EQ(whole.bytes(), banded.bytes())
                  << "isa " << isa << " " << DTypeName(dtype) << " c " << c << " -> " << oh << "x"
                  << ow << " border " << BorderName(border) << " interp "
                  << static_cast<int>(interp);
            }
          }
        }
      }
    }
  }
}

// The vector loads and gathers never read past a sample's last byte: the image ends right before
// a page that may not be read, and every map, border and interpolation runs over it, into an
// output of the source's size and of other sizes.
TEST(WarpIsa, NoReadPastTheSample) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* mapping = mmap(nullptr, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
  ASSERT_NE(mapping, MAP_FAILED);
  auto* base = static_cast<unsigned char*>(mapping);
  ASSERT_EQ(mprotect(base + 2 * page, page, PROT_NONE), 0);
  int runs = 0;
  for (DType dtype : {DType::kUInt8, DType::kFloat32}) {
    for (int64_t c : {1, 3, 4}) {
      for (const auto& [h, w] :
           std::vector<std::pair<int64_t, int64_t>>{{2, 2}, {9, 11}, {23, 17}, {12, 16}, {5, 64}}) {
        const BatchShape shape{1, h, w, c};
        const size_t bytes = static_cast<size_t>(shape.elements()) * DTypeSize(dtype);
        ASSERT_LE(bytes, 2 * page);
        const Buffer random = RandomBuffer(dtype, shape, 3, 0, dtype == DType::kUInt8 ? 255 : 1);
        unsigned char* data = base + 2 * page - bytes;  // the last byte touches the guard page
        std::memcpy(data, random.bytes().data(), bytes);
        const ConstTensorView src{dtype, shape, data};
        for (WarpIsa isa : {WarpIsa::kPortable, WarpIsa::kAvx2}) {
          if (!WarpIsaSupported(isa)) continue;
          for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
            for (Border border : {Border::kConstant, Border::kEdge, Border::kReflect,
                                  Border::kReflect101, Border::kWrap}) {
              for (const Affine& map : IsaMaps(h, w)) {
                Buffer out(dtype, shape);
                WarpAffineRowsCpuIsa(isa, src, 0, 0, h, map, WarpParams{interp, border, 0},
                                     out.mutable_view().data);
                ++runs;
              }
              // Outputs of other sizes read the same source: one row, one column, larger.
              for (const auto& [oh, ow] : std::vector<std::pair<int64_t, int64_t>>{
                       {1, 2 * w + 5}, {2 * h + 3, 1}, {h / 2 + 1, w + 67}}) {
                for (const Affine& map : SizedIsaMaps(h, w, oh, ow)) {
                  Buffer out(dtype, BatchShape{1, oh, ow, c});
                  WarpAffineRowsCpuIsa(isa, src, 0, 0, oh, ow, map, WarpParams{interp, border, 0},
                                       out.mutable_view().data);
                  ++runs;
                }
              }
            }
          }
        }
      }
    }
  }
  munmap(mapping, 3 * page);
  EXPECT_GT(runs, 0);
}

// A result of 16 MiB and more goes out with non-temporal stores: the same bits as the portable
// loops write, across bands and threads.
TEST(WarpIsa, LargeResultsStreamedEqualPortable) {
  const BatchShape shape{1, 1200, 1200, 3};  // 17.3 MB of float32
  const Buffer src = RandomBuffer(DType::kFloat32, shape, 11, -1, 1);
  const Affine map = RotationInverse(30, shape.h, shape.w);
  const WarpParams params{Interp::kBilinear, Border::kEdge, 0};
  Buffer portable(DType::kFloat32, shape);
  WarpAffineRowsCpuIsa(WarpIsa::kPortable, src.view(), 0, 0, shape.h, map, params,
                       portable.mutable_view().data);
  ThreadPool pool(2);
  Buffer out(DType::kFloat32, shape);
  ASSERT_TRUE(WarpAffineCpu(src.view(), out.mutable_view(), {&map, 1}, params, &pool).ok());
  EXPECT_TRUE(portable.bytes() == out.bytes());

  // The same for a resize into a larger output (18.4 MB) of a source that is not (2.9 MB).
  const BatchShape small{1, 500, 480, 3};
  const Buffer src2 = RandomBuffer(DType::kFloat32, small, 12, -1, 1);
  const BatchShape big{1, 1250, 1230, 3};
  const Affine up = ResizeMap(small.h, small.w, big.h, big.w);
  Buffer portable2(DType::kFloat32, big);
  WarpAffineRowsCpuIsa(WarpIsa::kPortable, src2.view(), 0, 0, big.h, big.w, up, params,
                       portable2.mutable_view().data);
  Buffer out2(DType::kFloat32, big);
  ASSERT_TRUE(WarpAffineCpu(src2.view(), out2.mutable_view(), {&up, 1}, params, &pool).ok());
  EXPECT_TRUE(portable2.bytes() == out2.bytes());
}

}  // namespace
}  // namespace tensorprep::kernels
