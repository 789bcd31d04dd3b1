// Internal to the resample kernels (CPU, CUDA): the per-axis tap tables that both backends build
// once per call with the same host code, and the per-pixel arithmetic of the CUDA kernel, written
// for host and device (TP_HD) so that the tests run it on the host. The semantics are in
// resample.h; this file fixes how they are computed, which is what makes the backends agree bit
// for bit.
#ifndef TENSORPREP_KERNELS_RESAMPLE_RESAMPLE_TAPS_H_
#define TENSORPREP_KERNELS_RESAMPLE_RESAMPLE_TAPS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/common/half.h"
#include "kernels/common/host_device.h"
#include "kernels/common/numerics.h"
#include "kernels/common/tensor.h"
#include "kernels/resample/resample.h"

namespace tensorprep::kernels::resample {

// The taps of one output index along one axis, in accumulation order: source indices first,
// first + 1, ..., first + count - 1, with weights weights[at .. at + count).
struct TapSpan {
  int32_t first = 0;
  int32_t count = 0;  // >= 1
  int32_t at = 0;     // index of the first weight
};

// The tables of every distinct map of a call (1, or one per sample): for map m, output column
// x's taps are x_spans[m * out_w + x] and row y's are y_spans[m * out_h + y]. The weights of
// both axes share one array, in double (int32) and rounded to float (the other dtypes).
struct Tables {
  int64_t maps = 0;
  int64_t out_h = 0, out_w = 0;
  std::vector<TapSpan> x_spans, y_spans;
  std::vector<double> weights;
  std::vector<float> weights_f;
  int32_t max_x_taps = 0, max_y_taps = 0;
};

// Builds the tables for src (h, w) -> (out_h, out_w) under `maps` (already checked with
// CheckResampleSource). INTERNAL "<function>: <what>" when an output index keeps no tap inside
// the source or the tables would hold 2^31 weights or more.
absl::StatusOr<Tables> BuildTables(absl::string_view function, const BatchShape& src, int64_t out_h,
                                   int64_t out_w, absl::Span<const ResampleMap> maps);

// How a dtype is computed: Acc is the accumulator (float, or double for int32), and the store
// rounds an accumulated value once into T.
template <typename T>
struct Compute {
  using Acc = float;
};
template <>
struct Compute<int32_t> {
  using Acc = double;
};

TP_HD float LoadAcc(uint8_t v, float) { return static_cast<float>(v); }
TP_HD float LoadAcc(float v, float) { return v; }
TP_HD float LoadAcc(Half v, float) { return HalfToFloat(v); }
TP_HD double LoadAcc(int32_t v, double) { return static_cast<double>(v); }

TP_HD void StoreAcc(float v, uint8_t* out) { *out = SaturateU8(v); }
TP_HD void StoreAcc(float v, float* out) { *out = v; }
TP_HD void StoreAcc(float v, Half* out) { *out = FloatToHalf(v); }
TP_HD void StoreAcc(double v, int32_t* out) {
  *out = IsNan(v) ? 0 : SaturateI32(v);  // int32 sources never give NaN; kept total for safety
}

// One weighted sum of the accumulation order: acc = w0 * v0, then acc = acc + wk * vk.
template <typename Acc>
TP_HD Acc FirstTerm(Acc w, Acc v) {
  return MulRn(w, v);
}
template <typename Acc>
TP_HD Acc NextTerm(Acc acc, Acc w, Acc v) {
  return AddRn(acc, MulRn(w, v));
}

// The arguments of the per-pixel function (and of the CUDA kernel), with the tables' arrays
// bound wherever they live (device memory for a launch, host memory for the host run).
struct PixelArgs {
  const void* src = nullptr;
  void* dst = nullptr;
  int64_t n = 0;
  int32_t h = 0, w = 0, c = 0;       // source
  int32_t out_h = 0, out_w = 0;      // destination (n and c as the source)
  int64_t map_stride = 0;            // 0 (one map for all samples) or 1
  const TapSpan* x_spans = nullptr;  // Tables::x_spans
  const TapSpan* y_spans = nullptr;  // Tables::y_spans
  const void* weights = nullptr;     // Tables::weights (int32) or weights_f (the others)
};

// All channels of output pixel (x, y) of sample n, computed directly: for each vertical tap the
// horizontal sum of that source row (the value the CPU's horizontal pass holds in its
// intermediate), then the vertical sum, in the order and precision the CPU passes use.
template <typename T>
TP_HD void ResamplePixel(const PixelArgs& a, int64_t n, int64_t y, int64_t x) {
  using Acc = typename Compute<T>::Acc;
  const int64_t m = n * a.map_stride;
  const TapSpan xs = a.x_spans[m * a.out_w + x];
  const TapSpan ys = a.y_spans[m * a.out_h + y];
  const Acc* wts = static_cast<const Acc*>(a.weights);
  const int64_t channels = a.c;
  const T* sample = static_cast<const T*>(a.src) + n * a.h * static_cast<int64_t>(a.w) * channels;
  T* out = static_cast<T*>(a.dst) + ((n * a.out_h + y) * a.out_w + x) * channels;
  for (int64_t ch = 0; ch < channels; ++ch) {
    Acc acc = 0;
    for (int32_t ky = 0; ky < ys.count; ++ky) {
      const int64_t row = static_cast<int64_t>(ys.first) + ky;
      const T* p = sample + row * a.w * channels + ch;
      Acc h = FirstTerm(wts[xs.at], LoadAcc(p[static_cast<int64_t>(xs.first) * channels], Acc{}));
      for (int32_t kx = 1; kx < xs.count; ++kx) {
        const int64_t col = static_cast<int64_t>(xs.first) + kx;
        h = NextTerm(h, wts[xs.at + kx], LoadAcc(p[col * channels], Acc{}));
      }
      acc = ky == 0 ? FirstTerm(wts[ys.at], h) : NextTerm(acc, wts[ys.at + ky], h);
    }
    StoreAcc(acc, out + ch);
  }
}

}  // namespace tensorprep::kernels::resample

#endif  // TENSORPREP_KERNELS_RESAMPLE_RESAMPLE_TAPS_H_
