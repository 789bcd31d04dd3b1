// The antialiased resample kernel: one thread per output pixel (all its channels), each running
// resample::ResamplePixel, the CPU passes' arithmetic in per-pixel form (resample_taps.h).
#include <cuda_runtime.h>

#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/resample_launch.h"

namespace tensorprep::kernels::cuda::detail {
namespace {

template <typename T>
__global__ void ResampleKernel(resample::PixelArgs args) {
  for (int64_t n = blockIdx.z; n < args.n; n += gridDim.z) {
    for (int64_t y = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; y < args.out_h;
         y += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
           x < args.out_w; x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        resample::ResamplePixel<T>(args, n, y, x);
      }
    }
  }
}

}  // namespace

cudaError_t LaunchResample(const resample::PixelArgs& args, DType dtype, cudaStream_t stream) {
  const PixelGrid g = MakePixelGrid(args.n, args.out_h, args.out_w);
  return DispatchDType(dtype, [&](auto t) {
    ResampleKernel<decltype(t)><<<g.grid, g.block, 0, stream>>>(args);
    return cudaGetLastError();
  });
}

}  // namespace tensorprep::kernels::cuda::detail
