// CPU antialiased resampling: tap tables built once per (map, axis), then per (sample, row band)
// task a horizontal pass over the source rows the band needs into a per-thread intermediate, and
// a vertical pass from it into the output rows.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/half.h"
#include "kernels/common/numerics.h"
#include "kernels/common/status.h"
#include "kernels/resample/resample.h"
#include "kernels/resample/resample_taps.h"

namespace tensorprep::kernels {

AxisMap AxisMapForWindow(double begin, double length, int64_t out, bool mirror) {
  const double scale = length / static_cast<double>(out);
  AxisMap m;
  m.scale = scale;
  m.offset = begin + (scale - 1.0) / 2.0;
  m.tap_begin = static_cast<int64_t>(std::floor(begin));
  m.tap_end = static_cast<int64_t>(std::ceil(begin + length));
  if (mirror) {
    m.offset = m.offset + scale * static_cast<double>(out - 1);
    m.scale = -scale;
  }
  return m;
}

namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

absl::Status CheckAxisMap(absl::string_view function, size_t index, const char* axis,
                          const AxisMap& m) {
  if (!std::isfinite(m.scale) || m.scale == 0.0) {
    return PreconditionError(function, absl::StrCat("map ", index, ": ", axis, " scale ", m.scale,
                                                    "; expected finite and not 0"));
  }
  if (!std::isfinite(m.offset)) {
    return PreconditionError(function, absl::StrCat("map ", index, ": ", axis, " offset ", m.offset,
                                                    "; expected finite"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckResampleSource(absl::string_view function, const ConstTensorView& src,
                                 absl::Span<const ResampleMap> maps) {
  TP_RETURN_IF_ERROR(CheckSourceView(function, src));
  const BatchShape& s = src.shape;
  if (s.h > kMaxDim || s.w > kMaxDim || s.c > kMaxDim) {
    return PreconditionError(function, absl::StrCat("src shape ", ShapeString(s),
                                                    "; expected height, width and channels "
                                                    "below 2^31"));
  }
  TP_RETURN_IF_ERROR(CheckPerSampleCount(function, "resample maps", maps.size(), s.n));
  for (size_t i = 0; i < maps.size(); ++i) {
    TP_RETURN_IF_ERROR(CheckAxisMap(function, i, "x", maps[i].x));
    TP_RETURN_IF_ERROR(CheckAxisMap(function, i, "y", maps[i].y));
  }
  return absl::OkStatus();
}

absl::Status CheckResampleDestination(absl::string_view function, const ConstTensorView& src,
                                      const TensorView& dst) {
  const BatchShape& s = src.shape;
  const BatchShape& d = dst.shape;
  if (d.n != s.n || d.c != s.c || d.h < 1 || d.w < 1 || d.h > kMaxDim || d.w > kMaxDim) {
    return PreconditionError(
        function, absl::StrCat("dst shape ", ShapeString(d), "; expected (", s.n, ", h, w, ", s.c,
                               ") with h and w in [1, 2^31)"));
  }
  if (dst.dtype != src.dtype) {
    return PreconditionError(function, absl::StrCat("dst dtype ", DTypeName(dst.dtype),
                                                    "; expected ", DTypeName(src.dtype)));
  }
  if (dst.data == nullptr) return PreconditionError(function, "dst data is null");
  const auto a = reinterpret_cast<uintptr_t>(src.data);
  const auto b = reinterpret_cast<uintptr_t>(dst.data);
  if (a < b + dst.bytes() && b < a + src.bytes()) {
    return PreconditionError(function, "src and dst overlap; expected distinct memory");
  }
  return absl::OkStatus();
}

namespace resample {
namespace {

// Appends the spans of one axis (source `size`, `out` outputs) and their weights.
absl::Status BuildAxis(absl::string_view function, size_t map_index, const char* axis,
                       const AxisMap& m, int64_t size, int64_t out, Tables& t,
                       std::vector<TapSpan>& spans, int32_t& max_taps) {
  const double support = std::max(std::fabs(m.scale), 1.0);
  // The source indices taps may use: the image, and the map's window when it has one.
  double first_allowed = 0, last_allowed = static_cast<double>(size - 1);
  if (m.tap_end > m.tap_begin) {
    first_allowed = std::max(first_allowed, static_cast<double>(m.tap_begin));
    last_allowed = std::min(last_allowed, static_cast<double>(m.tap_end - 1));
  }
  std::vector<double> w;
  for (int64_t i = 0; i < out; ++i) {
    const double c = m.scale * static_cast<double>(i) + m.offset;
    // Taps j with |j - c| < support, clipped to the allowed indices; computed in double so that
    // a far position cannot overflow an integer.
    const double lo = std::max(std::floor(c - support) + 1.0, first_allowed);
    const double hi = std::min(std::ceil(c + support) - 1.0, last_allowed);
    w.clear();
    int64_t first = 0;
    if (lo <= hi) {
      first = static_cast<int64_t>(lo);
      const int64_t last = static_cast<int64_t>(hi);
      for (int64_t j = first; j <= last; ++j) {
        w.push_back(1.0 - std::fabs(static_cast<double>(j) - c) / support);
      }
      // Rounding can leave a weight of 0 (or below) at either end: such taps are not taps.
      size_t skip = 0;
      while (skip < w.size() && !(w[skip] > 0.0)) ++skip;
      while (!w.empty() && w.size() > skip && !(w.back() > 0.0)) w.pop_back();
      w.erase(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(skip));
      first += static_cast<int64_t>(skip);
    }
    if (w.empty()) {
      return PreconditionError(
          function, absl::StrCat("map ", map_index, ": ", axis, " output ", i,
                                 " samples no source pixel (position ", c, ", support ", support,
                                 ", source size ", size, ", tap window [", m.tap_begin, ", ",
                                 m.tap_end, ")); expected a footprint that overlaps the image"));
    }
    if (t.weights.size() + w.size() > static_cast<size_t>(kMaxDim)) {
      return PreconditionError(function, "resample tables: 2^31 weights or more");
    }
    double sum = 0;
    for (double v : w) sum += v;
    TapSpan span;
    span.first = static_cast<int32_t>(first);
    span.count = static_cast<int32_t>(w.size());
    span.at = static_cast<int32_t>(t.weights.size());
    spans.push_back(span);
    max_taps = std::max(max_taps, span.count);
    for (double v : w) {
      const double normalised = v / sum;
      t.weights.push_back(normalised);
      t.weights_f.push_back(static_cast<float>(normalised));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Tables> BuildTables(absl::string_view function, const BatchShape& src, int64_t out_h,
                                   int64_t out_w, absl::Span<const ResampleMap> maps) {
  Tables t;
  t.maps = static_cast<int64_t>(maps.size());
  t.out_h = out_h;
  t.out_w = out_w;
  t.x_spans.reserve(maps.size() * static_cast<size_t>(out_w));
  t.y_spans.reserve(maps.size() * static_cast<size_t>(out_h));
  for (size_t i = 0; i < maps.size(); ++i) {
    TP_RETURN_IF_ERROR(
        BuildAxis(function, i, "x", maps[i].x, src.w, out_w, t, t.x_spans, t.max_x_taps));
    TP_RETURN_IF_ERROR(
        BuildAxis(function, i, "y", maps[i].y, src.h, out_h, t, t.y_spans, t.max_y_taps));
  }
  return t;
}

namespace {

// Smallest task (output pixels) worth a hand-off to another thread.
constexpr int64_t kMinTaskPixels = 16384;

// Per-thread scratch, reused across calls: the intermediate rows, one output row of sums, and
// (uint8 sources) one source row widened to float.
template <typename Acc>
struct Scratch {
  std::vector<Acc> rows;
  std::vector<Acc> line;
  std::vector<Acc> wide;
};
template <typename Acc>
Scratch<Acc>& ThreadScratch() {
  thread_local Scratch<Acc> scratch;
  return scratch;
}

// Horizontal pass of one source row: out[x * C + ch] = sum over x's taps. kC is the channel
// count when known at compile time (0: `channels`).
template <typename T, int kC>
void HorizontalRow(const T* row, int64_t channels_arg, const TapSpan* spans, int64_t out_w,
                   const typename Compute<T>::Acc* wts, typename Compute<T>::Acc* out) {
  using Acc = typename Compute<T>::Acc;
  const int64_t channels = kC > 0 ? kC : channels_arg;
  for (int64_t x = 0; x < out_w; ++x) {
    const TapSpan s = spans[x];
    const T* p = row + static_cast<int64_t>(s.first) * channels;
    const Acc* w = wts + s.at;
    Acc* o = out + x * channels;
    for (int64_t ch = 0; ch < channels; ++ch) o[ch] = FirstTerm(w[0], LoadAcc(p[ch], Acc{}));
    for (int32_t k = 1; k < s.count; ++k) {
      const T* q = p + k * channels;
      for (int64_t ch = 0; ch < channels; ++ch) {
        o[ch] = NextTerm(o[ch], w[k], LoadAcc(q[ch], Acc{}));
      }
    }
  }
}

template <typename T>
void HorizontalRowAny(const T* row, int64_t channels, const TapSpan* spans, int64_t out_w,
                      const typename Compute<T>::Acc* wts, typename Compute<T>::Acc* out) {
  switch (channels) {
    case 1:
      return HorizontalRow<T, 1>(row, channels, spans, out_w, wts, out);
    case 3:
      return HorizontalRow<T, 3>(row, channels, spans, out_w, wts, out);
    case 4:
      return HorizontalRow<T, 4>(row, channels, spans, out_w, wts, out);
    default:
      return HorizontalRow<T, 0>(row, channels, spans, out_w, wts, out);
  }
}

#if defined(__SSE2__)
// The 4-lane paths below compute the same products and sums, in the same order and with the same
// roundings (multiply, then add; no FMA), as the scalar loops: results are bit-identical.

// n uint8 values to float (exact).
void WidenRow(const uint8_t* row, int64_t n, float* out) {
  const __m128i zero = _mm_setzero_si128();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
    const __m128i lo = _mm_unpacklo_epi8(v, zero), hi = _mm_unpackhi_epi8(v, zero);
    _mm_storeu_ps(out + i, _mm_cvtepi32_ps(_mm_unpacklo_epi16(lo, zero)));
    _mm_storeu_ps(out + i + 4, _mm_cvtepi32_ps(_mm_unpackhi_epi16(lo, zero)));
    _mm_storeu_ps(out + i + 8, _mm_cvtepi32_ps(_mm_unpacklo_epi16(hi, zero)));
    _mm_storeu_ps(out + i + 12, _mm_cvtepi32_ps(_mm_unpackhi_epi16(hi, zero)));
  }
  for (; i < n; ++i) out[i] = static_cast<float>(row[i]);
}

// The horizontal pass of a float row of 3 or 4 channels: a pixel's channels in one register.
// Reads one float past a 3-channel pixel and writes one past each output pixel (the next
// pixel's first channel, written again next): `row` and `out` need 1 float of padding.
template <int kC>
void HorizontalRowSse(const float* row, const TapSpan* spans, int64_t out_w, const float* wts,
                      float* out) {
  static_assert(kC == 3 || kC == 4);
  for (int64_t x = 0; x < out_w; ++x) {
    const TapSpan s = spans[x];
    const float* p = row + static_cast<int64_t>(s.first) * kC;
    const float* w = wts + s.at;
    __m128 acc = _mm_mul_ps(_mm_set1_ps(w[0]), _mm_loadu_ps(p));
    for (int32_t k = 1; k < s.count; ++k) {
      acc = _mm_add_ps(acc, _mm_mul_ps(_mm_set1_ps(w[k]), _mm_loadu_ps(p + k * kC)));
    }
    _mm_storeu_ps(out + x * kC, acc);
  }
}

// SaturateU8 of n sums: clamp to [0, 255], round to nearest even (the default rounding mode of
// cvtps2dq), pack. The sums of uint8 sources are never NaN.
void StoreU8(const float* line, int64_t n, uint8_t* out) {
  const __m128 lo = _mm_setzero_ps(), hi = _mm_set1_ps(255.0f);
  int64_t i = 0;
  auto lanes = [&](int64_t at) {
    return _mm_cvtps_epi32(_mm_min_ps(_mm_max_ps(_mm_loadu_ps(line + at), lo), hi));
  };
  for (; i + 16 <= n; i += 16) {
    const __m128i a = _mm_packs_epi32(lanes(i), lanes(i + 4));
    const __m128i b = _mm_packs_epi32(lanes(i + 8), lanes(i + 12));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(a, b));
  }
  for (; i < n; ++i) StoreAcc(line[i], out + i);
}
#endif

// Output rows [y_begin, y_end) of sample n.
template <typename T>
void RunBand(const ConstTensorView& src, const TensorView& dst, const Tables& t, int64_t n,
             int64_t y_begin, int64_t y_end) {
  using Acc = typename Compute<T>::Acc;
  const BatchShape& s = src.shape;
  const int64_t out_w = dst.shape.w, out_h = dst.shape.h, channels = s.c;
  const int64_t m = t.maps == 1 ? 0 : n;
  const TapSpan* x_spans = t.x_spans.data() + m * out_w;
  const TapSpan* y_spans = t.y_spans.data() + m * out_h;
  const Acc* wts;
  if constexpr (sizeof(Acc) == sizeof(double)) {
    wts = t.weights.data();
  } else {
    wts = t.weights_f.data();
  }

  // The source rows the band reads: each row's taps are contiguous, the band's their union's
  // hull (rows of a band's hull that no output row reads are computed all the same).
  int64_t r_lo = s.h, r_hi = -1;
  for (int64_t y = y_begin; y < y_end; ++y) {
    r_lo = std::min<int64_t>(r_lo, y_spans[y].first);
    r_hi = std::max<int64_t>(r_hi, int64_t{y_spans[y].first} + y_spans[y].count - 1);
  }
  const int64_t row_elems = out_w * channels;
  Scratch<Acc>& scratch = ThreadScratch<Acc>();
  scratch.rows.resize(static_cast<size_t>((r_hi - r_lo + 1) * row_elems + 4));
  scratch.line.resize(static_cast<size_t>(row_elems));
  const T* sample = src.as<T>() + n * s.h * s.w * channels;
  bool rows_done = false;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<T, uint8_t>) {
    if (channels == 3 || channels == 4) {
      scratch.wide.resize(static_cast<size_t>(s.w * channels + 4));
      for (int64_t r = r_lo; r <= r_hi; ++r) {
        WidenRow(sample + r * s.w * channels, s.w * channels, scratch.wide.data());
        float* row_out = scratch.rows.data() + (r - r_lo) * row_elems;
        if (channels == 3) {
          HorizontalRowSse<3>(scratch.wide.data(), x_spans, out_w, wts, row_out);
        } else {
          HorizontalRowSse<4>(scratch.wide.data(), x_spans, out_w, wts, row_out);
        }
      }
      rows_done = true;
    }
  }
#endif
  for (int64_t r = r_lo; r <= r_hi && !rows_done; ++r) {
    HorizontalRowAny<T>(sample + r * s.w * channels, channels, x_spans, out_w, wts,
                        scratch.rows.data() + (r - r_lo) * row_elems);
  }

  Acc* line = scratch.line.data();
  T* out = dst.as<T>() + (n * out_h + y_begin) * row_elems;
  for (int64_t y = y_begin; y < y_end; ++y, out += row_elems) {
    const TapSpan sp = y_spans[y];
    const Acc* w = wts + sp.at;
    const Acc* row0 = scratch.rows.data() + (sp.first - r_lo) * row_elems;
    for (int64_t i = 0; i < row_elems; ++i) line[i] = FirstTerm(w[0], row0[i]);
    for (int32_t k = 1; k < sp.count; ++k) {
      const Acc* rk = row0 + k * row_elems;
      const Acc wk = w[k];
      for (int64_t i = 0; i < row_elems; ++i) line[i] = NextTerm(line[i], wk, rk[i]);
    }
#if defined(__SSE2__)
    if constexpr (std::is_same_v<T, uint8_t>) {
      StoreU8(line, row_elems, out);
      continue;
    }
#endif
    for (int64_t i = 0; i < row_elems; ++i) StoreAcc(line[i], out + i);
  }
}

template <typename T>
void Run(const ConstTensorView& src, const TensorView& dst, const Tables& t, ThreadPool* pool) {
  const int64_t out_h = dst.shape.h, out_w = dst.shape.w, samples = src.shape.n;
  const int threads = pool == nullptr ? 1 : pool->size();
  int64_t band_rows = std::max<int64_t>(1, (kMinTaskPixels + out_w - 1) / out_w);
  // With several samples per thread a task is a whole sample: fewer bands, fewer intermediate
  // rows computed twice at band edges.
  if (samples >= 4 * static_cast<int64_t>(threads)) band_rows = out_h;
  band_rows = std::min(band_rows, out_h);
  const int64_t bands = (out_h + band_rows - 1) / band_rows;
  ParallelFor(pool, samples * bands, [&](int64_t task) {
    const int64_t n = task / bands;
    const int64_t y_begin = (task % bands) * band_rows;
    RunBand<T>(src, dst, t, n, y_begin, std::min(out_h, y_begin + band_rows));
  });
}

}  // namespace
}  // namespace resample

absl::Status ResampleAaCpu(const ConstTensorView& src, const TensorView& dst,
                           absl::Span<const ResampleMap> maps, ThreadPool* pool) {
  constexpr char kFn[] = "ResampleAaCpu";
  TP_RETURN_IF_ERROR(CheckResampleSource(kFn, src, maps));
  TP_RETURN_IF_ERROR(CheckResampleDestination(kFn, src, dst));
  TP_ASSIGN_OR_RETURN(const resample::Tables tables,
                      resample::BuildTables(kFn, src.shape, dst.shape.h, dst.shape.w, maps));
  switch (src.dtype) {
    case DType::kUInt8:
      resample::Run<uint8_t>(src, dst, tables, pool);
      break;
    case DType::kInt32:
      resample::Run<int32_t>(src, dst, tables, pool);
      break;
    case DType::kFloat32:
      resample::Run<float>(src, dst, tables, pool);
      break;
    case DType::kFloat16:
      resample::Run<Half>(src, dst, tables, pool);
      break;
    default:
      return PreconditionError(kFn, "unknown dtype");
  }
  return absl::OkStatus();
}

}  // namespace tensorprep::kernels
