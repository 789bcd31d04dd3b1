// Internal to the CUDA backend: the colour adjustments (kernels/color/color.h) on the device.
// A call runs in phases: a sample's chain is cut before each contrast step (which needs the mean
// grey of the image the step sees), phase k applies every sample's k-th segment per pixel, then
// the row sums of the grey values (color.h's lane order) and each sample's contrast term are
// computed for the samples whose next step is a contrast. The per-pixel, per-row and per-sample
// functions below are written once for host and device (TP_HD) from color_math.h, the CPU
// kernel's arithmetic, so the bits are the CPU's; the tests run them on the host.
#ifndef TENSORPREP_KERNELS_CUDA_COLOR_LAUNCH_H_
#define TENSORPREP_KERNELS_CUDA_COLOR_LAUNCH_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/color/color.h"
#include "kernels/color/color_math.h"
#include "kernels/common/half.h"
#include "kernels/common/host_device.h"
#include "kernels/common/tensor.h"
#include "kernels/cuda/prepare.h"

namespace tensorprep::kernels::cuda::detail {

// What phase k does to one sample: steps [begin, end) of the flattened step array; `final`: its
// result goes to dst (out_c channels), else to the 3-channel work image; `sums`: a contrast step
// (steps[end]) follows, so the row sums and the term are computed after it; `active` 0: the
// sample's chain ended in an earlier phase.
struct ColorPhase {
  int32_t begin = 0;
  int32_t end = 0;
  int32_t active = 0;
  int32_t final = 0;
  int32_t sums = 0;
};

struct ColorArgs {
  const void* src = nullptr;
  void* dst = nullptr;
  void* work = nullptr;  // 3 channels; dst itself when dst has 3 channels
  int64_t n = 0;
  int32_t h = 0, w = 0, out_c = 3;
  int32_t phase_count = 0;
  const color::ColorStep* steps = nullptr;
  const ColorPhase* phases = nullptr;  // [sample * phase_count + phase]
  double* row_sums = nullptr;          // n * h
  float* terms = nullptr;              // n: the contrast term of the phase's first step
};

template <typename T>
struct ColorElement;
template <>
struct ColorElement<uint8_t> {
  static constexpr color::Rounding kR = color::Rounding::kTrunc;
  TP_HD static float Load(uint8_t v) { return static_cast<float>(v); }
  TP_HD static uint8_t Store(float v) { return static_cast<uint8_t>(static_cast<int32_t>(v)); }
};
template <>
struct ColorElement<float> {
  static constexpr color::Rounding kR = color::Rounding::kNone;
  TP_HD static float Load(float v) { return v; }
  TP_HD static float Store(float v) { return v; }
};
template <>
struct ColorElement<Half> {
  static constexpr color::Rounding kR = color::Rounding::kHalf;
  TP_HD static float Load(Half v) { return HalfToFloat(v); }
  TP_HD static Half Store(float v) { return FloatToHalf(v); }
};

// Pixel (x, y) of sample n through its segment of `phase`. An empty segment copies the elements
// (as the CPU kernel, which copies an empty chain and reads the source again after a sum-only
// pass).
template <typename T>
TP_HD void ColorPixel(const ColorArgs& a, int32_t phase, int64_t n, int64_t y, int64_t x) {
  using E = ColorElement<T>;
  const ColorPhase& p = a.phases[n * a.phase_count + phase];
  if (!p.active) return;
  const int64_t pixel = (n * a.h + y) * static_cast<int64_t>(a.w) + x;
  const T* in = static_cast<const T*>(phase == 0 ? a.src : a.work) + pixel * 3;
  const int64_t out_c = p.final ? a.out_c : 3;
  T* out = static_cast<T*>(p.final ? a.dst : a.work) + pixel * out_c;
  if (p.begin == p.end) {
    for (int64_t c = 0; c < out_c; ++c) out[c] = in[c];
    return;
  }
  float r = E::Load(in[0]), g = E::Load(in[1]), b = E::Load(in[2]);
  const float term = phase == 0 ? 0.0f : a.terms[n];
  for (int32_t k = p.begin; k < p.end; ++k) {
    color::ApplyStep<E::kR>(a.steps[k], term, r, g, b);
  }
  out[0] = E::Store(r);
  if (out_c == 3) {
    out[1] = E::Store(g);
    out[2] = E::Store(b);
  }
}

// Row y of sample n's work image after `phase`: the sum of its grey values, lane j adding the
// pixels x = j (mod 8) in order, the lanes combined as color.h says.
template <typename T>
TP_HD void ColorRowSum(const ColorArgs& a, int32_t phase, int64_t n, int64_t y) {
  using E = ColorElement<T>;
  if (!a.phases[n * a.phase_count + phase].sums) return;
  double lanes[color::kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  const T* row = static_cast<const T*>(a.work) + (n * a.h + y) * static_cast<int64_t>(a.w) * 3;
  for (int64_t x = 0; x < a.w; ++x) {
    const float gray = color::ContrastGray<E::kR>(E::Load(row[3 * x]), E::Load(row[3 * x + 1]),
                                                  E::Load(row[3 * x + 2]));
    lanes[x % color::kLanes] += static_cast<double>(gray);
  }
  a.row_sums[n * a.h + y] = color::CombineLanes(lanes);
}

// Sample n's contrast term for the step after `phase`: the row sums added in row order.
TP_HD void ColorTerm(const ColorArgs& a, int32_t phase, int64_t n) {
  const ColorPhase& p = a.phases[n * a.phase_count + phase];
  if (!p.sums) return;
  double sum = 0;
  for (int64_t y = 0; y < a.h; ++y) sum += a.row_sums[n * a.h + y];
  a.terms[n] =
      color::ContrastTerm(a.steps[p.end], color::MeanFromSum(sum, static_cast<int64_t>(a.h) * a.w));
}

// A prepared call: the phase table and the steps in one blob (Bind() sets the pointers), the
// sizes of the scratch the call needs.
struct ColorLaunch {
  ColorArgs args;
  ParamBlob blob;
  size_t steps_at = 0, phases_at = 0;
  size_t work_bytes = 0;  // a separate work image (dst has 1 channel), else 0
  DType dtype = DType::kUInt8;
  void Bind(const void* base);
};

// ColorCuda's precondition checks (CheckColorChains, CheckColorDestination, alignment) and the
// tables; INTERNAL "ColorCuda: <what>" otherwise. Pointers are not dereferenced; the scratch
// pointers (work when separate, row_sums, terms) are the caller's to set.
absl::StatusOr<ColorLaunch> PrepareColor(const ConstTensorView& src, const TensorView& dst,
                                         absl::Span<const std::vector<ColorAdjust>> chains);

// Phase `phase`'s three launches (pixels; row sums and terms when any sample needs them).
cudaError_t LaunchColorPhase(const ColorArgs& args, DType dtype, int32_t phase, bool sums,
                             cudaStream_t stream);

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_COLOR_LAUNCH_H_
