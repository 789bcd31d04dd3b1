// The kernel launchers: prepare (validate and pack, prepare.h), upload the parameters with one
// copy, and launch one grid for the whole batch.
#include <cuda_runtime_api.h>

#include "kernels/common/status.h"
#include "kernels/cuda/cuda_api.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/prepare.h"
#include "kernels/cuda/runtime_internal.h"

namespace tensorprep::kernels::cuda {
namespace {

// The checks that need the runtime, after the pure argument checks.
absl::Status CheckDeviceSide(const void* src, const void* dst, Stream& stream,
                             const char* function) {
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, function));
  TP_RETURN_IF_ERROR(detail::RequireDevicePointer(src, "src"));
  return detail::RequireDevicePointer(dst, "dst");
}

}  // namespace

absl::Status WarpElementwiseCuda(const ConstTensorView& src, const TensorView& dst,
                                 absl::Span<const Affine> inverse, const WarpParams& params,
                                 absl::Span<const ElementwiseOp> post_ops, Stream& stream) {
  constexpr char kFn[] = "WarpAffineCuda";
  TP_ASSIGN_OR_RETURN(detail::WarpLaunch launch,
                      detail::PrepareWarp(kFn, src, dst, inverse, params, post_ops));
  TP_RETURN_IF_ERROR(CheckDeviceSide(src.data, dst.data, stream, kFn));
  TP_ASSIGN_OR_RETURN(void* base,
                      detail::UploadParams(stream, launch.blob.data(), launch.blob.size()));
  launch.Bind(base);
  return detail::CudaStatus(
      "launching the warp kernel",
      detail::LaunchWarp(launch.args, launch.in, launch.out, stream.impl()->stream));
}

absl::Status WarpAffineCuda(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const Affine> inverse, const WarpParams& params,
                            Stream& stream) {
  return WarpElementwiseCuda(src, dst, inverse, params, {}, stream);
}

absl::Status FlipCuda(const ConstTensorView& src, const TensorView& dst,
                      absl::Span<const FlipFlags> flags, Stream& stream) {
  TP_ASSIGN_OR_RETURN(detail::FlipLaunch launch, detail::PrepareFlip(src, dst, flags));
  TP_RETURN_IF_ERROR(CheckDeviceSide(src.data, dst.data, stream, "FlipCuda"));
  TP_ASSIGN_OR_RETURN(void* base,
                      detail::UploadParams(stream, launch.blob.data(), launch.blob.size()));
  launch.Bind(base);
  return detail::CudaStatus(
      "launching the flip kernel",
      detail::LaunchFlip(launch.args, launch.element_size, stream.impl()->stream));
}

absl::Status ElementwiseCuda(const ConstTensorView& src, const TensorView& dst,
                             absl::Span<const ElementwiseOp> ops, Stream& stream,
                             bool channels_first) {
  TP_ASSIGN_OR_RETURN(detail::ElementwiseLaunch launch,
                      detail::PrepareElementwise(src, dst, ops, channels_first));
  TP_RETURN_IF_ERROR(CheckDeviceSide(src.data, dst.data, stream, "ElementwiseCuda"));
  TP_ASSIGN_OR_RETURN(void* base,
                      detail::UploadParams(stream, launch.blob.data(), launch.blob.size()));
  launch.Bind(base);
  return detail::CudaStatus(
      "launching the element-wise kernel",
      detail::LaunchElementwise(launch.args, launch.in, launch.out, stream.impl()->stream));
}

}  // namespace tensorprep::kernels::cuda
