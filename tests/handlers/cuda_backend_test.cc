// The CUDA backend against the CPU backend, whole requests through the Processor: random
// pipelines (random flips and rotations with the same per-sample draws, aux tensors), every input
// dtype with casts, the W2 batch of 256, and many requests at once (lanes, reused pinned staging).
// Fallback to the CPU is off, so a device failure fails the test instead of hiding behind a CPU
// result, and every response must say CUDA ran it. The kernels round like the CPU (no FMA, the
// _rn intrinsics; tests/kernels/cuda checks each kernel bit for bit), so results must be equal;
// only float results of bilinear sampling get a float rounding tolerance, as in planner_test.
// Every test skips without a usable CUDA device.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "handlers/backend.h"
#include "handlers/processor.h"
#include "handlers/shm_regions.h"
#include "tests/handlers/request_util.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::handlers {
namespace {

namespace v1 = ::tensorprep::v1;
using kernels::BatchShape;
using kernels::DType;
using testing::AddRotate;
using testing::Process;
using testing::RandomPipeline;
using testing::RunResult;
using testing::Wire;

// A CPU-only processor and a CUDA processor that never falls back, over one shared device.
class CudaVsCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    cuda_ = MakeCudaBackend();
    if (cuda_ == nullptr) GTEST_SKIP() << "built without CUDA";
    if (!cuda_->usable()) GTEST_SKIP() << "no usable CUDA device (" << cuda_->detail() << ")";
    ProcessorOptions on_cpu;
    on_cpu.allow_cuda = false;
    ProcessorOptions on_cuda = on_cpu;
    on_cuda.allow_cuda = true;
    on_cuda.cuda_fallback_to_cpu = false;
    on_cuda.auto_cuda_min_bytes = 0;
    cpu_only_ = std::make_unique<Processor>(on_cpu, &cpu_, nullptr);
    with_cuda_ = std::make_unique<Processor>(on_cuda, &cpu_, cuda_.get());
  }

  // Runs `request` on both; the CUDA run must report DEVICE_CUDA and equal the CPU run.
  void ExpectSameOnBoth(v1::ProcessRequest request, bool float_bilinear) {
    request.set_device(v1::DEVICE_CPU);
    auto want = Process(*cpu_only_, request);
    ASSERT_TRUE(want.ok()) << want.status();
    request.set_device(v1::DEVICE_CUDA);
    auto got = Process(*with_cuda_, request);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->device, v1::DEVICE_CUDA);
    ExpectEqualResults(*got, *want, float_bilinear);
  }

  static void ExpectEqualResults(const RunResult& got, const RunResult& want, bool float_bilinear) {
    ASSERT_EQ(got.aux, want.aux) << "aux tensors (nearest, integer) must match exactly";
    ASSERT_EQ(got.images.size(), want.images.size());
    if (!float_bilinear) {
      ASSERT_TRUE(got.images == want.images) << "results differ";
      return;
    }
    std::vector<float> a(got.images.size() / 4), b(a.size());
    std::memcpy(a.data(), got.images.data(), a.size() * 4);
    std::memcpy(b.data(), want.images.data(), b.size() * 4);
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_NEAR(a[i], b[i], 1e-5 * (1 + std::abs(b[i]))) << "element " << i;
    }
  }

  void RandomPipelines(bool nearest);

  kernels::ThreadPool pool_{2};
  CpuBackend cpu_{&pool_};
  std::unique_ptr<Backend> cuda_;
  std::unique_ptr<Processor> cpu_only_, with_cuda_;
};

v1::ProcessRequest ImagesWithLabels(const BatchShape& shape, uint64_t seed) {
  const auto images = kernels::testing::RandomBuffer(DType::kFloat32, shape, seed, 0, 1);
  const auto labels =
      kernels::testing::RandomBuffer(DType::kInt32, {shape.n, shape.h, shape.w, 1}, seed, 0, 9);
  v1::ProcessRequest request;
  *request.mutable_images() = Wire(images, v1::DTYPE_FLOAT32, false);
  auto* aux = request.add_aux();
  aux->set_name("label");
  *aux->mutable_tensor() = Wire(labels, v1::DTYPE_INT32, true);
  request.set_seed(seed);
  return request;
}

