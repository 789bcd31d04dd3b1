// Internal to the CUDA backend: maps a runtime DType to its element type.
#ifndef TENSORPREP_KERNELS_CUDA_DISPATCH_CUH_
#define TENSORPREP_KERNELS_CUDA_DISPATCH_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/common/half.h"
#include "kernels/common/tensor.h"

namespace tensorprep::kernels::cuda::detail {

// Calls f(T{}) with the element type of `t`; cudaErrorInvalidValue for an unknown dtype.
template <typename F>
cudaError_t DispatchDType(DType t, F&& f) {
  switch (t) {
    case DType::kUInt8:
      return f(uint8_t{});
    case DType::kInt32:
      return f(int32_t{});
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat16:
      return f(Half{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_DISPATCH_CUH_
