// ColorCuda: checks and the phase table on the host (color_launch.h), one upload of the table
// and the steps, scratch for the row sums and terms (and a work image when dst has 1 channel),
// then the phases' launches in stream order.
#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/status.h"
#include "kernels/cuda/color_launch.h"
#include "kernels/cuda/cuda_api.h"
#include "kernels/cuda/runtime_internal.h"

namespace tensorprep::kernels::cuda {
namespace detail {
namespace {

constexpr char kFn[] = "ColorCuda";

}  // namespace

void ColorLaunch::Bind(const void* base) {
  const auto* b = static_cast<const unsigned char*>(base);
  args.steps = reinterpret_cast<const color::ColorStep*>(b + steps_at);
  args.phases = reinterpret_cast<const ColorPhase*>(b + phases_at);
}

absl::StatusOr<ColorLaunch> PrepareColor(const ConstTensorView& src, const TensorView& dst,
                                         absl::Span<const std::vector<ColorAdjust>> chains) {
  TP_RETURN_IF_ERROR(CheckColorChains(kFn, src, dst.shape.c, chains));
  TP_RETURN_IF_ERROR(CheckColorDestination(kFn, src, dst));
  TP_RETURN_IF_ERROR(CheckDeviceView(kFn, "src", src.shape, src.dtype, src.data));
  TP_RETURN_IF_ERROR(CheckDeviceView(kFn, "dst", dst.shape, dst.dtype, dst.data));
  // Steps of every chain, flattened; each chain cut before its contrasts.
  std::vector<color::ColorStep> steps;
  std::vector<std::vector<int32_t>> cuts(chains.size());  // segment starts after the first
  std::vector<int32_t> first(chains.size());
  int32_t phase_count = 1;
  for (size_t c = 0; c < chains.size(); ++c) {
    first[c] = static_cast<int32_t>(steps.size());
    for (const ColorAdjust& adjust : chains[c]) {
      if (adjust.kind == ColorKind::kContrast)
        cuts[c].push_back(static_cast<int32_t>(steps.size()));
      steps.push_back(color::MakeColorStep(adjust));
    }
    phase_count = std::max(phase_count, static_cast<int32_t>(cuts[c].size()) + 1);
  }
  std::vector<ColorPhase> phases(static_cast<size_t>(src.shape.n * phase_count));
  for (int64_t n = 0; n < src.shape.n; ++n) {
    const size_t c = chains.size() == 1 ? 0 : static_cast<size_t>(n);
    const int32_t end = first[c] + static_cast<int32_t>(chains[c].size());
    const int32_t segments = static_cast<int32_t>(cuts[c].size()) + 1;
    for (int32_t k = 0; k < segments; ++k) {
      ColorPhase& p = phases[static_cast<size_t>(n * phase_count + k)];
      p.active = 1;
      p.begin = k == 0 ? first[c] : cuts[c][static_cast<size_t>(k - 1)];
      p.end = k + 1 < segments ? cuts[c][static_cast<size_t>(k)] : end;
      p.final = k + 1 == segments;
      p.sums = !p.final;
    }
  }
  ColorLaunch launch;
  launch.dtype = src.dtype;
  launch.steps_at = launch.blob.Append(steps.data(), steps.size());
  launch.phases_at = launch.blob.Append(phases.data(), phases.size());
  ColorArgs& a = launch.args;
  a.src = src.data;
  a.dst = dst.data;
  a.work = dst.shape.c == 3 ? dst.data : nullptr;
  a.n = src.shape.n;
  a.h = static_cast<int32_t>(src.shape.h);
  a.w = static_cast<int32_t>(src.shape.w);
  a.out_c = static_cast<int32_t>(dst.shape.c);
  a.phase_count = phase_count;
  launch.work_bytes =
      dst.shape.c == 3 ? 0 : static_cast<size_t>(src.shape.elements()) * DTypeSize(src.dtype);
  return launch;
}

}  // namespace detail

absl::Status ColorCuda(const ConstTensorView& src, const TensorView& dst,
                       absl::Span<const std::vector<ColorAdjust>> chains, Stream& stream) {
  TP_ASSIGN_OR_RETURN(detail::ColorLaunch launch, detail::PrepareColor(src, dst, chains));
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, detail::kFn));
  TP_RETURN_IF_ERROR(detail::RequireDevicePointer(src.data, "src"));
  TP_RETURN_IF_ERROR(detail::RequireDevicePointer(dst.data, "dst"));
  detail::ColorArgs& a = launch.args;
  const bool sums = a.phase_count > 1;
  // Scratch, freed when this returns: cudaFree waits for the device, so after the launches.
  DeviceBuffer work, row_sums, terms;
  if (launch.work_bytes > 0) {
    TP_ASSIGN_OR_RETURN(work, DeviceBuffer::Allocate(launch.work_bytes));
    a.work = work.data();
  }
  if (sums) {
    TP_ASSIGN_OR_RETURN(row_sums,
                        DeviceBuffer::Allocate(static_cast<size_t>(a.n) * a.h * sizeof(double)));
    TP_ASSIGN_OR_RETURN(terms, DeviceBuffer::Allocate(static_cast<size_t>(a.n) * sizeof(float)));
    a.row_sums = static_cast<double*>(row_sums.data());
    a.terms = static_cast<float*>(terms.data());
  }
  TP_ASSIGN_OR_RETURN(void* base,
                      detail::UploadParams(stream, launch.blob.data(), launch.blob.size()));
  launch.Bind(base);
  for (int32_t phase = 0; phase < a.phase_count; ++phase) {
    TP_RETURN_IF_ERROR(detail::CudaStatus(
        "launching the colour kernels",
        detail::LaunchColorPhase(a, launch.dtype, phase, phase + 1 < a.phase_count,
                                 stream.impl()->stream)));
  }
  return Synchronize(stream);
}

}  // namespace tensorprep::kernels::cuda
