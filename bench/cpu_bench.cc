// CPU kernels and fused pipelines, each beside a memcpy of the same bytes in the same run.
//
// Every benchmark reports bytes_per_second as bytes read + bytes written, so that a kernel's
// figure divided by memcpy's (which reads and writes its size once each) is the fraction of the
// memory bandwidth it reaches. Names are "<what>/<data>/t<threads>"; bench/cpu_report.py pairs
// them up and prints the ratios. Run with, for example:
//   tensorprep_cpu_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
//     --benchmark_enable_random_interleaving=true --benchmark_out=cpu.json
// Timings are wall-clock (UseRealTime): the work runs on a thread pool.
#include <benchmark/benchmark.h>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "handlers/backend.h"
#include "handlers/op_registry.h"
#include "handlers/processor.h"
#include "handlers/tensor_codec.h"
#include "kernels/common/thread_pool.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/flip/flip.h"
#include "kernels/warp/warp.h"

namespace tensorprep::bench {
namespace {

namespace pb = ::tensorprep::v1;
using handlers::AlignedBuffer;
using kernels::BatchShape;
using kernels::ConstTensorView;
using kernels::DType;
using kernels::TensorView;

// W2 / W3 image: 256x256x3 float32 (768 KiB). 64 of them are the "50 MB batch" (50.3 MB).
constexpr int64_t kSide = 256;
constexpr int64_t kChannels = 3;
constexpr int64_t kBigBatch = 64;

// Source batches, built once and shared by every benchmark (read-only).
struct Inputs {
  AlignedBuffer f32;  // kBigBatch W2 images, uniform [0, 1)
  AlignedBuffer u8;   // kBigBatch 256x256x3 uint8
  AlignedBuffer i32;  // kBigBatch 256x256 int32 labels (W3's aux)
};

const Inputs& GetInputs() {
  static const Inputs* const inputs = [] {
    auto* in = new Inputs;
    const int64_t elems = kBigBatch * kSide * kSide * kChannels;
    in->f32 = AlignedBuffer(elems * 4);
    in->u8 = AlignedBuffer(elems);
    in->i32 = AlignedBuffer(kBigBatch * kSide * kSide * 4);
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    auto* f = static_cast<float*>(in->f32.data());
    auto* b = static_cast<uint8_t*>(in->u8.data());
    for (int64_t i = 0; i < elems; ++i) {
      f[i] = u(rng);
      b[i] = static_cast<uint8_t>(rng());
    }
    auto* l = static_cast<int32_t*>(in->i32.data());
    for (int64_t i = 0; i < kBigBatch * kSide * kSide; ++i) l[i] = static_cast<int32_t>(rng() % 21);
    return in;
  }();
  return *inputs;
}

ConstTensorView InputView(DType dtype, int64_t n, int64_t c = kChannels) {
  const Inputs& in = GetInputs();
  const void* data = dtype == DType::kFloat32 ? in.f32.data()
                     : dtype == DType::kUInt8 ? in.u8.data()
                                              : in.i32.data();
  return ConstTensorView{dtype, BatchShape{n, kSide, kSide, c}, data};
}

// A destination buffer that stays allocated (and faulted in) across iterations.
struct Output {
  AlignedBuffer buffer;
  TensorView view;
  Output(DType dtype, const BatchShape& shape)
      : buffer(static_cast<size_t>(shape.elements()) * kernels::DTypeSize(dtype)),
        view{dtype, shape, buffer.data()} {
    std::memset(buffer.data(), 0, buffer.size());
  }
};

std::unique_ptr<kernels::ThreadPool> Pool(int threads) {
  return std::make_unique<kernels::ThreadPool>(threads);
}

void Check(const absl::Status& s, benchmark::State& state) {
  if (!s.ok()) state.SkipWithError(std::string(s.message()).c_str());
}

void Report(benchmark::State& state, uint64_t bytes_moved, int64_t images) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(bytes_moved));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * images);
}

// ---- memcpy: the bandwidth every kernel is measured against ----------------------------------

