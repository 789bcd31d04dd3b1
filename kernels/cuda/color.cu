// The colour kernels: one thread per pixel for a phase's segments, one per (sample, row) for the
// grey row sums, one per sample for the contrast terms (color_launch.h).
#include <cuda_runtime.h>

#include <type_traits>

#include "kernels/cuda/color_launch.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/launch.h"

namespace tensorprep::kernels::cuda::detail {
namespace {

template <typename T>
__global__ void ColorPixelKernel(ColorArgs args, int32_t phase) {
  for (int64_t n = blockIdx.z; n < args.n; n += gridDim.z) {
    for (int64_t y = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; y < args.h;
         y += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < args.w;
           x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        ColorPixel<T>(args, phase, n, y, x);
      }
    }
  }
}

template <typename T>
__global__ void ColorRowSumKernel(ColorArgs args, int32_t phase) {
  const int64_t rows = args.n * args.h;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    ColorRowSum<T>(args, phase, i / args.h, i % args.h);
  }
}

__global__ void ColorTermKernel(ColorArgs args, int32_t phase) {
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < args.n;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    ColorTerm(args, phase, n);
  }
}

unsigned Blocks(int64_t items, int64_t per_block) {
  const int64_t b = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

}  // namespace

cudaError_t LaunchColorPhase(const ColorArgs& args, DType dtype, int32_t phase, bool sums,
                             cudaStream_t stream) {
  const PixelGrid g = MakePixelGrid(args.n, args.h, args.w);
  return DispatchDType(dtype, [&](auto t) -> cudaError_t {
    using T = decltype(t);
    if constexpr (std::is_same_v<T, int32_t>) {
      return cudaErrorInvalidValue;  // not a colour dtype (PrepareColor refuses it)
    } else {
      ColorPixelKernel<T><<<g.grid, g.block, 0, stream>>>(args, phase);
      if (sums) {
        ColorRowSumKernel<T><<<Blocks(args.n * args.h, 128), 128, 0, stream>>>(args, phase);
        ColorTermKernel<<<Blocks(args.n, 128), 128, 0, stream>>>(args, phase);
      }
      return cudaGetLastError();
    }
  });
}

}  // namespace tensorprep::kernels::cuda::detail
