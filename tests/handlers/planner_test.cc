// Planning and fusion: the structure of fused plans, and fused results equal to unfused ones on
// random pipelines (exactly for nearest sampling, flips and element-wise ops; within float
// rounding for bilinear).
#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <string>
#include <vector>

#include "handlers/backend.h"
#include "handlers/op_registry.h"
#include "handlers/processor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/reference/reference.h"
#include "tests/handlers/request_util.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::handlers {
namespace {

namespace v1 = ::tensorprep::v1;
using kernels::BatchShape;
using kernels::DType;
using testing::AddFlip;
using testing::AddRotate;
using testing::Process;
using testing::RandomPipeline;
using testing::RunResult;
using testing::Wire;

BatchState State(BatchShape s, DType d = DType::kFloat32) { return BatchState{s, d}; }

std::vector<KernelKind> Kinds(const Plan& p) {
  std::vector<KernelKind> k;
  for (const Step& s : p.steps) k.push_back(s.kind);
  return k;
}

TEST(PlannerTest, FlipOnlyRunStaysACopySpeedFlip) {
  v1::Pipeline p;
  AddFlip(p, v1::FLIP_AXIS_HORIZONTAL);
  AddFlip(p, v1::FLIP_AXIS_VERTICAL);
  AddFlip(p, v1::FLIP_AXIS_HORIZONTAL);
  auto plan = BuildPlan(p, State({2, 4, 5, 3}), 0, 0, {}, PlanOptions{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(Kinds(*plan), std::vector<KernelKind>{KernelKind::kFlip});
  ASSERT_EQ(plan->steps[0].flags.size(), 1u);
  EXPECT_FALSE(plan->steps[0].flags[0].horizontal);  // two horizontal flips cancel
  EXPECT_TRUE(plan->steps[0].flags[0].vertical);
  EXPECT_EQ(plan->steps[0].ops, (std::vector<int>{0, 1, 2}));
}

TEST(PlannerTest, GeometricRunBecomesOneWarpAndElementwiseRunOnePass) {
  v1::Pipeline p;
  AddFlip(p, v1::FLIP_AXIS_HORIZONTAL);
  AddRotate(p, 30);
  auto* rf = p.add_ops()->mutable_random_flip();
  rf->set_axis(v1::FLIP_AXIS_VERTICAL);
  rf->set_p(0.5);
  p.add_ops()->mutable_multiply()->add_value(2);
  auto* n = p.add_ops()->mutable_normalize();
  n->add_mean(0.5);
  n->add_std(0.25);
  p.add_ops()->mutable_cast()->set_dtype(v1::DTYPE_FLOAT16);
  auto plan = BuildPlan(p, State({4, 8, 8, 3}), 1, 0, {}, PlanOptions{});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Kinds(*plan), (std::vector<KernelKind>{KernelKind::kWarp, KernelKind::kElementwise}));
  EXPECT_EQ(plan->steps[0].inverse.size(), 4u);  // per-sample after the random flip
  EXPECT_EQ(plan->steps[1].chain.size(), 3u);
  EXPECT_EQ(plan->output_dtype, DType::kFloat16);

  auto unfused = BuildPlan(p, State({4, 8, 8, 3}), 1, 0, {}, PlanOptions{/*fuse=*/false});
  ASSERT_TRUE(unfused.ok());
  EXPECT_EQ(unfused->steps.size(), 6u);
}

TEST(PlannerTest, RotationsWithDifferentSamplingAreNotMerged) {
  v1::Pipeline p;
  AddRotate(p, 10, v1::INTERPOLATION_BILINEAR, v1::BORDER_EDGE);
  AddRotate(p, 10, v1::INTERPOLATION_NEAREST, v1::BORDER_EDGE);
  AddRotate(p, 10, v1::INTERPOLATION_NEAREST, v1::BORDER_EDGE);
  auto plan = BuildPlan(p, State({1, 8, 8, 1}), 0, 0, {}, PlanOptions{});
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(Kinds(*plan), (std::vector<KernelKind>{KernelKind::kWarp, KernelKind::kWarp}));
  // Two 10 degree rotations compose into one 20 degree resampling.
  const kernels::Affine want = kernels::RotationInverse(20, 8, 8);
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(plan->steps[1].inverse[0].m[i], want.m[i], 1e-12);
}

// ---- fused == unfused, on random pipelines ----------------------------------------------------

RunResult Execute(const v1::ProcessRequest& request, bool fuse) {
  kernels::ThreadPool pool(2);
  CpuBackend cpu(&pool);
  ProcessorOptions options;
  options.plan.fuse = fuse;
  Processor processor(options, &cpu, nullptr);
  auto result = Process(processor, request);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *std::move(result) : RunResult{};
}

class FusionEquivalenceTest : public ::testing::TestWithParam<bool> {};

TEST_P(FusionEquivalenceTest, FusedEqualsUnfusedOnRandomPipelines) {
  const bool nearest = GetParam();
  std::mt19937 rng(nearest ? 7 : 8);
  for (int trial = 0; trial < 60; ++trial) {
    const int channels = 1 + static_cast<int>(rng() % 4);
    const BatchShape shape{3, 5 + static_cast<int64_t>(rng() % 9),
                           5 + static_cast<int64_t>(rng() % 9), channels};
    const auto images = kernels::testing::RandomBuffer(DType::kFloat32, shape, trial, 0, 1);
    const BatchShape label_shape{shape.n, shape.h, shape.w, 1};
    const auto labels = kernels::testing::RandomBuffer(DType::kInt32, label_shape, trial, 0, 9);
    v1::ProcessRequest request;
    *request.mutable_images() = Wire(images, v1::DTYPE_FLOAT32, false);
    auto* aux = request.add_aux();
    aux->set_name("label");
    *aux->mutable_tensor() = Wire(labels, v1::DTYPE_INT32, true);
    *request.mutable_pipeline() = RandomPipeline(rng, nearest, channels);
    request.set_seed(trial);
    SCOPED_TRACE(request.pipeline().DebugString());
    const RunResult fused = Execute(request, true);
    const RunResult unfused = Execute(request, false);
    ASSERT_EQ(fused.aux, unfused.aux) << "labels (nearest) must match exactly";
    if (nearest) {
      ASSERT_EQ(fused.images, unfused.images);
    } else {
      ASSERT_EQ(fused.images.size(), unfused.images.size());
      const float* a = reinterpret_cast<const float*>(fused.images.data());
      const float* b = reinterpret_cast<const float*>(unfused.images.data());
      for (size_t i = 0; i < fused.images.size() / 4; ++i) {
        ASSERT_NEAR(a[i], b[i], 1e-4 * (1 + std::abs(b[i]))) << "element " << i;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sampling, FusionEquivalenceTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "Nearest" : "Bilinear"; });

// The registry words the kernels' operand rules (kernels::CheckOperand) for the client, naming
// the field: one case per rule.
TEST(PlannerTest, OperandRulesAreInvalidArgumentNamingTheField) {
  struct Case {
    DType dtype;
    std::vector<double> value;
    bool divide;
    std::string message;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const Case& c : {
           Case{DType::kFloat32, {1, 2}, false,
                "pipeline.ops[0].add.value: expected 1 value or 3 (one per channel), got 2"},
           Case{DType::kUInt8, {1, nan, 2}, false,
                "pipeline.ops[0].add.value[1]: expected a finite number, got nan"},
           Case{DType::kInt32, {0}, true,
                "pipeline.ops[0].divide.value[0]: expected a non-zero value, got 0"},
           Case{DType::kFloat16, {1, 1, 1e39}, false,
                "pipeline.ops[0].add.value[2]: expected a value finite in float32 (the batch is "
                "float16), got 1e+39"},
           Case{DType::kFloat32, {1e-60}, true,
                "pipeline.ops[0].divide.value[0]: expected a value non-zero in float32 (the "
                "batch is float32), got 1e-60"},
       }) {
    v1::Pipeline p;
    auto* op = c.divide ? p.add_ops()->mutable_divide() : p.add_ops()->mutable_add();
    for (double v : c.value) op->add_value(v);
    auto plan = BuildPlan(p, State({1, 2, 2, 3}, c.dtype), 0, 0, {}, PlanOptions{});
    ASSERT_FALSE(plan.ok()) << c.message;
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(plan.status().message(), c.message);
  }
}

// The level split (kernels/common/checks.h): every element-wise chain the registry accepts meets
// the kernels' preconditions, so a kernel's INTERNAL can only mean a bug, never a bad request.
TEST(PlannerTest, AcceptedChainsMeetTheKernelsPreconditions) {
  const double candidates[] = {0,    1,    -2.5, 1e-60, 1e39, 65504,
                               1e300, std::numeric_limits<double>::quiet_NaN(),
                               std::numeric_limits<double>::infinity()};
  int accepted = 0;
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    for (int kind = 0; kind < 5; ++kind) {
      for (double a : candidates) {
        for (double b : candidates) {
          v1::Pipeline p;
          v1::Op* op = p.add_ops();
          switch (kind) {
            case 0:
              op->mutable_add()->add_value(a);
              break;
            case 1:
              op->mutable_divide()->add_value(a);
              op->mutable_divide()->add_value(b);
              op->mutable_divide()->add_value(a);
              break;
            case 2:
              op->mutable_normalize()->add_mean(a);
              op->mutable_normalize()->add_std(b);
              break;
            case 3:
              op->mutable_clamp()->set_min(a);
              op->mutable_clamp()->set_max(b);
              break;
            default:
              op->mutable_cast()->set_dtype(v1::DTYPE_FLOAT16);
              p.add_ops()->mutable_multiply()->add_value(a);
              break;
          }
          auto plan = BuildPlan(p, State({1, 2, 2, 3}, dtype), 0, 0, {}, PlanOptions{});
          if (!plan.ok()) continue;
          ++accepted;
          DType t = dtype;
          for (const Step& step : plan->steps) {
            const absl::Status st = kernels::CheckElementwiseChain("test", t, 3, step.chain);
            EXPECT_TRUE(st.ok()) << st << " (dtype " << kernels::DTypeName(dtype) << ", op "
                                 << kind << ", " << a << ", " << b << ")";
            t = kernels::ElementwiseOutputDType(t, step.chain);
          }
        }
      }
    }
  }
  EXPECT_GT(accepted, 100);
}

TEST(CodecTest, MisalignedWireBytesAreCopiedIntoAlignedMemory) {
  // Strings of under 16 bytes live inside the std::string object; make one start off a 4-byte
  // boundary by building the tensor in a buffer at an odd offset is not possible through the
  // API, so decode a float tensor whose data we force to be small (inline) and check alignment
  // of whatever view the decoder returns.
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FLOAT32);
  for (int d : {1, 1, 3}) t.add_shape(d);
  t.mutable_data()->assign(12, '\0');
  auto d = DecodeBatch(t, "images", DecodeLimits{});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(d->view.data) % 4, 0u);
  EXPECT_EQ(d->view.shape.c, 1);
  EXPECT_EQ(d->rank, 3);
}

TEST(CodecTest, OverMaxTensorBytesIsResourceExhausted) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FLOAT32);
  for (int d : {4, 64, 64, 3}) t.add_shape(d);
  auto d = DecodeBatch(t, "images", DecodeLimits{1 << 16});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(d.status().message().find("max tensor size of 65536 bytes"), std::string::npos)
      << d.status();
}

}  // namespace
}  // namespace tensorprep::handlers