void Memcpy(benchmark::State& state, int threads) {
  const ConstTensorView src = InputView(DType::kFloat32, kBigBatch);
  Output dst(DType::kFloat32, src.shape);
  auto pool = Pool(threads);
  const size_t bytes = src.bytes();
  constexpr size_t kChunk = size_t{1} << 20;
  const int64_t chunks = static_cast<int64_t>((bytes + kChunk - 1) / kChunk);
  const auto* in = static_cast<const unsigned char*>(src.data);
  auto* out = static_cast<unsigned char*>(dst.view.data);
  for (auto _ : state) {
    pool->ParallelFor(chunks, [&](int64_t i) {
      const size_t begin = static_cast<size_t>(i) * kChunk;
      std::memcpy(out + begin, in + begin, std::min(kChunk, bytes - begin));
    });
    benchmark::ClobberMemory();
  }
  Report(state, 2 * bytes, kBigBatch);
}

// ---- kernels on the 50 MB float32 batch -------------------------------------------------------

void Flip(benchmark::State& state, DType dtype, bool horizontal, int threads) {
  const ConstTensorView src = InputView(dtype, kBigBatch);
  Output dst(dtype, src.shape);
  auto pool = Pool(threads);
  const kernels::FlipFlags flags{horizontal, !horizontal};
  for (auto _ : state) {
    Check(kernels::FlipCpu(src, dst.view, {&flags, 1}, pool.get()), state);
    benchmark::ClobberMemory();
  }
  Report(state, 2 * src.bytes(), kBigBatch);
}

void Elementwise(benchmark::State& state, std::vector<kernels::ElementwiseOp> chain, int threads) {
  const ConstTensorView src = InputView(DType::kFloat32, kBigBatch);
  const DType out_dtype = kernels::ElementwiseOutputDType(src.dtype, chain);
  Output dst(out_dtype, src.shape);
  auto pool = Pool(threads);
  for (auto _ : state) {
    Check(kernels::ElementwiseCpu(src, dst.view, chain, pool.get()), state);
    benchmark::ClobberMemory();
  }
  Report(state, src.bytes() + dst.view.bytes(), kBigBatch);
}

kernels::ElementwiseOp Op(kernels::ElementwiseKind kind, std::vector<double> a = {},
                          std::vector<double> b = {}) {
  kernels::ElementwiseOp op;
  op.kind = kind;
  op.a = std::move(a);
  op.b = std::move(b);
  return op;
}
kernels::ElementwiseOp CastTo(DType to) {
  kernels::ElementwiseOp op;
  op.kind = kernels::ElementwiseKind::kCast;
  op.to = to;
  return op;
}
kernels::ElementwiseOp Clamp(double lo, double hi) {
  kernels::ElementwiseOp op;
  op.kind = kernels::ElementwiseKind::kClamp;
  op.has_lo = op.has_hi = true;
  op.lo = lo;
  op.hi = hi;
  return op;
}

// ---- warp ---------------------------------------------------------------------------------------

void Warp(benchmark::State& state, DType dtype, kernels::Interp interp, int64_t n, int threads) {
  const ConstTensorView src = InputView(dtype, n);
  Output dst(dtype, src.shape);
  auto pool = Pool(threads);
  const kernels::Affine inverse = kernels::RotationInverse(30, kSide, kSide);
  const kernels::WarpParams params{interp, kernels::Border::kEdge, 0};
  for (auto _ : state) {
    Check(kernels::WarpAffineCpu(src, dst.view, {&inverse, 1}, params, pool.get()), state);
    benchmark::ClobberMemory();
  }
  Report(state, 2 * src.bytes(), n);
}

