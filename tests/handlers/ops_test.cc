// The ops that change shapes, colours and layout (resize, crop, center_crop, pad,
// random_resized_crop, affine, random_affine, brightness, contrast, saturation, hue, grayscale,
// color_jitter, channels_first) through a Processor on the CPU backend: results against the
// kernels' double references (kernels/reference) with the maps the ops are defined by, written
// out here from torchvision's definitions; random ops independent of the batch split; aux
// tensors following the shapes; the layout; and every bad argument named. Parity with
// torchvision itself is tests/python/test_ops_parity.py (through a real server).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "handlers/backend.h"
#include "handlers/op_registry.h"
#include "handlers/processor.h"
#include "handlers/tensor_codec.h"
#include "kernels/color/color.h"
#include "kernels/reference/color_reference.h"
#include "kernels/reference/layout_reference.h"
#include "kernels/reference/reference.h"
#include "kernels/reference/resample_reference.h"
#include "kernels/resample/resample.h"
#include "tests/handlers/request_util.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::handlers {
namespace {

namespace v1 = ::tensorprep::v1;
using kernels::BatchShape;
using kernels::DType;
using kernels::testing::Buffer;
using kernels::testing::RandomBuffer;
using testing::Process;
using testing::RunResult;
using testing::Wire;

struct CpuRun {
  explicit CpuRun(bool fuse = true, uint64_t max_tensor_bytes = uint64_t{1} << 40) {
    options.plan.fuse = fuse;
    options.plan.max_tensor_bytes = max_tensor_bytes;
  }
  absl::StatusOr<RunResult> operator()(const v1::ProcessRequest& r) {
    Processor processor(options, &cpu, nullptr);
    return Process(processor, r);
  }
  kernels::ThreadPool pool{2};
  CpuBackend cpu{&pool};
  ProcessorOptions options;
};

v1::ProcessRequest Request(const Buffer& images, uint64_t seed = 1, uint64_t offset = 0) {
  v1::ProcessRequest r;
  *r.mutable_images() = Wire(images, EncodeDType(images.dtype()), false);
  r.set_seed(seed);
  r.set_sample_offset(offset);
  return r;
}

// The values of a result of `dtype` (any shape; memory order).
std::vector<double> Values(const std::string& bytes, DType dtype) {
  const int64_t count = static_cast<int64_t>(bytes.size() / kernels::DTypeSize(dtype));
  Buffer b(dtype, {1, 1, count, 1});
  std::memcpy(b.mutable_view().data, bytes.data(), bytes.size());
  return kernels::reference::ToDoubles(b.view());
}

std::vector<double> Slice(const std::vector<double>& v, size_t from, size_t count) {
  return std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(from),
                             v.begin() + static_cast<std::ptrdiff_t>(from + count));
}

// ---- resize ------------------------------------------------------------------------------------

// torchvision's resize(antialias=True) of a whole axis is the antialias filter over the window
// [0, in) (kernels/resample/resample.h): the server must give the reference's values for it.
TEST(ResizeTest, AntialiasedDownscaleIsTheFilterOverTheWholeImage) {
  for (const DType dtype : {DType::kUInt8, DType::kFloat32, DType::kFloat16}) {
    SCOPED_TRACE(kernels::DTypeName(dtype));
    const Buffer images =
        RandomBuffer(dtype, {2, 37, 53, 3}, 3, 0, dtype == DType::kUInt8 ? 255 : 1);
    v1::ProcessRequest r = Request(images);
    auto* op = r.mutable_pipeline()->add_ops()->mutable_resize();
    op->set_height(20);
    op->set_width(25);
    op->set_antialias(true);
    CpuRun run;
    auto got = run(r);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->images_shape, (std::vector<int64_t>{2, 20, 25, 3}));
    kernels::ResampleMap map;
    map.x = kernels::AxisMapForWindow(0, 53, 25, false);
    map.y = kernels::AxisMapForWindow(0, 37, 20, false);
    const std::vector<double> want =
        kernels::reference::ResampleAa(images.view(), {&map, 1}, 20, 25);
    const std::vector<double> v = Values(got->images, dtype);
    ASSERT_EQ(v.size(), want.size());
    // The reference sums in double, the kernel in float (resample.h): one step of uint8 and
    // float16 at most, float32 within its rounding.
    const double tol = dtype == DType::kUInt8 ? 1 : dtype == DType::kFloat16 ? 1e-3 : 1e-5;
    for (size_t i = 0; i < v.size(); ++i) ASSERT_NEAR(v[i], want[i], tol) << "element " << i;
  }
}

