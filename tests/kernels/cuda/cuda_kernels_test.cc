// CUDA backend tests. Every case runs on two backends and compares with the shared reference
// (kernels/reference), the one oracle the CPU tests use too:
//  - kDevice: the real launch (upload, kernel, download). Skipped where no usable GPU exists.
//  - kHost: the kernels' own per-element code (kernel_math.h), fed with the launch arguments the
//    launcher prepares (prepare.h), run on the host. It checks the arithmetic, border, rounding
//    and argument packing the GPU runs, on any machine; only the thread-to-pixel mapping and the
//    transfers are left to kDevice.
// Tolerances are the CPU tests' (tests/kernels/warp_test.cc): exact for nearest, flip and
// element-wise; bilinear: +-1 for integers, 1e-5 for float32 (values within +-3.5), one binary16
// step for float16. On top of that the warp must equal the CPU backend bit for bit, and a fused
// warp + chain must equal the warp followed by the chain.
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "kernels/common/status.h"
#include "kernels/cuda/color_launch.h"
#include "kernels/cuda/cuda_api.h"
#include "kernels/cuda/kernel_math.h"
#include "kernels/cuda/prepare.h"
#include "kernels/cuda/resample_launch.h"
#include "kernels/reference/layout_reference.h"
#include "kernels/reference/reference.h"
#include "kernels/reference/resample_reference.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::kernels::cuda {
namespace {

using ::tensorprep::kernels::testing::BorderName;
using ::tensorprep::kernels::testing::Buffer;
using ::tensorprep::kernels::testing::Cast;
using ::tensorprep::kernels::testing::Clamp;
using ::tensorprep::kernels::testing::DefaultRange;
using ::tensorprep::kernels::testing::FromValues;
using ::tensorprep::kernels::testing::HalfSpacing;
using ::tensorprep::kernels::testing::Normalize;
using ::tensorprep::kernels::testing::RandomBuffer;
using ::tensorprep::kernels::testing::ShapeName;

enum class Backend { kHost, kDevice };

const char* BackendName(Backend b) { return b == Backend::kHost ? "host" : "device"; }

#define TP_SKIP_WITHOUT_DEVICE(backend)                                   \
  do {                                                                    \
    if ((backend) == Backend::kDevice && !Probe().usable) {               \
      GTEST_SKIP() << "no usable CUDA device (" << Probe().detail << ")"; \
    }                                                                     \
  } while (0)

constexpr DType kAllDTypes[] = {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16};
constexpr Border kAllBorders[] = {Border::kConstant, Border::kEdge, Border::kReflect,
                                  Border::kReflect101, Border::kWrap};
const BatchShape kShapes[] = {{1, 1, 1, 1}, {1, 2, 3, 1}, {2, 17, 13, 3},
                              {3, 8, 8, 4}, {1, 1, 7, 2}, {2, 5, 31, 5}};

// Calls f(T{}) for the element type of `t`.
template <typename F>
void WithType(DType t, F&& f) {
  switch (t) {
    case DType::kUInt8:
      return f(uint8_t{});
    case DType::kInt32:
      return f(int32_t{});
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat16:
      return f(Half{});
  }
}

bool SameValue(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// Expects got[i] within tol(want[i]) of want[i] everywhere (NaN matches NaN); reports the first
// few differences.
template <typename Tol>
void ExpectClose(const std::vector<double>& got, const std::vector<double>& want, Tol tol) {
  ASSERT_EQ(got.size(), want.size());
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double t = tol(want[i]);
    const bool ok = SameValue(got[i], want[i]) || std::fabs(got[i] - want[i]) <= t;
    if (!ok && reported++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", expected " << want[i]
                    << " (tolerance " << t << ")";
    }
  }
  EXPECT_EQ(reported, 0) << "elements differing";
}

void ExpectSame(const std::vector<double>& got, const std::vector<double>& want) {
  ExpectClose(got, want, [](double) { return 0.0; });
}

// ---- Running a launcher on either backend ----------------------------------------------------

// Device round trip: uploads `src`, calls launch(src_view, dst_view, stream) on device views,
// downloads dst (dtype `out`, shape `out_shape`), returns it as doubles. `in_place` makes dst
// alias src (then out_shape must be src's).
template <typename Launch>
absl::StatusOr<std::vector<double>> RunOnDevice(const Buffer& src, DType out,
                                                const BatchShape& out_shape, bool in_place,
                                                Launch launch) {
  TP_ASSIGN_OR_RETURN(Stream stream, Stream::Create());
  const size_t src_bytes = src.view().bytes();
  Buffer dst(out, out_shape);
  const size_t dst_bytes = dst.view().bytes();
  TP_ASSIGN_OR_RETURN(DeviceBuffer d_src, DeviceBuffer::Allocate(src_bytes));
  DeviceBuffer d_dst;
  if (!in_place) {
    TP_ASSIGN_OR_RETURN(d_dst, DeviceBuffer::Allocate(dst_bytes));
  }
  TP_RETURN_IF_ERROR(CopyToDevice(src.view().data, d_src, src_bytes, stream));
  DeviceBuffer& result = in_place ? d_src : d_dst;
  const ConstTensorView src_view{src.dtype(), src.shape(), d_src.data()};
  const TensorView dst_view{out, out_shape, result.data()};
  TP_RETURN_IF_ERROR(launch(src_view, dst_view, stream));
  TP_RETURN_IF_ERROR(CopyToHost(result, dst.mutable_view().data, dst_bytes, stream));
  TP_RETURN_IF_ERROR(Synchronize(stream));
  return reference::ToDoubles(dst.view());
}
template <typename Launch>
absl::StatusOr<std::vector<double>> RunOnDevice(const Buffer& src, DType out, bool in_place,
                                                Launch launch) {
  return RunOnDevice(src, out, src.shape(), in_place, launch);
}

// The warp (and chain) into an output of out_h x out_w pixels per sample (-1: the source's).
absl::StatusOr<std::vector<double>> RunWarp(Backend backend, const Buffer& src,
                                            absl::Span<const Affine> maps, const WarpParams& params,
                                            absl::Span<const ElementwiseOp> post_ops,
                                            int64_t out_h = -1, int64_t out_w = -1) {
  const DType out = ElementwiseOutputDType(src.dtype(), post_ops);
  const BatchShape out_shape{src.shape().n, out_h < 0 ? src.shape().h : out_h,
                             out_w < 0 ? src.shape().w : out_w, src.shape().c};
  if (backend == Backend::kDevice) {
    return RunOnDevice(src, out, out_shape, false,
                       [&](const ConstTensorView& s, const TensorView& d, Stream& stream) {
                         return post_ops.empty()
                                    ? WarpAffineCuda(s, d, maps, params, stream)
                                    : WarpElementwiseCuda(s, d, maps, params, post_ops, stream);
                       });
  }
  Buffer dst(out, out_shape);
  TP_ASSIGN_OR_RETURN(
      detail::WarpLaunch launch,
      detail::PrepareWarp("test", src.view(), dst.mutable_view(), maps, params, post_ops));
  launch.Bind(launch.blob.data());
  const detail::WarpArgs& a = launch.args;
  WithType(launch.in, [&](auto tin) {
    WithType(launch.out, [&](auto tout) {
      for (int64_t n = 0; n < a.n; ++n) {
        for (int64_t y = 0; y < a.out_h; ++y) {
          for (int64_t x = 0; x < a.out_w; ++x) {
            detail::WarpPixel<decltype(tin), decltype(tout)>(a, n, y, x);
          }
        }
      }
    });
  });
  return reference::ToDoubles(dst.view());
}

absl::StatusOr<std::vector<double>> RunFlip(Backend backend, const Buffer& src,
                                            absl::Span<const FlipFlags> flags) {
  if (backend == Backend::kDevice) {
    return RunOnDevice(src, src.dtype(), false,
                       [&](const ConstTensorView& s, const TensorView& d, Stream& stream) {
                         return FlipCuda(s, d, flags, stream);
                       });
  }
  Buffer dst(src.dtype(), src.shape());
  TP_ASSIGN_OR_RETURN(detail::FlipLaunch launch,
                      detail::PrepareFlip(src.view(), dst.mutable_view(), flags));
  launch.Bind(launch.blob.data());
  const detail::FlipArgs& a = launch.args;
  WithType(src.dtype(), [&](auto t) {
    for (int64_t n = 0; n < a.n; ++n) {
      for (int64_t y = 0; y < a.h; ++y) {
        for (int64_t x = 0; x < a.w; ++x) detail::FlipPixel<decltype(t)>(a, n, y, x);
      }
    }
  });
  return reference::ToDoubles(dst.view());
}

absl::StatusOr<std::vector<double>> RunElementwise(Backend backend, const Buffer& src,
                                                   absl::Span<const ElementwiseOp> ops,
                                                   bool in_place) {
  const DType out = ElementwiseOutputDType(src.dtype(), ops);
  if (backend == Backend::kDevice) {
    return RunOnDevice(src, out, in_place,
                       [&](const ConstTensorView& s, const TensorView& d, Stream& stream) {
                         return ElementwiseCuda(s, d, ops, stream);
                       });
  }
  Buffer copy = src;  // in place: the host run overwrites its input
  Buffer separate(out, src.shape());
  const TensorView dst =
      in_place ? TensorView{out, src.shape(), copy.mutable_view().data} : separate.mutable_view();
  TP_ASSIGN_OR_RETURN(detail::ElementwiseLaunch launch,
                      detail::PrepareElementwise(copy.view(), dst, ops));
  launch.Bind(launch.blob.data());
  const detail::ElementwiseArgs& a = launch.args;
  // The kernel's grid-stride loop with its carried channel index, for an odd number of threads.
  constexpr int64_t kThreads = 37;
  WithType(launch.in, [&](auto tin) {
    WithType(launch.out, [&](auto tout) {
      for (int64_t t = 0; t < kThreads; ++t) {
        int c = static_cast<int>(t % a.channels);
        const int step = static_cast<int>(kThreads % a.channels);
        for (int64_t i = t; i < a.total; i += kThreads) {
          detail::ElementwiseElement<decltype(tin), decltype(tout)>(a, i, c);
          c += step;
          if (c >= a.channels) c -= a.channels;
        }
      }
    });
  });
  return reference::ToDoubles(dst.as_const());
}

// ---- Warp -------------------------------------------------------------------------------------

// Per-sample maps: rotations (exact quarter turns included), flips and a general affine map.
std::vector<Affine> SampleMaps(const BatchShape& s) {
  const std::vector<Affine> pool = {
      RotationInverse(30, s.h, s.w),
      RotationInverse(90, s.h, s.w),
      RotationInverse(-47.5, s.h, s.w).Then(FlipInverse(true, false, s.h, s.w)),
      Affine{{1.3, 0.2, -1.7, -0.15, 0.8, 2.25}},
      FlipInverse(true, true, s.h, s.w),
      RotationInverse(200, s.h, s.w),
  };
  std::vector<Affine> maps;
  for (int64_t n = 0; n < s.n; ++n) maps.push_back(pool[n % pool.size()]);
  return maps;
}

double WarpTolerance(DType dtype, Interp interp, double expected) {
  if (interp == Interp::kNearest) return 0;
  switch (dtype) {
    case DType::kUInt8:
    case DType::kInt32:
      return 1;
    case DType::kFloat32:
      return 1e-5;
    case DType::kFloat16:
      return HalfSpacing(expected);
  }
  return 0;
}

// A fill outside the source range: the kCast conversion (saturation, rounding) is exercised.
double TestFill(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return 300.6;  // saturates to 255
    case DType::kInt32:
      return -1234567.5;  // ties to even
    default:
      return 3.5;
  }
}

