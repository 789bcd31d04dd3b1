// Device routing: without a usable CUDA device every request runs on the CPU, and an explicit
// CUDA request is refused with FAILED_PRECONDITION; a failing device falls back to the CPU.
#include <gtest/gtest.h>

#include "handlers/backend.h"
#include "handlers/processor.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::handlers {
namespace {

namespace v1 = ::tensorprep::v1;

v1::ProcessRequest FlipRequest(v1::Device device) {
  const auto images =
      kernels::testing::RandomBuffer(kernels::DType::kUInt8, {2, 4, 6, 3}, 1, 0, 255);
  v1::ProcessRequest r;
  r.set_device(device);
  auto* t = r.mutable_images();
  t->set_dtype(v1::DTYPE_UINT8);
  for (int d : {2, 4, 6, 3}) t->add_shape(d);
  t->set_data(
      std::string(reinterpret_cast<const char*>(images.bytes().data()), images.view().bytes()));
  r.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  return r;
}

// A device that is "usable" but fails every execution, standing in for a GPU fault.
class FailingBackend : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::kCuda; }
  bool usable() const override { return true; }
  std::string name() const override { return "failing"; }
  std::string detail() const override { return ""; }
  absl::Status Execute(const Plan&, const ExecInputs&, const ExecOutputs&,
                       std::vector<StepTiming>*) override {
    ++calls;
    return absl::InternalError("cuda: cudaLaunchKernel: an illegal memory access was encountered");
  }
  int calls = 0;
};

// A device without a colour kernel: backends say which kernels they have (Backend::Implements).
class NoColorBackend : public FailingBackend {
 public:
  bool Implements(KernelKind k) const override { return k != KernelKind::kColor; }
};

TEST(RoutingTest, CudaBackendWithoutDeviceIsReportedAndNeverChosen) {
  std::unique_ptr<Backend> cuda = MakeCudaBackend();
#ifdef TENSORPREP_HAVE_CUDA
  ASSERT_NE(cuda, nullptr);
#endif
  if (cuda != nullptr && cuda->usable()) GTEST_SKIP() << "a CUDA device is usable here";
  if (cuda != nullptr) EXPECT_FALSE(cuda->detail().empty());
  kernels::ThreadPool pool(2);
  CpuBackend cpu(&pool);
  Processor processor(ProcessorOptions{}, &cpu, cuda.get());
  auto prepared = processor.Prepare(FlipRequest(v1::DEVICE_AUTO));
  ASSERT_TRUE(prepared.ok());
  EXPECT_EQ((*prepared)->device, DeviceKind::kCpu);
  auto refused = processor.Prepare(FlipRequest(v1::DEVICE_CUDA));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RoutingTest, DeviceFailureFallsBackToCpuForAutoAndFailsExplicitCuda) {
  kernels::ThreadPool pool(1);
  CpuBackend cpu(&pool);
  FailingBackend gpu;
  ProcessorOptions options;
  options.auto_cuda_min_bytes = 0;
  Processor processor(options, &cpu, &gpu);

  const v1::ProcessRequest request = FlipRequest(v1::DEVICE_AUTO);
  auto prepared = processor.Prepare(request);
  ASSERT_TRUE(prepared.ok());
  EXPECT_EQ((*prepared)->device, DeviceKind::kCuda);
  v1::ProcessResponse response;
  auto stats = processor.Run(request, **prepared, &response);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(response.device(), v1::DEVICE_CPU);
  EXPECT_EQ(gpu.calls, 1);
  const std::string& in = request.images().data();
  const std::string& out = response.images().data();
  // Row 0, pixel 0 of the output is row 0, pixel 5 of the input.
  EXPECT_EQ(out.substr(0, 3), in.substr(5 * 3, 3));

  const v1::ProcessRequest explicit_cuda = FlipRequest(v1::DEVICE_CUDA);
  prepared = processor.Prepare(explicit_cuda);
  ASSERT_TRUE(prepared.ok());
  v1::ProcessResponse failed;
  stats = processor.Run(explicit_cuda, **prepared, &failed);
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(stats.status().message().find("illegal memory access"), std::string::npos);
}

// A plan with a step the device has no kernel for stays on the CPU under DEVICE_AUTO, and an
// explicit DEVICE_CUDA is refused naming the op; ListOps lists only the CPU for that op.
TEST(RoutingTest, StepsTheDeviceLacksKeepTheRequestOnTheCpu) {
  kernels::ThreadPool pool(1);
  CpuBackend cpu(&pool);
  NoColorBackend gpu;
  ProcessorOptions options;
  options.auto_cuda_min_bytes = 0;
  Processor processor(options, &cpu, &gpu);
  v1::ProcessRequest request = FlipRequest(v1::DEVICE_AUTO);
  request.mutable_pipeline()->add_ops()->mutable_brightness()->set_factor(1.5);
  auto prepared = processor.Prepare(request);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  EXPECT_EQ((*prepared)->device, DeviceKind::kCpu);
  v1::ProcessResponse response;
  ASSERT_TRUE(processor.Run(request, **prepared, &response).ok());
  EXPECT_EQ(response.device(), v1::DEVICE_CPU);
  EXPECT_EQ(gpu.calls, 0);

  request.set_device(v1::DEVICE_CUDA);
  auto refused = processor.Prepare(request);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("pipeline.ops[1] runs a color kernel"),
            std::string::npos)
      << refused.status();

  v1::ListOpsResponse ops;
  DescribeOps(processor.backends(), &ops);
  for (const auto& op : ops.ops()) {
    const bool color = op.name() == "brightness" || op.name() == "contrast" ||
                       op.name() == "saturation" || op.name() == "hue" ||
                       op.name() == "grayscale" || op.name() == "color_jitter";
    EXPECT_EQ(op.devices_size(), color ? 1 : 2) << op.name();
  }
}

}  // namespace
}  // namespace tensorprep::handlers