// Bilinear without antialias (and every enlargement) is torchvision's half-pixel map clamped at
// the edges: the warp with that map and the edge border.
TEST(ResizeTest, BilinearAndNearestAreTheHalfPixelAndFloorMaps) {
  const Buffer images = RandomBuffer(DType::kFloat32, {2, 9, 14, 2}, 4, 0, 1);
  for (const bool nearest : {false, true}) {
    for (const auto& [h, w] : {std::pair<int64_t, int64_t>{20, 31}, {5, 6}}) {
      SCOPED_TRACE(::testing::Message() << (nearest ? "nearest " : "bilinear ") << h << "x" << w);
      v1::ProcessRequest r = Request(images);
      auto* op = r.mutable_pipeline()->add_ops()->mutable_resize();
      op->set_height(h);
      op->set_width(w);
      op->set_interpolation(nearest ? v1::INTERPOLATION_NEAREST : v1::INTERPOLATION_BILINEAR);
      CpuRun run;
      auto got = run(r);
      ASSERT_TRUE(got.ok()) << got.status();
      const double sx = 14.0 / static_cast<double>(w), sy = 9.0 / static_cast<double>(h);
      kernels::Affine m;
      m.m[0] = sx;
      m.m[4] = sy;
      // nearest: source floor(x * s) (the warp rounds half up: x * s - 0.5 + 0.5).
      m.m[2] = nearest ? -0.5 : 0.5 * sx - 0.5;
      m.m[5] = nearest ? -0.5 : 0.5 * sy - 0.5;
      const kernels::WarpParams p{nearest ? kernels::Interp::kNearest : kernels::Interp::kBilinear,
                                  kernels::Border::kEdge, 0};
      const auto want = kernels::reference::WarpAffine(images.view(), {&m, 1}, p, h, w);
      const auto v = Values(got->images, DType::kFloat32);
      ASSERT_EQ(v.size(), want.size());
      for (size_t i = 0; i < v.size(); ++i) ASSERT_NEAR(v[i], want[i], 1e-5) << "element " << i;
    }
  }
}

// A flip after an antialiased resize is folded into its maps: the result is the resized batch
// mirrored, exactly.
TEST(ResizeTest, FlipAfterAntialiasedResizeIsTheMirroredResult) {
  const Buffer images = RandomBuffer(DType::kUInt8, {3, 64, 48, 3}, 5, 0, 255);
  v1::ProcessRequest base = Request(images);
  auto* op = base.mutable_pipeline()->add_ops()->mutable_resize();
  op->set_height(32);
  op->set_width(24);
  op->set_antialias(true);
  v1::ProcessRequest flipped = base;
  flipped.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  CpuRun run;
  auto a = run(base);
  auto b = run(flipped);
  ASSERT_TRUE(a.ok() && b.ok());
  Buffer resized(DType::kUInt8, {3, 32, 24, 3});
  std::memcpy(resized.mutable_view().data, a->images.data(), a->images.size());
  const kernels::FlipFlags h{true, false};
  EXPECT_EQ(Values(b->images, DType::kUInt8), kernels::reference::Flip(resized.view(), {&h, 1}));
}

// ---- crop, center_crop, pad ---------------------------------------------------------------------

// The values of sample n, pixel (y, x), channel c of an NHWC buffer of doubles.
double At(const std::vector<double>& v, const BatchShape& s, int64_t n, int64_t y, int64_t x,
          int64_t c) {
  return v[static_cast<size_t>(((n * s.h + y) * s.w + x) * s.c + c)];
}

