// CPU element-wise chain, fused tile by tile. A tile is a few thousand elements, a multiple of C so
// that it starts at channel 0. The chain's first op reads the tile straight from the source and
// its last op writes straight to the destination; ops in between work in a small buffer, in the
// tile's current dtype. A one-op chain thus touches each element once on the way in and once on
// the way out, as a copy does. Per-channel operands are expanded once per call into tile-length
// patterns, so the inner loops are plain `y[i] = x[i] op a[i]` loops that the compiler vectorises.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/half.h"
#include "kernels/common/numerics.h"
#include "kernels/common/status.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/elementwise/elementwise_program.h"

namespace tensorprep::kernels {
namespace {

constexpr int64_t kTileTarget = 1024;        // elements per tile (4 KiB at 4 bytes)
constexpr int64_t kMinTaskElements = 32768;  // smallest task worth a hand-off to another thread
constexpr float kHalfMaxF = 65504.0f;

const char* KindName(ElementwiseKind k) {
  switch (k) {
    case ElementwiseKind::kAdd:
      return "add";
    case ElementwiseKind::kSubtract:
      return "subtract";
    case ElementwiseKind::kMultiply:
      return "multiply";
    case ElementwiseKind::kDivide:
      return "divide";
    case ElementwiseKind::kNormalize:
      return "normalize";
    case ElementwiseKind::kClamp:
      return "clamp";
    case ElementwiseKind::kCast:
      return "cast";
  }
  return "unknown";
}

bool ValidDType(DType t) { return static_cast<int>(t) <= static_cast<int>(DType::kFloat16); }

// kCast to float16 of a float: finite values saturate at +-65504 (CastDouble's rule, numerics.h,
// on the float fast path; for a float, rounding once to binary16 is what CastDouble does).
inline uint16_t SaturateHalf(float v) {  // kCast to float16: finite values saturate
  if (std::fabs(v) > kHalfMaxF && std::isfinite(v)) v = std::copysign(kHalfMaxF, v);
  return FloatToHalf(v).bits;
}

// One op, ready to run: operands expanded to tile-length patterns in the representation the
// op's input dtype computes in.
struct Prepared {
  ElementwiseKind kind;
  DType in;
  DType to;
  std::vector<float> af;   // float32/float16: a[c] rounded to float
  std::vector<float> bf;   // normalize: std
  std::vector<double> ad;  // integer dtypes: a[c]
  double lo = 0;           // clamp bounds converted to `in`; +-inf / type limits if absent
  double hi = 0;
};

template <typename V>
std::vector<V> Pattern(const std::vector<double>& v, int64_t tile, int64_t channels) {
  std::vector<V> p(static_cast<size_t>(tile));
  for (int64_t i = 0; i < tile; ++i) {
    p[i] = static_cast<V>(v.size() == 1 ? v[0] : v[i % channels]);
  }
  return p;
}

// y[i] = f(x[i], i) for i in [0, n). x and y are the same memory or do not overlap. The in-place
// case gets its own loop so that the compiler, seeing one pointer, vectorises it without a
// run-time overlap check (which would send x == y down the scalar path).
template <typename T, typename F>
inline void Map(const T* x, T* y, int64_t n, F f) {
  if (x == y) {
    for (int64_t i = 0; i < n; ++i) y[i] = f(y[i], i);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = f(x[i], i);
  }
}

template <typename V>
void ArithmeticLoop(ElementwiseKind k, const V* x, const V* a, V* y, int64_t n) {
  switch (k) {
    case ElementwiseKind::kAdd:
      Map(x, y, n, [a](V v, int64_t i) { return v + a[i]; });
      break;
    case ElementwiseKind::kSubtract:
      Map(x, y, n, [a](V v, int64_t i) { return v - a[i]; });
      break;
    case ElementwiseKind::kMultiply:
      Map(x, y, n, [a](V v, int64_t i) { return v * a[i]; });
      break;
    case ElementwiseKind::kDivide:
      Map(x, y, n, [a](V v, int64_t i) { return v / a[i]; });
      break;
    default:
      break;
  }
}

// Integer arithmetic: in double, then rounded and saturated. `wide` is scratch of n doubles.
template <typename T>
void IntegerArithmetic(ElementwiseKind k, const T* x, const double* a, T* y, int64_t n,
                       double* wide) {
  for (int64_t i = 0; i < n; ++i) wide[i] = static_cast<double>(x[i]);
  ArithmeticLoop(k, wide, a, wide, n);
  if constexpr (std::is_same_v<T, uint8_t>) {
    for (int64_t i = 0; i < n; ++i) y[i] = SaturateU8(wide[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = SaturateI32(wide[i]);
  }
}

// float16 ops run in float32 and round back to binary16 once per op. `wide` is n floats.
void WidenHalf(const uint16_t* x, float* wide, int64_t n) {
  const float* table = HalfToFloatTable();
  for (int64_t i = 0; i < n; ++i) wide[i] = table[x[i]];
}
// float -> binary16 for n elements, as FloatToHalf (saturate: as SaturateHalf).
void FloatsToHalfScalar(const float* x, uint16_t* y, int64_t n, bool saturate) {
  if (saturate) {
    for (int64_t i = 0; i < n; ++i) y[i] = SaturateHalf(x[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] = FloatToHalf(x[i]).bits;
  }
}

#if defined(__x86_64__)
// The same with the F16C conversion instruction, which rounds to nearest even and overflows to
// infinity exactly as FloatToHalf does for every non-NaN input (subnormal results included, in
// the default MXCSR). NaNs differ (the instruction keeps payload bits, FloatToHalf gives the
// canonical quiet NaN), so a group of 8 holding a NaN goes the scalar way.
__attribute__((target("avx2,f16c"))) void FloatsToHalfF16c(const float* x, uint16_t* y,
                                                             int64_t n, bool saturate) {
  const __m256 lim = _mm256_set1_ps(kHalfMaxF);
  const __m256 neg_lim = _mm256_set1_ps(-kHalfMaxF);
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      FloatsToHalfScalar(x + i, y + i, 8, saturate);
      continue;
    }
    if (saturate) {  // finite values beyond +-65504 become +-65504; infinities stay
      const __m256 is_inf = _mm256_cmp_ps(_mm256_andnot_ps(sign, v), inf, _CMP_EQ_OQ);
      v = _mm256_blendv_ps(_mm256_min_ps(_mm256_max_ps(v, neg_lim), lim), v, is_inf);
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  FloatsToHalfScalar(x + i, y + i, n - i, saturate);
}

const bool kHaveF16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#endif

void FloatsToHalf(const float* x, uint16_t* y, int64_t n, bool saturate) {
#if defined(__x86_64__)
  if (kHaveF16c) return FloatsToHalfF16c(x, y, n, saturate);
#endif
  FloatsToHalfScalar(x, y, n, saturate);
}

void NarrowHalf(const float* wide, uint16_t* x, int64_t n) { FloatsToHalf(wide, x, n, false); }

// float -> uint8 as kCast: NaN -> 0, saturate, round to nearest even.
void FloatsToU8Scalar(const float* x, uint8_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = SaturateU8(x[i] != x[i] ? 0.0f : x[i]);  // NaN -> 0
}

#if defined(__x86_64__)
// The same 8 at a time: after clamping to [0, 255] the conversion instruction rounds to nearest
// even in the default MXCSR, as SaturateU8 (numerics.h) does.
__attribute__((target("avx2"))) void FloatsToU8Avx2(const float* x, uint8_t* y, int64_t n) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 top = _mm256_set1_ps(255.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q));  // NaN -> +0
    v = _mm256_min_ps(_mm256_max_ps(v, zero), top);
    const __m256i q = _mm256_cvtps_epi32(v);
    const __m128i words =
        _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(y + i), _mm_packus_epi16(words, words));
  }
  FloatsToU8Scalar(x + i, y + i, n - i);
}

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
#endif

void FloatsToU8(const float* x, uint8_t* y, int64_t n) {
#if defined(__x86_64__)
  if (kHaveAvx2) return FloatsToU8Avx2(x, y, n);
#endif
  FloatsToU8Scalar(x, y, n);
}

void NormalizeLoop(const float* x, const float* mean, const float* stddev, float* y, int64_t n) {
  Map(x, y, n, [mean, stddev](float v, int64_t i) { return (v - mean[i]) / stddev[i]; });
}

#if defined(__x86_64__)
// The float32 loops again, compiled for AVX2: the same IEEE operations eight lanes wide (no FMA
// is enabled, so nothing is contracted and every result keeps its bits). Division, the slowest of
// them, is what a chain of two ops becomes bound by with 4-lane SSE2.
__attribute__((target("avx2"))) void ArithmeticLoopAvx2(ElementwiseKind k, const float* x,
                                                        const float* a, float* y, int64_t n) {
  ArithmeticLoop(k, x, a, y, n);
}
__attribute__((target("avx2"))) void NormalizeLoopAvx2(const float* x, const float* mean,
                                                       const float* stddev, float* y, int64_t n) {
  NormalizeLoop(x, mean, stddev, y, n);
}
#endif

void FloatArithmetic(ElementwiseKind k, const float* x, const float* a, float* y, int64_t n) {
#if defined(__x86_64__)
  if (kHaveAvx2) return ArithmeticLoopAvx2(k, x, a, y, n);
#endif
  ArithmeticLoop(k, x, a, y, n);
}

void Normalize(const float* x, const float* mean, const float* stddev, float* y, int64_t n) {
#if defined(__x86_64__)
  if (kHaveAvx2) return NormalizeLoopAvx2(x, mean, stddev, y, n);
#endif
  NormalizeLoop(x, mean, stddev, y, n);
}

template <typename T>
void ClampLoop(const T* x, T lo, T hi, T* y, int64_t n) {
  Map(x, y, n, [lo, hi](T v, int64_t) { return v < lo ? lo : (v > hi ? hi : v); });
}

// Converts n elements from dtype `from` in `in` to dtype `to` in `out`: distinct buffers, or the
// same memory when from == to. A float16 source must arrive widened to float32 (pass kFloat32).
void Convert(const void* in, DType from, void* out, DType to, int64_t n) {
  if (from == to) {
    if (in != out) std::memcpy(out, in, static_cast<size_t>(n) * DTypeSize(to));
    return;
  }
  switch (from) {
    case DType::kUInt8: {
      const auto* x = static_cast<const uint8_t*>(in);
      if (to == DType::kInt32) {
        auto* y = static_cast<int32_t*>(out);
        for (int64_t i = 0; i < n; ++i) y[i] = x[i];
      } else if (to == DType::kFloat32) {
        auto* y = static_cast<float*>(out);
        for (int64_t i = 0; i < n; ++i) y[i] = x[i];
      } else {
        auto* y = static_cast<uint16_t*>(out);
        for (int64_t i = 0; i < n; ++i) y[i] = FloatToHalf(static_cast<float>(x[i])).bits;
      }
      return;
    }
    case DType::kInt32: {
      const auto* x = static_cast<const int32_t*>(in);
      if (to == DType::kUInt8) {
        auto* y = static_cast<uint8_t*>(out);
        for (int64_t i = 0; i < n; ++i) y[i] = static_cast<uint8_t>(std::clamp(x[i], 0, 255));
      } else if (to == DType::kFloat32) {
        auto* y = static_cast<float*>(out);
        for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[i]);  // to nearest
      } else {
        auto* y = static_cast<uint16_t*>(out);
        // |v| <= 65504 is exact in float, so the only rounding is float -> binary16.
        for (int64_t i = 0; i < n; ++i) {
          y[i] = FloatToHalf(static_cast<float>(std::clamp(x[i], -65504, 65504))).bits;
        }
      }
      return;
    }
    case DType::kFloat16:  // callers widen binary16 to float32 first
    case DType::kFloat32: {
      const auto* x = static_cast<const float*>(in);
      if (to == DType::kUInt8) {
        FloatsToU8(x, static_cast<uint8_t*>(out), n);
      } else if (to == DType::kInt32) {
        auto* y = static_cast<int32_t*>(out);
        for (int64_t i = 0; i < n; ++i) {
          const double v = x[i] != x[i] ? 0.0 : static_cast<double>(x[i]);
          y[i] = SaturateI32(v);
        }
      } else if (to == DType::kFloat32) {
        if (out != x) std::memcpy(out, x, static_cast<size_t>(n) * sizeof(float));
      } else {
        FloatsToHalf(x, static_cast<uint16_t*>(out), n, true);
      }
      return;
    }
  }
}