// 60 random pipelines with aux labels; nearest sampling must match exactly, bilinear to float
// rounding.
void CudaVsCpu::RandomPipelines(bool nearest) {
  std::mt19937 rng(nearest ? 11 : 12);
  for (int trial = 0; trial < 60; ++trial) {
    const int channels = 1 + static_cast<int>(rng() % 4);
    const BatchShape shape{1 + static_cast<int64_t>(rng() % 9),
                           5 + static_cast<int64_t>(rng() % 40),
                           5 + static_cast<int64_t>(rng() % 40), channels};
    v1::ProcessRequest request = ImagesWithLabels(shape, (nearest ? 0 : 100) + trial);
    *request.mutable_pipeline() = RandomPipeline(rng, nearest, channels);
    SCOPED_TRACE(request.pipeline().DebugString());
    ExpectSameOnBoth(request, !nearest);
  }
}

TEST_F(CudaVsCpu, RandomPipelinesWithNearestSampling) { RandomPipelines(true); }

TEST_F(CudaVsCpu, RandomPipelinesWithBilinearSampling) { RandomPipelines(false); }

// Random rotations and flips draw per sample from (seed, sample_offset + i, op index): the device
// must make the same decisions, also for a batch that starts at a non-zero sample offset.
TEST_F(CudaVsCpu, RandomOpsDrawTheSameDecisions) {
  for (const uint64_t offset : {uint64_t{0}, uint64_t{1000003}}) {
    v1::ProcessRequest request = ImagesWithLabels({32, 24, 20, 3}, 77);
    request.set_sample_offset(offset);
    auto* rr = request.mutable_pipeline()->add_ops()->mutable_random_rotate();
    rr->set_min_deg(-45);
    rr->set_max_deg(45);
    rr->set_interpolation(v1::INTERPOLATION_NEAREST);
    rr->set_border(v1::BORDER_REFLECT_101);
    auto* rf = request.mutable_pipeline()->add_ops()->mutable_random_flip();
    rf->set_axis(v1::FLIP_AXIS_VERTICAL);
    rf->set_p(0.5);
    SCOPED_TRACE(offset);
    ExpectSameOnBoth(request, false);
  }
}

