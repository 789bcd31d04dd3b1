// ElementwiseCpu against the reference (exact), hand-picked rounding and saturation cases, fusion
// equal to op-by-op execution, in-place runs, the validation messages, and channels-first output
// (whole batches and ElementwiseProgram's bands) against the reference's layout permutation.
#include "kernels/elementwise/elementwise.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/common/thread_pool.h"
#include "kernels/elementwise/elementwise_program.h"
#include "kernels/reference/layout_reference.h"
#include "kernels/reference/reference.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::kernels {
namespace {

using testing::Buffer;
using testing::Normalize;
using testing::Clamp;
using testing::Cast;
using testing::FromValues;
using testing::RandomBuffer;

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

ElementwiseOp Arith(ElementwiseKind kind, std::vector<double> a) {
  ElementwiseOp op;
  op.kind = kind;
  op.a = std::move(a);
  return op;
}

// Per-channel values c0 + step * c for c in [0, channels).
std::vector<double> PerChannel(int64_t channels, double c0, double step) {
  std::vector<double> v;
  for (int64_t c = 0; c < channels; ++c) v.push_back(c0 + step * c);
  return v;
}

// Equal as values, NaN equal to NaN.
void ExpectSameValues(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const bool same = (std::isnan(got[i]) && std::isnan(want[i])) || got[i] == want[i];
    if (!same && reported++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << got[i] << ", want " << want[i];
    }
  }
}

// Chains that exercise every op on input dtype `in` with `channels` channels.
std::vector<std::vector<ElementwiseOp>> Chains(DType in, int64_t channels) {
  using K = ElementwiseKind;
  std::vector<std::vector<ElementwiseOp>> chains = {
      {Arith(K::kAdd, {1})},
      {Arith(K::kAdd, PerChannel(channels, 0.5, 1.25))},
      {Arith(K::kSubtract, PerChannel(channels, -3.3, 0.7))},
      {Arith(K::kMultiply, PerChannel(channels, 1.7, -0.45))},
      {Arith(K::kDivide, PerChannel(channels, 3.0, 1.5))},
      {Arith(K::kDivide, {-0.3})},
      {Clamp(true, -0.5, true, 100.5)},
      {Clamp(true, 7.2, false, 0)},
      {Clamp(false, 0, true, -1e10)},
      {Cast(DType::kUInt8)},
      {Cast(DType::kInt32)},
      {Cast(DType::kFloat32)},
      {Cast(DType::kFloat16)},
      {Arith(K::kMultiply, {1.7}), Arith(K::kAdd, PerChannel(channels, -3, 1)), Cast(DType::kInt32),
       Arith(K::kAdd, {0.5}), Clamp(true, -100, true, 1000), Cast(DType::kFloat16),
       Arith(K::kMultiply, {0.001}), Cast(DType::kFloat32), Arith(K::kDivide, {3}),
       Cast(DType::kUInt8)},
      {Cast(DType::kFloat16), Normalize(PerChannel(channels, 0.2, 0.1), {0.7}),
       Cast(DType::kFloat32), Normalize({-0.1}, PerChannel(channels, 2.0, 0.5)),
       Arith(K::kMultiply, {255}), Cast(DType::kUInt8), Arith(K::kSubtract, {10})},
  };
  if (IsFloating(in)) {
    chains.push_back(
        {Normalize(PerChannel(channels, 0.485, 0.01), PerChannel(channels, 0.229, 0.004))});
    chains.push_back({Normalize({3}, {1e-3}), Clamp(true, -65504, true, 65504)});
  }
  return chains;
}

class ElementwiseVsReference : public ::testing::TestWithParam<DType> {};