// OpenCV's warpAffine on the same images, one sample at a time on the calling thread: the
// library the kernels are compared with (it quantises positions; see docs/performance.md).
void OpenCvWarp(benchmark::State& state, DType dtype, int64_t n, int64_t channels = kChannels,
                kernels::Interp interp = kernels::Interp::kBilinear) {
  const ConstTensorView src = InputView(dtype, n, channels);
  Output dst(dtype, src.shape);
  const int type =
      CV_MAKETYPE(dtype == DType::kFloat32 ? CV_32F : CV_8U, static_cast<int>(channels));
  const int flags = interp == kernels::Interp::kBilinear ? cv::INTER_LINEAR : cv::INTER_NEAREST;
  const size_t sample =
      static_cast<size_t>(src.shape.sample_elements()) * kernels::DTypeSize(dtype);
  const cv::Mat m =
      cv::getRotationMatrix2D(cv::Point2f((kSide - 1) / 2.0f, (kSide - 1) / 2.0f), 30, 1.0);
  const int saved = cv::getNumThreads();
  cv::setNumThreads(1);
  for (auto _ : state) {
    for (int64_t i = 0; i < n; ++i) {
      const cv::Mat in(
          kSide, kSide, type,
          const_cast<unsigned char*>(static_cast<const unsigned char*>(src.data)) + i * sample);
      cv::Mat out(kSide, kSide, type, static_cast<unsigned char*>(dst.view.data) + i * sample);
      cv::warpAffine(in, out, m, out.size(), flags, cv::BORDER_REPLICATE);
    }
    benchmark::ClobberMemory();
  }
  cv::setNumThreads(saved);
  Report(state, 2 * src.bytes(), n);
}

// ---- warp vs OpenCV on distinct images ----------------------------------------------------------
//
// Both sides see the same kBigBatch distinct images of one (dtype, channels) and write into
// distinct, already mapped destinations, so that neither works from a cache-hot single image.
// "b1" is kBigBatch one-image calls (what the server runs for kBigBatch one-image requests);
// "b64" is one kBigBatch-image call. OpenCV has no batch call: its figure is one warpAffine per
// image, which serves both rows (bench/cpu_report.py). Every iteration processes kBigBatch images;
// the per_image counter is seconds per image (wall clock).