// The new ops on the device: the ImageNet training transform (random resized crop with
// antialias, flip, colour jitter, normalize, float16 channels-first) and a
// segmentation transform (random affine, resize, pad, crop and a flip of image and mask) at several
// sizes; the resample, colour and element-wise kernels round as the CPU's, so the uint8 and float16
// results are equal bit for bit.
TEST_F(CudaVsCpu, TrainingAndSegmentationTransforms) {
  for (const BatchShape& shape : {BatchShape{5, 256, 256, 3}, BatchShape{3, 37, 61, 3}}) {
    SCOPED_TRACE(::testing::Message() << shape.n << "x" << shape.h << "x" << shape.w);
    const auto images = kernels::testing::RandomBuffer(DType::kUInt8, shape, 21, 0, 255);
    v1::ProcessRequest train;
    *train.mutable_images() = Wire(images, v1::DTYPE_UINT8, false);
    train.set_seed(8);
    auto* p = train.mutable_pipeline();
    auto* rrc = p->add_ops()->mutable_random_resized_crop();
    rrc->set_height(24);
    rrc->set_width(20);
    rrc->set_antialias(true);
    auto* rf = p->add_ops()->mutable_random_flip();
    rf->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    rf->set_p(0.5);
    auto* j = p->add_ops()->mutable_color_jitter();
    j->set_brightness_min(0.6);
    j->set_brightness_max(1.4);
    j->set_contrast_min(0.6);
    j->set_contrast_max(1.4);
    j->set_saturation_min(0.6);
    j->set_saturation_max(1.4);
    j->set_hue_min(-0.1);
    j->set_hue_max(0.1);
    p->add_ops()->mutable_cast()->set_dtype(v1::DTYPE_FLOAT32);
    p->add_ops()->mutable_divide()->add_value(255);
    auto* n = p->add_ops()->mutable_normalize();
    for (double m : {0.485, 0.456, 0.406}) n->add_mean(m);
    for (double sd : {0.229, 0.224, 0.225}) n->add_std(sd);
    p->add_ops()->mutable_cast()->set_dtype(v1::DTYPE_FLOAT16);
    p->add_ops()->mutable_channels_first();
    ExpectSameOnBoth(train, false);

    v1::ProcessRequest seg = ImagesWithLabels(shape, 31);
    seg.mutable_aux(0)->set_fill(255);
    auto* q = seg.mutable_pipeline();
    auto* ra = q->add_ops()->mutable_random_affine();
    ra->set_angle_min_deg(-10);
    ra->set_angle_max_deg(10);
    ra->set_scale_min(0.5);
    ra->set_scale_max(2);
    ra->set_interpolation(v1::INTERPOLATION_NEAREST);
    auto* rs = q->add_ops()->mutable_resize();
    rs->set_height(shape.h / 2 + 3);
    rs->set_width(shape.w / 2 + 1);
    rs->set_interpolation(v1::INTERPOLATION_NEAREST);
    auto* pad = q->add_ops()->mutable_pad();
    pad->set_top(4);
    pad->set_right(7);
    pad->set_border(v1::BORDER_REFLECT);
    auto* crop = q->add_ops()->mutable_crop();
    crop->set_top(2);
    crop->set_left(1);
    crop->set_height(shape.h / 2);
    crop->set_width(shape.w / 2);
    auto* sf = q->add_ops()->mutable_random_flip();
    sf->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    sf->set_p(0.5);
    q->add_ops()->mutable_channels_first();
    ExpectSameOnBoth(seg, false);
  }
}

// Every input dtype through a warp with a cast behind it, and a flip, which copies bytes.
TEST_F(CudaVsCpu, EveryInputDTypeWithCasts) {
  const struct {
    DType dtype;
    v1::DType wire;
    double lo, hi;
  } inputs[] = {{DType::kUInt8, v1::DTYPE_UINT8, 0, 255},
                {DType::kInt32, v1::DTYPE_INT32, -1000, 1000},
                {DType::kFloat32, v1::DTYPE_FLOAT32, -2, 2},
                {DType::kFloat16, v1::DTYPE_FLOAT16, -2, 2}};
  for (const auto& in : inputs) {
    const BatchShape shape{5, 37, 29, 3};
    const auto images = kernels::testing::RandomBuffer(in.dtype, shape, 5, in.lo, in.hi);
    for (const v1::DType to :
         {v1::DTYPE_UINT8, v1::DTYPE_INT32, v1::DTYPE_FLOAT32, v1::DTYPE_FLOAT16}) {
      for (const bool bilinear : {false, true}) {
        v1::ProcessRequest request;
        *request.mutable_images() = Wire(images, in.wire, false);
        AddRotate(*request.mutable_pipeline(), 33,
                  bilinear ? v1::INTERPOLATION_BILINEAR : v1::INTERPOLATION_NEAREST,
                  v1::BORDER_CONSTANT);
        request.mutable_pipeline()->mutable_ops(0)->mutable_rotate()->set_fill(7.25);
        request.mutable_pipeline()->add_ops()->mutable_multiply()->add_value(0.75);
        request.mutable_pipeline()->add_ops()->mutable_cast()->set_dtype(to);
        SCOPED_TRACE(request.pipeline().DebugString());
        SCOPED_TRACE(in.wire);
        ExpectSameOnBoth(request, bilinear && to == v1::DTYPE_FLOAT32);
      }
    }
    v1::ProcessRequest flip;
    *flip.mutable_images() = Wire(images, in.wire, false);
    flip.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    ExpectSameOnBoth(flip, false);
  }
}

