// The affine warp kernel, with an optional element-wise chain fused after sampling.
#include <cuda_runtime.h>

#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/kernel_math.h"
#include "kernels/cuda/launch.h"

namespace tensorprep::kernels::cuda::detail {
namespace {

// One thread per output pixel (all its channels, out_h x out_w per sample); the grid strides over
// what it does not cover.
template <typename TIn, typename TOut>
__global__ void WarpKernel(WarpArgs args) {
  for (int64_t n = blockIdx.z; n < args.n; n += gridDim.z) {
    for (int64_t y = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; y < args.out_h;
         y += static_cast<int64_t>(gridDim.y) * blockDim.y) {
      for (int64_t x = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; x < args.out_w;
           x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        WarpPixel<TIn, TOut>(args, n, y, x);
      }
    }
  }
}

}  // namespace

cudaError_t LaunchWarp(const WarpArgs& args, DType in, DType out, cudaStream_t stream) {
  const PixelGrid g = MakePixelGrid(args.n, args.out_h, args.out_w);
  return DispatchDType(in, [&](auto tin) {
    return DispatchDType(out, [&](auto tout) {
      WarpKernel<decltype(tin), decltype(tout)><<<g.grid, g.block, 0, stream>>>(args);
      return cudaGetLastError();
    });
  });
}

cudaError_t CheckKernelImage() {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes, WarpKernel<float, float>);
}

}  // namespace tensorprep::kernels::cuda::detail