// Runs the chain on one tile of n elements: from `x` (dtype `start`) to `y` (the chain's output
// dtype), which are the same memory or distinct as Run allows. The first op reads `x` and the last
// op writes `y`; every op in between reads and writes buf0 or buf1 (>= n elements of 4 bytes
// each). `wide` holds >= n doubles.
void RunTile(const std::vector<Prepared>& chain, DType start, const void* x, void* y, void* buf0,
             void* buf1, double* wide, int64_t n) {
  const void* cur = x;  // where the tile's current values are
  DType t = start;
  auto* wide_f = reinterpret_cast<float*>(wide);
  for (size_t k = 0; k < chain.size(); ++k) {
    const Prepared& op = chain[k];
    const bool last = k + 1 == chain.size();
    // An op that keeps the dtype works in place once the values are in a buffer; a cast (which
    // may change the element size) goes to the other buffer.
    void* out;
    if (last) {
      out = y;
    } else if (op.kind == ElementwiseKind::kCast) {
      out = cur == buf0 ? buf1 : buf0;
    } else {
      out = cur == x ? buf0 : const_cast<void*>(cur);
    }
    switch (op.kind) {
      case ElementwiseKind::kAdd:
      case ElementwiseKind::kSubtract:
      case ElementwiseKind::kMultiply:
      case ElementwiseKind::kDivide:
        switch (t) {
          case DType::kUInt8:
            IntegerArithmetic(op.kind, static_cast<const uint8_t*>(cur), op.ad.data(),
                              static_cast<uint8_t*>(out), n, wide);
            break;
          case DType::kInt32:
            IntegerArithmetic(op.kind, static_cast<const int32_t*>(cur), op.ad.data(),
                              static_cast<int32_t*>(out), n, wide);
            break;
          case DType::kFloat32:
            FloatArithmetic(op.kind, static_cast<const float*>(cur), op.af.data(),
                            static_cast<float*>(out), n);
            break;
          case DType::kFloat16:
            WidenHalf(static_cast<const uint16_t*>(cur), wide_f, n);
            FloatArithmetic(op.kind, wide_f, op.af.data(), wide_f, n);
            NarrowHalf(wide_f, static_cast<uint16_t*>(out), n);
            break;
        }
        break;
      case ElementwiseKind::kNormalize:
        if (t == DType::kFloat32) {
          Normalize(static_cast<const float*>(cur), op.af.data(), op.bf.data(),
                    static_cast<float*>(out), n);
        } else {  // float16 (validated)
          WidenHalf(static_cast<const uint16_t*>(cur), wide_f, n);
          Normalize(wide_f, op.af.data(), op.bf.data(), wide_f, n);
          NarrowHalf(wide_f, static_cast<uint16_t*>(out), n);
        }
        break;
      case ElementwiseKind::kClamp:
        switch (t) {
          case DType::kUInt8:
            ClampLoop(static_cast<const uint8_t*>(cur), static_cast<uint8_t>(op.lo),
                      static_cast<uint8_t>(op.hi), static_cast<uint8_t*>(out), n);
            break;
          case DType::kInt32:
            ClampLoop(static_cast<const int32_t*>(cur), static_cast<int32_t>(op.lo),
                      static_cast<int32_t>(op.hi), static_cast<int32_t*>(out), n);
            break;
          case DType::kFloat32:
            ClampLoop(static_cast<const float*>(cur), static_cast<float>(op.lo),
                      static_cast<float>(op.hi), static_cast<float*>(out), n);
            break;
          case DType::kFloat16: {
            // Bounds are binary16 values, so clamping in float and narrowing back is exact.
            WidenHalf(static_cast<const uint16_t*>(cur), wide_f, n);
            ClampLoop(static_cast<const float*>(wide_f), static_cast<float>(op.lo),
                      static_cast<float>(op.hi), wide_f, n);
            NarrowHalf(wide_f, static_cast<uint16_t*>(out), n);
            break;
          }
        }
        break;
      case ElementwiseKind::kCast:
        if (t == DType::kFloat16 && op.to != DType::kFloat16) {
          WidenHalf(static_cast<const uint16_t*>(cur), wide_f, n);
          Convert(wide_f, DType::kFloat32, out, op.to, n);
        } else if (cur == out && t != op.to) {
          // In place between two 4-byte types (float32 <-> int32): convert through a buffer
          // rather than read and write one location under two types.
          Convert(cur, t, buf0, op.to, n);
          std::memcpy(out, buf0, static_cast<size_t>(n) * DTypeSize(op.to));
        } else {
          Convert(cur, t, out, op.to, n);
        }
        t = op.to;
        break;
    }
    cur = out;
  }
}

