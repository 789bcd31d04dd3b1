// ResampleAaCuda: checks and tables on the host (resample_launch.h), one upload of the tables,
// one launch for the whole batch.
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/status.h"
#include "kernels/cuda/cuda_api.h"
#include "kernels/cuda/resample_launch.h"
#include "kernels/cuda/runtime_internal.h"

namespace tensorprep::kernels::cuda {
namespace detail {
namespace {

constexpr char kFn[] = "ResampleAaCuda";

}  // namespace

void ResampleLaunch::Bind(const void* base) {
  const auto* b = static_cast<const unsigned char*>(base);
  args.x_spans = reinterpret_cast<const resample::TapSpan*>(b + x_at);
  args.y_spans = reinterpret_cast<const resample::TapSpan*>(b + y_at);
  args.weights = b + weights_at;
}

absl::StatusOr<ResampleLaunch> PrepareResample(const ConstTensorView& src, const TensorView& dst,
                                               absl::Span<const ResampleMap> maps) {
  TP_RETURN_IF_ERROR(CheckResampleSource(kFn, src, maps));
  TP_RETURN_IF_ERROR(CheckResampleDestination(kFn, src, dst));
  TP_RETURN_IF_ERROR(CheckDeviceView(kFn, "src", src.shape, src.dtype, src.data));
  TP_RETURN_IF_ERROR(CheckDeviceView(kFn, "dst", dst.shape, dst.dtype, dst.data));
  TP_ASSIGN_OR_RETURN(resample::Tables tables,
                      resample::BuildTables(kFn, src.shape, dst.shape.h, dst.shape.w, maps));
  ResampleLaunch launch;
  launch.dtype = src.dtype;
  launch.x_at = launch.blob.Append(tables.x_spans.data(), tables.x_spans.size());
  launch.y_at = launch.blob.Append(tables.y_spans.data(), tables.y_spans.size());
  launch.weights_at = src.dtype == DType::kInt32
                          ? launch.blob.Append(tables.weights.data(), tables.weights.size())
                          : launch.blob.Append(tables.weights_f.data(), tables.weights_f.size());
  resample::PixelArgs& a = launch.args;
  a.src = src.data;
  a.dst = dst.data;
  a.n = src.shape.n;
  a.h = static_cast<int32_t>(src.shape.h);
  a.w = static_cast<int32_t>(src.shape.w);
  a.c = static_cast<int32_t>(src.shape.c);
  a.out_h = static_cast<int32_t>(dst.shape.h);
  a.out_w = static_cast<int32_t>(dst.shape.w);
  a.map_stride = maps.size() == 1 ? 0 : 1;
  return launch;
}

}  // namespace detail

absl::Status ResampleAaCuda(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const ResampleMap> maps, Stream& stream) {
  TP_ASSIGN_OR_RETURN(detail::ResampleLaunch launch, detail::PrepareResample(src, dst, maps));
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, detail::kFn));
  TP_RETURN_IF_ERROR(detail::RequireDevicePointer(src.data, "src"));
  TP_RETURN_IF_ERROR(detail::RequireDevicePointer(dst.data, "dst"));
  TP_ASSIGN_OR_RETURN(void* base,
                      detail::UploadParams(stream, launch.blob.data(), launch.blob.size()));
  launch.Bind(base);
  return detail::CudaStatus(
      "launching the resample kernel",
      detail::LaunchResample(launch.args, launch.dtype, stream.impl()->stream));
}

}  // namespace tensorprep::kernels::cuda
