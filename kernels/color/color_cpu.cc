// CPU colour adjustments (color.h). A sample's chain runs as passes over the sample, one per
// contrast step plus one: the steps between two contrasts are applied together, tile by tile, each
// still rounding to the dtype as it would alone, and the pass before a contrast also adds up the
// gray values its output will be averaged by. A tile is deinterleaved into three float planes so
// that each step is a simple loop the compiler vectorises; the arithmetic is color_math.h's, the
// CUDA kernel's too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/color/color.h"
#include "kernels/color/color_math.h"
#include "kernels/common/checks.h"
#include "kernels/common/half.h"
#include "kernels/common/status.h"

namespace tensorprep::kernels {

const char* ColorKindName(ColorKind kind) {
  switch (kind) {
    case ColorKind::kBrightness:
      return "brightness";
    case ColorKind::kContrast:
      return "contrast";
    case ColorKind::kSaturation:
      return "saturation";
    case ColorKind::kHue:
      return "hue";
    case ColorKind::kGrayscale:
      return "grayscale";
  }
  return "unknown";
}

ColorFactorRange ColorFactorLimits(ColorKind kind) {
  switch (kind) {
    case ColorKind::kHue:
      return {-0.5, 0.5};
    case ColorKind::kGrayscale:
      return {-HUGE_VAL, HUGE_VAL};
    default:
      return {0.0, kMaxColorFactor};
  }
}

bool ColorFactorValid(ColorKind kind, double factor) {
  if (kind == ColorKind::kGrayscale) return true;
  const ColorFactorRange range = ColorFactorLimits(kind);
  return factor >= range.lo && factor <= range.hi;  // false for NaN
}

absl::Status CheckColorChains(absl::string_view function, const ConstTensorView& src,
                              int64_t out_channels,
                              absl::Span<const std::vector<ColorAdjust>> chains) {
  TP_RETURN_IF_ERROR(CheckSourceView(function, src));
  if (src.shape.c != 3) {
    return PreconditionError(function, absl::StrCat("src has ", src.shape.c,
                                                    " channels; expected 3 (RGB)"));
  }
  if (src.dtype != DType::kUInt8 && src.dtype != DType::kFloat32 &&
      src.dtype != DType::kFloat16) {
    return PreconditionError(function, absl::StrCat("src dtype ", DTypeName(src.dtype),
                                                    "; expected uint8, float32 or float16"));
  }
  TP_RETURN_IF_ERROR(CheckPerSampleCount(function, "colour chains", chains.size(), src.shape.n));
  if (out_channels != 1 && out_channels != 3) {
    return PreconditionError(function, absl::StrCat("dst has ", out_channels,
                                                    " channels; expected 3, or 1 after grayscale"));
  }
  for (size_t i = 0; i < chains.size(); ++i) {
    const std::vector<ColorAdjust>& chain = chains[i];
    for (size_t k = 0; k < chain.size(); ++k) {
      const ColorAdjust& a = chain[k];
      if (static_cast<uint8_t>(a.kind) > static_cast<uint8_t>(ColorKind::kGrayscale)) {
        return PreconditionError(function, absl::StrCat("chains[", i, "][", k, "]: kind ",
                                                        static_cast<int>(a.kind), " is unknown"));
      }
      if (!ColorFactorValid(a.kind, a.factor)) {
        const ColorFactorRange r = ColorFactorLimits(a.kind);
        return PreconditionError(
            function, absl::StrCat("chains[", i, "][", k, "] (", ColorKindName(a.kind),
                                   "): factor ", a.factor, "; expected within [", r.lo, ", ",
                                   r.hi, "]"));
      }
    }
    if (out_channels == 1 && (chain.empty() || chain.back().kind != ColorKind::kGrayscale)) {
      return PreconditionError(
          function, absl::StrCat("dst has 1 channel but chains[", i,
                                 "] does not end with grayscale; expected 3 channels"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckColorDestination(absl::string_view function, const ConstTensorView& src,
                                   const TensorView& dst) {
  const BatchShape& s = src.shape;
  const BatchShape want{s.n, s.h, s.w, dst.shape.c == 1 ? 1 : 3};
  if (!(dst.shape == want)) {
    return PreconditionError(
        function, absl::StrCat("dst shape ", ShapeString(dst.shape), "; expected ",
                               ShapeString(want), " (src's n, h, w; 3 channels, or 1 after "
                               "grayscale)"));
  }
  if (dst.dtype != src.dtype) {
    return PreconditionError(function, absl::StrCat("dst dtype ", DTypeName(dst.dtype),
                                                    "; expected src's ", DTypeName(src.dtype)));
  }
  if (dst.data == nullptr) return PreconditionError(function, "dst data is null");
  const auto a = reinterpret_cast<uintptr_t>(src.data);
  const auto d = reinterpret_cast<uintptr_t>(dst.data);
  const bool overlap = a < d + dst.bytes() && d < a + src.bytes();
  if (overlap && !(a == d && dst.shape.c == 3)) {
    return PreconditionError(function,
                             "src and dst overlap; expected distinct memory or exactly the same "
                             "memory (in place, 3 channels)");
  }
  return absl::OkStatus();
}

namespace {

using color::ColorStep;
using color::Rounding;

constexpr int64_t kTile = 256;  // pixels per tile; a multiple of color::kLanes
static_assert(kTile % color::kLanes == 0, "tiles must hold whole lane groups");
// Smallest row band worth a hand-off to another thread (pixels).
constexpr int64_t kMinTaskPixels = 16384;

template <typename T>
struct Element;
template <>
struct Element<uint8_t> {
  static constexpr Rounding kRounding = Rounding::kTrunc;
  static float Load(uint8_t v, const float*) { return static_cast<float>(v); }
  // `v` is already an integer within [0, 255].
  static uint8_t Store(float v) { return static_cast<uint8_t>(static_cast<int32_t>(v)); }
};
template <>
struct Element<float> {
  static constexpr Rounding kRounding = Rounding::kNone;
  static float Load(float v, const float*) { return v; }
  static float Store(float v) { return v; }
};
template <>
struct Element<Half> {
  static constexpr Rounding kRounding = Rounding::kHalf;
  static float Load(Half v, const float* table) { return table[v.bits]; }
  // `v` is already a binary16 value (or a NaN): the conversion is exact.
  static Half Store(float v) { return FloatToHalf(v); }
};

// One pass: rows [y0, y1) of a sample from `in` (3 channels) through `steps`, written to `out`
// (out_c channels; null: not written), and, when `row_sums` is not null, each output row's gray
// sum (color.h's lane order) stored at row_sums[y].
template <typename T>
struct Pass {
  const T* in = nullptr;
  T* out = nullptr;
  int64_t out_c = 3;
  int64_t w = 0;
  const ColorStep* steps = nullptr;
  int64_t count = 0;
  float contrast_term = 0;  // for a kContrast step at steps[0]
  double* row_sums = nullptr;
};

template <ColorKind K, Rounding kR>
void StepTile(const ColorStep& s, float term, float* r, float* g, float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) color::Step<K, kR>(s, term, r[i], g[i], b[i]);
}

template <Rounding kR>
void ApplyTile(const ColorStep& s, float term, float* r, float* g, float* b, int64_t n) {
  switch (s.kind) {
    case ColorKind::kBrightness:
      return StepTile<ColorKind::kBrightness, kR>(s, term, r, g, b, n);
    case ColorKind::kContrast:
      return StepTile<ColorKind::kContrast, kR>(s, term, r, g, b, n);
    case ColorKind::kSaturation:
      return StepTile<ColorKind::kSaturation, kR>(s, term, r, g, b, n);
    case ColorKind::kHue:
      return StepTile<ColorKind::kHue, kR>(s, term, r, g, b, n);
    case ColorKind::kGrayscale:
      return StepTile<ColorKind::kGrayscale, kR>(s, term, r, g, b, n);
  }
}

template <typename T>
void RunRows(const Pass<T>& p, int64_t y0, int64_t y1) {
  constexpr Rounding kR = Element<T>::kRounding;
  const float* table = std::is_same_v<T, Half> ? HalfToFloatTable() : nullptr;
  alignas(64) float r[kTile];
  alignas(64) float g[kTile];
  alignas(64) float b[kTile];
  alignas(64) float gray[kTile];
  for (int64_t y = y0; y < y1; ++y) {
    double lanes[color::kLanes] = {};
    for (int64_t x0 = 0; x0 < p.w; x0 += kTile) {
      const int64_t n = std::min(kTile, p.w - x0);
      const T* in = p.in + (y * p.w + x0) * 3;
      for (int64_t i = 0; i < n; ++i) {
        r[i] = Element<T>::Load(in[3 * i], table);
        g[i] = Element<T>::Load(in[3 * i + 1], table);
        b[i] = Element<T>::Load(in[3 * i + 2], table);
      }
      for (int64_t k = 0; k < p.count; ++k) ApplyTile<kR>(p.steps[k], p.contrast_term, r, g, b, n);
      if (p.row_sums != nullptr) {
        for (int64_t i = 0; i < n; ++i) gray[i] = color::ContrastGray<kR>(r[i], g[i], b[i]);
        // Lane j adds the pixels x = j (mod 8) in order; x0 is a multiple of 8.
        int64_t i = 0;
        for (; i + color::kLanes <= n; i += color::kLanes) {
          for (int j = 0; j < color::kLanes; ++j) lanes[j] += static_cast<double>(gray[i + j]);
        }
        for (int j = 0; i < n; ++i, ++j) lanes[j] += static_cast<double>(gray[i]);
      }
      if (p.out != nullptr) {
        T* out = p.out + (y * p.w + x0) * p.out_c;
        if (p.out_c == 3) {
          for (int64_t i = 0; i < n; ++i) {
            out[3 * i] = Element<T>::Store(r[i]);
            out[3 * i + 1] = Element<T>::Store(g[i]);
            out[3 * i + 2] = Element<T>::Store(b[i]);
          }
        } else {
          for (int64_t i = 0; i < n; ++i) out[i] = Element<T>::Store(r[i]);
        }
      }
    }
    if (p.row_sums != nullptr) p.row_sums[y] = color::CombineLanes(lanes);
  }
}

// Everything one call shares.
template <typename T>
struct Job {
  const T* src = nullptr;
  T* dst = nullptr;
  int64_t h = 0, w = 0, out_c = 3;
  std::vector<std::vector<ColorStep>> steps;  // per chain
};

// Runs `p` over all rows of a sample: in bands over `pool` when it is not null, else inline.
template <typename T>
void RunPass(const Pass<T>& p, int64_t h, ThreadPool* pool) {
  if (pool == nullptr) return RunRows(p, 0, h);
  const int64_t band = std::max<int64_t>(1, (kMinTaskPixels + p.w - 1) / p.w);
  const int64_t bands = (h + band - 1) / band;
  ParallelFor(pool, bands, [&](int64_t i) { RunRows(p, i * band, std::min(h, (i + 1) * band)); });
}

// The intermediate image of a sample whose dst has one channel; reused by the thread's later
// calls (it grows to the largest sample the thread has seen).
template <typename T>
T* Scratch(size_t elements) {
  thread_local std::vector<unsigned char> bytes;
  if (bytes.size() < elements * sizeof(T)) bytes.resize(elements * sizeof(T));
  return reinterpret_cast<T*>(bytes.data());
}

template <typename T>
void RunSample(const Job<T>& job, int64_t n, ThreadPool* band_pool) {
  const std::vector<ColorStep>& steps = job.steps[job.steps.size() == 1 ? 0 : n];
  const int64_t pixels = job.h * job.w;
  const T* src = job.src + n * pixels * 3;
  T* dst = job.dst + n * pixels * job.out_c;
  const int64_t count = static_cast<int64_t>(steps.size());
  if (count == 0) {  // out_c is 3
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(pixels * 3) * sizeof(T));
    return;
  }
  std::vector<int64_t> contrasts;
  for (int64_t k = 0; k < count; ++k) {
    if (steps[static_cast<size_t>(k)].kind == ColorKind::kContrast) contrasts.push_back(k);
  }
  std::vector<double> row_sums(contrasts.empty() ? 0 : static_cast<size_t>(job.h));
  // Intermediate images live in dst when it has 3 channels (each pass rewrites it in place).
  T* work = job.out_c == 3 ? dst : Scratch<T>(static_cast<size_t>(pixels * 3));
  const T* in = src;
  float term = 0;
  int64_t begin = 0;
  for (size_t j = 0; j <= contrasts.size(); ++j) {
    const int64_t end = j < contrasts.size() ? contrasts[j] : count;
    const bool last = j == contrasts.size();
    Pass<T> p;
    p.in = in;
    p.w = job.w;
    p.steps = steps.data() + begin;
    p.count = end - begin;
    p.contrast_term = term;
    p.row_sums = last ? nullptr : row_sums.data();
    if (p.count > 0) {
      p.out = last ? dst : work;
      p.out_c = last ? job.out_c : 3;
    }  // else: the contrast comes first; this pass only sums the source's gray values
    RunPass(p, job.h, band_pool);
    if (p.out != nullptr) in = p.out;
    if (!last) {
      double sum = 0;
      for (const double s : row_sums) sum += s;
      term = color::ContrastTerm(steps[static_cast<size_t>(end)], color::MeanFromSum(sum, pixels));
    }
    begin = end;
  }
}

template <typename T>
void Run(const ConstTensorView& src, const TensorView& dst,
         absl::Span<const std::vector<ColorAdjust>> chains, ThreadPool* pool) {
  Job<T> job;
  job.src = src.as<T>();
  job.dst = dst.as<T>();
  job.h = src.shape.h;
  job.w = src.shape.w;
  job.out_c = dst.shape.c;
  job.steps.reserve(chains.size());
  for (const std::vector<ColorAdjust>& chain : chains) {
    std::vector<ColorStep> s;
    s.reserve(chain.size());
    for (const ColorAdjust& a : chain) s.push_back(color::MakeColorStep(a));
    job.steps.push_back(std::move(s));
  }
  const int64_t threads = pool == nullptr ? 1 : pool->size();
  const int64_t n = src.shape.n;
  if (threads > 1 && n < threads && job.h * job.w >= 2 * kMinTaskPixels) {
    // Fewer samples than threads: each sample's passes in row bands over the pool.
    for (int64_t i = 0; i < n; ++i) RunSample(job, i, pool);
    return;
  }
  ParallelFor(pool, n, [&](int64_t i) { RunSample(job, i, nullptr); });
}

}  // namespace

absl::Status ColorCpu(const ConstTensorView& src, const TensorView& dst,
                      absl::Span<const std::vector<ColorAdjust>> chains, ThreadPool* pool) {
  constexpr char kFn[] = "ColorCpu";
  TP_RETURN_IF_ERROR(CheckColorChains(kFn, src, dst.shape.c, chains));
  TP_RETURN_IF_ERROR(CheckColorDestination(kFn, src, dst));
  switch (src.dtype) {
    case DType::kUInt8:
      Run<uint8_t>(src, dst, chains, pool);
      break;
    case DType::kFloat32:
      Run<float>(src, dst, chains, pool);
      break;
    case DType::kFloat16:
      Run<Half>(src, dst, chains, pool);
      break;
    case DType::kInt32:
      break;  // refused by CheckColorChains
  }
  return absl::OkStatus();
}

}  // namespace tensorprep::kernels