// ---- Channels-first stores ---------------------------------------------------------------------
// A tile's interleaved values (pixel-major, `channels` per pixel) are split into one contiguous run
// per channel: y + c * plane holds channel c of every pixel. Only bytes move, so the element type
// stands for the element size.

template <typename T>
void DeinterleaveScalar(const T* x, int64_t channels, int64_t pixels, T* y, int64_t plane) {
  for (int64_t c = 0; c < channels; ++c) {
    T* out = y + c * plane;
    for (int64_t i = 0; i < pixels; ++i) out[i] = x[i * channels + c];
  }
}

template <typename T>
void Deinterleave3Scalar(const T* x, int64_t pixels, T* r, T* g, T* b) {
  for (int64_t i = 0; i < pixels; ++i) {
    r[i] = x[3 * i];
    g[i] = x[3 * i + 1];
    b[i] = x[3 * i + 2];
  }
}

#if defined(__x86_64__)
// Byte shuffles that gather channel `ch` of 3-channel pixels with elements of `size` bytes from
// three consecutive 16-byte vectors: mask[ch][v] moves the bytes of vector v that belong to
// output positions of channel ch and zeroes the rest (0x80), so OR-ing the three shuffles gives
// 16 / size values of one channel.
struct Shuffle3 {
  alignas(16) int8_t mask[3][3][16];
  explicit Shuffle3(int size) {
    const int per_vector = 16 / size;  // elements in one vector
    for (int ch = 0; ch < 3; ++ch) {
      for (int v = 0; v < 3; ++v) {
        for (int j = 0; j < per_vector; ++j) {
          const int k = 3 * j + ch;  // source element of output j
          for (int byte = 0; byte < size; ++byte) {
            mask[ch][v][j * size + byte] = k / per_vector == v
                                               ? static_cast<int8_t>((k % per_vector) * size + byte)
                                               : static_cast<int8_t>(0x80);
          }
        }
      }
    }
  }
};