TEST(CropTest, CropCenterCropAndPadCopyExactly) {
  const BatchShape s{2, 7, 10, 3};
  const Buffer images = RandomBuffer(DType::kFloat32, s, 6, -1, 1);
  const std::vector<double> src = kernels::reference::ToDoubles(images.view());
  CpuRun run;
  {  // crop
    v1::ProcessRequest r = Request(images);
    auto* c = r.mutable_pipeline()->add_ops()->mutable_crop();
    c->set_top(2);
    c->set_left(3);
    c->set_height(4);
    c->set_width(5);
    auto got = run(r);
    ASSERT_TRUE(got.ok()) << got.status();
    const auto v = Values(got->images, DType::kFloat32);
    const BatchShape o{2, 4, 5, 3};
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t y = 0; y < 4; ++y)
        for (int64_t x = 0; x < 5; ++x)
          for (int64_t c = 0; c < 3; ++c)
            ASSERT_EQ(At(v, o, n, y, x, c), At(src, s, n, y + 2, x + 3, c));
  }
  {  // center_crop larger than the image in one axis: torchvision pads by (size - S) // 2 before
    v1::ProcessRequest r = Request(images);
    auto* c = r.mutable_pipeline()->add_ops()->mutable_center_crop();
    c->set_height(10);  // 3 more rows than the image: 1 above, 2 below
    c->set_width(5);    // offset round((10 - 5) / 2) = round(2.5) = 2 (ties to even)
    c->set_fill(7);
    auto got = run(r);
    ASSERT_TRUE(got.ok()) << got.status();
    const auto v = Values(got->images, DType::kFloat32);
    const BatchShape o{2, 10, 5, 3};
    for (int64_t n = 0; n < 2; ++n)
      for (int64_t y = 0; y < 10; ++y)
        for (int64_t x = 0; x < 5; ++x)
          for (int64_t c = 0; c < 3; ++c) {
            const int64_t sy = y - 1;
            const double want = sy < 0 || sy >= 7 ? 7.0 : At(src, s, n, sy, x + 2, c);
            ASSERT_EQ(At(v, o, n, y, x, c), want) << n << " " << y << " " << x;
          }
  }
  {  // pad with every border: the warp's borders over a translation
    for (const v1::Border border : {v1::BORDER_CONSTANT, v1::BORDER_EDGE, v1::BORDER_REFLECT,
                                    v1::BORDER_REFLECT_101, v1::BORDER_WRAP}) {
      SCOPED_TRACE(v1::Border_Name(border));
      v1::ProcessRequest r = Request(images);
      auto* p = r.mutable_pipeline()->add_ops()->mutable_pad();
      p->set_top(1);
      p->set_bottom(3);
      p->set_left(4);
      p->set_right(2);
      p->set_border(border);
      p->set_fill(-5);
      auto got = run(r);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->images_shape, (std::vector<int64_t>{2, 11, 16, 3}));
      kernels::Affine t;
      t.m[2] = -4;
      t.m[5] = -1;
      const kernels::Border kb[] = {kernels::Border::kConstant,   kernels::Border::kConstant,
                                    kernels::Border::kEdge,       kernels::Border::kReflect,
                                    kernels::Border::kReflect101, kernels::Border::kWrap};
      const kernels::WarpParams params{kernels::Interp::kNearest, kb[border], -5};
      EXPECT_EQ(Values(got->images, DType::kFloat32),
                kernels::reference::WarpAffine(images.view(), {&t, 1}, params, 11, 16));
    }
  }
}

// ---- random_resized_crop
// -------------------------------------------------------------------------

v1::ProcessRequest RrcRequest(const Buffer& images, uint64_t seed, uint64_t offset,
                              bool antialias) {
  v1::ProcessRequest r = Request(images, seed, offset);
  auto* op = r.mutable_pipeline()->add_ops()->mutable_random_resized_crop();
  op->set_height(24);
  op->set_width(20);
  op->set_antialias(antialias);
  auto* flip = r.mutable_pipeline()->add_ops()->mutable_random_flip();
  flip->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  flip->set_p(0.5);
  return r;
}

// Same seed, same samples: the same result however the batch is split, with and without
// antialias; and the crops differ between samples.
TEST(RandomResizedCropTest, ResultDoesNotDependOnTheBatchSplit) {
  const BatchShape s{6, 40, 50, 3};
  const Buffer images = RandomBuffer(DType::kUInt8, s, 7, 0, 255);
  for (const bool antialias : {true, false}) {
    SCOPED_TRACE(antialias ? "antialias" : "no antialias");
    CpuRun run;
    auto whole = run(RrcRequest(images, 42, 100, antialias));
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(whole->images_shape, (std::vector<int64_t>{6, 24, 20, 3}));
    const size_t sample = 24 * 20 * 3;
    for (int64_t first = 0; first < 6; first += 2) {
      Buffer part(DType::kUInt8, {2, 40, 50, 3});
      std::memcpy(part.mutable_view().data, images.bytes().data() + first * 40 * 50 * 3,
                  part.view().bytes());
      auto got = run(RrcRequest(part, 42, 100 + static_cast<uint64_t>(first), antialias));
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->images, whole->images.substr(first * sample, 2 * sample))
          << "samples " << first << ", " << first + 1;
    }
    EXPECT_NE(whole->images.substr(0, sample), whole->images.substr(sample, sample));
  }
}

