// Internal to the CUDA backend: the kernel launch functions defined in the .cu files. They take
// arguments already validated and uploaded by the host launchers (ops.cc), launch one grid over
// the whole batch on `stream`, and return the launch's error (cudaSuccess when queued).
#ifndef TENSORPREP_KERNELS_CUDA_LAUNCH_H_
#define TENSORPREP_KERNELS_CUDA_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/common/tensor.h"
#include "kernels/cuda/kernel_math.h"

namespace tensorprep::kernels::cuda::detail {

cudaError_t LaunchWarp(const WarpArgs& args, DType in, DType out, cudaStream_t stream);
cudaError_t LaunchElementwise(const ElementwiseArgs& args, DType in, DType out,
                              cudaStream_t stream);
cudaError_t LaunchFlip(const FlipArgs& args, size_t element_size, cudaStream_t stream);

// Whether this binary holds a kernel image the current device can run (cudaFuncGetAttributes on
// one of the kernels).
cudaError_t CheckKernelImage();

// Grid for kernels that map (x, y, sample) to (blockIdx.x, blockIdx.y, blockIdx.z) and stride
// over what a capped grid does not cover.
struct PixelGrid {
  dim3 grid;
  dim3 block;
};
inline PixelGrid MakePixelGrid(int64_t n, int64_t h, int64_t w) {
  constexpr int64_t kBx = 32, kBy = 8, kMax = 65535;
  auto cap = [](int64_t v) { return static_cast<unsigned>(v < 1 ? 1 : (v > kMax ? kMax : v)); };
  return {dim3(cap((w + kBx - 1) / kBx), cap((h + kBy - 1) / kBy), cap(n)),
          dim3(static_cast<unsigned>(kBx), static_cast<unsigned>(kBy), 1)};
}

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_LAUNCH_H_