// W2 at the GPU target's size: 256 x 256x256x3 float32 (201 MB), rotate + normalize + cast.
TEST_F(CudaVsCpu, W2BatchOf256) {
  const BatchShape shape{256, 256, 256, 3};
  const auto images = kernels::testing::RandomBuffer(DType::kFloat32, shape, 2, 0, 1);
  v1::ProcessRequest request;
  *request.mutable_images() = Wire(images, v1::DTYPE_FLOAT32, false);
  AddRotate(*request.mutable_pipeline(), 30, v1::INTERPOLATION_BILINEAR, v1::BORDER_EDGE);
  auto* n = request.mutable_pipeline()->add_ops()->mutable_normalize();
  for (double m : {0.485, 0.456, 0.406}) n->add_mean(m);
  for (double s : {0.229, 0.224, 0.225}) n->add_std(s);
  request.mutable_pipeline()->add_ops()->mutable_cast()->set_dtype(v1::DTYPE_FLOAT16);
  ExpectSameOnBoth(request, false);
}

// Many requests at once share the device's lanes and pinned staging buffers: each must still get
// its own result, whatever ran beside it.
TEST_F(CudaVsCpu, ConcurrentRequestsGetTheirOwnResults) {
  constexpr int kThreads = 8, kPerThread = 6;
  std::vector<v1::ProcessRequest> requests;
  std::vector<RunResult> want;
  std::mt19937 rng(99);
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    const BatchShape shape{1 + i % 7, 16 + 8 * (i % 5), 24 + 4 * (i % 3), 3};
    v1::ProcessRequest request = ImagesWithLabels(shape, 500 + i);
    *request.mutable_pipeline() = RandomPipeline(rng, true, 3);
    request.set_device(v1::DEVICE_CPU);
    auto r = Process(*cpu_only_, request);
    ASSERT_TRUE(r.ok()) << r.status();
    want.push_back(*std::move(r));
    request.set_device(v1::DEVICE_CUDA);
    requests.push_back(std::move(request));
  }
  std::vector<absl::StatusOr<RunResult>> got(requests.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kPerThread; ++k) {
        const size_t i = static_cast<size_t>(t * kPerThread + k);
        got[i] = Process(*with_cuda_, requests[i]);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_TRUE(got[i].ok()) << got[i].status();
    EXPECT_EQ(got[i]->device, v1::DEVICE_CUDA);
    ExpectEqualResults(*got[i], want[i], false);
  }
}

// DEVICE_AUTO sends small batches to the CPU and large ones to the device.
TEST_F(CudaVsCpu, AutoRoutesBySize) {
  ProcessorOptions options;
  options.auto_cuda_min_bytes = uint64_t{1} << 20;
  options.cuda_fallback_to_cpu = false;
  Processor processor(options, &cpu_, cuda_.get());
  for (const auto& [shape, device] :
       {std::pair{BatchShape{1, 64, 64, 3}, v1::DEVICE_CPU},        // 48 KiB
        std::pair{BatchShape{8, 128, 128, 3}, v1::DEVICE_CUDA}}) {  // 1.5 MiB
    v1::ProcessRequest request = ImagesWithLabels(shape, 3);
    request.set_device(v1::DEVICE_AUTO);
    request.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_VERTICAL);
    auto r = Process(processor, request);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->device, device) << shape.n << "x" << shape.h << "x" << shape.w;
  }
}