// 1- and 2-byte elements, 16 / size pixels per step.
template <typename T>
__attribute__((target("avx2"))) void Deinterleave3Small(const T* x, int64_t pixels, T* r, T* g,
                                                        T* b) {
  static const Shuffle3 kShuffle(sizeof(T));
  constexpr int64_t kStep = 16 / sizeof(T);
  __m128i m[3][3];
  for (int ch = 0; ch < 3; ++ch) {
    for (int v = 0; v < 3; ++v) {
      m[ch][v] = _mm_load_si128(reinterpret_cast<const __m128i*>(kShuffle.mask[ch][v]));
    }
  }
  T* out[3] = {r, g, b};
  int64_t i = 0;
  for (; i + kStep <= pixels; i += kStep) {
    const auto* p = reinterpret_cast<const __m128i*>(x + 3 * i);
    const __m128i v0 = _mm_loadu_si128(p);
    const __m128i v1 = _mm_loadu_si128(p + 1);
    const __m128i v2 = _mm_loadu_si128(p + 2);
    for (int ch = 0; ch < 3; ++ch) {
      const __m128i val =
          _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(v0, m[ch][0]), _mm_shuffle_epi8(v1, m[ch][1])),
                       _mm_shuffle_epi8(v2, m[ch][2]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[ch] + i), val);
    }
  }
  Deinterleave3Scalar(x + 3 * i, pixels - i, r + i, g + i, b + i);
}