// scale (1, 1) with the image's own ratio draws the whole image: the result is resize's.
TEST(RandomResizedCropTest, WholeImageBoxIsResize) {
  const Buffer images = RandomBuffer(DType::kFloat32, {3, 30, 40, 3}, 8, 0, 1);
  for (const bool antialias : {true, false}) {
    v1::ProcessRequest rrc = Request(images);
    auto* op = rrc.mutable_pipeline()->add_ops()->mutable_random_resized_crop();
    op->set_height(12);
    op->set_width(16);
    op->set_scale_min(1);
    op->set_scale_max(1);
    op->set_ratio_min(40.0 / 30.0);
    op->set_ratio_max(40.0 / 30.0);
    op->set_antialias(antialias);
    v1::ProcessRequest resize = Request(images);
    auto* rs = resize.mutable_pipeline()->add_ops()->mutable_resize();
    rs->set_height(12);
    rs->set_width(16);
    rs->set_antialias(antialias);
    CpuRun run;
    auto a = run(rrc);
    auto b = run(resize);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->images, b->images) << (antialias ? "antialias" : "no antialias");
  }
}

// ---- affine -------------------------------------------------------------------------------------

// affine with only an angle is rotate; with only a translation, a whole-pixel move.
TEST(AffineTest, RotationAndTranslationAreTheWarpsTheyName) {
  const Buffer images = RandomBuffer(DType::kFloat32, {2, 11, 13, 3}, 9, 0, 1);
  CpuRun run;
  v1::ProcessRequest a = Request(images);
  auto* op = a.mutable_pipeline()->add_ops()->mutable_affine();
  op->set_angle_deg(33);
  op->set_border(v1::BORDER_EDGE);
  v1::ProcessRequest rot = Request(images);
  testing::AddRotate(*rot.mutable_pipeline(), 33);
  auto ga = run(a);
  auto gr = run(rot);
  ASSERT_TRUE(ga.ok() && gr.ok());
  const auto va = Values(ga->images, DType::kFloat32), vr = Values(gr->images, DType::kFloat32);
  for (size_t i = 0; i < va.size(); ++i) ASSERT_NEAR(va[i], vr[i], 1e-5) << i;

  v1::ProcessRequest t = Request(images);
  auto* tt = t.mutable_pipeline()->add_ops()->mutable_affine();
  tt->set_translate_x(3);
  tt->set_translate_y(-2);
  tt->set_interpolation(v1::INTERPOLATION_NEAREST);
  auto gt = run(t);
  ASSERT_TRUE(gt.ok());
  const auto vt = Values(gt->images, DType::kFloat32);
  const auto src = kernels::reference::ToDoubles(images.view());
  const BatchShape s = images.shape();
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t y = 0; y < 11; ++y)
      for (int64_t x = 0; x < 13; ++x) {
        const int64_t sy = y + 2, sx = x - 3;
        const double want = sy >= 11 || sx < 0 ? 0.0 : At(src, s, n, sy, sx, 1);
        ASSERT_EQ(At(vt, s, n, y, x, 1), want) << y << " " << x;
      }
}

// ---- colour ----------------------------------------------------------------------------------

std::vector<double> ColorReference(const Buffer& images,
                                   const std::vector<std::vector<kernels::ColorAdjust>>& chains,
                                   int64_t out_c) {
  return kernels::reference::Color(images.view(), chains, out_c);
}

TEST(ColorTest, EachOpIsTheKernelsDefinition) {
  for (const DType dtype : {DType::kUInt8, DType::kFloat32, DType::kFloat16}) {
    SCOPED_TRACE(kernels::DTypeName(dtype));
    const Buffer images =
        RandomBuffer(dtype, {2, 9, 11, 3}, 10, 0, dtype == DType::kUInt8 ? 255 : 1);
    struct Case {
      const char* name;
      kernels::ColorKind kind;
      double factor;
    };
    for (const Case& c : {Case{"brightness", kernels::ColorKind::kBrightness, 1.3},
                          Case{"contrast", kernels::ColorKind::kContrast, 0.6},
                          Case{"saturation", kernels::ColorKind::kSaturation, 1.7},
                          Case{"hue", kernels::ColorKind::kHue, -0.2}}) {
      SCOPED_TRACE(c.name);
      v1::ProcessRequest r = Request(images);
      v1::Op* op = r.mutable_pipeline()->add_ops();
      const auto* field = v1::Op::descriptor()->FindFieldByName(c.name);
      auto* msg = static_cast<v1::ColorFactorOp*>(op->GetReflection()->MutableMessage(op, field));
      msg->set_factor(c.factor);
      CpuRun run;
      auto got = run(r);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(Values(got->images, dtype),
                ColorReference(images, {{kernels::ColorAdjust{c.kind, c.factor}}}, 3));
    }
    for (const int channels : {1, 3}) {
      v1::ProcessRequest r = Request(images);
      r.mutable_pipeline()->add_ops()->mutable_grayscale()->set_num_output_channels(channels);
      CpuRun run;
      auto got = run(r);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->images_shape, (std::vector<int64_t>{2, 9, 11, channels}));
      EXPECT_EQ(Values(got->images, dtype),
                ColorReference(images, {{kernels::ColorAdjust{kernels::ColorKind::kGrayscale, 0}}},
                               channels));
    }
  }
}