// Inputs and results in shared memory: the CUDA backend copies from and to the client's mapped
// pages (pageable host memory) instead of message bytes; the results equal the CPU's inline ones.
TEST_F(CudaVsCpu, SharedMemoryInputsAndOutputs) {
  const std::string key = "/tensorprep-cudatest-" + std::to_string(getpid());
  constexpr size_t kBytes = 8 << 20;
  const int fd = shm_open(key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kBytes), 0);
  void* mapped = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(mapped, MAP_FAILED);
  auto* base = static_cast<uint8_t*>(mapped);
  ShmOptions shm_options;
  shm_options.key_prefix = "/tensorprep-cudatest-";
  SharedMemoryRegions regions(shm_options);
  v1::RegisterSharedMemoryRequest reg;
  reg.set_key(key);
  reg.set_byte_size(kBytes);
  auto handle = regions.Register(reg, "test");
  shm_unlink(key.c_str());
  close(fd);
  ASSERT_TRUE(handle.ok()) << handle.status();
  ProcessorOptions on_cuda;
  on_cuda.cuda_fallback_to_cpu = false;
  Processor processor(on_cuda, &cpu_, cuda_.get(), &regions);

  v1::ProcessRequest inline_req;
  inline_req.set_seed(5);
  *inline_req.mutable_images() =
      Wire(kernels::testing::RandomBuffer(DType::kUInt8, {8, 64, 48, 3}, 9, 0, 255),
           v1::DTYPE_UINT8, false);
  v1::AuxTensor* label = inline_req.add_aux();
  label->set_name("label");
  *label->mutable_tensor() =
      Wire(kernels::testing::RandomBuffer(DType::kInt32, {8, 64, 48, 1}, 10, 0, 20),
           v1::DTYPE_INT32, true);
  AddRotate(*inline_req.mutable_pipeline(), 17, v1::INTERPOLATION_NEAREST, v1::BORDER_REFLECT);
  inline_req.mutable_pipeline()->add_ops()->mutable_random_flip()->set_axis(
      v1::FLIP_AXIS_HORIZONTAL);
  inline_req.mutable_pipeline()->mutable_ops(1)->mutable_random_flip()->set_p(0.5);
  inline_req.set_device(v1::DEVICE_CPU);
  auto want = Process(*cpu_only_, inline_req);
  ASSERT_TRUE(want.ok()) << want.status();

  // Inputs at 0 and 1 MiB, results at 2 and 3 MiB of the region.
  v1::ProcessRequest req = inline_req;
  auto place = [&](v1::Tensor* t, uint64_t at) {
    std::memcpy(base + at, t->data().data(), t->data().size());
    t->mutable_shm()->set_region(*handle);
    t->mutable_shm()->set_offset(at);
    t->mutable_shm()->set_byte_size(t->data().size());
    t->clear_data();
  };
  place(req.mutable_images(), 0);
  place(req.mutable_aux(0)->mutable_tensor(), 1 << 20);
  req.mutable_images_output()->set_region(*handle);
  req.mutable_images_output()->set_offset(2 << 20);
  req.mutable_images_output()->set_byte_size(want->images.size());
  req.mutable_aux(0)->mutable_output()->set_region(*handle);
  req.mutable_aux(0)->mutable_output()->set_offset(3 << 20);
  req.mutable_aux(0)->mutable_output()->set_byte_size(want->aux[0].size());
  req.set_device(v1::DEVICE_CUDA);
  auto prepared = processor.Prepare(req);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  v1::ProcessResponse response;
  auto stats = processor.Run(req, **prepared, &response);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->device, DeviceKind::kCuda);
  EXPECT_EQ(response.transfer().shm_bytes_out(), want->images.size() + want->aux[0].size());
  EXPECT_EQ(std::memcmp(base + (2 << 20), want->images.data(), want->images.size()), 0);
  EXPECT_EQ(std::memcmp(base + (3 << 20), want->aux[0].data(), want->aux[0].size()), 0);
  munmap(mapped, kBytes);
}

}  // namespace
}  // namespace tensorprep::handlers