// 4-byte elements, 8 pixels per step. In the three vectors [r0 g0 b0 r1 g1 b1 r2 g2],
// [b2 r3 g3 b3 r4 g4 b4 r5], [g5 b5 r6 g6 b6 r7 g7 b7] each channel's 8 values sit in distinct
// lanes, so two blends gather them and one lane permutation puts them in order.
__attribute__((target("avx2"))) void Deinterleave3Wide(const uint32_t* x, int64_t pixels,
                                                       uint32_t* r, uint32_t* g, uint32_t* b) {
  const __m256i order_r = _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5);
  const __m256i order_g = _mm256_setr_epi32(1, 4, 7, 2, 5, 0, 3, 6);
  const __m256i order_b = _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7);
  int64_t i = 0;
  for (; i + 8 <= pixels; i += 8) {
    const auto* p = reinterpret_cast<const __m256i*>(x + 3 * i);
    const __m256i v0 = _mm256_loadu_si256(p);
    const __m256i v1 = _mm256_loadu_si256(p + 1);
    const __m256i v2 = _mm256_loadu_si256(p + 2);
    const __m256i rr = _mm256_blend_epi32(_mm256_blend_epi32(v0, v1, 0x92), v2, 0x24);
    const __m256i gg = _mm256_blend_epi32(_mm256_blend_epi32(v0, v1, 0x24), v2, 0x49);
    const __m256i bb = _mm256_blend_epi32(_mm256_blend_epi32(v0, v1, 0x49), v2, 0x92);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r + i),
                        _mm256_permutevar8x32_epi32(rr, order_r));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(g + i),
                        _mm256_permutevar8x32_epi32(gg, order_g));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(b + i),
                        _mm256_permutevar8x32_epi32(bb, order_b));
  }
  Deinterleave3Scalar(x + 3 * i, pixels - i, r + i, g + i, b + i);
}
#endif

