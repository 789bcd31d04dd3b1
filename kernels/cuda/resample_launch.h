// Internal to the CUDA backend: the antialiased resample's launch preparation (host code, no
// CUDA headers beyond the runtime API's types) and its kernel launch (resample.cu). The tap
// tables are the CPU kernel's (kernels/resample/resample_taps.h, built by the same host code) and
// the kernel runs resample::ResamplePixel per output pixel, which the tests also run on the host.
#ifndef TENSORPREP_KERNELS_CUDA_RESAMPLE_LAUNCH_H_
#define TENSORPREP_KERNELS_CUDA_RESAMPLE_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/cuda/prepare.h"
#include "kernels/resample/resample.h"
#include "kernels/resample/resample_taps.h"

namespace tensorprep::kernels::cuda::detail {

// A prepared launch: the kernel's arguments, whose table pointers Bind() sets once the blob has a
// home (device memory for a launch, the blob's own bytes for a host run).
struct ResampleLaunch {
  resample::PixelArgs args;
  ParamBlob blob;  // x spans, y spans, weights (double for int32, float otherwise)
  size_t x_at = 0, y_at = 0, weights_at = 0;
  DType dtype = DType::kFloat32;
  void Bind(const void* base);
};

// ResampleAaCuda's precondition checks (the CPU kernel's, CheckResampleSource and
// CheckResampleDestination, plus alignment of both views to their element size) and the tables,
// INTERNAL "ResampleAaCuda: <what>" otherwise. Pointers are not dereferenced.
absl::StatusOr<ResampleLaunch> PrepareResample(const ConstTensorView& src, const TensorView& dst,
                                               absl::Span<const ResampleMap> maps);

// Launches the kernel over the whole batch on `stream` (resample.cu); the launch's error.
cudaError_t LaunchResample(const resample::PixelArgs& args, DType dtype, cudaStream_t stream);

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_RESAMPLE_LAUNCH_H_