using WarpCase = std::tuple<Backend, DType, BatchShape, Interp, Border>;

std::string WarpCaseName(const ::testing::TestParamInfo<WarpCase>& info) {
  const auto& [backend, dtype, shape, interp, border] = info.param;
  return absl::StrCat(BackendName(backend), "_", DTypeName(dtype), "_", ShapeName(shape), "_",
                      interp == Interp::kNearest ? "nearest" : "bilinear", "_", BorderName(border));
}

class WarpTest : public ::testing::TestWithParam<WarpCase> {};

TEST_P(WarpTest, MatchesReferenceAndCpu) {
  const auto [backend, dtype, shape, interp, border] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  const Buffer src = RandomBuffer(dtype, shape, 17 + shape.h * 31 + shape.w, lo, hi);
  WarpParams params;
  params.interp = interp;
  params.border = border;
  params.fill = TestFill(dtype);
  const std::vector<Affine> maps = SampleMaps(shape);

  for (const bool broadcast : {false, true}) {
    SCOPED_TRACE(broadcast ? "one map for every sample" : "one map per sample");
    const absl::Span<const Affine> used =
        broadcast ? absl::MakeConstSpan(maps).subspan(0, 1) : absl::MakeConstSpan(maps);
    auto got = RunWarp(backend, src, used, params, {});
    ASSERT_TRUE(got.ok()) << got.status();
    const std::vector<double> want = reference::WarpAffine(src.view(), used, params);
    ExpectClose(*got, want, [&](double e) { return WarpTolerance(dtype, interp, e); });

    Buffer cpu(dtype, shape);
    ASSERT_TRUE(WarpAffineCpu(src.view(), cpu.mutable_view(), used, params, nullptr).ok());
    ExpectSame(*got, reference::ToDoubles(cpu.view()));
  }
}

INSTANTIATE_TEST_SUITE_P(All, WarpTest,
                         ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                                            ::testing::ValuesIn(kAllDTypes),
                                            ::testing::ValuesIn(kShapes),
                                            ::testing::Values(Interp::kNearest, Interp::kBilinear),
                                            ::testing::ValuesIn(kAllBorders)),
                         WarpCaseName);

// Degenerate maps: far or non-finite positions sample the fill whatever the border.
TEST(WarpEdgeCases, FarAndNonFinitePositionsGiveFill) {
  for (Backend backend : {Backend::kHost, Backend::kDevice}) {
    if (backend == Backend::kDevice && !Probe().usable) continue;
    SCOPED_TRACE(BackendName(backend));
    const BatchShape shape{4, 3, 5, 2};
    const Buffer src = RandomBuffer(DType::kFloat32, shape, 5, -1, 1);
    const std::vector<Affine> maps = {Affine{{1, 0, 1e300, 0, 1, 0}},
                                      Affine{{1, 0, 0, 0, 1, -9007199254740992.0}},
                                      Affine{{1, 0, NAN, 0, 1, 0}}, Affine{{1e16, 0, 0, 0, 1, 0}}};
    for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
      for (Border border : kAllBorders) {
        WarpParams params{interp, border, 2.5};
        auto got = RunWarp(backend, src, maps, params, {});
        ASSERT_TRUE(got.ok()) << got.status();
        ExpectSame(*got, reference::WarpAffine(src.view(), maps, params));
      }
    }
  }
}

// ---- Fused warp + element-wise ----------------------------------------------------------------

std::vector<ElementwiseOp> Arith(ElementwiseKind kind, std::vector<double> a) {
  ElementwiseOp op;
  op.kind = kind;
  op.a = std::move(a);
  return {op};
}
ElementwiseOp One(ElementwiseKind kind, std::vector<double> a) { return Arith(kind, a)[0]; }

// Per-channel vector of length c: distinct, non-zero, not exactly representable in float.
std::vector<double> PerChannel(int64_t c, double base, double step) {
  std::vector<double> v;
  for (int64_t i = 0; i < c; ++i) v.push_back(base + step * static_cast<double>(i) + 0.01);
  return v;
}

// Typical post-warp chains for an input dtype (all valid for it).
std::vector<std::vector<ElementwiseOp>> FusedChains(DType dtype, int64_t c) {
  std::vector<std::vector<ElementwiseOp>> chains;
  if (IsFloating(dtype)) {
    chains.push_back({Normalize(PerChannel(c, 0.1, 0.05), PerChannel(c, 0.2, 0.03))});
    chains.push_back({One(ElementwiseKind::kMultiply, {255}),
                      One(ElementwiseKind::kAdd, PerChannel(c, 100, 1)), Clamp(true, 0, true, 255),
                      Cast(DType::kUInt8)});
  } else {
    chains.push_back({Cast(DType::kFloat32), One(ElementwiseKind::kDivide, {255}),
                      Normalize(PerChannel(c, 0.45, 0.01), PerChannel(c, 0.22, 0.01))});
    chains.push_back({One(ElementwiseKind::kDivide, {3}), Cast(DType::kFloat16)});
  }
  return chains;
}

using FusedCase = std::tuple<Backend, DType, Interp, Border>;

std::string FusedCaseName(const ::testing::TestParamInfo<FusedCase>& info) {
  const auto& [backend, dtype, interp, border] = info.param;
  return absl::StrCat(BackendName(backend), "_", DTypeName(dtype), "_",
                      interp == Interp::kNearest ? "nearest" : "bilinear", "_", BorderName(border));
}

class FusedWarpTest : public ::testing::TestWithParam<FusedCase> {};