template <typename T>
void Deinterleave3(const T* x, int64_t pixels, T* y, int64_t plane) {
#if defined(__x86_64__)
  if (kHaveAvx2) {
    if constexpr (sizeof(T) == 4) {
      return Deinterleave3Wide(x, pixels, y, y + plane, y + 2 * plane);
    } else {
      return Deinterleave3Small(x, pixels, y, y + plane, y + 2 * plane);
    }
  }
#endif
  Deinterleave3Scalar(x, pixels, y, y + plane, y + 2 * plane);
}

template <typename T>
void DeinterleaveTyped(const void* x, int64_t channels, int64_t pixels, void* y, int64_t plane) {
  const auto* in = static_cast<const T*>(x);
  auto* out = static_cast<T*>(y);
  if (channels == 3) return Deinterleave3(in, pixels, out, plane);
  DeinterleaveScalar(in, channels, pixels, out, plane);
}

// `pixels` interleaved pixels of `channels` elements of `size` bytes at x, to channel c's run at
// y + c * plane elements.
void Deinterleave(const void* x, size_t size, int64_t channels, int64_t pixels, void* y,
                  int64_t plane) {
  switch (size) {
    case 1:
      return DeinterleaveTyped<uint8_t>(x, channels, pixels, y, plane);
    case 2:
      return DeinterleaveTyped<uint16_t>(x, channels, pixels, y, plane);
    default:
      return DeinterleaveTyped<uint32_t>(x, channels, pixels, y, plane);
  }
}

}  // namespace

DType ElementwiseOutputDType(DType in, absl::Span<const ElementwiseOp> ops) {
  for (const ElementwiseOp& op : ops) {
    if (op.kind == ElementwiseKind::kCast) in = op.to;
  }
  return in;
}

OperandProblem CheckOperand(absl::Span<const double> values, int64_t channels, DType dtype,
                            bool nonzero) {
  if (values.size() != 1 && static_cast<int64_t>(values.size()) != channels) {
    return {OperandProblem::kLength, 0};
  }
  const bool floating = IsFloating(dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    if (!std::isfinite(v)) return {OperandProblem::kNotFinite, i};
    if (nonzero && v == 0) return {OperandProblem::kZero, i};
    if (floating && !std::isfinite(static_cast<float>(v))) {
      return {OperandProblem::kNotFiniteInFloat32, i};
    }
    if (floating && nonzero && static_cast<float>(v) == 0.0f) {
      return {OperandProblem::kZeroInFloat32, i};
    }
  }
  return {};
}

absl::Status CheckElementwiseChain(absl::string_view function, DType in, int64_t channels,
                                   absl::Span<const ElementwiseOp> ops) {
  if (!ValidDType(in)) {
    return PreconditionError(function, absl::StrCat("input dtype ", static_cast<int>(in),
                                                    "; expected a DType value"));
  }
  if (channels < 1) {
    return PreconditionError(function,
                             absl::StrCat("channels is ", channels, "; expected >= 1"));
  }
  DType t = in;
  for (size_t i = 0; i < ops.size(); ++i) {
    const ElementwiseOp& op = ops[i];
    const std::string where = absl::StrCat("ops[", i, "] (", KindName(op.kind), "): ");
    auto operand = [&](const std::vector<double>& v, const char* what,
                       bool nonzero) -> absl::Status {
      const OperandProblem p = CheckOperand(v, channels, t, nonzero);
      if (p.ok()) return absl::OkStatus();
      std::string problem;
      switch (p.kind) {
        case OperandProblem::kLength:
          problem = absl::StrCat(what, " has ", v.size(), " values; expected 1 or ", channels,
                                 " (channels)");
          break;
        case OperandProblem::kNotFinite:
          problem = absl::StrCat(what, "[", p.index, "] is ", v[p.index],
                                 "; expected a finite number");
          break;
        case OperandProblem::kZero:
          problem = absl::StrCat(what, "[", p.index, "] is 0; expected non-zero");
          break;
        case OperandProblem::kNotFiniteInFloat32:
          problem = absl::StrCat(what, "[", p.index, "] is ", v[p.index],
                                 "; expected a value finite in float32");
          break;
        default:
          problem = absl::StrCat(what, "[", p.index, "] is ", v[p.index],
                                 ", 0 in float32; expected non-zero");
          break;
      }
      return PreconditionError(function, absl::StrCat(where, problem));
    };
    switch (op.kind) {
      case ElementwiseKind::kAdd:
      case ElementwiseKind::kSubtract:
      case ElementwiseKind::kMultiply:
      case ElementwiseKind::kDivide:
        TP_RETURN_IF_ERROR(operand(op.a, "value", op.kind == ElementwiseKind::kDivide));
        break;
      case ElementwiseKind::kNormalize:
        if (!IsFloating(t)) {
          return PreconditionError(function,
                                   absl::StrCat(where, "input dtype is ", DTypeName(t),
                                                "; expected float32 or float16"));
        }
        TP_RETURN_IF_ERROR(operand(op.a, "mean", false));
        TP_RETURN_IF_ERROR(operand(op.b, "std", true));
        break;
      case ElementwiseKind::kClamp:
        break;
      case ElementwiseKind::kCast:
        if (!ValidDType(op.to)) {
          return PreconditionError(function,
                                   absl::StrCat(where, "target dtype ", static_cast<int>(op.to),
                                                "; expected a DType value"));
        }
        t = op.to;
        break;
      default:
        return PreconditionError(function,
                                 absl::StrCat("ops[", i, "]: kind ", static_cast<int>(op.kind),
                                              "; expected an ElementwiseKind"));
    }
  }
  return absl::OkStatus();
}