TEST_P(ElementwiseVsReference, ChainsOnAllShapes) {
  const DType dtype = GetParam();
  const std::vector<BatchShape> shapes = {
      {1, 1, 1, 1},     {1, 2, 3, 1},   {1, 7, 5, 3},
      {2, 17, 13, 4},   {1, 48, 64, 3}, {1, 33, 31, 5},  // a tile of 4095 elements
      {2, 100, 100, 3},                                  // several tiles and several tasks
  };
  // Ranges that reach saturation and rounding ties in every cast.
  double lo = 0, hi = 255;
  if (dtype == DType::kInt32) lo = -3e9, hi = 3e9;
  if (IsFloating(dtype)) lo = -300, hi = 300;
  uint64_t seed = 100;
  for (const BatchShape& shape : shapes) {
    Buffer src = RandomBuffer(dtype, shape, seed++, lo, hi);
    if (IsFloating(dtype) && shape.elements() > 8) {
      // Exact ties for the integer casts, and special values.
      std::vector<double> v = reference::ToDoubles(src.view());
      const double specials[] = {0.5, 1.5, 2.5, -0.5, -2.5, 254.5, 255.5, kNaN, kInf, -kInf};
      for (size_t i = 0; i < std::size(specials); ++i) v[i * 3 % v.size()] = specials[i];
      src = FromValues(dtype, shape, v);
    }
    const auto chains = Chains(dtype, shape.c);
    for (size_t k = 0; k < chains.size(); ++k) {
      const auto& ops = chains[k];
      SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " chain ", k));
      ASSERT_TRUE(CheckElementwiseChain("test", dtype, shape.c, ops).ok())
          << CheckElementwiseChain("test", dtype, shape.c, ops);
      const DType out_dtype = ElementwiseOutputDType(dtype, ops);
      Buffer out(out_dtype, shape);
      ASSERT_TRUE(ElementwiseCpu(src.view(), out.mutable_view(), ops, nullptr).ok());
      ExpectSameValues(reference::ToDoubles(out.view()), reference::Elementwise(src.view(), ops));
      for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        Buffer again(out_dtype, shape);
        ASSERT_TRUE(ElementwiseCpu(src.view(), again.mutable_view(), ops, &pool).ok());
        EXPECT_EQ(again.bytes(), out.bytes()) << "threads=" << threads;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, ElementwiseVsReference,
                         ::testing::Values(DType::kUInt8, DType::kInt32, DType::kFloat32,
                                           DType::kFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// Runs `ops` on values given as doubles and returns the output as doubles.
std::vector<double> RunChain(DType dtype, const std::vector<double>& values,
                             const std::vector<ElementwiseOp>& ops, int64_t channels = 1) {
  const BatchShape shape{1, 1, static_cast<int64_t>(values.size()) / channels, channels};
  const Buffer src = FromValues(dtype, shape, values);
  Buffer out(ElementwiseOutputDType(dtype, ops), shape);
  const absl::Status st = ElementwiseCpu(src.view(), out.mutable_view(), ops, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  return reference::ToDoubles(out.view());
}

TEST(ElementwiseCpu, IntegerArithmeticRoundsToEvenAndSaturates) {
  using K = ElementwiseKind;
  EXPECT_EQ(RunChain(DType::kUInt8, {0, 1, 2, 3, 254, 255}, {Arith(K::kAdd, {0.5})}),
            (std::vector<double>{0, 2, 2, 4, 254, 255}));
  EXPECT_EQ(RunChain(DType::kUInt8, {10, 200}, {Arith(K::kSubtract, {20})}),
            (std::vector<double>{0, 180}));
  EXPECT_EQ(RunChain(DType::kUInt8, {5, 7}, {Arith(K::kDivide, {2})}), (std::vector<double>{2, 4}));
  EXPECT_EQ(RunChain(DType::kInt32, {2147483647.0, -2147483648.0, 5}, {Arith(K::kAdd, {1})}),
            (std::vector<double>{2147483647.0, -2147483647.0, 6}));
  EXPECT_EQ(RunChain(DType::kInt32, {-2147483648.0, 3}, {Arith(K::kSubtract, {1})}),
            (std::vector<double>{-2147483648.0, 2}));
  EXPECT_EQ(RunChain(DType::kInt32, {3, -3, 1000000000}, {Arith(K::kMultiply, {2.5})}),
            (std::vector<double>{8, -8, 2147483647.0}));
}

TEST(ElementwiseCpu, PerChannelOperands) {
  using K = ElementwiseKind;
  EXPECT_EQ(RunChain(DType::kInt32, {1, 1, 1, 2, 2, 2}, {Arith(K::kMultiply, {10, 20, 30})}, 3),
            (std::vector<double>{10, 20, 30, 20, 40, 60}));
  const std::vector<double> got =
      RunChain(DType::kFloat32, {1, 2, 3, 4}, {Normalize({1, 2}, {2, 4})}, 2);
  EXPECT_EQ(got, (std::vector<double>{0, 0, 1, 0.5}));
}

TEST(ElementwiseCpu, CastsRoundToEvenSaturateAndMapNaNToZero) {
  EXPECT_EQ(RunChain(DType::kFloat32, {-1, 0.5, 1.5, 254.5, 300, kNaN, -kInf, kInf},
                     {Cast(DType::kUInt8)}),
            (std::vector<double>{0, 0, 2, 254, 255, 0, 0, 255}));
  EXPECT_EQ(RunChain(DType::kFloat32, {3e9, -3e9, kNaN, -2.5, 2.5, -3.5}, {Cast(DType::kInt32)}),
            (std::vector<double>{2147483647.0, -2147483648.0, 0, -2, 2, -4}));
  const std::vector<double> h =
      RunChain(DType::kFloat32, {70000, -1e9, kInf, kNaN, 65519, 0.1}, {Cast(DType::kFloat16)});
  EXPECT_EQ(h[0], 65504);
  EXPECT_EQ(h[1], -65504);
  EXPECT_EQ(h[2], kInf);
  EXPECT_TRUE(std::isnan(h[3]));
  EXPECT_EQ(h[4], 65504);
  EXPECT_EQ(h[5], 0.0999755859375);
  EXPECT_EQ(RunChain(DType::kInt32, {100000, -70000, 2049, 2051}, {Cast(DType::kFloat16)}),
            (std::vector<double>{65504, -65504, 2048, 2052}));
  EXPECT_EQ(RunChain(DType::kInt32, {16777217, 16777219, -300, 300}, {Cast(DType::kFloat32)}),
            (std::vector<double>{16777216, 16777220, -300, 300}));
  EXPECT_EQ(RunChain(DType::kInt32, {-300, 300, 17}, {Cast(DType::kUInt8)}),
            (std::vector<double>{0, 255, 17}));
  EXPECT_EQ(RunChain(DType::kFloat16, {-0.5, 2.5, 60000}, {Cast(DType::kUInt8)}),
            (std::vector<double>{0, 2, 255}));
}

TEST(ElementwiseCpu, Float16ArithmeticRoundsLikeIeee) {
  using K = ElementwiseKind;
  // 65504 + 16 = 65520 is a tie between 65504 and 2^16: to even, which overflows (not a cast).
  const std::vector<double> got =
      RunChain(DType::kFloat16, {65504, 1, 2048}, {Arith(K::kAdd, {16})});
  EXPECT_EQ(got[0], kInf);
  EXPECT_EQ(got[1], 17);
  EXPECT_EQ(got[2], 2064);
  // 2048 + 1 = 2049 is a tie between 2048 and 2050: to even.
  EXPECT_EQ(RunChain(DType::kFloat16, {2048, 2050}, {Arith(K::kAdd, {1})}),
            (std::vector<double>{2048, 2052}));
}

TEST(ElementwiseCpu, ClampConvertsBoundsAndKeepsNaN) {
  const std::vector<double> f =
      RunChain(DType::kFloat32, {kNaN, -5, 5, 0.25}, {Clamp(true, -1, true, 1)});
  EXPECT_TRUE(std::isnan(f[0]));
  EXPECT_EQ(f[1], -1);
  EXPECT_EQ(f[2], 1);
  EXPECT_EQ(f[3], 0.25);
  // uint8: lo -10 casts to 0, hi 99.5 to 100 (ties to even).
  EXPECT_EQ(RunChain(DType::kUInt8, {0, 50, 100, 200}, {Clamp(true, -10, true, 99.5)}),
            (std::vector<double>{0, 50, 100, 100}));
  EXPECT_EQ(RunChain(DType::kInt32, {-7, 7}, {Clamp(true, -2.5, false, 0)}),
            (std::vector<double>{-2, 7}));
}

// Fusion must not change a single bit compared with running the ops one by one.
TEST(ElementwiseCpu, FusedChainEqualsOpByOp) {
  const BatchShape shape{2, 40, 50, 3};
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    const Buffer src = RandomBuffer(dtype, shape, 7, dtype == DType::kUInt8 ? 0 : -300, 255);
    for (const auto& ops : Chains(dtype, shape.c)) {
      ThreadPool pool(3);
      Buffer fused(ElementwiseOutputDType(dtype, ops), shape);
      ASSERT_TRUE(ElementwiseCpu(src.view(), fused.mutable_view(), ops, &pool).ok());
      Buffer step = src;
      for (const ElementwiseOp& op : ops) {
        Buffer next(ElementwiseOutputDType(step.dtype(), {op}), shape);
        ASSERT_TRUE(ElementwiseCpu(step.view(), next.mutable_view(), {op}, nullptr).ok());
        step = std::move(next);
      }
      EXPECT_EQ(fused.bytes(), step.bytes()) << DTypeName(dtype) << " chain of " << ops.size();
    }
  }
}

TEST(ElementwiseCpu, InPlaceEqualsOutOfPlace) {
  using K = ElementwiseKind;
  const BatchShape shape{3, 30, 41, 3};
  struct Case {
    DType dtype;
    std::vector<ElementwiseOp> ops;
  };
  const Case cases[] = {
      {DType::kInt32, {Arith(K::kAdd, {1})}},
      {DType::kFloat32, {Arith(K::kMultiply, {2.5}), Cast(DType::kInt32)}},  // same size
      {DType::kUInt8, {Arith(K::kSubtract, {3, 2, 1}), Clamp(true, 10, true, 200)}},
      {DType::kFloat16, {Normalize({0.5}, {0.25})}},
      {DType::kFloat32, {}},
  };
  for (const Case& c : cases) {
    const Buffer src = RandomBuffer(c.dtype, shape, 3, 0, 255);
    Buffer out(ElementwiseOutputDType(c.dtype, c.ops), shape);
    ASSERT_TRUE(ElementwiseCpu(src.view(), out.mutable_view(), c.ops, nullptr).ok());
    Buffer in_place = src;
    TensorView dst = in_place.mutable_view();
    dst.dtype = ElementwiseOutputDType(c.dtype, c.ops);
    ThreadPool pool(3);
    ASSERT_TRUE(ElementwiseCpu(in_place.view(), dst, c.ops, &pool).ok());
    EXPECT_EQ(std::memcmp(in_place.view().data, out.view().data, out.view().bytes()), 0)
        << DTypeName(c.dtype);
  }
}

TEST(ElementwiseCpu, EmptyChainCopies) {
  const BatchShape shape{2, 9, 7, 3};
  const Buffer src = RandomBuffer(DType::kFloat16, shape, 9, -5, 5);
  Buffer out(DType::kFloat16, shape);
  ASSERT_TRUE(ElementwiseCpu(src.view(), out.mutable_view(), {}, nullptr).ok());
  EXPECT_EQ(out.bytes(), src.bytes());
}

TEST(ElementwiseOutputDType, FollowsCasts) {
  EXPECT_EQ(ElementwiseOutputDType(DType::kUInt8, {}), DType::kUInt8);
  EXPECT_EQ(ElementwiseOutputDType(DType::kUInt8, {Cast(DType::kFloat32)}), DType::kFloat32);
  EXPECT_EQ(ElementwiseOutputDType(
                DType::kUInt8,
                {Cast(DType::kFloat32), Arith(ElementwiseKind::kAdd, {1}), Cast(DType::kFloat16)}),
            DType::kFloat16);
}

// A broken precondition is INTERNAL, named after the caller (kernels/common/checks.h).
void ExpectBroken(DType dtype, int64_t channels, const std::vector<ElementwiseOp>& ops,
                  const std::string& message) {
  const absl::Status st = CheckElementwiseChain("test", dtype, channels, ops);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << message;
  EXPECT_EQ(std::string(st.message()), "test: " + message);
}

// The operand rules themselves are tested once, in numerics_test.cc (CheckOperand); here, that
// the chain check applies them to the right vectors, in the dtype each op sees, and says where.
TEST(CheckElementwiseChain, NamesTheOpAndWhatWasExpected) {
  using K = ElementwiseKind;
  ExpectBroken(DType::kFloat32, 3,
               {Arith(K::kAdd, {1}), Arith(K::kMultiply, {2}), Normalize({0.5}, {1, 2})},
               "ops[2] (normalize): std has 2 values; expected 1 or 3 (channels)");
  ExpectBroken(DType::kUInt8, 3, {Arith(K::kDivide, {1, 0, 2})},
               "ops[0] (divide): value[1] is 0; expected non-zero");
  ExpectBroken(DType::kFloat32, 1, {Arith(K::kDivide, {1e-60})},
               "ops[0] (divide): value[0] is 1e-60, 0 in float32; expected non-zero");
  ExpectBroken(DType::kInt32, 1, {Normalize({0}, {1})},
               "ops[0] (normalize): input dtype is int32; expected float32 or float16");
  ExpectBroken(DType::kInt32, 1, {Cast(DType::kFloat32), Arith(K::kAdd, {kNaN})},
               "ops[1] (add): value[0] is nan; expected a finite number");
  ExpectBroken(DType::kFloat32, 1, {Arith(K::kAdd, {1e39})},
               "ops[0] (add): value[0] is 1e+39; expected a value finite in float32");
  ExpectBroken(DType::kFloat32, 4, {Arith(K::kSubtract, {})},
               "ops[0] (subtract): value has 0 values; expected 1 or 4 (channels)");
  ExpectBroken(DType::kFloat32, 1, {Normalize({1, 2}, {1})},
               "ops[0] (normalize): mean has 2 values; expected 1 or 1 (channels)");
  ExpectBroken(DType::kUInt8, 1, {Cast(static_cast<DType>(9))},
               "ops[0] (cast): target dtype 9; expected a DType value");
  // The cast changes the dtype that later ops are checked against: 1e39 is fine for an integer
  // batch (it computes in double), not once the batch is float32.
  EXPECT_TRUE(CheckElementwiseChain("test", DType::kInt32, 1, {Arith(K::kAdd, {1e39})}).ok());
  ExpectBroken(DType::kInt32, 1, {Cast(DType::kFloat32), Arith(K::kAdd, {1e39})},
               "ops[1] (add): value[0] is 1e+39; expected a value finite in float32");
  EXPECT_TRUE(
      CheckElementwiseChain("test", DType::kInt32, 1, {Cast(DType::kFloat16), Normalize({0}, {2})})
          .ok());
  EXPECT_TRUE(CheckElementwiseChain("test", DType::kUInt8, 3, {Arith(K::kAdd, {1, 2, 3})}).ok());
  // Clamp bounds are the registry's to check: any bounds give a defined result here.
  EXPECT_TRUE(CheckElementwiseChain("test", DType::kUInt8, 1, {Clamp(true, 5, true, 3)}).ok());
  EXPECT_TRUE(CheckElementwiseChain("test", DType::kFloat32, 1, {Clamp(true, kInf, false, 0)}).ok());
}

// Clamp bounds the registry would refuse still give the formula's result, the same as the
// reference's.
TEST(ElementwiseCpu, UncheckedClampBoundsFollowTheFormula) {
  const BatchShape shape{1, 1, 4, 1};
  const Buffer src = FromValues(DType::kFloat32, shape, {-1, 2, 4, 9});
  for (const ElementwiseOp& op : {Clamp(true, 5, true, 3), Clamp(true, -kInf, true, kInf)}) {
    Buffer out(DType::kFloat32, shape);
    ASSERT_TRUE(ElementwiseCpu(src.view(), out.mutable_view(), {op}, nullptr).ok());
    EXPECT_EQ(reference::ToDoubles(out.view()), reference::Elementwise(src.view(), {op}));
  }
}

TEST(ElementwiseCpu, RejectsMismatchedViews) {
  const BatchShape shape{1, 2, 2, 1};
  const Buffer src = RandomBuffer(DType::kInt32, shape, 1, 0, 10);
  Buffer wrong(DType::kFloat32, shape);
  absl::Status st = ElementwiseCpu(src.view(), wrong.mutable_view(),
                                   {Arith(ElementwiseKind::kAdd, {1})}, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("dst dtype float32; expected int32"), std::string::npos) << st;

  Buffer in_place = src;  // int32 -> uint8 in place: element sizes differ
  TensorView dst = in_place.mutable_view();
  dst.dtype = DType::kUInt8;
  st = ElementwiseCpu(in_place.view(), dst, {Cast(DType::kUInt8)}, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("overlap"), std::string::npos) << st;

  st = ElementwiseCpu(src.view(), wrong.mutable_view(), {Normalize({0}, {0})}, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
}

// ---- Channels-first output --------------------------------------------------------------------

// The bytes of an NHWC buffer moved to channels-first order, element by element.
std::vector<unsigned char> PlanarBytes(const Buffer& nhwc) {
  const BatchShape& s = nhwc.shape();
  const size_t size = DTypeSize(nhwc.dtype());
  std::vector<unsigned char> planar(nhwc.bytes().size());
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t y = 0; y < s.h; ++y) {
      for (int64_t x = 0; x < s.w; ++x) {
        for (int64_t c = 0; c < s.c; ++c) {
          const int64_t from = ((n * s.h + y) * s.w + x) * s.c + c;
          const int64_t to = ((n * s.c + c) * s.h + y) * s.w + x;
          std::memcpy(&planar[to * size], &nhwc.bytes()[from * size], size);
        }
      }
    }
  }
  return planar;
}

// torchvision's ImageNet tail on a uint8 batch: to float32, scale to [0, 1], normalize, float16.
std::vector<ElementwiseOp> ImageNetTail(int64_t channels) {
  const double mean[] = {0.485, 0.456, 0.406, 0.5, 0.45};
  const double stddev[] = {0.229, 0.224, 0.225, 0.25, 0.3};
  std::vector<double> m, d;
  for (int64_t c = 0; c < channels; ++c) {
    m.push_back(mean[c % 5]);
    d.push_back(stddev[c % 5]);
  }
  return {Cast(DType::kFloat32), Arith(ElementwiseKind::kDivide, {255}), Normalize(m, d),
          Cast(DType::kFloat16)};
}

class ElementwiseChannelsFirst : public ::testing::TestWithParam<DType> {};

// Every chain (the empty one and the ImageNet tail included) on shapes with 1 to 5 channels and
// odd sizes (vector tails, several tiles and tasks): the values are the reference's, permuted by
// the reference's layout function, and the bytes are the NHWC run's bytes, permuted, with 1 and
// 2 threads.
TEST_P(ElementwiseChannelsFirst, EqualsPermutedNhwcResult) {
  const DType dtype = GetParam();
  const std::vector<BatchShape> shapes = {
      {1, 1, 1, 1},   {1, 1, 1, 3},  {2, 3, 5, 1},   {1, 7, 5, 3},     {2, 17, 13, 4},
      {1, 33, 31, 5}, {3, 9, 11, 2}, {2, 61, 47, 3}, {1, 230, 229, 3}, {1, 130, 131, 1},
  };
  double lo = 0, hi = 255;
  if (dtype == DType::kInt32) lo = -3e9, hi = 3e9;
  if (IsFloating(dtype)) lo = -300, hi = 300;
  uint64_t seed = 500;
  for (const BatchShape& shape : shapes) {
    Buffer src = RandomBuffer(dtype, shape, seed++, lo, hi);
    if (IsFloating(dtype) && shape.elements() > 8) {
      std::vector<double> v = reference::ToDoubles(src.view());
      const double specials[] = {0.5, 2.5, -0.5, 254.5, kNaN, kInf, -kInf, -0.0};
      for (size_t i = 0; i < std::size(specials); ++i) v[i * 5 % v.size()] = specials[i];
      src = FromValues(dtype, shape, v);
    }
    auto chains = Chains(dtype, shape.c);
    chains.push_back({});
    if (dtype == DType::kUInt8) chains.push_back(ImageNetTail(shape.c));
    for (size_t k = 0; k < chains.size(); ++k) {
      const auto& ops = chains[k];
      SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " chain ", k, " of ", ops.size()));
      const DType out_dtype = ElementwiseOutputDType(dtype, ops);
      Buffer nhwc(out_dtype, shape);
      ASSERT_TRUE(ElementwiseCpu(src.view(), nhwc.mutable_view(), ops, nullptr).ok());
      const std::vector<unsigned char> want = PlanarBytes(nhwc);
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        Buffer planar(out_dtype, shape);
        const absl::Status st = ElementwiseCpu(src.view(), planar.mutable_view(), ops,
                                               threads == 1 ? nullptr : &pool, true);
        ASSERT_TRUE(st.ok()) << st;
        ExpectSameValues(
            reference::ToDoubles(planar.view()),
            reference::ToChannelsFirst(reference::Elementwise(src.view(), ops), shape));
        EXPECT_TRUE(planar.bytes() == want) << "threads=" << threads;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, ElementwiseChannelsFirst,
                         ::testing::Values(DType::kUInt8, DType::kInt32, DType::kFloat32,
                                           DType::kFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// The W4 tail, uint8 -> float32 -> /255 -> normalize -> float16, written as PyTorch lays out a
// (3, 224, 224) image, against the reference element by element at hand-computed positions.
TEST(ElementwiseCpu, ImageNetTailChannelsFirstPlacesEachPlane) {
  const BatchShape shape{2, 224, 224, 3};
  const Buffer src = RandomBuffer(DType::kUInt8, shape, 41, 0, 255);
  const auto ops = ImageNetTail(3);
  Buffer planar(DType::kFloat16, shape);
  ThreadPool pool(2);
  ASSERT_TRUE(ElementwiseCpu(src.view(), planar.mutable_view(), ops, &pool, true).ok());
  const std::vector<double> want = reference::Elementwise(src.view(), ops);  // NHWC order
  const std::vector<double> got = reference::ToDoubles(planar.view());
  for (const int64_t n : {0, 1}) {
    for (const int64_t c : {0, 1, 2}) {
      for (const int64_t pixel : {int64_t{0}, int64_t{1}, int64_t{225}, int64_t{224 * 224 - 1}}) {
        EXPECT_EQ(got[(n * 3 + c) * 224 * 224 + pixel], want[(n * 224 * 224 + pixel) * 3 + c])
            << "n=" << n << " c=" << c << " pixel=" << pixel;
      }
    }
  }
}

// Bands of any size, run one by one as the CPU backend's fused path runs them, assemble into the
// whole batch's channels-first result.
TEST(ElementwiseProgram, ChannelsFirstBandsAssembleTheWholeBatch) {
  struct Case {
    DType dtype;
    BatchShape shape;
    std::vector<ElementwiseOp> ops;
  };
  const std::vector<Case> cases = {
      {DType::kUInt8, {2, 41, 37, 3}, ImageNetTail(3)},
      {DType::kUInt8, {1, 29, 31, 1}, ImageNetTail(1)},
      {DType::kFloat32, {2, 19, 23, 4}, {Normalize({0.5, 0.4, 0.3, 0.2}, {0.25})}},
      {DType::kFloat16,
       {1, 23, 29, 5},
       {Arith(ElementwiseKind::kMultiply, {1.5}), Cast(DType::kUInt8)}},
      {DType::kInt32, {1, 17, 19, 3}, {Cast(DType::kFloat32)}},
      {DType::kFloat32, {2, 21, 18, 3}, {}},
      {DType::kUInt8, {1, 13, 60, 2}, {Arith(ElementwiseKind::kAdd, {3, 200})}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrCat(DTypeName(c.dtype), " ", testing::ShapeName(c.shape), " chain of ",
                              c.ops.size()));
    const BatchShape& s = c.shape;
    const Buffer src = RandomBuffer(c.dtype, s, 77, c.dtype == DType::kUInt8 ? 0 : -300, 255);
    const DType out_dtype = ElementwiseOutputDType(c.dtype, c.ops);
    Buffer whole(out_dtype, s);
    ASSERT_TRUE(ElementwiseCpu(src.view(), whole.mutable_view(), c.ops, nullptr, true).ok());
    auto program = ElementwiseProgram::Make("test", c.dtype, s.c, c.ops);
    ASSERT_TRUE(program.ok()) << program.status();
    EXPECT_EQ(program->channels(), s.c);
    const int64_t plane = s.h * s.w;
    const size_t in_size = DTypeSize(c.dtype), out_size = DTypeSize(out_dtype);
    // Band lengths in pixels: single pixels, lengths around a tile (1024 elements) and the vector
    // steps, whole rows (what the fused path hands over), and the whole sample.
    for (const int64_t band : {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{17}, int64_t{340},
                               int64_t{341}, int64_t{343}, s.w, 3 * s.w, plane}) {
      SCOPED_TRACE(absl::StrCat("band of ", band, " pixels"));
      Buffer assembled(out_dtype, s);
      auto* out = static_cast<unsigned char*>(assembled.mutable_view().data);
      const auto* in = static_cast<const unsigned char*>(src.view().data);
      for (int64_t n = 0; n < s.n; ++n) {
        // Bands in reverse order: each band must write only its own pixels.
        for (int64_t first = (plane - 1) / band * band; first >= 0; first -= band) {
          const int64_t pixels = std::min(band, plane - first);
          program->RunChannelsFirst(in + (n * plane + first) * s.c * in_size,
                                    out + n * plane * s.c * out_size, plane, first, pixels);
        }
      }
      EXPECT_TRUE(assembled.bytes() == whole.bytes());
    }
  }
}

TEST(ElementwiseCpu, ChannelsFirstEmptyChainTransposes) {
  const BatchShape shape{2, 9, 7, 3};
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    const Buffer src = RandomBuffer(dtype, shape, 9, -5, 250);
    Buffer out(dtype, shape);
    ASSERT_TRUE(ElementwiseCpu(src.view(), out.mutable_view(), {}, nullptr, true).ok());
    EXPECT_TRUE(out.bytes() == PlanarBytes(src)) << DTypeName(dtype);
    EXPECT_EQ(reference::ToDoubles(out.view()),
              reference::ToChannelsFirst(reference::ToDoubles(src.view()), shape));
  }
}

// Channels-first output cannot be written in place (a pixel's channels would overwrite values
// not read yet), so any overlap is a broken precondition, as are the usual view mismatches.
TEST(ElementwiseCpu, ChannelsFirstRejectsBrokenPreconditions) {
  const BatchShape shape{1, 4, 4, 3};
  Buffer src = RandomBuffer(DType::kFloat32, shape, 1, 0, 10);
  const std::vector<ElementwiseOp> add = {Arith(ElementwiseKind::kAdd, {1})};

  absl::Status st = ElementwiseCpu(src.view(), src.mutable_view(), add, nullptr, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(std::string(st.message()),
            "ElementwiseCpu: src and dst overlap; expected distinct memory");
  st = ElementwiseCpu(src.view(), src.mutable_view(), {}, nullptr, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << "empty chain in place";

  Buffer big(DType::kFloat32, {2, 4, 4, 3});
  TensorView shifted{DType::kFloat32, shape,
                     static_cast<unsigned char*>(big.mutable_view().data) + 4 * sizeof(float)};
  const ConstTensorView head{DType::kFloat32, shape, big.view().data};
  st = ElementwiseCpu(head, shifted, add, nullptr, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << "partial overlap";

  Buffer wrong_dtype(DType::kFloat16, shape);
  st = ElementwiseCpu(src.view(), wrong_dtype.mutable_view(), add, nullptr, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("dst dtype float16; expected float32"), std::string::npos) << st;

  // The planar layout does not change the shape a view names: (n, h, w, c) still.
  Buffer chw_shape(DType::kFloat32, {1, 3, 4, 4});
  st = ElementwiseCpu(src.view(), chw_shape.mutable_view(), add, nullptr, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("dst shape (1, 3, 4, 4); expected src shape (1, 4, 4, 3)"),
            std::string::npos)
      << st;

  Buffer out(DType::kFloat32, shape);
  st = ElementwiseCpu(src.view(), out.mutable_view(), {Normalize({0}, {0})}, nullptr, true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  const ConstTensorView empty{DType::kFloat32, {0, 4, 4, 3}, src.view().data};
  EXPECT_EQ(ElementwiseCpu(empty, out.mutable_view(), add, nullptr, true).code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace tensorprep::kernels
