// The fused element-wise kernels: one read and one write per element whatever the chain's length,
// writing NHWC (like the source) or channels-first.
#include <cuda_runtime.h>

#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/kernel_math.h"
#include "kernels/cuda/launch.h"

namespace tensorprep::kernels::cuda::detail {
namespace {

// Grid-stride loop over elements. The channel index is carried along instead of recomputed, so
// the loop has no 64-bit division.
template <typename TIn, typename TOut>
__global__ void ElementwiseKernel(ElementwiseArgs args) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int c = static_cast<int>(i % args.channels);
  const int step = static_cast<int>(stride % args.channels);
  for (; i < args.total; i += stride) {
    ElementwiseElement<TIn, TOut>(args, i, c);
    c += step;
    if (c >= args.channels) c -= args.channels;
  }
}

// Channels-first output: one thread per pixel (all its channels), pixels of a sample along x and
// samples along y, grid-strided both ways. Consecutive threads store consecutive addresses of each
// channel's plane, so the stores coalesce.
template <typename TIn, typename TOut>
__global__ void ElementwiseChannelsFirstKernel(ElementwiseArgs args) {
  for (int64_t n = blockIdx.y; n < args.samples; n += gridDim.y) {
    for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < args.plane;
         p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      ElementwisePixelChannelsFirst<TIn, TOut>(args, n, p);
    }
  }
}

int64_t Capped(int64_t v, int64_t cap) { return v < 1 ? 1 : (v > cap ? cap : v); }

}  // namespace

cudaError_t LaunchElementwise(const ElementwiseArgs& args, DType in, DType out,
                              cudaStream_t stream) {
  constexpr int64_t kBlock = 256, kMaxBlocks = 65535;
  if (args.plane > 0) {
    const dim3 grid(static_cast<unsigned>(Capped((args.plane + kBlock - 1) / kBlock, kMaxBlocks)),
                    static_cast<unsigned>(Capped(args.samples, kMaxBlocks)));
    return DispatchDType(in, [&](auto tin) {
      return DispatchDType(out, [&](auto tout) {
        ElementwiseChannelsFirstKernel<decltype(tin), decltype(tout)>
            <<<grid, static_cast<unsigned>(kBlock), 0, stream>>>(args);
        return cudaGetLastError();
      });
    });
  }
  const int64_t blocks = Capped((args.total + kBlock - 1) / kBlock, kMaxBlocks);
  return DispatchDType(in, [&](auto tin) {
    return DispatchDType(out, [&](auto tout) {
      ElementwiseKernel<decltype(tin), decltype(tout)>
          <<<static_cast<unsigned>(blocks), static_cast<unsigned>(kBlock), 0, stream>>>(args);
      return cudaGetLastError();
    });
  });
}

}  // namespace tensorprep::kernels::cuda::detail
