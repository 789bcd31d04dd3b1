// The CPU backend fuses a geometric step with the element-wise step after it (band by band).
// Its output must equal the public kernels run one after the other, bit for bit, whatever the
// dtype, shape, batch or number of bands.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "handlers/backend.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/flip/flip.h"
#include "kernels/warp/warp.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::handlers {
namespace {

using kernels::BatchShape;
using kernels::DType;
using kernels::ElementwiseKind;
using kernels::ElementwiseOp;
using kernels::testing::Buffer;

struct Case {
  DType dtype;
  BatchShape shape;
  bool warp;  // else flip
};

std::vector<ElementwiseOp> Chain(DType in, std::mt19937& rng) {
  std::vector<ElementwiseOp> chain;
  if (!kernels::IsFloating(in)) {
    ElementwiseOp cast;
    cast.kind = ElementwiseKind::kCast;
    cast.to = DType::kFloat32;
    chain.push_back(cast);
  }
  ElementwiseOp mul;
  mul.kind = ElementwiseKind::kMultiply;
  mul.a = {0.5 + (rng() % 100) / 50.0};
  chain.push_back(mul);
  ElementwiseOp norm;
  norm.kind = ElementwiseKind::kNormalize;
  norm.a = {0.25};
  norm.b = {0.75};
  chain.push_back(norm);
  ElementwiseOp clamp;
  clamp.kind = ElementwiseKind::kClamp;
  clamp.has_lo = clamp.has_hi = true;
  clamp.lo = -1;
  clamp.hi = 1;
  chain.push_back(clamp);
  ElementwiseOp cast;
  cast.kind = ElementwiseKind::kCast;
  cast.to = (rng() % 2) ? DType::kFloat16 : DType::kUInt8;
  chain.push_back(cast);
  return chain;
}

TEST(CpuBackendTest, FusedGeometricAndElementwiseEqualsKernelsOneAfterAnother) {
  std::mt19937 rng(11);
  const std::vector<Case> cases = {
      {DType::kFloat32, {3, 7, 5, 3}, true},       {DType::kFloat32, {2, 300, 257, 3}, true},
      {DType::kUInt8, {4, 129, 200, 4}, true},     {DType::kFloat16, {1, 64, 64, 1}, true},
      {DType::kInt32, {2, 90, 70, 2}, true},       {DType::kFloat32, {5, 222, 111, 3}, false},
      {DType::kUInt8, {1, 1, 1, 1}, false},        {DType::kFloat16, {3, 150, 160, 3}, false},
  };
  kernels::ThreadPool pool(3);
  CpuBackend backend(&pool);
  for (const Case& c : cases) {
    SCOPED_TRACE(kernels::testing::ShapeName(c.shape) + " " + kernels::DTypeName(c.dtype) +
                 (c.warp ? " warp" : " flip"));
    const Buffer src = kernels::testing::RandomBuffer(c.dtype, c.shape, rng(), -1, 1);
    Plan plan;
    Step geo;
    geo.ops = {0};
    geo.out = c.shape;
    if (c.warp) {
      geo.kind = KernelKind::kWarp;
      for (int64_t i = 0; i < c.shape.n; ++i) {
        geo.inverse.push_back(kernels::RotationInverse(-40.0 + 17.0 * i, c.shape.h, c.shape.w));
      }
      geo.params = {kernels::Interp::kBilinear, kernels::Border::kReflect, 0};
    } else {
      geo.kind = KernelKind::kFlip;
      for (int64_t i = 0; i < c.shape.n; ++i) geo.flags.push_back({i % 2 == 0, i % 3 == 0});
    }
    Step ew;
    ew.kind = KernelKind::kElementwise;
    ew.ops = {1};
    ew.out = c.shape;
    ew.chain = Chain(c.dtype, rng);
    plan.steps = {geo, ew};
    plan.output_dtype = kernels::ElementwiseOutputDType(c.dtype, ew.chain);
    plan.output_shape = c.shape;

    Buffer got(plan.output_dtype, c.shape);
    ExecInputs in{src.view(), {}};
    ExecOutputs out{got.mutable_view(), {}};
    ASSERT_TRUE(backend.Execute(plan, in, out, nullptr).ok());

    Buffer mid(c.dtype, c.shape);
    Buffer want(plan.output_dtype, c.shape);
    if (c.warp) {
      ASSERT_TRUE(kernels::WarpAffineCpu(src.view(), mid.mutable_view(), geo.inverse, geo.params,
                                         nullptr)
                      .ok());
    } else {
      ASSERT_TRUE(kernels::FlipCpu(src.view(), mid.mutable_view(), geo.flags, nullptr).ok());
    }
    ASSERT_TRUE(kernels::ElementwiseCpu(mid.view(), want.mutable_view(), ew.chain, nullptr).ok());
    ASSERT_EQ(0, std::memcmp(got.view().data, want.view().data, want.view().bytes()));
  }
}

}  // namespace
}  // namespace tensorprep::handlers
