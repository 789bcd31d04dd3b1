// Kernel times of the CUDA backend, measured with CUDA events on its own stream, beside a
// device-to-device cudaMemcpy of the same bytes in the same run (the memory-bound ceiling), and
// pinned host<->device copy bandwidth. Each launch includes its parameter upload, as in service.
//
//   tensorprep_cuda_bench [iterations]
//
// Prints one line per (op, batch). Exits 0 with one line where no usable CUDA device exists.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_api.h"

namespace tp = tensorprep::kernels;
namespace tc = tensorprep::kernels::cuda;

namespace {

#define BENCH_CHECK(expr)                                                        \
  do {                                                                           \
    const cudaError_t bench_error_ = (expr);                                     \
    if (bench_error_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(bench_error_)); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

void Require(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(status.message()).c_str());
    std::exit(1);
  }
}

template <typename T>
T Take(absl::StatusOr<T> v, const char* what) {
  Require(v.status(), what);
  return std::move(v).value();
}

// Mean milliseconds per call of `fn` over `iterations` calls queued back to back on `stream`,
// after a warm-up.
double TimeMs(tc::Stream& stream, int iterations, const std::function<absl::Status()>& fn) {
  auto s = static_cast<cudaStream_t>(stream.native_handle());
  for (int i = 0; i < 3; ++i) Require(fn(), "warm-up");
  Require(tc::Synchronize(stream), "synchronize");
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  BENCH_CHECK(cudaEventRecord(start, s));
  for (int i = 0; i < iterations; ++i) Require(fn(), "timed call");
  BENCH_CHECK(cudaEventRecord(stop, s));
  BENCH_CHECK(cudaEventSynchronize(stop));
  float ms = 0;
  BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
  BENCH_CHECK(cudaEventDestroy(start));
  BENCH_CHECK(cudaEventDestroy(stop));
  return ms / iterations;
}

tp::ElementwiseOp Normalize() {
  tp::ElementwiseOp op;
  op.kind = tp::ElementwiseKind::kNormalize;
  op.a = {0.485, 0.456, 0.406};
  op.b = {0.229, 0.224, 0.225};
  return op;
}

tp::ElementwiseOp Op(tp::ElementwiseKind kind, double v) {
  tp::ElementwiseOp op;
  op.kind = kind;
  op.a = {v};
  return op;
}

tp::ElementwiseOp CastTo(tp::DType to) {
  tp::ElementwiseOp op;
  op.kind = tp::ElementwiseKind::kCast;
  op.to = to;
  return op;
}

}  // namespace

