// The fused element-wise kernel: one read and one write per element whatever the chain's length.
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

}  // namespace

cudaError_t LaunchElementwise(const ElementwiseArgs& args, DType in, DType out,
                              cudaStream_t stream) {
  constexpr int64_t kBlock = 256, kMaxBlocks = 65535;
  int64_t blocks = (args.total + kBlock - 1) / kBlock;
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return DispatchDType(in, [&](auto tin) {
    return DispatchDType(out, [&](auto tout) {
      ElementwiseKernel<decltype(tin), decltype(tout)>
          <<<static_cast<unsigned>(blocks), static_cast<unsigned>(kBlock), 0, stream>>>(args);
      return cudaGetLastError();
    });
  });
}

}  // namespace tensorprep::kernels::cuda::detail