v1::ProcessRequest JitterRequest(const Buffer& images, uint64_t seed, uint64_t offset) {
  v1::ProcessRequest r = Request(images, seed, offset);
  auto* j = r.mutable_pipeline()->add_ops()->mutable_color_jitter();
  j->set_brightness_min(0.6);
  j->set_brightness_max(1.4);
  j->set_contrast_min(0.6);
  j->set_contrast_max(1.4);
  j->set_saturation_min(0.6);
  j->set_saturation_max(1.4);
  j->set_hue_min(-0.1);
  j->set_hue_max(0.1);
  return r;
}

// Per-sample factors and orders: independent of the batch split, different between samples.
TEST(ColorTest, JitterDoesNotDependOnTheBatchSplit) {
  const Buffer images = RandomBuffer(DType::kUInt8, {4, 8, 8, 3}, 11, 0, 255);
  CpuRun run;
  auto whole = run(JitterRequest(images, 5, 0));
  ASSERT_TRUE(whole.ok()) << whole.status();
  const size_t sample = 8 * 8 * 3;
  for (int64_t i = 0; i < 4; ++i) {
    Buffer one(DType::kUInt8, {1, 8, 8, 3});
    std::memcpy(one.mutable_view().data, images.bytes().data() + i * sample, sample);
    auto got = run(JitterRequest(one, 5, static_cast<uint64_t>(i)));
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->images, whole->images.substr(i * sample, sample)) << "sample " << i;
  }
  // The same image in every sample still comes out differently: the draws are per sample.
  Buffer same(DType::kUInt8, {4, 8, 8, 3});
  for (int64_t i = 0; i < 4; ++i) {
    std::memcpy(static_cast<unsigned char*>(same.mutable_view().data) + i * sample,
                images.bytes().data(), sample);
  }
  auto s = run(JitterRequest(same, 5, 0));
  ASSERT_TRUE(s.ok());
  EXPECT_NE(s->images.substr(0, sample), s->images.substr(sample, sample));
}

// With one adjustment of a degenerate range the jitter is the fixed op; with all four, each
// sample's result is one of the 24 orders of its four factors applied in sequence.
TEST(ColorTest, JitterIsTheFixedOpsInADrawnOrder) {
  const Buffer images = RandomBuffer(DType::kFloat32, {3, 6, 7, 3}, 12, 0, 1);
  CpuRun run;
  v1::ProcessRequest one = Request(images);
  auto* j = one.mutable_pipeline()->add_ops()->mutable_color_jitter();
  j->set_saturation_min(1.6);
  j->set_saturation_max(1.6);
  auto got = run(one);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(
      Values(got->images, DType::kFloat32),
      ColorReference(images, {{kernels::ColorAdjust{kernels::ColorKind::kSaturation, 1.6}}}, 3));

  v1::ProcessRequest all = Request(images);
  auto* a = all.mutable_pipeline()->add_ops()->mutable_color_jitter();
  a->set_brightness_min(1.2);
  a->set_brightness_max(1.2);
  a->set_contrast_min(0.5);
  a->set_contrast_max(0.5);
  a->set_saturation_min(1.5);
  a->set_saturation_max(1.5);
  a->set_hue_min(0.1);
  a->set_hue_max(0.1);
  got = run(all);
  ASSERT_TRUE(got.ok());
  const auto v = Values(got->images, DType::kFloat32);
  const kernels::ColorAdjust adj[4] = {{kernels::ColorKind::kBrightness, 1.2},
                                       {kernels::ColorKind::kContrast, 0.5},
                                       {kernels::ColorKind::kSaturation, 1.5},
                                       {kernels::ColorKind::kHue, 0.1}};
  const size_t sample = 6 * 7 * 3;
  for (int64_t i = 0; i < 3; ++i) {
    Buffer one_image(DType::kFloat32, {1, 6, 7, 3});
    std::memcpy(one_image.mutable_view().data, images.bytes().data() + i * sample * 4, sample * 4);
    std::vector<int> order = {0, 1, 2, 3};
    bool matched = false;
    do {
      std::vector<kernels::ColorAdjust> chain;
      for (const int k : order) chain.push_back(adj[k]);
      matched = ColorReference(one_image, {chain}, 3) == Slice(v, i * sample, sample);
    } while (!matched && std::next_permutation(order.begin(), order.end()));
    EXPECT_TRUE(matched) << "sample " << i << " is no order of the four adjustments";
  }
}