// The fused result equals the warp's stored result run through the chain (reference chain), so
// fusion changes no rounding; with nearest the warp itself is exact, so the whole is exact.
TEST_P(FusedWarpTest, EqualsWarpThenChain) {
  const auto [backend, dtype, interp, border] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  const BatchShape shape{3, 19, 11, 3};
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  const Buffer src = RandomBuffer(dtype, shape, 99, lo, hi);
  const std::vector<Affine> maps = SampleMaps(shape);
  const WarpParams params{interp, border, TestFill(dtype)};
  auto warped = RunWarp(backend, src, maps, params, {});
  ASSERT_TRUE(warped.ok()) << warped.status();
  const Buffer warped_buffer = FromValues(dtype, shape, *warped);
  for (const auto& chain : FusedChains(dtype, shape.c)) {
    auto got = RunWarp(backend, src, maps, params, chain);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSame(*got, reference::Elementwise(warped_buffer.view(), chain));
    if (interp == Interp::kNearest) {
      const Buffer ref_warp =
          FromValues(dtype, shape, reference::WarpAffine(src.view(), maps, params));
      ExpectSame(*got, reference::Elementwise(ref_warp.view(), chain));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, FusedWarpTest,
                         ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                                            ::testing::ValuesIn(kAllDTypes),
                                            ::testing::Values(Interp::kNearest, Interp::kBilinear),
                                            ::testing::Values(Border::kConstant,
                                                              Border::kReflect101)),
                         FusedCaseName);

// ---- Warp into outputs of other sizes (resize, crop, pad) --------------------------------------

// The source box [top, top + box_h) x [left, left + box_w) resized to out_h x out_w with
// torchvision's half-pixel centres: sx = left + s * x + 0.5 * s - 0.5, s = box_w / out_w.
Affine ResizedCropMap(double top, double left, double box_h, double box_w, int64_t out_h,
                      int64_t out_w) {
  const double sx = box_w / static_cast<double>(out_w);
  const double sy = box_h / static_cast<double>(out_h);
  return Affine{{sx, 0, left + 0.5 * sx - 0.5, 0, sy, top + 0.5 * sy - 0.5}};
}

// Output pixel (x, y) samples source pixel (x + dx, y + dy): a crop, or a pad for negative offsets.
Affine Translate(int64_t dx, int64_t dy) {
  return Affine{{1, 0, static_cast<double>(dx), 0, 1, static_cast<double>(dy)}};
}

using SizedCase = std::tuple<Backend, DType, Interp, Border>;

std::string SizedCaseName(const ::testing::TestParamInfo<SizedCase>& info) {
  const auto& [backend, dtype, interp, border] = info.param;
  return absl::StrCat(BackendName(backend), "_", DTypeName(dtype), "_",
                      interp == Interp::kNearest ? "nearest" : "bilinear", "_", BorderName(border));
}

class WarpOutputSizeTest : public ::testing::TestWithParam<SizedCase> {};

// Resize-like maps (down, up, to 1 x N and N x 1), per-sample resized crops, crops and pads into
// outputs of other sizes: the reference within the CPU tests' tolerances, the CPU bit for bit,
// and a fused chain equal to the warp followed by the chain.
TEST_P(WarpOutputSizeTest, MatchesReferenceAndCpu) {
  const auto [backend, dtype, interp, border] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  const WarpParams params{interp, border, TestFill(dtype)};
  for (const BatchShape& shape :
       {BatchShape{2, 17, 13, 3}, BatchShape{3, 8, 40, 1}, BatchShape{1, 1, 7, 4}}) {
    const Buffer src = RandomBuffer(dtype, shape, 5 + shape.h + shape.w, lo, hi);
    const int64_t h = shape.h, w = shape.w;
    for (const auto& [oh, ow] : std::vector<std::pair<int64_t, int64_t>>{
             {h / 2 + 1, w / 3 + 1}, {2 * h + 3, 2 * w + 1}, {1, 37}, {29, 1}, {1, 1}}) {
      std::vector<std::vector<Affine>> map_sets = {
          {ResizedCropMap(0, 0, static_cast<double>(h), static_cast<double>(w), oh, ow)},
          {Translate((w - ow) / 2, (h - oh) / 2)},  // centre crop, or centred pad
          {Translate(-3, -2)},                      // pad top and left
          {RotationInverse(30, h, w).Then(
              ResizedCropMap(0, 0, static_cast<double>(h), static_cast<double>(w), oh, ow))},
      };
      std::vector<Affine> per_sample;
      for (int64_t n = 0; n < shape.n; ++n) {
        per_sample.push_back(ResizedCropMap(0.2 * static_cast<double>(n), 0.5,
                                            0.7 * static_cast<double>(h), 0.6 * w, oh, ow));
      }
      map_sets.push_back(per_sample);
      for (const auto& maps : map_sets) {
        SCOPED_TRACE(absl::StrCat(ShapeName(shape), " -> ", oh, "x", ow, " map[0]=(", maps[0].m[0],
                                  ", ", maps[0].m[2], ", ", maps[0].m[4], ", ", maps[0].m[5],
                                  ") maps=", maps.size()));
        auto got = RunWarp(backend, src, maps, params, {}, oh, ow);
        ASSERT_TRUE(got.ok()) << got.status();
        const std::vector<double> want = reference::WarpAffine(src.view(), maps, params, oh, ow);
        ExpectClose(*got, want, [&](double e) { return WarpTolerance(dtype, interp, e); });
        const BatchShape out_shape{shape.n, oh, ow, shape.c};
        Buffer cpu(dtype, out_shape);
        ASSERT_TRUE(WarpAffineCpu(src.view(), cpu.mutable_view(), maps, params, nullptr).ok());
        ExpectSame(*got, reference::ToDoubles(cpu.view()));

        const std::vector<ElementwiseOp> chain = FusedChains(dtype, shape.c)[0];
        auto fused = RunWarp(backend, src, maps, params, chain, oh, ow);
        ASSERT_TRUE(fused.ok()) << fused.status();
        ExpectSame(*fused, reference::Elementwise(cpu.view(), chain));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, WarpOutputSizeTest,
                         ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                                            ::testing::ValuesIn(kAllDTypes),
                                            ::testing::Values(Interp::kNearest, Interp::kBilinear),
                                            ::testing::ValuesIn(kAllBorders)),
                         SizedCaseName);

// A crop copies its box exactly on the device too (bilinear weights (1, 0, 0, 0)).
TEST(WarpOutputSize, CropIsAnExactCopyOfTheBox) {
  for (Backend backend : {Backend::kHost, Backend::kDevice}) {
    if (backend == Backend::kDevice && !Probe().usable) continue;
    SCOPED_TRACE(BackendName(backend));
    const BatchShape shape{2, 9, 70, 3};
    const Buffer src = RandomBuffer(DType::kFloat32, shape, 4, -1, 1);
    const std::vector<double> values = reference::ToDoubles(src.view());
    const int64_t top = 2, left = 60, oh = 7, ow = 10;  // touches the right and bottom edges
    std::vector<double> want;
    for (int64_t n = 0; n < shape.n; ++n) {
      for (int64_t y = top; y < top + oh; ++y) {
        for (int64_t x = left; x < left + ow; ++x) {
          for (int64_t c = 0; c < shape.c; ++c) {
            want.push_back(values[((n * shape.h + y) * shape.w + x) * shape.c + c]);
          }
        }
      }
    }
    for (Interp interp : {Interp::kNearest, Interp::kBilinear}) {
      for (Border border : kAllBorders) {
        auto got = RunWarp(backend, src, {Translate(left, top)}, WarpParams{interp, border, 2.5},
                           {}, oh, ow);
        ASSERT_TRUE(got.ok()) << got.status();
        ExpectSame(*got, want);
      }
    }
  }
}

// ---- Flip -------------------------------------------------------------------------------------

using FlipCase = std::tuple<Backend, DType, BatchShape>;

std::string FlipCaseName(const ::testing::TestParamInfo<FlipCase>& info) {
  const auto& [backend, dtype, shape] = info.param;
  return absl::StrCat(BackendName(backend), "_", DTypeName(dtype), "_", ShapeName(shape));
}

class FlipTest : public ::testing::TestWithParam<FlipCase> {};

TEST_P(FlipTest, MatchesReference) {
  const auto [backend, dtype, shape] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  const Buffer src = RandomBuffer(dtype, shape, 3 + shape.w, lo, hi);
  const FlipFlags cycle[] = {{false, false}, {true, false}, {false, true}, {true, true}};
  std::vector<FlipFlags> per_sample;
  for (int64_t n = 0; n < shape.n; ++n) per_sample.push_back(cycle[(n + 1) % 4]);
  auto got = RunFlip(backend, src, per_sample);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, reference::Flip(src.view(), per_sample));
  for (const FlipFlags& f : cycle) {
    auto one = RunFlip(backend, src, {f});
    ASSERT_TRUE(one.ok()) << one.status();
    ExpectSame(*one, reference::Flip(src.view(), {f}));
  }
}

INSTANTIATE_TEST_SUITE_P(All, FlipTest,
                         ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                                            ::testing::ValuesIn(kAllDTypes),
                                            ::testing::ValuesIn(kShapes)),
                         FlipCaseName);

// ---- Element-wise -----------------------------------------------------------------------------

struct NamedChain {
  std::string name;
  std::vector<ElementwiseOp> ops;
};

// Chains valid for `dtype` with `c` channels, covering every op, every cast and dtype changes
// inside a chain.
std::vector<NamedChain> Chains(DType dtype, int64_t c) {
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  const double span = hi - lo;
  std::vector<NamedChain> chains = {
      {"empty", {}},
      {"add_per_channel", Arith(ElementwiseKind::kAdd, PerChannel(c, 0.5, -1.25))},
      {"subtract_scalar", Arith(ElementwiseKind::kSubtract, {2.5})},
      {"multiply_scalar", Arith(ElementwiseKind::kMultiply, {1.7})},
      {"divide_per_channel", Arith(ElementwiseKind::kDivide, PerChannel(c, -3, 0.75))},
      {"clamp", {Clamp(true, lo + 0.301 * span, true, hi - 0.2513 * span)}},
      {"clamp_lo_only", {Clamp(true, lo + 0.5007 * span, false, 0)}},
      {"cast_uint8", {Cast(DType::kUInt8)}},
      {"cast_int32", {Cast(DType::kInt32)}},
      {"cast_float32", {Cast(DType::kFloat32)}},
      {"cast_float16", {Cast(DType::kFloat16)}},
      {"long_mixed",
       {One(ElementwiseKind::kMultiply, {3.3}), One(ElementwiseKind::kAdd, {-0.7}),
        Clamp(true, -100, true, 1e5), Cast(DType::kUInt8), One(ElementwiseKind::kAdd, {10}),
        Cast(DType::kFloat16), One(ElementwiseKind::kMultiply, PerChannel(c, 300, 1)),
        Clamp(false, 0, true, 60000), Cast(DType::kInt32)}},
  };
  if (IsFloating(dtype)) {
    chains.push_back({"normalize", {Normalize(PerChannel(c, 0.1, 0.05), PerChannel(c, 0.2, 0.1))}});
  } else {
    chains.push_back(
        {"cast_normalize", {Cast(DType::kFloat32), Normalize(PerChannel(c, 0.1, 0.05), {0.3})}});
  }
  return chains;
}

using ElementwiseCase = std::tuple<Backend, DType, BatchShape, bool>;

std::string ElementwiseCaseName(const ::testing::TestParamInfo<ElementwiseCase>& info) {
  const auto& [backend, dtype, shape, in_place] = info.param;
  return absl::StrCat(BackendName(backend), "_", DTypeName(dtype), "_", ShapeName(shape),
                      in_place ? "_inplace" : "");
}

class ElementwiseTest : public ::testing::TestWithParam<ElementwiseCase> {};

TEST_P(ElementwiseTest, EveryChainMatchesReference) {
  const auto [backend, dtype, shape, in_place] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  const Buffer src = RandomBuffer(dtype, shape, 11 + shape.c, lo, hi);
  for (const NamedChain& chain : Chains(dtype, shape.c)) {
    SCOPED_TRACE(chain.name);
    const DType out = ElementwiseOutputDType(dtype, chain.ops);
    if (in_place && DTypeSize(out) != DTypeSize(dtype)) continue;  // not an allowed in-place use
    auto got = RunElementwise(backend, src, chain.ops, in_place);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSame(*got, reference::Elementwise(src.view(), chain.ops));
  }
}

INSTANTIATE_TEST_SUITE_P(All, ElementwiseTest,
                         ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                                            ::testing::ValuesIn(kAllDTypes),
                                            ::testing::ValuesIn(kShapes), ::testing::Bool()),
                         ElementwiseCaseName);

