// The flip kernel: a permuting copy, one thread per output pixel.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/kernel_math.h"
#include "kernels/cuda/launch.h"

namespace tensorprep::kernels::cuda::detail {
namespace {

template <typename T>
__global__ void FlipKernel(FlipArgs args) {
  for (int64_t n = blockIdx.z; n < args.n; n += gridDim.z) {
    for (int64_t y = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; y < args.h;
         y += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < args.w;
           x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        FlipPixel<T>(args, n, y, x);
      }
    }
  }
}

template <typename T>
cudaError_t Launch(const FlipArgs& args, cudaStream_t stream) {
  const PixelGrid g = MakePixelGrid(args.n, args.h, args.w);
  FlipKernel<T><<<g.grid, g.block, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchFlip(const FlipArgs& args, size_t element_size, cudaStream_t stream) {
  switch (element_size) {
    case 1:
      return Launch<uint8_t>(args, stream);
    case 2:
      return Launch<uint16_t>(args, stream);
    case 4:
      return Launch<uint32_t>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace tensorprep::kernels::cuda::detail