struct ElementwiseProgram::Impl {
  DType in = DType::kUInt8;
  DType out = DType::kUInt8;
  int64_t channels = 1;
  int64_t tile = 0;  // elements per tile, a multiple of the channel count
  std::vector<Prepared> chain;
};

absl::StatusOr<ElementwiseProgram> ElementwiseProgram::Make(absl::string_view function,
                                                            DType in, int64_t channels,
                                                            absl::Span<const ElementwiseOp> ops) {
  TP_RETURN_IF_ERROR(CheckElementwiseChain(function, in, channels, ops));
  auto impl = std::make_shared<Impl>();
  impl->in = in;
  impl->out = ElementwiseOutputDType(in, ops);
  impl->channels = channels;
  impl->tile = channels * std::max<int64_t>(1, kTileTarget / channels);  // starts at channel 0
  const int64_t tile = impl->tile;
  impl->chain.reserve(ops.size());
  const double inf = std::numeric_limits<double>::infinity();
  DType t = in;
  for (const ElementwiseOp& op : ops) {
    Prepared p;
    p.kind = op.kind;
    p.in = t;
    p.to = op.to;
    switch (op.kind) {
      case ElementwiseKind::kAdd:
      case ElementwiseKind::kSubtract:
      case ElementwiseKind::kMultiply:
      case ElementwiseKind::kDivide:
        if (IsFloating(t)) {
          p.af = Pattern<float>(op.a, tile, channels);
        } else {
          p.ad = Pattern<double>(op.a, tile, channels);
        }
        break;
      case ElementwiseKind::kNormalize:
        p.af = Pattern<float>(op.a, tile, channels);
        p.bf = Pattern<float>(op.b, tile, channels);
        break;
      case ElementwiseKind::kClamp: {
        const double type_lo =
            t == DType::kUInt8 ? 0.0 : (t == DType::kInt32 ? -2147483648.0 : -inf);
        const double type_hi =
            t == DType::kUInt8 ? 255.0 : (t == DType::kInt32 ? 2147483647.0 : inf);
        p.lo = op.has_lo ? CastDouble(op.lo, t) : type_lo;
        p.hi = op.has_hi ? CastDouble(op.hi, t) : type_hi;
        break;
      }
      case ElementwiseKind::kCast:
        t = op.to;
        break;
    }
    impl->chain.push_back(std::move(p));
  }
  return ElementwiseProgram(std::move(impl));
}

DType ElementwiseProgram::input_dtype() const { return impl_->in; }
DType ElementwiseProgram::output_dtype() const { return impl_->out; }
int64_t ElementwiseProgram::channels() const { return impl_->channels; }

void ElementwiseProgram::Run(const void* in, void* out, int64_t count) const {
  const Impl& p = *impl_;
  const size_t in_size = DTypeSize(p.in);
  const size_t out_size = DTypeSize(p.out);
  const auto* src = static_cast<const unsigned char*>(in);
  auto* dst = static_cast<unsigned char*>(out);
  if (p.chain.empty()) {
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(count) * in_size);
    return;
  }
  // Tile scratch, reused by every later call on this thread.
  thread_local std::vector<uint32_t> buf0;
  thread_local std::vector<uint32_t> buf1;
  thread_local std::vector<double> wide;
  const size_t tile = static_cast<size_t>(p.tile);
  if (buf0.size() < tile) {
    buf0.resize(tile);
    buf1.resize(tile);
    wide.resize(tile);
  }
  for (int64_t begin = 0; begin < count; begin += p.tile) {
    const int64_t n = std::min(p.tile, count - begin);
    RunTile(p.chain, p.in, src + begin * in_size, dst + begin * out_size, buf0.data(), buf1.data(),
            wide.data(), n);
  }
}