void PerImage(benchmark::State& state, int64_t images) {
  state.counters["per_image"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(images),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// Our warp (rotate 30 degrees, edge border) over the kBigBatch images in calls of `batch` images.
void WarpCalls(benchmark::State& state, DType dtype, int64_t channels, kernels::Interp interp,
               int64_t batch, int threads) {
  const ConstTensorView all = InputView(dtype, kBigBatch, channels);
  Output dst(dtype, all.shape);
  auto pool = Pool(threads);
  const kernels::Affine inverse = kernels::RotationInverse(30, kSide, kSide);
  const kernels::WarpParams params{interp, kernels::Border::kEdge, 0};
  const size_t call_bytes =
      static_cast<size_t>(batch * all.shape.sample_elements()) * kernels::DTypeSize(dtype);
  const BatchShape shape{batch, kSide, kSide, channels};
  for (auto _ : state) {
    for (int64_t first = 0; first < kBigBatch; first += batch) {
      const size_t offset = static_cast<size_t>(first / batch) * call_bytes;
      const ConstTensorView in{dtype, shape, static_cast<const unsigned char*>(all.data) + offset};
      const TensorView out{dtype, shape, static_cast<unsigned char*>(dst.view.data) + offset};
      Check(kernels::WarpAffineCpu(in, out, {&inverse, 1}, params, pool.get()), state);
    }
    benchmark::ClobberMemory();
  }
  Report(state, 2 * all.bytes(), kBigBatch);
  PerImage(state, kBigBatch);
}

void OpenCvWarpCalls(benchmark::State& state, DType dtype, int64_t channels,
                     kernels::Interp interp) {
  OpenCvWarp(state, dtype, kBigBatch, channels, interp);
  PerImage(state, kBigBatch);
}

// ---- pipelines through the CPU backend ----------------------------------------------------------

pb::Pipeline RotatePipeline() {
  pb::Pipeline p;
  auto* r = p.add_ops()->mutable_rotate();
  r->set_angle_deg(30);
  r->set_interpolation(pb::INTERPOLATION_BILINEAR);
  r->set_border(pb::BORDER_EDGE);
  return p;
}

// rotate + flip + normalize + cast(float16): one warp with the element-wise chain fused behind it.
pb::Pipeline RotateFlipNormalizeCast(pb::DType to) {
  pb::Pipeline p = RotatePipeline();
  p.add_ops()->mutable_flip()->set_axis(pb::FLIP_AXIS_HORIZONTAL);
  auto* n = p.add_ops()->mutable_normalize();
  for (double m : {0.485, 0.456, 0.406}) n->add_mean(m);
  for (double s : {0.229, 0.224, 0.225}) n->add_std(s);
  p.add_ops()->mutable_cast()->set_dtype(to);
  return p;
}

pb::Pipeline RotateFlip() {
  pb::Pipeline p = RotatePipeline();
  p.add_ops()->mutable_flip()->set_axis(pb::FLIP_AXIS_HORIZONTAL);
  return p;
}

pb::Pipeline RotateNormalize() {
  pb::Pipeline p = RotatePipeline();
  auto* n = p.add_ops()->mutable_normalize();
  for (double m : {0.485, 0.456, 0.406}) n->add_mean(m);
  for (double s : {0.229, 0.224, 0.225}) n->add_std(s);
  return p;
}

pb::Pipeline RandomFlipPipeline() {
  pb::Pipeline p;
  auto* f = p.add_ops()->mutable_random_flip();
  f->set_axis(pb::FLIP_AXIS_HORIZONTAL);
  f->set_p(0.5);
  return p;
}

// Runs `pipeline` on n images (and the W3 label when `label`) with CpuBackend::Execute into
// outputs that persist across iterations.
void Pipeline(benchmark::State& state, const pb::Pipeline& pipeline, int64_t n, bool label,
              int threads) {
  const ConstTensorView src = InputView(DType::kFloat32, n);
  std::vector<handlers::AuxSampling> sampling;
  handlers::ExecInputs in;
  in.main = src;
  if (label) {
    in.aux.push_back(ConstTensorView{DType::kInt32, BatchShape{n, kSide, kSide, 1},
                                     GetInputs().i32.data()});
    sampling.push_back(handlers::AuxSampling{});
  }
  auto plan = handlers::BuildPlan(pipeline, handlers::BatchState{src.shape, src.dtype}, 7, 0,
                                  sampling, handlers::PlanOptions{});
  if (!plan.ok()) {
    state.SkipWithError(std::string(plan.status().message()).c_str());
    return;
  }
  Output main(plan->output_dtype, src.shape);
  std::vector<std::unique_ptr<Output>> aux_out;
  handlers::ExecOutputs out;
  out.main = main.view;
  for (const auto& a : in.aux) {
    aux_out.push_back(std::make_unique<Output>(a.dtype, a.shape));
    out.aux.push_back(aux_out.back()->view);
  }
  auto pool = Pool(threads);
  handlers::CpuBackend cpu(pool.get());
  uint64_t moved = src.bytes() + main.view.bytes();
  for (const auto& a : in.aux) moved += 2 * a.bytes();
  for (auto _ : state) {
    Check(cpu.Execute(*plan, in, out, nullptr), state);
    benchmark::ClobberMemory();
  }
  Report(state, moved, n);
}

// The whole request path below gRPC: Prepare (decode views, plan) and Run (a fresh response,
// its output bytes, the kernels), as the server does for each request.
void ProcessRequest(benchmark::State& state, const pb::Pipeline& pipeline, int64_t n, bool label,
                    int threads) {
  pb::ProcessRequest request;
  const ConstTensorView src = InputView(DType::kFloat32, n);
  request.mutable_images()->set_dtype(pb::DTYPE_FLOAT32);
  for (int64_t d : {n, kSide, kSide, kChannels}) request.mutable_images()->add_shape(d);
  request.mutable_images()->set_data(src.data, src.bytes());
  if (label) {
    auto* aux = request.add_aux();
    aux->set_name("label");
    aux->mutable_tensor()->set_dtype(pb::DTYPE_INT32);
    for (int64_t d : {n, kSide, kSide}) aux->mutable_tensor()->add_shape(d);
    aux->mutable_tensor()->set_data(GetInputs().i32.data(), n * kSide * kSide * 4);
  }
  *request.mutable_pipeline() = pipeline;
  request.set_device(pb::DEVICE_CPU);
  auto pool = Pool(threads);
  handlers::CpuBackend cpu(pool.get());
  handlers::Processor processor(handlers::ProcessorOptions{}, &cpu, nullptr);
  uint64_t moved = 0;
  for (auto _ : state) {
    auto prepared = processor.Prepare(request);
    if (!prepared.ok()) {
      state.SkipWithError(std::string(prepared.status().message()).c_str());
      break;
    }
    pb::ProcessResponse response;
    auto stats = processor.Run(request, **prepared, &response);
    if (!stats.ok()) {
      state.SkipWithError(std::string(stats.status().message()).c_str());
      break;
    }
    moved = (*prepared)->bytes_in + stats->bytes_out;
    benchmark::DoNotOptimize(response);
  }
  Report(state, moved, n);
}

// PrepareOutput alone: sizing a fresh response's bytes (std::string zero-fills them).
void PrepareOutputOnly(benchmark::State& state, int64_t n) {
  const BatchShape shape{n, kSide, kSide, kChannels};
  for (auto _ : state) {
    pb::Tensor t;
    TensorView v = handlers::PrepareOutput(&t, DType::kFloat32, shape, 4);
    benchmark::DoNotOptimize(v.data);
  }
  Report(state, static_cast<uint64_t>(shape.elements()) * 4, n);
}

// ---- registration -------------------------------------------------------------------------------

template <typename Fn>
void Add(const std::string& name, Fn fn) {
  benchmark::RegisterBenchmark(name.c_str(), fn)->UseRealTime()->Unit(benchmark::kMicrosecond);
}

void RegisterAll() {
  using EK = kernels::ElementwiseKind;
  const std::string big = "f32_50MB";
  for (int t : {1, 2}) {
    const std::string th = "/t" + std::to_string(t);
    Add("memcpy/" + big + th, [t](benchmark::State& s) { Memcpy(s, t); });
    Add("flip_h/" + big + th,
        [t](benchmark::State& s) { Flip(s, DType::kFloat32, true, t); });
    Add("flip_v/" + big + th,
        [t](benchmark::State& s) { Flip(s, DType::kFloat32, false, t); });
    Add("add/" + big + th,
        [t](benchmark::State& s) { Elementwise(s, {Op(EK::kAdd, {1.0})}, t); });
    Add("multiply_c/" + big + th, [t](benchmark::State& s) {
      Elementwise(s, {Op(EK::kMultiply, {0.5, 2.0, 1.5})}, t);
    });
    Add("divide/" + big + th,
        [t](benchmark::State& s) { Elementwise(s, {Op(EK::kDivide, {255.0})}, t); });
    Add("normalize/" + big + th, [t](benchmark::State& s) {
      Elementwise(s, {Op(EK::kNormalize, {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225})}, t);
    });
    Add("clamp/" + big + th,
        [t](benchmark::State& s) { Elementwise(s, {Clamp(0.1, 0.9)}, t); });
    Add("cast_u8/" + big + th,
        [t](benchmark::State& s) { Elementwise(s, {CastTo(DType::kUInt8)}, t); });
    Add("cast_f16/" + big + th,
        [t](benchmark::State& s) { Elementwise(s, {CastTo(DType::kFloat16)}, t); });
    Add("normalize_cast_f16/" + big + th, [t](benchmark::State& s) {
      Elementwise(s,
                  {Op(EK::kNormalize, {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225}),
                   CastTo(DType::kFloat16)},
                  t);
    });
    // Warps: W2 (rotate 30 degrees, bilinear, edge) at batch 1 and 64.
    for (int64_t n : {int64_t{1}, kBigBatch}) {
      const std::string data = "W2_b" + std::to_string(n);
      Add("rotate/" + data + th, [t, n](benchmark::State& s) {
        Warp(s, DType::kFloat32, kernels::Interp::kBilinear, n, t);
      });
      Add("pipe_rotate/" + data + th,
          [t, n](benchmark::State& s) { Pipeline(s, RotatePipeline(), n, false, t); });
      Add("pipe_rotate_flip/" + data + th,
          [t, n](benchmark::State& s) { Pipeline(s, RotateFlip(), n, false, t); });
      Add("pipe_rotate_norm/" + data + th,
          [t, n](benchmark::State& s) { Pipeline(s, RotateNormalize(), n, false, t); });
      Add("pipe_rotate_flip_norm_cast_f16/" + data + th, [t, n](benchmark::State& s) {
        Pipeline(s, RotateFlipNormalizeCast(pb::DTYPE_FLOAT16), n, false, t);
      });
      Add("pipe_rotate_flip_norm_cast_f32/" + data + th, [t, n](benchmark::State& s) {
        Pipeline(s, RotateFlipNormalizeCast(pb::DTYPE_FLOAT32), n, false, t);
      });
      Add("pipe_W3_random_flip/" + std::string("W3_b") + std::to_string(n) + th,
          [t, n](benchmark::State& s) { Pipeline(s, RandomFlipPipeline(), n, true, t); });
      Add("process_W2/" + data + th,
          [t, n](benchmark::State& s) { ProcessRequest(s, RotatePipeline(), n, false, t); });
      Add("process_W3/W3_b" + std::to_string(n) + th,
          [t, n](benchmark::State& s) { ProcessRequest(s, RandomFlipPipeline(), n, true, t); });
    }
    Add("rotate_nearest/W2_b64" + th, [t](benchmark::State& s) {
      Warp(s, DType::kFloat32, kernels::Interp::kNearest, kBigBatch, t);
    });
    Add("rotate_u8/u8_b64" + th, [t](benchmark::State& s) {
      Warp(s, DType::kUInt8, kernels::Interp::kBilinear, kBigBatch, t);
    });
  }
  Add("opencv_rotate/W2_b64/t1",
      [](benchmark::State& s) { OpenCvWarp(s, DType::kFloat32, kBigBatch); });
  Add("opencv_rotate_u8/u8_b64/t1",
      [](benchmark::State& s) { OpenCvWarp(s, DType::kUInt8, kBigBatch); });
  Add("prepare_output/f32_50MB/t1", [](benchmark::State& s) { PrepareOutputOnly(s, kBigBatch); });

  // warp/<dtype>_c<C>_<interp>_b<N>/t<T> against opencv_warp/<dtype>_c<C>_<interp>_b1/t1, all on
  // the same kBigBatch distinct images (see WarpCalls).
  for (DType dtype : {DType::kFloat32, DType::kUInt8}) {
    for (int64_t c : {int64_t{1}, kChannels}) {
      for (kernels::Interp interp : {kernels::Interp::kBilinear, kernels::Interp::kNearest}) {
        const std::string data = std::string(dtype == DType::kFloat32 ? "f32" : "u8") + "_c" +
                                 std::to_string(c) +
                                 (interp == kernels::Interp::kBilinear ? "_bilinear" : "_nearest");
        for (int64_t n : {int64_t{1}, kBigBatch}) {
          const bool scaling = dtype == DType::kFloat32 && c == kChannels &&
                               interp == kernels::Interp::kBilinear && n == kBigBatch;
          for (int t : {1, 2}) {
            if (t == 2 && !scaling) continue;
            Add("warp/" + data + "_b" + std::to_string(n) + "/t" + std::to_string(t),
                [=](benchmark::State& s) { WarpCalls(s, dtype, c, interp, n, t); });
          }
        }
        Add("opencv_warp/" + data + "_b1/t1",
            [=](benchmark::State& s) { OpenCvWarpCalls(s, dtype, c, interp); });
      }
    }
  }
}

}  // namespace
}  // namespace tensorprep::bench

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  tensorprep::bench::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