// Rounding and saturation edges: ties, NaN, infinities, signed zero, the float16 limit.
TEST(ElementwiseEdgeCases, SpecialValuesMatchReference) {
  const std::vector<double> values = {0.5,
                                      1.5,
                                      2.5,
                                      -0.5,
                                      -1.5,
                                      254.5,
                                      255.5,
                                      -0.0,
                                      NAN,
                                      INFINITY,
                                      -INFINITY,
                                      65504,
                                      65519,
                                      65520,
                                      -65536,
                                      2147483520.0,
                                      3e9,
                                      -3e9,
                                      6.103515625e-05,
                                      1e-8,
                                      3.14159,
                                      1e38,
                                      -7.25,
                                      0.999999,
                                      1234.5678};
  const BatchShape shape{1, 1, static_cast<int64_t>(values.size()), 1};
  for (Backend backend : {Backend::kHost, Backend::kDevice}) {
    if (backend == Backend::kDevice && !Probe().usable) continue;
    for (DType dtype : kAllDTypes) {
      const Buffer src = FromValues(dtype, shape, values);
      for (const NamedChain& chain :
           std::vector<NamedChain>{{"cast_uint8", {Cast(DType::kUInt8)}},
                                   {"cast_int32", {Cast(DType::kInt32)}},
                                   {"cast_float32", {Cast(DType::kFloat32)}},
                                   {"cast_float16", {Cast(DType::kFloat16)}},
                                   {"add_half", Arith(ElementwiseKind::kAdd, {0.5})},
                                   {"multiply_big", Arith(ElementwiseKind::kMultiply, {1e5})},
                                   {"clamp", {Clamp(true, -2.5, true, 65519.0)}},
                                   {"divide", Arith(ElementwiseKind::kDivide, {-3})}}) {
        SCOPED_TRACE(absl::StrCat(BackendName(backend), " ", DTypeName(dtype), " ", chain.name));
        auto got = RunElementwise(backend, src, chain.ops, false);
        ASSERT_TRUE(got.ok()) << got.status();
        ExpectSame(*got, reference::Elementwise(src.view(), chain.ops));
      }
    }
  }
}

// ---- Device probing and the API without a device ----------------------------------------------

TEST(Probe, ReportsConsistentlyWithoutCrashing) {
  const DeviceInfo info = Probe();
  EXPECT_FALSE(info.detail.empty());
  if (info.usable) {
    EXPECT_GE(info.count, 1);
    EXPECT_FALSE(info.name.empty());
    EXPECT_GT(info.total_memory, 0u);
  } else {
    EXPECT_TRUE(info.name.empty());
    EXPECT_EQ(info.total_memory, 0u);
  }
  const DeviceInfo again = Probe();  // cached: the same answer
  EXPECT_EQ(again.usable, info.usable);
  EXPECT_EQ(again.detail, info.detail);
}