void ElementwiseProgram::RunChannelsFirst(const void* in, void* out_sample, int64_t plane_pixels,
                                          int64_t first_pixel, int64_t pixels) const {
  const Impl& p = *impl_;
  const size_t in_size = DTypeSize(p.in);
  const size_t out_size = DTypeSize(p.out);
  auto* dst = static_cast<unsigned char*>(out_sample) + first_pixel * out_size;
  if (p.channels == 1) return Run(in, dst, pixels);  // one plane: the layouts coincide
  const auto* src = static_cast<const unsigned char*>(in);
  // Tile scratch as Run's, plus the stage that holds a tile's result before it is split into
  // channel runs; all of it stays in L1.
  thread_local std::vector<uint32_t> buf0;
  thread_local std::vector<uint32_t> buf1;
  thread_local std::vector<uint32_t> stage;
  thread_local std::vector<double> wide;
  const size_t tile = static_cast<size_t>(p.tile);
  if (stage.size() < tile) stage.resize(tile);
  if (buf0.size() < tile) {
    buf0.resize(tile);
    buf1.resize(tile);
    wide.resize(tile);
  }
  const int64_t tile_pixels = p.tile / p.channels;
  for (int64_t begin = 0; begin < pixels; begin += tile_pixels) {
    const int64_t n = std::min(tile_pixels, pixels - begin);
    const unsigned char* x = src + begin * p.channels * in_size;
    const void* values = x;  // an empty chain only moves the source's values
    if (!p.chain.empty()) {
      RunTile(p.chain, p.in, x, stage.data(), buf0.data(), buf1.data(), wide.data(),
              n * p.channels);
      values = stage.data();
    }
    Deinterleave(values, out_size, p.channels, n, dst + begin * out_size, plane_pixels);
  }
}

absl::Status ElementwiseCpu(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const ElementwiseOp> ops, ThreadPool* pool,
                            bool channels_first) {
  constexpr char kFn[] = "ElementwiseCpu";
  const BatchShape& s = src.shape;
  TP_RETURN_IF_ERROR(CheckSourceView(kFn, src));
  TP_ASSIGN_OR_RETURN(const ElementwiseProgram program,
                      ElementwiseProgram::Make(kFn, src.dtype, s.c, ops));
  const DType out_dtype = program.output_dtype();
  TP_RETURN_IF_ERROR(CheckDestinationView(
      kFn, src, dst, out_dtype, channels_first ? Aliasing::kDistinct : Aliasing::kSameAllowed));
  const auto* in = static_cast<const unsigned char*>(src.data);
  auto* out = static_cast<unsigned char*>(dst.data);
  const size_t in_size = DTypeSize(src.dtype);
  const size_t out_size = DTypeSize(out_dtype);
  const int64_t tile = s.c * std::max<int64_t>(1, kTileTarget / s.c);
  const int64_t tiles_per_task = std::max<int64_t>(1, kMinTaskElements / tile);

  if (channels_first) {
    // Tasks of whole tiles of one sample each (a band of its pixels), as many elements as the
    // NHWC path's tasks.
    const int64_t plane = s.h * s.w;
    const int64_t task_pixels = tiles_per_task * (tile / s.c);
    const int64_t tasks_per_sample = (plane + task_pixels - 1) / task_pixels;
    const int64_t sample_elements = s.sample_elements();
    ParallelFor(pool, s.n * tasks_per_sample, [&](int64_t task) {
      const int64_t n = task / tasks_per_sample;
      const int64_t first = (task % tasks_per_sample) * task_pixels;
      const int64_t pixels = std::min(plane - first, task_pixels);
      program.RunChannelsFirst(in + (n * sample_elements + first * s.c) * in_size,
                               out + n * sample_elements * out_size, plane, first, pixels);
    });
    return absl::OkStatus();
  }
  if (ops.empty() && in == out) return absl::OkStatus();  // in place (CheckDestinationView)

  // Tasks of whole tiles, each at least kMinTaskElements: a small batch is one task and runs on
  // the calling thread.
  const int64_t total = s.elements();
  const int64_t tiles = (total + tile - 1) / tile;
  const int64_t tasks = (tiles + tiles_per_task - 1) / tiles_per_task;
  ParallelFor(pool, tasks, [&](int64_t task) {
    const int64_t begin = task * tiles_per_task * tile;
    const int64_t end = std::min(total, begin + tiles_per_task * tile);
    program.Run(in + begin * in_size, out + begin * out_size, end - begin);
  });
  return absl::OkStatus();
}

}  // namespace tensorprep::kernels