// ---- channels_first, fusion, aux ----------------------------------------------------------------

// channels_first after any last step — element-wise (fused with a warp or not), geometric,
// colour — is the NHWC result transposed, bit for bit, fused or not.
TEST(ChannelsFirstTest, IsTheNhwcResultTransposed) {
  const Buffer images = RandomBuffer(DType::kUInt8, {3, 10, 12, 3}, 13, 0, 255);
  std::vector<v1::Pipeline> pipelines(4);
  {
    auto* rs = pipelines[0].add_ops()->mutable_resize();
    rs->set_height(7);
    rs->set_width(9);
    pipelines[0].add_ops()->mutable_cast()->set_dtype(v1::DTYPE_FLOAT32);
    auto* n = pipelines[0].add_ops()->mutable_normalize();
    n->add_mean(100);
    n->add_std(50);
  }
  pipelines[1].add_ops()->mutable_random_flip()->set_p(0.5);
  pipelines[1].mutable_ops(0)->mutable_random_flip()->set_axis(v1::FLIP_AXIS_VERTICAL);
  pipelines[2].add_ops()->mutable_brightness()->set_factor(0.7);
  {
    auto* rrc = pipelines[3].add_ops()->mutable_random_resized_crop();
    rrc->set_height(6);
    rrc->set_width(5);
    rrc->set_antialias(true);
  }
  for (const v1::Pipeline& p : pipelines) {
    SCOPED_TRACE(p.DebugString());
    for (const bool fuse : {true, false}) {
      v1::ProcessRequest nhwc = Request(images, 3);
      *nhwc.mutable_pipeline() = p;
      v1::ProcessRequest nchw = nhwc;
      nchw.mutable_pipeline()->add_ops()->mutable_channels_first();
      CpuRun run(fuse);
      auto a = run(nhwc);
      auto b = run(nchw);
      ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
      const std::vector<int64_t>& s = a->images_shape;
      EXPECT_EQ(b->images_shape, (std::vector<int64_t>{s[0], s[3], s[1], s[2]}));
      const DType out = p.ops(0).has_resize() ? DType::kFloat32 : DType::kUInt8;
      EXPECT_EQ(Values(b->images, out),
                kernels::reference::ToChannelsFirst(Values(a->images, out),
                                                    BatchShape{s[0], s[1], s[2], s[3]}));
    }
  }
}

// Pipelines of the new geometric ops give the same bytes fused and unfused (nearest sampling,
// so composition is exact), aux labels included.
TEST(FusionTest, ShapeChangingPipelinesFusedEqualUnfused) {
  const Buffer images = RandomBuffer(DType::kFloat32, {3, 20, 24, 3}, 14, 0, 1);
  const Buffer labels = RandomBuffer(DType::kInt32, {3, 20, 24, 1}, 15, 0, 9);
  v1::ProcessRequest r = Request(images, 9);
  auto* aux = r.add_aux();
  aux->set_name("mask");
  aux->set_fill(255);
  *aux->mutable_tensor() = Wire(labels, v1::DTYPE_INT32, true);
  auto* p = r.mutable_pipeline();
  auto* pad = p->add_ops()->mutable_pad();
  pad->set_top(3);
  pad->set_left(5);
  auto* crop = p->add_ops()->mutable_crop();
  crop->set_top(1);
  crop->set_left(2);
  crop->set_height(17);
  crop->set_width(19);
  p->add_ops()->mutable_random_flip()->set_p(0.5);
  p->mutable_ops(2)->mutable_random_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  auto* rs = p->add_ops()->mutable_resize();
  rs->set_height(11);
  rs->set_width(13);
  rs->set_interpolation(v1::INTERPOLATION_NEAREST);
  p->add_ops()->mutable_multiply()->add_value(2);
  p->add_ops()->mutable_channels_first();
  CpuRun fused(true), unfused(false);
  auto a = fused(r);
  auto b = unfused(r);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  EXPECT_EQ(a->images_shape, (std::vector<int64_t>{3, 3, 11, 13}));
  EXPECT_EQ(a->images, b->images);
  ASSERT_EQ(a->aux.size(), 1u);
  EXPECT_EQ(a->aux_shapes[0], (std::vector<int64_t>{3, 11, 13}));  // NHW as it came
  EXPECT_EQ(a->aux, b->aux);
}