int main(int argc, char** argv) {
  const tc::DeviceInfo info = tc::Probe();
  if (!info.usable) {
    std::printf("no usable CUDA device: %s\n", info.detail.c_str());
    return 0;
  }
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 20;
  std::printf("device: %s\n", info.detail.c_str());
  std::printf("%-28s %6s %11s %9s %13s %9s\n", "op (256x256x3 float32)", "batch", "us/batch",
              "GB/s", "memcpy GB/s", "vs memcpy");

  tc::Stream stream = Take(tc::Stream::Create(), "Stream::Create");
  const int64_t kH = 256, kW = 256, kC = 3;
  for (const int64_t batch : {1, 64, 256}) {
    const tp::BatchShape shape{batch, kH, kW, kC};
    const size_t bytes = static_cast<size_t>(shape.elements()) * sizeof(float);
    tc::DeviceBuffer src = Take(tc::DeviceBuffer::Allocate(bytes), "allocate src");
    tc::DeviceBuffer dst = Take(tc::DeviceBuffer::Allocate(bytes), "allocate dst");
    {
      tc::PinnedBuffer host = Take(tc::PinnedBuffer::Allocate(bytes), "allocate pinned");
      auto* v = static_cast<float*>(host.data());
      for (int64_t i = 0; i < shape.elements(); ++i) v[i] = static_cast<float>(i % 251) / 251.0f;
      Require(tc::CopyToDevice(host.data(), src, bytes, stream), "upload");
      Require(tc::Synchronize(stream), "upload sync");
    }
    const tp::ConstTensorView in{tp::DType::kFloat32, shape, src.data()};
    const tp::TensorView out_f32{tp::DType::kFloat32, shape, dst.data()};
    const tp::TensorView out_u8{tp::DType::kUInt8, shape, dst.data()};
    const tp::TensorView out_f16{tp::DType::kFloat16, shape, dst.data()};
    std::vector<tp::Affine> maps;
    for (int64_t n = 0; n < batch; ++n) {
      maps.push_back(tp::RotationInverse(30.0 + static_cast<double>(n % 7), kH, kW));
    }
    const tp::WarpParams bilinear_edge{tp::Interp::kBilinear, tp::Border::kEdge, 0};
    const std::vector<tp::ElementwiseOp> normalize = {Normalize()};
    const std::vector<tp::ElementwiseOp> normalize_f16 = {Normalize(), CastTo(tp::DType::kFloat16)};
    const std::vector<tp::ElementwiseOp> to_uint8 = {Op(tp::ElementwiseKind::kMultiply, 255),
                                                     CastTo(tp::DType::kUInt8)};
    std::vector<tp::FlipFlags> flips(static_cast<size_t>(batch));
    for (int64_t n = 0; n < batch; ++n) flips[n].horizontal = n % 2 == 0;

    auto s = static_cast<cudaStream_t>(stream.native_handle());
    const double memcpy_ms = TimeMs(stream, iterations, [&] {
      const cudaError_t e =
          cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, s);
      return e == cudaSuccess ? absl::OkStatus() : absl::InternalError(cudaGetErrorString(e));
    });
    const double memcpy_gbs = 2.0 * bytes / (memcpy_ms * 1e-3) / 1e9;  // read + write

    struct Case {
      const char* name;
      size_t bytes_moved;
      std::function<absl::Status()> run;
    };
    const std::vector<Case> cases = {
        {"memcpy d2d", 2 * bytes, nullptr},
        {"warp bilinear edge", 2 * bytes,
         [&] { return tc::WarpAffineCuda(in, out_f32, maps, bilinear_edge, stream); }},
        {"warp + normalize", 2 * bytes,
         [&] {
           return tc::WarpElementwiseCuda(in, out_f32, maps, bilinear_edge, normalize, stream);
         }},
        {"warp + x255 + cast uint8", bytes + bytes / 4,
         [&] {
           return tc::WarpElementwiseCuda(in, out_u8, maps, bilinear_edge, to_uint8, stream);
         }},
        {"warp + normalize + cast f16", bytes + bytes / 2,
         [&] {
           return tc::WarpElementwiseCuda(in, out_f16, maps, bilinear_edge, normalize_f16, stream);
         }},
        {"flip (alternate lr)", 2 * bytes,
         [&] { return tc::FlipCuda(in, out_f32, flips, stream); }},
        {"elementwise normalize", 2 * bytes,
         [&] { return tc::ElementwiseCuda(in, out_f32, normalize, stream); }},
    };
    for (const Case& c : cases) {
      const double ms = c.run ? TimeMs(stream, iterations, c.run) : memcpy_ms;
      const double gbs = c.bytes_moved / (ms * 1e-3) / 1e9;
      std::printf("%-28s %6lld %11.1f %9.1f %13.1f %8.2fx\n", c.name, static_cast<long long>(batch),
                  ms * 1e3, gbs, memcpy_gbs, gbs / memcpy_gbs);
    }
  }

  // Pinned host <-> device bandwidth at the size of a batch of 64.
  const size_t copy_bytes = static_cast<size_t>(64 * kH * kW * kC) * sizeof(float);
  tc::PinnedBuffer pinned = Take(tc::PinnedBuffer::Allocate(copy_bytes), "allocate pinned");
  tc::DeviceBuffer device = Take(tc::DeviceBuffer::Allocate(copy_bytes), "allocate device");
  const double h2d_ms = TimeMs(stream, iterations, [&] {
    return tc::CopyToDevice(pinned.data(), device, copy_bytes, stream);
  });
  const double d2h_ms = TimeMs(stream, iterations, [&] {
    return tc::CopyToHost(device, pinned.data(), copy_bytes, stream);
  });
  std::printf("pinned host->device %.1f MB: %.1f GB/s\n", copy_bytes / 1e6,
              copy_bytes / (h2d_ms * 1e-3) / 1e9);
  std::printf("pinned device->host %.1f MB: %.1f GB/s\n", copy_bytes / 1e6,
              copy_bytes / (d2h_ms * 1e-3) / 1e9);
  return 0;
}