TEST(NoDevice, EveryCallFailsCleanly) {
  if (Probe().usable) GTEST_SKIP() << "a usable device exists: " << Probe().detail;
  auto stream = Stream::Create();
  ASSERT_FALSE(stream.ok());
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(stream.status().message().find(Probe().detail), std::string::npos);
  auto device = DeviceBuffer::Allocate(1024);
  ASSERT_FALSE(device.ok());
  EXPECT_EQ(device.status().code(), absl::StatusCode::kFailedPrecondition);
  auto pinned = PinnedBuffer::Allocate(1024);
  ASSERT_FALSE(pinned.ok());
  EXPECT_EQ(pinned.status().code(), absl::StatusCode::kFailedPrecondition);
  PinnedBuffer empty_pinned;
  EXPECT_EQ(empty_pinned.Reserve(64).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(empty_pinned.size(), 0u);

  // Valid arguments with no stream to run them on.
  Stream none;
  DeviceBuffer nothing;
  char host[16] = {};
  EXPECT_EQ(Synchronize(none).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CopyToDevice(host, nothing, 0, none).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(CopyToHost(nothing, host, 0, none).code(), absl::StatusCode::kFailedPrecondition);
  float a[12] = {}, b[12] = {};
  const ConstTensorView src{DType::kFloat32, {1, 2, 2, 3}, a};
  const TensorView dst{DType::kFloat32, {1, 2, 2, 3}, b};
  EXPECT_EQ(WarpAffineCuda(src, dst, {Affine{}}, WarpParams{}, none).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FlipCuda(src, dst, {FlipFlags{true, false}}, none).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ElementwiseCuda(src, dst, {}, none).code(), absl::StatusCode::kFailedPrecondition);
}

// Broken preconditions are INTERNAL (kernels/common/checks.h: requests are validated by the op
// registry, kernels only check invariants) before any device work, with or without a device.
TEST(Validation, BrokenPreconditionsAreInternal) {
  Stream none;
  float a[24] = {}, b[24] = {};
  const ConstTensorView src{DType::kFloat32, {2, 2, 2, 3}, a};
  const TensorView dst{DType::kFloat32, {2, 2, 2, 3}, b};
  const auto internal = absl::StatusCode::kInternal;
  const TensorView wrong_shape{DType::kFloat32, {2, 2, 3, 2}, b};
  const TensorView wrong_dtype{DType::kInt32, {2, 2, 2, 3}, b};
  const TensorView overlapping{DType::kFloat32, {2, 2, 2, 3}, a + 1};
  const TensorView null_data{DType::kFloat32, {2, 2, 2, 3}, nullptr};
  const ConstTensorView empty{DType::kFloat32, {0, 2, 2, 3}, a};
  // A misaligned device access would lose the context, so it is refused up front.
  const ConstTensorView misaligned{
      DType::kFloat32, {1, 1, 1, 3}, reinterpret_cast<const char*>(a) + 2};
  const TensorView misaligned_dst{DType::kFloat32, {1, 1, 1, 3}, b};
  const std::vector<Affine> three(3);
  const absl::Status m = FlipCuda(misaligned, misaligned_dst, {FlipFlags{}}, none);
  EXPECT_EQ(m.code(), internal);
  EXPECT_NE(m.message().find("src data is not aligned to 4 bytes"), std::string::npos) << m;
  EXPECT_EQ(WarpAffineCuda(src, wrong_shape, {Affine{}}, {}, none).code(), internal);
  // The warp's output may have another height and width, never another n or c, nor an empty side.
  const TensorView wrong_n{DType::kFloat32, {1, 2, 2, 3}, b};
  const TensorView no_rows{DType::kFloat32, {2, 0, 2, 3}, b};
  EXPECT_EQ(WarpAffineCuda(src, wrong_n, {Affine{}}, {}, none).code(), internal);
  EXPECT_EQ(WarpAffineCuda(src, no_rows, {Affine{}}, {}, none).code(), internal);
  const TensorView other_size{DType::kFloat32, {2, 1, 4, 3}, b};  // valid: fails for the stream
  EXPECT_EQ(WarpAffineCuda(src, other_size, {Affine{}}, {}, none).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(WarpAffineCuda(src, wrong_dtype, {Affine{}}, {}, none).code(), internal);
  EXPECT_EQ(WarpAffineCuda(src, overlapping, {Affine{}}, {}, none).code(), internal);
  EXPECT_EQ(WarpAffineCuda(src, null_data, {Affine{}}, {}, none).code(), internal);
  EXPECT_EQ(WarpAffineCuda(empty, dst, {Affine{}}, {}, none).code(), internal);
  EXPECT_EQ(WarpAffineCuda(src, dst, three, {}, none).code(), internal);
  EXPECT_EQ(WarpAffineCuda(src, dst, {}, {}, none).code(), internal);
  EXPECT_EQ(WarpAffineCuda(src, dst, {Affine{}}, WarpParams{static_cast<Interp>(7)}, none).code(),
            internal);
  const std::vector<ElementwiseOp> to_uint8 = {Cast(DType::kUInt8)};
  // dst must have the chain's output dtype.
  EXPECT_EQ(WarpElementwiseCuda(src, dst, {Affine{}}, {}, to_uint8, none).code(), internal);
  EXPECT_EQ(FlipCuda(src, wrong_dtype, {FlipFlags{}}, none).code(), internal);
  EXPECT_EQ(FlipCuda(src, dst, std::vector<FlipFlags>(3), none).code(), internal);
  EXPECT_EQ(FlipCuda(src, overlapping, {FlipFlags{}}, none).code(), internal);
  EXPECT_EQ(ElementwiseCuda(src, dst, Arith(ElementwiseKind::kDivide, {0}), none).code(), internal);
  EXPECT_EQ(ElementwiseCuda(src, dst, Arith(ElementwiseKind::kAdd, {1, 2}), none).code(), internal);
  EXPECT_EQ(ElementwiseCuda(src, overlapping, {}, none).code(), internal);
  const ConstTensorView ints{DType::kInt32, {2, 2, 2, 3}, a};
  const TensorView ints_out{DType::kInt32, {2, 2, 2, 3}, b};
  EXPECT_EQ(ElementwiseCuda(ints, ints_out, {Normalize({0}, {1})}, none).code(), internal);
  // Exactly in place with same-size dtypes is allowed: it fails only for want of a stream.
  const TensorView in_place{DType::kInt32, {2, 2, 2, 3}, a};
  EXPECT_EQ(ElementwiseCuda(src, in_place, {Cast(DType::kInt32)}, none).code(),
            absl::StatusCode::kFailedPrecondition);
}

// ---- Device-only behaviour ----------------------------------------------------------------------

TEST(DeviceOnly, HostPointersAreRejected) {
  if (!Probe().usable) GTEST_SKIP() << "no usable CUDA device (" << Probe().detail << ")";
  auto stream = Stream::Create();
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto device = DeviceBuffer::Allocate(12 * sizeof(float));
  ASSERT_TRUE(device.ok()) << device.status();
  float host[12] = {};
  const ConstTensorView src{DType::kFloat32, {1, 2, 2, 3}, host};
  const TensorView dst{DType::kFloat32, {1, 2, 2, 3}, device->data()};
  EXPECT_EQ(FlipCuda(src, dst, {FlipFlags{}}, *stream).code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(Synchronize(*stream).ok());
}

// Batches and rows beyond one grid's reach exercise the kernels' grid-stride loops.
TEST(DeviceOnly, LargeGridsStride) {
  if (!Probe().usable) GTEST_SKIP() << "no usable CUDA device (" << Probe().detail << ")";
  const BatchShape shape{70000, 2, 1, 1};  // more samples than gridDim.z allows
  const Buffer src = RandomBuffer(DType::kUInt8, shape, 1, 0, 255);
  auto flipped = RunFlip(Backend::kDevice, src, {FlipFlags{false, true}});
  ASSERT_TRUE(flipped.ok()) << flipped.status();
  ExpectSame(*flipped, reference::Flip(src.view(), {FlipFlags{false, true}}));
  const std::vector<Affine> maps = {FlipInverse(false, true, 2, 1)};
  const WarpParams params{Interp::kNearest, Border::kEdge, 0};
  auto warped = RunWarp(Backend::kDevice, src, maps, params, {});
  ASSERT_TRUE(warped.ok()) << warped.status();
  ExpectSame(*warped, reference::WarpAffine(src.view(), maps, params));

  // > 65535 * 256 elements: the element-wise loop wraps. 7 channels, because the capped grid's
  // stride (65535 * 256) is a multiple of 1 to 6: only then does the carried channel index move.
  const BatchShape big{1, 2100, 2100, 7};
  const Buffer values = RandomBuffer(DType::kFloat32, big, 2, -1, 1);
  const auto chain = Arith(ElementwiseKind::kAdd, PerChannel(7, 1, 2));
  auto added = RunElementwise(Backend::kDevice, values, chain, false);
  ASSERT_TRUE(added.ok()) << added.status();
  ExpectSame(*added, reference::Elementwise(values.view(), chain));
}

TEST(DeviceOnly, PinnedRoundTripAndReuse) {
  if (!Probe().usable) GTEST_SKIP() << "no usable CUDA device (" << Probe().detail << ")";
  auto stream = Stream::Create();
  ASSERT_TRUE(stream.ok()) << stream.status();
  auto pinned = PinnedBuffer::Allocate(16);
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_TRUE(pinned->Reserve(4096).ok());
  EXPECT_GE(pinned->size(), 4096u);
  ASSERT_TRUE(pinned->Reserve(8).ok());  // never shrinks
  EXPECT_GE(pinned->size(), 4096u);
  auto* bytes = static_cast<unsigned char*>(pinned->data());
  for (int i = 0; i < 4096; ++i) bytes[i] = static_cast<unsigned char>(i * 7);
  auto device = DeviceBuffer::Allocate(4096);
  ASSERT_TRUE(device.ok()) << device.status();
  ASSERT_TRUE(CopyToDevice(bytes, *device, 4096, *stream).ok());
  std::vector<unsigned char> back(4096);
  ASSERT_TRUE(CopyToHost(*device, back.data(), 4096, *stream).ok());
  ASSERT_TRUE(Synchronize(*stream).ok());
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(back[i], static_cast<unsigned char>(i * 7)) << i;
  EXPECT_EQ(CopyToDevice(bytes, *device, 4097, *stream).code(), absl::StatusCode::kInvalidArgument);
}

// ---- Element-wise with channels-first output ---------------------------------------------------

// ElementwiseCuda with channels_first on either backend; the result's bytes as doubles in memory
// order (planar).
absl::StatusOr<std::vector<double>> RunElementwiseChannelsFirst(
    Backend backend, const Buffer& src, absl::Span<const ElementwiseOp> ops) {
  const DType out = ElementwiseOutputDType(src.dtype(), ops);
  if (backend == Backend::kDevice) {
    return RunOnDevice(src, out, false,
                       [&](const ConstTensorView& s, const TensorView& d, Stream& stream) {
                         return ElementwiseCuda(s, d, ops, stream, true);
                       });
  }
  Buffer dst(out, src.shape());
  TP_ASSIGN_OR_RETURN(detail::ElementwiseLaunch launch,
                      detail::PrepareElementwise(src.view(), dst.mutable_view(), ops, true));
  launch.Bind(launch.blob.data());
  const detail::ElementwiseArgs& a = launch.args;
  WithType(launch.in, [&](auto tin) {
    WithType(launch.out, [&](auto tout) {
      // Samples and pixels in an order unlike memory order: each pixel writes only its own.
      for (int64_t n = a.samples - 1; n >= 0; --n) {
        for (int64_t p = 0; p < a.plane; p += 2) {
          detail::ElementwisePixelChannelsFirst<decltype(tin), decltype(tout)>(a, n, p);
        }
        for (int64_t p = 1; p < a.plane; p += 2) {
          detail::ElementwisePixelChannelsFirst<decltype(tin), decltype(tout)>(a, n, p);
        }
      }
    });
  });
  return reference::ToDoubles(dst.view());
}

// The W4 tail: uint8 -> float32 -> / 255 -> normalize -> float16.
std::vector<ElementwiseOp> ImageNetTail(int64_t c) {
  return {Cast(DType::kFloat32), One(ElementwiseKind::kDivide, {255}),
          Normalize(PerChannel(c, 0.485, -0.03), PerChannel(c, 0.229, -0.002)),
          Cast(DType::kFloat16)};
}

using ChannelsFirstCase = std::tuple<Backend, DType, BatchShape>;

std::string ChannelsFirstCaseName(const ::testing::TestParamInfo<ChannelsFirstCase>& info) {
  const auto& [backend, dtype, shape] = info.param;
  return absl::StrCat(BackendName(backend), "_", DTypeName(dtype), "_", ShapeName(shape));
}

class ElementwiseChannelsFirstTest : public ::testing::TestWithParam<ChannelsFirstCase> {};

// Every chain's channels-first result is the reference's NHWC result permuted by the reference's
// layout function, and the CPU backend's channels-first result.
TEST_P(ElementwiseChannelsFirstTest, EqualsPermutedReferenceAndCpu) {
  const auto [backend, dtype, shape] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  const Buffer src = RandomBuffer(dtype, shape, 23 + shape.c, lo, hi);
  std::vector<NamedChain> chains = Chains(dtype, shape.c);
  if (dtype == DType::kUInt8) chains.push_back({"imagenet_tail", ImageNetTail(shape.c)});
  for (const NamedChain& chain : chains) {
    SCOPED_TRACE(chain.name);
    auto got = RunElementwiseChannelsFirst(backend, src, chain.ops);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSame(*got,
               reference::ToChannelsFirst(reference::Elementwise(src.view(), chain.ops), shape));
    Buffer cpu(ElementwiseOutputDType(dtype, chain.ops), shape);
    ASSERT_TRUE(ElementwiseCpu(src.view(), cpu.mutable_view(), chain.ops, nullptr, true).ok());
    ExpectSame(*got, reference::ToDoubles(cpu.view()));
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, ElementwiseChannelsFirstTest,
    ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                       ::testing::ValuesIn(kAllDTypes),
                       ::testing::Values(BatchShape{1, 1, 1, 1}, BatchShape{1, 1, 1, 3},
                                         BatchShape{2, 17, 13, 3}, BatchShape{3, 8, 8, 4},
                                         BatchShape{1, 1, 7, 2}, BatchShape{2, 5, 31, 5},
                                         BatchShape{2, 29, 23, 1})),
    ChannelsFirstCaseName);

// Channels-first output is never in place; the other view checks are ElementwiseCuda's own.
TEST(Validation, ChannelsFirstPreconditionsAreInternal) {
  Stream none;
  float a[24] = {}, b[24] = {};
  const ConstTensorView src{DType::kFloat32, {2, 2, 2, 3}, a};
  const TensorView in_place{DType::kFloat32, {2, 2, 2, 3}, a};
  const TensorView overlapping{DType::kFloat32, {2, 2, 2, 3}, a + 1};
  const TensorView chw_shape{DType::kFloat32, {2, 3, 2, 2}, b};
  const TensorView dst{DType::kFloat32, {2, 2, 2, 3}, b};
  const absl::Status st = ElementwiseCuda(src, in_place, {}, none, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(std::string(st.message()),
            "ElementwiseCuda: src and dst overlap; expected distinct memory");
  EXPECT_EQ(ElementwiseCuda(src, overlapping, {}, none, true).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ElementwiseCuda(src, chw_shape, {}, none, true).code(), absl::StatusCode::kInternal);
  EXPECT_EQ(ElementwiseCuda(src, dst, {Cast(DType::kUInt8)}, none, true).code(),
            absl::StatusCode::kInternal);
  // Valid views: it fails only for want of a stream.
  EXPECT_EQ(ElementwiseCuda(src, dst, {}, none, true).code(),
            absl::StatusCode::kFailedPrecondition);
}

// More samples than gridDim.y reaches, and a plane longer than one grid row of blocks covers.
TEST(DeviceOnly, ChannelsFirstGridsStride) {
  if (!Probe().usable) GTEST_SKIP() << "no usable CUDA device (" << Probe().detail << ")";
  const BatchShape many{70000, 1, 3, 3};
  const Buffer small = RandomBuffer(DType::kUInt8, many, 3, 0, 255);
  const auto tail = ImageNetTail(3);
  auto got = RunElementwiseChannelsFirst(Backend::kDevice, small, tail);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, reference::ToChannelsFirst(reference::Elementwise(small.view(), tail), many));

  const BatchShape long_plane{1, 4097, 4097, 2};  // 16,785,409 pixels > 65535 * 256
  const Buffer big = RandomBuffer(DType::kUInt8, long_plane, 4, 0, 255);
  const std::vector<ElementwiseOp> chain = {Cast(DType::kFloat16),
                                            One(ElementwiseKind::kAdd, {0.5, -3})};
  auto planar = RunElementwiseChannelsFirst(Backend::kDevice, big, chain);
  ASSERT_TRUE(planar.ok()) << planar.status();
  ExpectSame(*planar,
             reference::ToChannelsFirst(reference::Elementwise(big.view(), chain), long_plane));
}

// ---- Antialiased resample ----------------------------------------------------------------------
// ResampleAaCuda against the reference (tolerances of tests/kernels/resample_test.cc: 1 for
// uint8 and int32, 1e-5 for float32 in [-1, 1], one binary16 step for float16) and against
// ResampleAaCpu bit for bit.

absl::StatusOr<std::vector<double>> RunResample(Backend backend, const Buffer& src, int64_t out_h,
                                                int64_t out_w, absl::Span<const ResampleMap> maps) {
  const BatchShape out_shape{src.shape().n, out_h, out_w, src.shape().c};
  Buffer dst(src.dtype(), out_shape);
  if (backend == Backend::kDevice) {
    TP_ASSIGN_OR_RETURN(Stream stream, Stream::Create());
    const size_t src_bytes = src.view().bytes(), dst_bytes = dst.view().bytes();
    TP_ASSIGN_OR_RETURN(DeviceBuffer d_src, DeviceBuffer::Allocate(src_bytes));
    TP_ASSIGN_OR_RETURN(DeviceBuffer d_dst, DeviceBuffer::Allocate(dst_bytes));
    TP_RETURN_IF_ERROR(CopyToDevice(src.view().data, d_src, src_bytes, stream));
    TP_RETURN_IF_ERROR(ResampleAaCuda({src.dtype(), src.shape(), d_src.data()},
                                      {src.dtype(), out_shape, d_dst.data()}, maps, stream));
    TP_RETURN_IF_ERROR(CopyToHost(d_dst, dst.mutable_view().data, dst_bytes, stream));
    TP_RETURN_IF_ERROR(Synchronize(stream));
    return reference::ToDoubles(dst.view());
  }
  TP_ASSIGN_OR_RETURN(detail::ResampleLaunch launch,
                      detail::PrepareResample(src.view(), dst.mutable_view(), maps));
  launch.Bind(launch.blob.data());
  const resample::PixelArgs& a = launch.args;
  WithType(src.dtype(), [&](auto t) {
    for (int64_t n = 0; n < a.n; ++n) {
      for (int64_t y = 0; y < a.out_h; ++y) {
        for (int64_t x = 0; x < a.out_w; ++x) resample::ResamplePixel<decltype(t)>(a, n, y, x);
      }
    }
  });
  return reference::ToDoubles(dst.view());
}

std::vector<double> ResampleOnCpu(const Buffer& src, int64_t out_h, int64_t out_w,
                                  absl::Span<const ResampleMap> maps) {
  Buffer dst(src.dtype(), {src.shape().n, out_h, out_w, src.shape().c});
  const absl::Status st = ResampleAaCpu(src.view(), dst.mutable_view(), maps, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return reference::ToDoubles(dst.view());
}

double ResampleTolerance(DType dtype, double expected) {
  switch (dtype) {
    case DType::kUInt8:
    case DType::kInt32:
      return 1;
    case DType::kFloat32:
      return 1e-5;
    case DType::kFloat16:
      return HalfSpacing(expected);
  }
  return 0;
}

struct ResampleCase {
  const char* name;
  BatchShape src;
  int64_t out_h, out_w;
  std::vector<ResampleMap> maps;
};

std::vector<ResampleCase> ResampleCases() {
  auto whole = [](int64_t size, int64_t out) {
    return AxisMapForWindow(0, static_cast<double>(size), out, false);
  };
  return {
      {"identity", {2, 5, 7, 3}, 5, 7, {ResampleMap{}}},
      {"shrink 2", {2, 32, 48, 1}, 16, 24, {ResampleMap{whole(48, 24), whole(32, 16)}}},
      {"shrink 3.7", {1, 37, 41, 4}, 10, 11, {ResampleMap{whole(41, 11), whole(37, 10)}}},
      {"shrink 10", {1, 50, 70, 3}, 5, 7, {ResampleMap{whole(70, 7), whole(50, 5)}}},
      {"x enlarged, y shrunk", {1, 24, 20, 3}, 9, 41, {ResampleMap{whole(20, 41), whole(24, 9)}}},
      {"to 1x1", {1, 17, 23, 2}, 1, 1, {ResampleMap{whole(23, 1), whole(17, 1)}}},
      {"crop, mirrored",
       {1, 40, 50, 3},
       7,
       9,
       {ResampleMap{AxisMapForWindow(6.5, 36, 9, true), AxisMapForWindow(11, 16.45, 7, false)}}},
      {"free maps", {1, 25, 19, 1}, 6, 7, {ResampleMap{{2.7, -1.3}, {-3.9, 23.2}}}},
      {"per-sample maps",
       {3, 36, 44, 3},
       8,
       10,
       {ResampleMap{whole(44, 10), whole(36, 8)},
        ResampleMap{AxisMapForWindow(4, 30, 10, true), AxisMapForWindow(2.5, 20, 8, false)},
        ResampleMap{AxisMapForWindow(0, 11, 10, false), AxisMapForWindow(1, 34.9, 8, true)}}},
  };
}

using ResampleParam = std::tuple<Backend, DType>;

class ResampleTest : public ::testing::TestWithParam<ResampleParam> {};

TEST_P(ResampleTest, MatchesReferenceAndCpu) {
  const auto [backend, dtype] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  double lo, hi;
  DefaultRange(dtype, &lo, &hi);
  uint64_t seed = 40;
  for (const ResampleCase& c : ResampleCases()) {
    SCOPED_TRACE(c.name);
    const Buffer src = RandomBuffer(dtype, c.src, seed++, lo, hi);
    auto got = RunResample(backend, src, c.out_h, c.out_w, c.maps);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectClose(*got, reference::ResampleAa(src.view(), c.maps, c.out_h, c.out_w),
                [&](double want) { return ResampleTolerance(dtype, want); });
    ExpectSame(*got, ResampleOnCpu(src, c.out_h, c.out_w, c.maps));
  }
}

INSTANTIATE_TEST_SUITE_P(All, ResampleTest,
                         ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                                            ::testing::ValuesIn(kAllDTypes)),
                         [](const ::testing::TestParamInfo<ResampleParam>& info) {
                           return absl::StrCat(BackendName(std::get<0>(info.param)), "_",
                                               DTypeName(std::get<1>(info.param)));
                         });

TEST(Validation, ResamplePreconditionsAreInternal) {
  Stream none;
  float a[2 * 4 * 4 * 3] = {}, b[2 * 2 * 2 * 3] = {};
  const ConstTensorView src{DType::kFloat32, {2, 4, 4, 3}, a};
  const TensorView dst{DType::kFloat32, {2, 2, 2, 3}, b};
  const ResampleMap good{AxisMapForWindow(0, 4, 2, false), AxisMapForWindow(0, 4, 2, false)};
  const auto internal = absl::StatusCode::kInternal;
  // Good arguments fail only for want of a stream.
  EXPECT_EQ(ResampleAaCuda(src, dst, {good}, none).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ResampleAaCuda(src, dst, {}, none).code(), internal);
  EXPECT_EQ(ResampleAaCuda(src, dst, {good, good, good}, none).code(), internal);
  ResampleMap zero = good;
  zero.y.scale = 0;
  EXPECT_EQ(ResampleAaCuda(src, dst, {zero}, none).code(), internal);
  ResampleMap outside = good;
  outside.x.offset = 40;
  EXPECT_EQ(ResampleAaCuda(src, dst, {outside}, none).code(), internal);
  const TensorView wrong_c{DType::kFloat32, {2, 2, 2, 1}, b};
  EXPECT_EQ(ResampleAaCuda(src, wrong_c, {good}, none).code(), internal);
  const TensorView wrong_dtype{DType::kInt32, {2, 2, 2, 3}, b};
  EXPECT_EQ(ResampleAaCuda(src, wrong_dtype, {good}, none).code(), internal);
  const TensorView overlapping{DType::kFloat32, {2, 2, 2, 3}, a + 4};
  EXPECT_EQ(ResampleAaCuda(src, overlapping, {good}, none).code(), internal);
  const TensorView misaligned{DType::kFloat32, {2, 2, 2, 3}, reinterpret_cast<char*>(b) + 2};
  const absl::Status m = ResampleAaCuda(src, misaligned, {good}, none);
  EXPECT_EQ(m.code(), internal);
  EXPECT_NE(m.message().find("dst data is not aligned to 4 bytes"), std::string::npos) << m;
}

// More samples than gridDim.z reaches, and a shrink of a large image (many taps per pixel).
TEST(DeviceOnly, ResampleGridsStrideAndLargeImages) {
  if (!Probe().usable) GTEST_SKIP() << "no usable CUDA device (" << Probe().detail << ")";
  const Buffer many = RandomBuffer(DType::kUInt8, {70000, 4, 6, 1}, 5, 0, 255);
  const std::vector<ResampleMap> halve = {
      ResampleMap{AxisMapForWindow(0, 6, 3, true), AxisMapForWindow(0, 4, 2, false)}};
  auto got = RunResample(Backend::kDevice, many, 2, 3, halve);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, ResampleOnCpu(many, 2, 3, halve));

  const Buffer big = RandomBuffer(DType::kFloat32, {2, 1500, 2000, 3}, 6, -1, 1);
  const std::vector<ResampleMap> shrink = {
      ResampleMap{AxisMapForWindow(0, 2000, 224, false), AxisMapForWindow(0, 1500, 224, false)}};
  auto small = RunResample(Backend::kDevice, big, 224, 224, shrink);
  ASSERT_TRUE(small.ok()) << small.status();
  ExpectSame(*small, ResampleOnCpu(big, 224, 224, shrink));
}

// ---- Colour -------------------------------------------------------------------------------------
// ColorCuda against ColorCpu, bit for bit: chains with contrasts anywhere (several phases), one
// chain for all samples or one per sample, 1-channel grayscale output, in place. The host runs
// run the device's per-pixel, per-row and per-sample functions (color_launch.h) phase by phase
// as the launches do. Results must be the same bits: any NaN matches any NaN (a NaN's payload is
// the hardware's), every other value must be equal with the same sign (-0 is not +0).

void ExpectSameBits(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool same = std::isnan(got[i])
                          ? std::isnan(want[i])
                          : got[i] == want[i] && std::signbit(got[i]) == std::signbit(want[i]);
    if (!same && reported++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", expected " << want[i];
    }
  }
  EXPECT_EQ(reported, 0) << "elements differing";
}

// Random chains of 0 to 5 steps of any kind (grayscale anywhere), factors within [0, 2) and now
// and then a large one; with `end_gray` every chain ends with grayscale.
std::vector<std::vector<ColorAdjust>> ColorChains(int64_t n, uint64_t seed, bool end_gray) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> factor(0.0, 2.0), hue(-0.5, 0.5);
  constexpr double kLarge[] = {5.0, 1000.0, kMaxColorFactor};
  std::vector<std::vector<ColorAdjust>> chains(static_cast<size_t>(n));
  for (auto& chain : chains) {
    const int len = static_cast<int>(rng() % 6);
    for (int k = 0; k < len; ++k) {
      const auto kind = static_cast<ColorKind>(rng() % 5);
      const double f = rng() % 8 == 0 ? kLarge[rng() % 3] : factor(rng);
      chain.push_back({kind, kind == ColorKind::kHue ? hue(rng) : f});
    }
    if (end_gray) chain.push_back({ColorKind::kGrayscale, 0});
  }
  return chains;
}

absl::StatusOr<std::vector<double>> RunColor(Backend backend, const Buffer& src, int64_t out_c,
                                             const std::vector<std::vector<ColorAdjust>>& chains,
                                             bool in_place) {
  const BatchShape out_shape{src.shape().n, src.shape().h, src.shape().w, out_c};
  Buffer dst(src.dtype(), out_shape);
  Buffer copy = src;
  const ConstTensorView in = in_place ? copy.view() : src.view();
  const TensorView out = in_place ? copy.mutable_view() : dst.mutable_view();
  if (backend == Backend::kDevice) {
    TP_ASSIGN_OR_RETURN(Stream stream, Stream::Create());
    const size_t in_bytes = in.bytes(), out_bytes = out.bytes();
    TP_ASSIGN_OR_RETURN(DeviceBuffer d_src, DeviceBuffer::Allocate(in_bytes));
    TP_ASSIGN_OR_RETURN(DeviceBuffer d_dst, DeviceBuffer::Allocate(out_bytes));
    TP_RETURN_IF_ERROR(CopyToDevice(in.data, d_src, in_bytes, stream));
    void* device_out = in_place ? d_src.data() : d_dst.data();
    TP_RETURN_IF_ERROR(ColorCuda({src.dtype(), src.shape(), d_src.data()},
                                 {src.dtype(), out_shape, device_out}, chains, stream));
    TP_RETURN_IF_ERROR(CopyToHost(in_place ? d_src : d_dst, out.data, out_bytes, stream));
    TP_RETURN_IF_ERROR(Synchronize(stream));
    return reference::ToDoubles(out.as_const());
  }
  TP_ASSIGN_OR_RETURN(detail::ColorLaunch launch, detail::PrepareColor(in, out, chains));
  launch.Bind(launch.blob.data());
  detail::ColorArgs& a = launch.args;
  std::vector<unsigned char> work(launch.work_bytes);
  if (launch.work_bytes > 0) a.work = work.data();
  std::vector<double> row_sums(static_cast<size_t>(a.n * a.h));
  std::vector<float> terms(static_cast<size_t>(a.n));
  a.row_sums = row_sums.data();
  a.terms = terms.data();
  WithType(src.dtype(), [&](auto t) {
    using T = decltype(t);
    if constexpr (!std::is_same_v<T, int32_t>) {
      for (int32_t phase = 0; phase < a.phase_count; ++phase) {
        for (int64_t n = 0; n < a.n; ++n)
          for (int64_t y = 0; y < a.h; ++y)
            for (int64_t x = 0; x < a.w; ++x) detail::ColorPixel<T>(a, phase, n, y, x);
        if (phase + 1 < a.phase_count) {
          for (int64_t n = 0; n < a.n; ++n)
            for (int64_t y = 0; y < a.h; ++y) detail::ColorRowSum<T>(a, phase, n, y);
          for (int64_t n = 0; n < a.n; ++n) detail::ColorTerm(a, phase, n);
        }
      }
    }
  });
  return reference::ToDoubles(out.as_const());
}

std::vector<double> ColorOnCpu(const Buffer& src, int64_t out_c,
                               const std::vector<std::vector<ColorAdjust>>& chains) {
  Buffer dst(src.dtype(), {src.shape().n, src.shape().h, src.shape().w, out_c});
  const absl::Status st = ColorCpu(src.view(), dst.mutable_view(), chains, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return reference::ToDoubles(dst.view());
}

using ColorParam = std::tuple<Backend, DType>;
class ColorTest : public ::testing::TestWithParam<ColorParam> {};

TEST_P(ColorTest, MatchesCpuBitForBit) {
  const auto [backend, dtype] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  const double hi = dtype == DType::kUInt8 ? 255 : 1;
  for (const BatchShape& shape :
       {BatchShape{5, 9, 13, 3}, BatchShape{3, 1, 1, 3}, BatchShape{2, 33, 70, 3}}) {
    SCOPED_TRACE(::testing::Message() << shape.n << "x" << shape.h << "x" << shape.w);
    const Buffer src = RandomBuffer(dtype, shape, 41, 0, hi);
    for (const bool gray : {false, true}) {
      const int64_t out_c = gray ? 1 : 3;
      auto per_sample = ColorChains(shape.n, 7 + shape.w, gray);
      auto got = RunColor(backend, src, out_c, per_sample, false);
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectSameBits(*got, ColorOnCpu(src, out_c, per_sample));
      // One chain for all samples, a contrast first and one later (three phases).
      std::vector<std::vector<ColorAdjust>> one = {{{ColorKind::kContrast, 0.4},
                                                    {ColorKind::kHue, 0.2},
                                                    {ColorKind::kContrast, 1.7},
                                                    {ColorKind::kSaturation, 0.5}}};
      if (gray) one[0].push_back({ColorKind::kGrayscale, 0});
      got = RunColor(backend, src, out_c, one, false);
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectSameBits(*got, ColorOnCpu(src, out_c, one));
    }
    auto in_place = RunColor(backend, src, 3, ColorChains(shape.n, 3, false), true);
    ASSERT_TRUE(in_place.ok()) << in_place.status();
    ExpectSameBits(*in_place, ColorOnCpu(src, 3, ColorChains(shape.n, 3, false)));
  }
}

// The values the formulas treat specially and the order of the contrast sum, per sample:
//  - sample 0: NaN, infinities, signed zeros, values outside [0, 1], subnormals and +-big (1e30,
//    float16 6e4) between ordinary values, through every step kind but contrast (mean NaN);
//  - sample 1: zeros except grey pixels (v, v, v) laid out so that each ordering rule of color.h
//    changes the float32 mean: rows 0 and 1 total +big and -big (in row order they cancel and the
//    later rows count; in reverse the later rows are lost); row 2 has big, -big and 0.25 in lanes
//    0, 2 and 3 (the lanes' tree loses 0.25, a left-to-right fold keeps it); row 3 has big, -big
//    and 0.5 in lane 0 at x = 0, 8, 16 (in pixel order 0.5 survives); row 4 has 1. float16's range
//    is too narrow for a double sum to lose a value and uint8 sums are exact in any order: for
//    them it is one more contrast case;
//  - sample 2: zeros of either sign, which a brightness or contrast factor above 1 keeps (-0 must
//    stay -0).
// Factors include 0, 1 and the largest accepted.
TEST_P(ColorTest, SpecialValuesLargeFactorsAndSumOrder) {
  const auto [backend, dtype] = GetParam();
  TP_SKIP_WITHOUT_DEVICE(backend);
  const BatchShape shape{3, 23, 157, 3};
  const int64_t per_sample = shape.h * shape.w * 3;
  std::vector<double> values(static_cast<size_t>(shape.n * per_sample), 0.0);
  std::mt19937_64 rng(99);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const bool half = dtype == DType::kFloat16;
  const double tiny = half ? 6e-8 : 1e-40, big = half ? 6e4 : 1e30;
  const double specials[] = {NAN, INFINITY, -INFINITY, -0.0, 0.0, -0.25,
                             1.5, 1.0,      0.5,       tiny, big, -big};
  auto grey = [&](int64_t n, int64_t y, int64_t x, double v) {
    for (int64_t c = 0; c < 3; ++c)
      values[static_cast<size_t>(((n * shape.h + y) * shape.w + x) * 3 + c)] = v;
  };
  for (int64_t i = 0; i < per_sample; ++i) {
    values[static_cast<size_t>(i)] = i % 3 == 0 ? specials[(i / 3) % 12] : unit(rng);
    values[static_cast<size_t>(2 * per_sample + i)] = (i / 3) % 2 == 0 ? -0.0 : 0.0;
  }
  grey(1, 0, 5, big);
  grey(1, 1, 9, -big);
  grey(1, 2, 0, big);
  grey(1, 2, 2, -big);
  grey(1, 2, 3, 0.25);
  grey(1, 3, 0, big);
  grey(1, 3, 8, -big);
  grey(1, 3, 16, 0.5);
  grey(1, 4, 1, 1.0);
  if (dtype == DType::kUInt8) {
    for (double& v : values) v = std::floor(unit(rng) * 256.0);
  }
  const Buffer src = FromValues(dtype, shape, values);
  const std::vector<std::vector<ColorAdjust>> chains = {
      {{ColorKind::kBrightness, 1.7},
       {ColorKind::kHue, 0.3},
       {ColorKind::kSaturation, 5.0},
       {ColorKind::kGrayscale, 0},
       {ColorKind::kHue, -0.5},
       {ColorKind::kBrightness, kMaxColorFactor},
       {ColorKind::kSaturation, 0.0}},
      {{ColorKind::kContrast, 0.5},
       {ColorKind::kSaturation, 0.3},
       {ColorKind::kContrast, 1000.0},
       {ColorKind::kHue, -0.5},
       {ColorKind::kContrast, 0.0},
       {ColorKind::kGrayscale, 0},
       {ColorKind::kContrast, 1.0},
       {ColorKind::kHue, 0.5},
       {ColorKind::kContrast, kMaxColorFactor}},
      {{ColorKind::kBrightness, 3.0}, {ColorKind::kContrast, 1.5}, {ColorKind::kBrightness, 2.0}}};
  const std::vector<double> want = ColorOnCpu(src, 3, chains);
  auto got = RunColor(backend, src, 3, chains, false);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSameBits(*got, want);
  auto in_place = RunColor(backend, src, 3, chains, true);
  ASSERT_TRUE(in_place.ok()) << in_place.status();
  ExpectSameBits(*in_place, want);
  // The first contrast alone: its output holds the mean of sample 1 (zero pixels become
  // F(0.5 * mean)), which must be the one color.h's order gives for float32.
  const std::vector<std::vector<ColorAdjust>> first = {{}, {{ColorKind::kContrast, 0.5}}, {}};
  auto first_got = RunColor(backend, src, 3, first, false);
  ASSERT_TRUE(first_got.ok()) << first_got.status();
  ExpectSameBits(*first_got, ColorOnCpu(src, 3, first));
}

INSTANTIATE_TEST_SUITE_P(All, ColorTest,
                         ::testing::Combine(::testing::Values(Backend::kHost, Backend::kDevice),
                                            ::testing::Values(DType::kUInt8, DType::kFloat32,
                                                              DType::kFloat16)),
                         [](const ::testing::TestParamInfo<ColorParam>& info) {
                           return absl::StrCat(BackendName(std::get<0>(info.param)), "_",
                                               DTypeName(std::get<1>(info.param)));
                         });

TEST(Validation, ColorPreconditionsAreInternal) {
  Stream none;
  float a[2 * 4 * 4 * 3] = {}, b[2 * 4 * 4 * 3] = {};
  const ConstTensorView src{DType::kFloat32, {2, 4, 4, 3}, a};
  const TensorView dst{DType::kFloat32, {2, 4, 4, 3}, b};
  const std::vector<std::vector<ColorAdjust>> good = {{{ColorKind::kBrightness, 1.5}}};
  const auto internal = absl::StatusCode::kInternal;
  EXPECT_EQ(ColorCuda(src, dst, good, none).code(), absl::StatusCode::kFailedPrecondition);
  const std::vector<std::vector<ColorAdjust>> three(3, good[0]);
  EXPECT_EQ(ColorCuda(src, dst, three, none).code(), internal);
  const std::vector<std::vector<ColorAdjust>> bad_hue = {{{ColorKind::kHue, 0.7}}};
  EXPECT_EQ(ColorCuda(src, dst, bad_hue, none).code(), internal);
  const TensorView one_channel{DType::kFloat32, {2, 4, 4, 1}, b};
  EXPECT_EQ(ColorCuda(src, one_channel, good, none).code(), internal);  // chain not gray-ended
  const ConstTensorView ints{DType::kInt32, {2, 4, 4, 3}, a};
  EXPECT_EQ(ColorCuda(ints, {DType::kInt32, {2, 4, 4, 3}, b}, good, none).code(), internal);
  const TensorView overlapping{DType::kFloat32, {2, 4, 4, 3}, a + 3};
  EXPECT_EQ(ColorCuda(src, overlapping, good, none).code(), internal);
  const absl::Status st = ColorCuda(src, dst, bad_hue, none);
  EXPECT_NE(st.message().find("ColorCuda"), std::string::npos) << st;
}

}  // namespace
}  // namespace tensorprep::kernels::cuda