// Aux tensors follow every geometric op with their own interpolation and fill: a mask whose
// values are its pixels' positions must come back with the positions the main batch's nearest
// copy of the same positions shows, and the fill where the image is padded.
TEST(AuxTest, MasksFollowResizeCropAndPadWithTheirOwnFill) {
  const BatchShape s{2, 16, 18, 1};
  std::vector<double> pos(static_cast<size_t>(s.elements()));
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<double>(i % (16 * 18));
  const Buffer positions = kernels::testing::FromValues(DType::kFloat32, s, pos);
  const Buffer mask = kernels::testing::FromValues(DType::kInt32, s, pos);
  v1::ProcessRequest r = Request(positions);
  auto* aux = r.add_aux();
  aux->set_name("mask");
  aux->set_fill(-1);
  aux->set_interpolation(v1::INTERPOLATION_NEAREST);
  *aux->mutable_tensor() = Wire(mask, v1::DTYPE_INT32, false);
  auto* p = r.mutable_pipeline();
  auto* rs = p->add_ops()->mutable_resize();
  rs->set_height(8);
  rs->set_width(9);
  rs->set_interpolation(v1::INTERPOLATION_NEAREST);
  auto* pad = p->add_ops()->mutable_pad();
  pad->set_top(2);
  pad->set_right(1);
  pad->set_fill(-1);
  CpuRun run;
  auto got = run(r);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->images_shape, (std::vector<int64_t>{2, 10, 10, 1}));
  EXPECT_EQ(got->aux_shapes[0], (std::vector<int64_t>{2, 10, 10, 1}));
  EXPECT_EQ(Values(got->aux[0], DType::kInt32), Values(got->images, DType::kFloat32));
  // And the values are the resize's floor map: row y of the output shows source row 2 * y.
  const auto v = Values(got->aux[0], DType::kInt32);
  EXPECT_EQ(v[0], -1);                   // padded row
  EXPECT_EQ(v[2 * 10 + 0], 0);           // output (0, 0) -> source (0, 0)
  EXPECT_EQ(v[3 * 10 + 1], 2 * 18 + 2);  // output (1, 1) -> source (2, 2)
  EXPECT_EQ(v[3 * 10 + 9], -1);          // padded column
}

// ---- bad input ----------------------------------------------------------------------------------

absl::Status PlanStatus(const v1::Pipeline& p, BatchShape shape, DType dtype = DType::kUInt8,
                        uint64_t max_bytes = uint64_t{1} << 40) {
  PlanOptions o;
  o.max_tensor_bytes = max_bytes;
  return BuildPlan(p, BatchState{shape, dtype}, 0, 0, {}, o).status();
}

void ExpectError(const v1::Pipeline& p, BatchShape shape, absl::StatusCode code,
                 const std::string& field, DType dtype = DType::kUInt8,
                 uint64_t max_bytes = uint64_t{1} << 40) {
  const absl::Status st = PlanStatus(p, shape, dtype, max_bytes);
  EXPECT_EQ(st.code(), code) << p.DebugString() << st;
  EXPECT_NE(st.message().find(field), std::string::npos)
      << "message should name " << field << ": " << st.message();
}

