// Internal to the CUDA backend (host code only): the Stream's state, CUDA error conversion and the
// per-launch parameter upload shared by the launchers.
#ifndef TENSORPREP_KERNELS_CUDA_RUNTIME_INTERNAL_H_
#define TENSORPREP_KERNELS_CUDA_RUNTIME_INTERNAL_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_api.h"

namespace tensorprep::kernels::cuda {

struct Stream::Impl {
  Impl() = default;
  // Waits for the stream's queued work, then frees everything below.
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  cudaStream_t stream = nullptr;
  // Recorded after each parameter upload. The pinned staging area may be rewritten only once the
  // previous upload from it has completed.
  cudaEvent_t params_copied = nullptr;
  bool params_pending = false;
  void* device_params = nullptr;  // cudaMalloc'd; reused by every launch on this stream
  size_t device_capacity = 0;
  void* host_params = nullptr;  // cudaHostAlloc'd staging area
  size_t host_capacity = 0;
};

namespace detail {

// OK for cudaSuccess, else INTERNAL "cuda: <call>: <cudaGetErrorString> (<name>)".
absl::Status CudaStatus(const char* call, cudaError_t error);

// FAILED_PRECONDITION naming Probe().detail, or OK when the device is usable.
absl::Status RequireDevice();

// FAILED_PRECONDITION when `stream` is empty.
absl::Status RequireStream(const Stream& stream, const char* function);

// Copies `bytes` from `host` into the stream's parameter area on the device and returns the
// device address of the copy. The copy is ordered on the stream before anything queued after this
// call, and the area is overwritten by the next upload on the same stream, which stream order
// makes safe. `host` may be freed when this returns. Null for bytes == 0.
absl::StatusOr<void*> UploadParams(Stream& stream, const void* host, size_t bytes);

// INTERNAL (a broken launcher precondition, kernels/common/checks.h) unless `ptr` is device (or
// managed) memory.
absl::Status RequireDevicePointer(const void* ptr, const char* what);

}  // namespace detail
}  // namespace tensorprep::kernels::cuda

#endif  // TENSORPREP_KERNELS_CUDA_RUNTIME_INTERNAL_H_