TEST(BadInputTest, EachRuleIsInvalidArgumentNamingTheField) {
  const BatchShape s{2, 10, 12, 3};
  const auto bad = absl::StatusCode::kInvalidArgument;
  {
    v1::Pipeline p;
    auto* c = p.add_ops()->mutable_crop();
    c->set_top(8);
    c->set_height(4);
    c->set_width(4);
    ExpectError(p, s, bad, "pipeline.ops[0].crop.top");
    c->set_top(0);
    c->set_left(-1);
    ExpectError(p, s, bad, "pipeline.ops[0].crop.left");
    c->set_left(0);
    c->set_width(0);
    ExpectError(p, s, bad, "pipeline.ops[0].crop.width");
  }
  {
    v1::Pipeline p;
    p.add_ops()->mutable_resize()->set_height(-3);
    ExpectError(p, s, bad, "pipeline.ops[0].resize.height");
  }
  {
    v1::Pipeline p;
    auto* r = p.add_ops()->mutable_random_resized_crop();
    r->set_height(4);
    r->set_width(4);
    r->set_scale_min(0.9);
    r->set_scale_max(0.5);
    ExpectError(p, s, bad, "pipeline.ops[0].random_resized_crop.scale_max");
    r->set_scale_min(0.5);
    r->set_scale_max(1);
    r->set_ratio_min(std::nan(""));
    r->set_ratio_max(1);
    ExpectError(p, s, bad, "pipeline.ops[0].random_resized_crop.ratio_min");
    r->set_ratio_min(1);
    r->set_ratio_max(INFINITY);
    ExpectError(p, s, bad, "pipeline.ops[0].random_resized_crop.ratio_max");
  }
  {
    v1::Pipeline p;
    p.add_ops()->mutable_hue()->set_factor(0.6);
    ExpectError(p, s, bad, "pipeline.ops[0].hue.factor");
    v1::Pipeline q;
    auto* j = q.add_ops()->mutable_color_jitter();
    j->set_hue_min(-0.7);
    j->set_hue_max(0.1);
    ExpectError(q, s, bad, "pipeline.ops[0].color_jitter.hue_min");
    j->set_hue_min(0.2);
    ExpectError(q, s, bad, "pipeline.ops[0].color_jitter.hue_max");
    j->set_hue_min(0);
    j->set_hue_max(0);
    j->set_brightness_min(-1);
    j->set_brightness_max(1);
    ExpectError(q, s, bad, "pipeline.ops[0].color_jitter.brightness_min");
  }
  {
    v1::Pipeline p;
    p.add_ops()->mutable_contrast()->set_factor(1.5);
    ExpectError(p, BatchShape{2, 10, 12, 1}, bad, "expected an RGB batch (C = 3), got C = 1");
    ExpectError(p, s, bad, "pipeline.ops[0].contrast", DType::kInt32);
  }
  {
    v1::Pipeline p;
    p.add_ops()->mutable_grayscale()->set_num_output_channels(2);
    ExpectError(p, s, bad, "pipeline.ops[0].grayscale.num_output_channels");
  }
  {
    v1::Pipeline p;
    p.add_ops()->mutable_channels_first();
    p.add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    ExpectError(p, s, bad, "pipeline.ops[0].channels_first");
  }
  {
    v1::Pipeline p;
    auto* a = p.add_ops()->mutable_affine();
    a->set_shear_x_deg(90);
    ExpectError(p, s, bad, "pipeline.ops[0].affine.shear_x_deg");
  }
}

// An op whose batch would exceed the tensor limit is RESOURCE_EXHAUSTED naming it, before
// anything is allocated (planning allocates nothing of the batch's size).
TEST(BadInputTest, OutputOverTheLimitIsResourceExhausted) {
  v1::Pipeline p;
  p.add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  auto* r = p.add_ops()->mutable_resize();
  r->set_height(1 << 20);
  r->set_width(1 << 20);
  ExpectError(p, BatchShape{2, 10, 12, 3}, absl::StatusCode::kResourceExhausted,
              "pipeline.ops[1].resize", DType::kUInt8, uint64_t{1} << 30);
  v1::Pipeline q;
  auto* pad = q.add_ops()->mutable_pad();
  pad->set_bottom(int64_t{1} << 31);
  ExpectError(q, BatchShape{1, 10, 12, 3}, absl::StatusCode::kInvalidArgument,
              "pipeline.ops[0].pad.bottom");
  // Through a Processor too: the server's limit applies.
  CpuRun run(true, uint64_t{1} << 20);
  v1::ProcessRequest req = Request(RandomBuffer(DType::kUInt8, {1, 4, 4, 3}, 1, 0, 255));
  auto* big = req.mutable_pipeline()->add_ops()->mutable_resize();
  big->set_height(1000);
  big->set_width(1000);
  auto got = run(req);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted) << got.status();
  EXPECT_NE(got.status().message().find("resize"), std::string::npos) << got.status();
}

}  // namespace
}  // namespace tensorprep::handlers
