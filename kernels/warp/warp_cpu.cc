// CPU affine warp: per-row source coordinates in double, an interior path that reads the four
// taps directly, and border resolution only for pixels whose taps leave the image.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/half.h"
#include "kernels/common/numerics.h"
#include "kernels/common/status.h"
#include "kernels/warp/sampling.h"
#include "kernels/warp/warp.h"
#include "kernels/warp/warp_isa.h"
#include "kernels/warp/warp_rows.h"

namespace tensorprep::kernels {

Affine RotationInverse(double angle_deg, int64_t h, int64_t w) {
  // Reduce first so that multiples of 90 are recognised whatever their sign or turn count
  // (std::fmod is exact).
  double a = std::fmod(angle_deg, 360.0);
  if (a < 0) a += 360.0;
  double c;
  double s;
  if (a == 0.0) {
    c = 1, s = 0;
  } else if (a == 90.0) {
    c = 0, s = 1;
  } else if (a == 180.0) {
    c = -1, s = 0;
  } else if (a == 270.0) {
    c = 0, s = -1;
  } else {
    const double r = a * (3.14159265358979323846 / 180.0);
    c = std::cos(r);
    s = std::sin(r);
  }
  const double cx = static_cast<double>(w - 1) / 2.0;
  const double cy = static_cast<double>(h - 1) / 2.0;
  // With y pointing down, a counter-clockwise turn as displayed sends an offset (dx, dy) from the
  // centre to (c dx + s dy, -s dx + c dy) (cv::getRotationMatrix2D's matrix). The inverse,
  // output -> source, is its transpose.
  Affine m;
  m.m[0] = c;
  m.m[1] = -s;
  m.m[2] = cx - c * cx + s * cy;
  m.m[3] = s;
  m.m[4] = c;
  m.m[5] = cy - s * cx - c * cy;
  return m;
}

Affine FlipInverse(bool horizontal, bool vertical, int64_t h, int64_t w) {
  Affine m;
  m.m[0] = horizontal ? -1.0 : 1.0;
  m.m[1] = 0;
  m.m[2] = horizontal ? static_cast<double>(w - 1) : 0.0;
  m.m[3] = 0;
  m.m[4] = vertical ? -1.0 : 1.0;
  m.m[5] = vertical ? static_cast<double>(h - 1) : 0.0;
  return m;
}

namespace {

// Results of this size and more are written with non-temporal stores (WarpAffineCpu).
constexpr uint64_t kStreamedMinBytes = uint64_t{16} << 20;
// Smallest task worth a hand-off to another thread.
constexpr int64_t kMinTaskPixels = 16384;
// Output columns per block (see BilinearRows).
constexpr int64_t kBlockCols = 64;

// Loading widens binary16 through the table (one load instead of a branchy decode per tap); the
// blend type and the rounding back are the shared ones (sampling.h).
template <typename T>
struct Pixel {
  using Acc = typename BlendAccumulator<T>::Type;
  static Acc Load(T v, const float*) { return static_cast<Acc>(v); }
  static T Store(Acc a) { return RoundBlend<T>(a); }
};

template <>
struct Pixel<Half> {
  using Acc = float;
  static float Load(Half v, const float* table) { return table[v.bits]; }
  static Half Store(float a) { return RoundBlend<Half>(a); }
};

// A sample's source geometry (h, w, c: every source bound and border) and the output it is
// warped into (out_w: every loop over output columns and the output row pitch; out_h: where the
// output ends, for the prefetch of the next band only).
struct Geometry {
  int64_t h;
  int64_t w;
  int64_t c;
  int64_t out_h;
  int64_t out_w;
};

// Fills the buffers with the source position of output pixels [x_begin, x_end) of row y
// (SourceX, SourceY: sampling.h).
inline void RowPositions(const Affine& a, int64_t y, int64_t x_begin, int64_t x_end, double* sx,
                         double* sy) {
  // A local copy, which the stores below cannot alias, lets the compiler keep the coefficients
  // (and m1 * y, m4 * y) in registers across the loop.
  const Affine m = a;
  const double yd = static_cast<double>(y);
  for (int64_t x = x_begin; x < x_end; ++x) {
    const double xd = static_cast<double>(x);
    sx[x - x_begin] = SourceX(m.m, xd, yd);
    sy[x - x_begin] = SourceY(m.m, xd, yd);
  }
}

// The order in which a band's output pixels are visited. Every output pixel depends on its own
// position alone, so the order changes no value; it decides which way the source is read. Each
// output row of a block reads a slanted strip of source rows, and the next output row reads a
// strip shifted by (m1, m4), mostly lines already in L1 plus a few new ones at its leading edge.
// Walking so that source addresses increase both along a row and from one row to the next, as an
// unmirrored small rotation does, is the fast way here: a mirrored rotation walked left to right
// reads the source backwards and, once the batch no longer fit in L2, ran 1.2-1.6x slower than
// the unmirrored one with the same instruction and L1-miss counts (the hardware prefetchers
// follow ascending streams better). Walked forwards it runs within a few percent of it.
struct Walk {
  bool reverse_x;  // blocks, and columns inside a block, from right to left
  bool reverse_y;  // rows of the band from bottom to top
};
inline Walk ForwardWalk(const Affine& a, int64_t w) {
  // Change of the source offset (in pixels; a source row is w pixels) per output step.
  const double wd = static_cast<double>(w);
  const double along_x = a.m[3] * wd + a.m[0];
  const double along_y = a.m[4] * wd + a.m[1];
  return Walk{along_x < 0, along_y < 0};
}

// The bilinear pixel at top-left tap (ix, iy) with weights `wt`, each tap resolved through the
// border: the path of pixels whose taps are not all inside the image.
template <typename T>
inline void BorderBilinear(const T* src, const Geometry& g, int64_t cn, int64_t ix, int64_t iy,
                           const BilinearWeights<typename Pixel<T>::Acc>& wt, Border border,
                           T fill, const float* table, T* out) {
  using P = Pixel<T>;
  using Acc = typename P::Acc;
  const int64_t x0 = ResolveBorder(ix, g.w, border);
  const int64_t x1 = ResolveBorder(ix + 1, g.w, border);
  const int64_t y0 = ResolveBorder(iy, g.h, border);
  const int64_t y1 = ResolveBorder(iy + 1, g.h, border);
  const T* t00 = (x0 < 0 || y0 < 0) ? nullptr : src + (y0 * g.w + x0) * cn;
  const T* t01 = (x1 < 0 || y0 < 0) ? nullptr : src + (y0 * g.w + x1) * cn;
  const T* t10 = (x0 < 0 || y1 < 0) ? nullptr : src + (y1 * g.w + x0) * cn;
  const T* t11 = (x1 < 0 || y1 < 0) ? nullptr : src + (y1 * g.w + x1) * cn;
  const Acc f = P::Load(fill, table);
  for (int64_t c = 0; c < cn; ++c) {
    const Acc v00 = t00 ? P::Load(t00[c], table) : f;
    const Acc v01 = t01 ? P::Load(t01[c], table) : f;
    const Acc v10 = t10 ? P::Load(t10[c], table) : f;
    const Acc v11 = t11 ? P::Load(t11[c], table) : f;
    out[c] = P::Store(BlendTaps(v00, v01, v10, v11, wt));
  }
}

// The nearest pixel for source position (sx, sy), resolved through the border; null when it is
// the fill value.
template <typename T>
inline const T* NearestTap(const T* src, const Geometry& g, int64_t cn, double sx, double sy,
                           Border border) {
  if (IsFarPosition(sx, sy)) return nullptr;
  int64_t ix = NearestIndex(sx);
  int64_t iy = NearestIndex(sy);
  if (static_cast<uint64_t>(ix) >= static_cast<uint64_t>(g.w) ||
      static_cast<uint64_t>(iy) >= static_cast<uint64_t>(g.h)) {
    ix = ResolveBorder(ix, g.w, border);
    iy = ResolveBorder(iy, g.h, border);
  }
  return (ix >= 0 && iy >= 0) ? src + (iy * g.w + ix) * cn : nullptr;
}

// kC > 0: channel count known at compile time; kC == 0: g.c at run time.
template <typename T, int kC>
void BilinearRows(const T* src, T* dst, const Geometry& g, const Affine& a, int64_t y_begin,
                  int64_t y_end, Border border, T fill, double* sxs, double* sys) {
  using P = Pixel<T>;
  using Acc = typename P::Acc;
  const float* table = HalfToFloatTable();
  const int64_t cn = kC > 0 ? kC : g.c;
  const int64_t out_row = g.out_w * cn;  // output row pitch
  // Column blocks: the source footprint of a block of rows stays in L1 from one row to the
  // next, whatever the angle or mirror (a full row of a rotated image spans many source rows).
  // Blocks, rows and pixels are visited in the order that walks the source forwards (see Walk).
  const Walk walk = ForwardWalk(a, g.w);
  const int64_t blocks = (g.out_w + kBlockCols - 1) / kBlockCols;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t x0 = (walk.reverse_x ? blocks - 1 - b : b) * kBlockCols;
    const int64_t x1 = std::min(g.out_w, x0 + kBlockCols);
    const int64_t cols = x1 - x0;
    for (int64_t k = 0; k < y_end - y_begin; ++k) {
      const int64_t y = walk.reverse_y ? y_end - 1 - k : y_begin + k;
      RowPositions(a, y, x0, x1, sxs, sys);
      // Column x0 + j, j from 0 up or from cols - 1 down.
      const int64_t dj = walk.reverse_x ? -1 : 1;
      const int64_t step = dj * cn;
      int64_t j = walk.reverse_x ? cols - 1 : 0;
      T* out = dst + (y - y_begin) * out_row + (x0 + j) * cn;
      for (int64_t i = 0; i < cols; ++i, j += dj, out += step) {
        const double sx = sxs[j];
        const double sy = sys[j];
        if (IsFarPosition(sx, sy)) {
          for (int64_t c = 0; c < cn; ++c) out[c] = fill;
          continue;
        }
        const int64_t ix = FloorToInt(sx);
        const int64_t iy = FloorToInt(sy);
        const double fx = sx - static_cast<double>(ix);
        const double fy = sy - static_cast<double>(iy);
        const BilinearWeights<Acc> wt = MakeBilinearWeights<Acc>(fx, fy);
        if (static_cast<uint64_t>(ix) < static_cast<uint64_t>(g.w - 1) &&
            static_cast<uint64_t>(iy) < static_cast<uint64_t>(g.h - 1)) {
          const T* p0 = src + (iy * g.w + ix) * cn;
          const T* p1 = p0 + g.w * cn;  // the source row below
          for (int64_t c = 0; c < cn; ++c) {
            out[c] = P::Store(BlendTaps(P::Load(p0[c], table), P::Load(p0[c + cn], table),
                                        P::Load(p1[c], table), P::Load(p1[c + cn], table), wt));
          }
          continue;
        }
        BorderBilinear<T>(src, g, cn, ix, iy, wt, border, fill, table, out);
      }
    }
  }
}

template <typename T, int kC>
void NearestRows(const T* src, T* dst, const Geometry& g, const Affine& a, int64_t y_begin,
                 int64_t y_end, Border border, T fill, double* sxs, double* sys) {
  const int64_t cn = kC > 0 ? kC : g.c;
  const int64_t out_row = g.out_w * cn;  // output row pitch
  // Column blocks: the source footprint of a block of rows stays in L1 from one row to the
  // next, whatever the angle or mirror (a full row of a rotated image spans many source rows).
  // Blocks, rows and pixels are visited in the order that walks the source forwards (see Walk).
  const Walk walk = ForwardWalk(a, g.w);
  const int64_t blocks = (g.out_w + kBlockCols - 1) / kBlockCols;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t x0 = (walk.reverse_x ? blocks - 1 - b : b) * kBlockCols;
    const int64_t x1 = std::min(g.out_w, x0 + kBlockCols);
    const int64_t cols = x1 - x0;
    for (int64_t k = 0; k < y_end - y_begin; ++k) {
      const int64_t y = walk.reverse_y ? y_end - 1 - k : y_begin + k;
      RowPositions(a, y, x0, x1, sxs, sys);
      // Column x0 + j, j from 0 up or from cols - 1 down.
      const int64_t dj = walk.reverse_x ? -1 : 1;
      const int64_t step = dj * cn;
      int64_t j = walk.reverse_x ? cols - 1 : 0;
      T* out = dst + (y - y_begin) * out_row + (x0 + j) * cn;
      for (int64_t i = 0; i < cols; ++i, j += dj, out += step) {
        const double sx = sxs[j];
        const double sy = sys[j];
        const T* p = NearestTap(src, g, cn, sx, sy, border);
        if (p != nullptr) {
          for (int64_t c = 0; c < cn; ++c) out[c] = p[c];
        } else {
          for (int64_t c = 0; c < cn; ++c) out[c] = fill;
        }
      }
    }
  }
}

// ---- AVX2 row loops -----------------------------------------------------------------------------
//
// The same values as the portable loops above, computed more pixels at a time. Per output row of
// a column block, one pass over the block computes every pixel's source position with the same
// double operations in the same order (four pixels per instruction), its four weights (rounded
// to float, as MakeBilinearWeights does), its taps' offsets, and how the pixel is to be
// finished: from taps that are inside the image (or clamped to it, for the edge border), from
// fill-valued taps only (constant border, all taps outside), as the fill value (a far
// position), or one pixel at a time through the portable code (other borders, or a vector load
// that would pass the sample's end). The blend then takes either a pixel's channels in one
// 4-lane vector (3 or 4 channels: lane c is channel c) or eight one-channel pixels in one 8-lane
// vector (taps gathered), each lane blended with the same float multiplies and adds in the same
// order as BlendTaps, so every lane rounds as the scalar code does (IEEE, no fused multiply-add,
// default rounding).
#if defined(__x86_64__)

#define TP_AVX2 __attribute__((target("avx2"), always_inline)) inline

// How a pixel is finished (RowTaps::how).
enum : int32_t {
  kByTaps = -1,    // blend (or copy, nearest) the taps at o00..o11
  kOnePixel = 0,   // the portable per-pixel code
  kFillTaps = 1,   // bilinear blend of four fill-valued taps (constant border)
  kFillValue = 2,  // the fill value itself (far position; nearest tap outside, constant border)
};

// What one pass computes for the pixels of one block row (j = 0 .. kBlockCols - 1).
struct RowTaps {
  // Element offsets in the sample of the taps (x0, y0), (x0 + 1, y0), (x0, y0 + 1),
  // (x0 + 1, y0 + 1); nearest uses o00 alone. Meaningful where how == kByTaps.
  alignas(32) int32_t o00[kBlockCols];
  alignas(32) int32_t o01[kBlockCols];
  alignas(32) int32_t o10[kBlockCols];
  alignas(32) int32_t o11[kBlockCols];
  alignas(32) float w00[kBlockCols];  // bilinear weights (MakeBilinearWeights<float>)
  alignas(32) float w01[kBlockCols];
  alignas(32) float w10[kBlockCols];
  alignas(32) float w11[kBlockCols];
  alignas(32) int32_t how[kBlockCols];
};
static_assert(kBlockCols % 8 == 0, "the passes fill whole groups of eight pixels");

// The constants of a pass over one sample.
struct PassConstants {
  __m256d m0, m2, m3, m5;  // map coefficients
  __m256d iota;            // 0, 1, 2, 3
  __m256d zero, one, half, far;
  __m256d w, h, last_x, last_y;  // w, h, w - 1, h - 1
  __m128i row;                   // elements per row: w * c
  __m128i c;
  __m128i bound;  // a tap offset below this leaves room for the widest vector load from it
  Border border;
};

TP_AVX2 PassConstants MakePassConstants(const Affine& a, const Geometry& g, Border border,
                                        int64_t reach) {
  PassConstants k;
  k.m0 = _mm256_set1_pd(a.m[0]);
  k.m2 = _mm256_set1_pd(a.m[2]);
  k.m3 = _mm256_set1_pd(a.m[3]);
  k.m5 = _mm256_set1_pd(a.m[5]);
  k.iota = _mm256_setr_pd(0, 1, 2, 3);
  k.zero = _mm256_setzero_pd();
  k.one = _mm256_set1_pd(1.0);
  k.half = _mm256_set1_pd(0.5);
  k.far = _mm256_set1_pd(4503599627370496.0);  // 2^52, IsFarPosition's bound
  k.w = _mm256_set1_pd(static_cast<double>(g.w));
  k.h = _mm256_set1_pd(static_cast<double>(g.h));
  k.last_x = _mm256_set1_pd(static_cast<double>(g.w - 1));
  k.last_y = _mm256_set1_pd(static_cast<double>(g.h - 1));
  k.row = _mm_set1_epi32(static_cast<int32_t>(g.w * g.c));
  k.c = _mm_set1_epi32(static_cast<int32_t>(g.c));
  // offset + reach <= elements  <=>  offset < elements - reach + 1
  k.bound = _mm_set1_epi32(static_cast<int32_t>(g.h * g.w * g.c - reach + 1));
  k.border = border;
  return k;
}

// Source positions of output pixels x .. x + 3 of a row whose m[1] * y and m[4] * y are given,
// as RowPositions computes them (x + k is below 2^53, so xd + k is exact).
TP_AVX2 void PositionsAvx2(const PassConstants& k, double xd, __m256d m1y, __m256d m4y,
                           __m256d* sx, __m256d* sy) {
  const __m256d x = _mm256_add_pd(_mm256_set1_pd(xd), k.iota);
  *sx = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(k.m0, x), m1y), k.m2);
  *sy = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(k.m3, x), m4y), k.m5);
}

// A 4 x 64-bit lane mask as 4 x 32-bit lanes (all ones or zero).
TP_AVX2 __m128i Narrow(__m256d mask) {
  const __m256 m = _mm256_castpd_ps(mask);
  return _mm_castps_si128(_mm_shuffle_ps(_mm256_castps256_ps128(m),
                                         _mm256_extractf128_ps(m, 1), _MM_SHUFFLE(2, 0, 2, 0)));
}

// (v clamped to [0, hi]) as int32; NaN gives 0 (maxpd returns its second operand then).
TP_AVX2 __m128i ClampToIndex(__m256d v, __m256d zero, __m256d hi) {
  return _mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(v, zero), hi));
}

// Whether |sx| and |sy| are below 2^52 (false for NaN): not IsFarPosition.
TP_AVX2 __m256d NearMask(const PassConstants& k, __m256d sx, __m256d sy) {
  const __m256d abs = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffff));
  return _mm256_and_pd(_mm256_cmp_pd(_mm256_and_pd(sx, abs), k.far, _CMP_LT_OQ),
                       _mm256_cmp_pd(_mm256_and_pd(sy, abs), k.far, _CMP_LT_OQ));
}

// `how` from the masks: far -> kFillValue; taps usable (inside, or clamped by the edge border)
// and every vector load in bounds -> kByTaps; `fill_taps` -> kFillTaps; else kOnePixel.
TP_AVX2 __m128i How(__m128i near, __m128i usable, __m128i safe, __m128i fill_taps,
                    __m128i fill_value) {
  const __m128i by_taps = _mm_and_si128(usable, safe);
  __m128i how = _mm_and_si128(fill_taps, _mm_set1_epi32(kFillTaps));
  how = _mm_or_si128(_mm_andnot_si128(by_taps, how), by_taps);  // kByTaps is -1: all ones
  how = _mm_blendv_epi8(how, _mm_set1_epi32(kFillValue), fill_value);
  return _mm_blendv_epi8(_mm_set1_epi32(kFillValue), how, near);
}

// kC: the channel count (0: any); kBorder: the border, or kAnyBorder for the modes the pass
// leaves to the per-pixel code (the reflections and wrap).
constexpr int kAnyBorder = -1;

// Tap column x (int32 lanes) as an element offset within its row.
template <int kC>
TP_AVX2 __m128i ColumnOffset(__m128i x, const PassConstants& k) {
  if constexpr (kC == 1) {
    return x;
  } else if constexpr (kC == 3) {
    return _mm_add_epi32(_mm_slli_epi32(x, 1), x);
  } else if constexpr (kC == 4) {
    return _mm_slli_epi32(x, 2);
  } else {
    return _mm_mullo_epi32(x, k.c);
  }
}

// Floors (with -0 made +0, as FloorToInt's integer is, so that fx = sx - floor keeps the scalar
// code's sign of zero) and the four bilinear weights of four pixels, as MakeBilinearWeights.
struct Weights4 {
  __m256d fl_x, fl_y;
  __m128 w00, w01, w10, w11;
};
TP_AVX2 Weights4 BilinearWeights4(const PassConstants& k, __m256d sx, __m256d sy) {
  Weights4 r;
  r.fl_x = _mm256_add_pd(_mm256_floor_pd(sx), k.zero);
  r.fl_y = _mm256_add_pd(_mm256_floor_pd(sy), k.zero);
  const __m256d fx = _mm256_sub_pd(sx, r.fl_x);
  const __m256d fy = _mm256_sub_pd(sy, r.fl_y);
  const __m256d gx = _mm256_sub_pd(k.one, fx);
  const __m256d gy = _mm256_sub_pd(k.one, fy);
  r.w00 = _mm256_cvtpd_ps(_mm256_mul_pd(gx, gy));
  r.w01 = _mm256_cvtpd_ps(_mm256_mul_pd(fx, gy));
  r.w10 = _mm256_cvtpd_ps(_mm256_mul_pd(gx, fy));
  r.w11 = _mm256_cvtpd_ps(_mm256_mul_pd(fx, fy));
  return r;
}

template <int kC, int kBorder>
TP_AVX2 void BilinearTapsAvx2(const PassConstants& k, int64_t y, int64_t x0, int64_t cols,
                              const Affine& a, RowTaps* t) {
  const double yd = static_cast<double>(y);
  const __m256d m1y = _mm256_set1_pd(a.m[1] * yd);
  const __m256d m4y = _mm256_set1_pd(a.m[4] * yd);
  constexpr bool edge = kBorder == static_cast<int>(Border::kEdge);
  constexpr bool constant = kBorder == static_cast<int>(Border::kConstant);
  for (int64_t j = 0; j < cols; j += 4) {
    __m256d sx;
    __m256d sy;
    PositionsAvx2(k, static_cast<double>(x0 + j), m1y, m4y, &sx, &sy);
    const Weights4 wt = BilinearWeights4(k, sx, sy);
    const __m256d fl_x = wt.fl_x;
    const __m256d fl_y = wt.fl_y;
    _mm_store_ps(t->w00 + j, wt.w00);
    _mm_store_ps(t->w01 + j, wt.w01);
    _mm_store_ps(t->w10 + j, wt.w10);
    _mm_store_ps(t->w11 + j, wt.w11);
    // Tap columns and rows clamped to the image: the edge border's taps, and for every other
    // border the taps themselves wherever all four are inside.
    const __m128i cx0 = ClampToIndex(fl_x, k.zero, k.last_x);
    const __m128i cx1 = ClampToIndex(_mm256_add_pd(fl_x, k.one), k.zero, k.last_x);
    const __m128i ry0 = _mm_mullo_epi32(ClampToIndex(fl_y, k.zero, k.last_y), k.row);
    const __m128i ry1 = _mm_mullo_epi32(ClampToIndex(_mm256_add_pd(fl_y, k.one), k.zero, k.last_y),
                                        k.row);
    const __m128i ox0 = ColumnOffset<kC>(cx0, k);
    const __m128i ox1 = ColumnOffset<kC>(cx1, k);
    const __m128i o11 = _mm_add_epi32(ry1, ox1);
    _mm_store_si128(reinterpret_cast<__m128i*>(t->o00 + j), _mm_add_epi32(ry0, ox0));
    _mm_store_si128(reinterpret_cast<__m128i*>(t->o01 + j), _mm_add_epi32(ry0, ox1));
    _mm_store_si128(reinterpret_cast<__m128i*>(t->o10 + j), _mm_add_epi32(ry1, ox0));
    _mm_store_si128(reinterpret_cast<__m128i*>(t->o11 + j), o11);
    const __m128i near = Narrow(NearMask(k, sx, sy));
    // o11 is the largest offset.
    const __m128i safe = _mm_cmpgt_epi32(k.bound, o11);
    __m128i usable;
    __m128i fill_taps = _mm_setzero_si128();
    if constexpr (edge) {
      usable = _mm_set1_epi32(-1);
    } else {
      // All four taps inside: 0 <= sx < w - 1 and 0 <= sy < h - 1 (the portable loop's test).
      usable = Narrow(_mm256_and_pd(
          _mm256_and_pd(_mm256_cmp_pd(sx, k.zero, _CMP_GE_OQ),
                        _mm256_cmp_pd(sx, k.last_x, _CMP_LT_OQ)),
          _mm256_and_pd(_mm256_cmp_pd(sy, k.zero, _CMP_GE_OQ),
                        _mm256_cmp_pd(sy, k.last_y, _CMP_LT_OQ))));
      if constexpr (constant) {
        // All four outside: floor(s) + 1 < 0 or floor(s) > n - 1, i.e. s < -1 or s >= n.
        const __m256d minus_one = _mm256_sub_pd(k.zero, k.one);
        fill_taps = Narrow(_mm256_or_pd(
            _mm256_or_pd(_mm256_cmp_pd(sx, minus_one, _CMP_LT_OQ),
                         _mm256_cmp_pd(sx, k.w, _CMP_GE_OQ)),
            _mm256_or_pd(_mm256_cmp_pd(sy, minus_one, _CMP_LT_OQ),
                         _mm256_cmp_pd(sy, k.h, _CMP_GE_OQ))));
      }
    }
    _mm_store_si128(reinterpret_cast<__m128i*>(t->how + j),
                    How(near, usable, safe, fill_taps, _mm_setzero_si128()));
  }
}

template <int kC, int kBorder>
TP_AVX2 void NearestTapsAvx2(const PassConstants& k, int64_t y, int64_t x0, int64_t cols,
                             const Affine& a, RowTaps* t) {
  const double yd = static_cast<double>(y);
  const __m256d m1y = _mm256_set1_pd(a.m[1] * yd);
  const __m256d m4y = _mm256_set1_pd(a.m[4] * yd);
  constexpr bool edge = kBorder == static_cast<int>(Border::kEdge);
  constexpr bool constant = kBorder == static_cast<int>(Border::kConstant);
  for (int64_t j = 0; j < cols; j += 4) {
    __m256d sx;
    __m256d sy;
    PositionsAvx2(k, static_cast<double>(x0 + j), m1y, m4y, &sx, &sy);
    // NearestIndex: floor(s + 0.5); inside when 0 <= s + 0.5 < n.
    const __m256d px = _mm256_floor_pd(_mm256_add_pd(sx, k.half));
    const __m256d py = _mm256_floor_pd(_mm256_add_pd(sy, k.half));
    const __m128i o = _mm_add_epi32(
        _mm_mullo_epi32(ClampToIndex(py, k.zero, k.last_y), k.row),
        ColumnOffset<kC>(ClampToIndex(px, k.zero, k.last_x), k));
    _mm_store_si128(reinterpret_cast<__m128i*>(t->o00 + j), o);
    const __m128i near = Narrow(NearMask(k, sx, sy));
    const __m128i safe = _mm_cmpgt_epi32(k.bound, o);
    __m128i usable;
    __m128i fill_value = _mm_setzero_si128();
    if constexpr (edge) {
      usable = _mm_set1_epi32(-1);
    } else {
      const __m256d inside = _mm256_and_pd(
          _mm256_and_pd(_mm256_cmp_pd(px, k.zero, _CMP_GE_OQ), _mm256_cmp_pd(px, k.w, _CMP_LT_OQ)),
          _mm256_and_pd(_mm256_cmp_pd(py, k.zero, _CMP_GE_OQ), _mm256_cmp_pd(py, k.h, _CMP_LT_OQ)));
      usable = Narrow(inside);
      if constexpr (constant) fill_value = _mm_andnot_si128(usable, _mm_set1_epi32(-1));
    }
    _mm_store_si128(reinterpret_cast<__m128i*>(t->how + j),
                    How(near, usable, safe, _mm_setzero_si128(), fill_value));
  }
}

// Source bytes a tile of output pixels reads, fetched ahead of it. A batch larger than the caches
// is read from memory, and a rotated tile reads a slanted strip whose lines the hardware
// prefetchers do not anticipate: without this, the 64-image W2 batch ran at 0.6 of the speed of
// one cache-resident image, stalled on the taps' loads. The footprint of output rectangle
// [x0, x1) x [ya, yb) is the bounding box of its four corners' source positions (an affine map
// sends the rectangle to a parallelogram), widened by the taps and clipped to the image. Only a
// hint: positions outside the image are resolved by the border code, which this does not change.
class TilePrefetch {
 public:
  // Plans the footprint of the tile; `rows_to_spread` calls of Step() issue it.
  void Plan(const Affine& a, const Geometry& g, size_t pixel_bytes, int64_t x0, int64_t x1,
            int64_t ya, int64_t yb, int64_t rows_to_spread) {
    rows_ = 0;
    double lo_x = INFINITY, hi_x = -INFINITY, lo_y = INFINITY, hi_y = -INFINITY;
    for (const int64_t x : {x0, x1 - 1}) {
      for (const int64_t y : {ya, yb - 1}) {
        const double xd = static_cast<double>(x), yd = static_cast<double>(y);
        const double sx = SourceX(a.m, xd, yd), sy = SourceY(a.m, xd, yd);
        lo_x = std::min(lo_x, sx), hi_x = std::max(hi_x, sx);
        lo_y = std::min(lo_y, sy), hi_y = std::max(hi_y, sy);
      }
    }
    // Not finite, or entirely outside the image: nothing worth fetching.
    if (!(lo_x <= hi_x && lo_y <= hi_y) || hi_x < -1 || hi_y < -1 ||
        lo_x > static_cast<double>(g.w) || lo_y > static_cast<double>(g.h)) {
      return;
    }
    const int64_t c0 = std::max<int64_t>(0, static_cast<int64_t>(std::max(lo_x, -1.0)));
    const int64_t c1 = std::min<int64_t>(g.w - 1, static_cast<int64_t>(std::min(hi_x, 1e15)) + 2);
    const int64_t r0 = std::max<int64_t>(0, static_cast<int64_t>(std::max(lo_y, -1.0)));
    const int64_t r1 = std::min<int64_t>(g.h - 1, static_cast<int64_t>(std::min(hi_y, 1e15)) + 2);
    if (c0 > c1 || r0 > r1) return;
    const uint64_t row_bytes = static_cast<uint64_t>(c1 - c0 + 1) * pixel_bytes;
    // A strong minification reads a footprint far larger than the caches: skip it.
    if (row_bytes * static_cast<uint64_t>(r1 - r0 + 1) > kMaxBytes) return;
    row_begin_ = static_cast<uint64_t>(c0) * pixel_bytes;
    row_bytes_ = row_bytes;
    pitch_ = static_cast<uint64_t>(g.w) * pixel_bytes;
    next_row_ = r0;
    rows_ = r1 - r0 + 1;
    per_step_ = (rows_ + rows_to_spread - 1) / std::max<int64_t>(1, rows_to_spread);
  }

  // Plans nothing.
  void Clear() { rows_ = 0; }

  // Issues the next share of the planned rows.
  void Step(const void* image) {
    const auto* base = static_cast<const char*>(image);
    for (int64_t k = 0; k < per_step_ && rows_ > 0; ++k, --rows_, ++next_row_) {
      const char* p = base + static_cast<uint64_t>(next_row_) * pitch_ + row_begin_;
      const char* end = p + row_bytes_;
      for (; p < end; p += 64) __builtin_prefetch(p, 0, 3);
      __builtin_prefetch(end - 1, 0, 3);
    }
  }

 private:
  static constexpr uint64_t kMaxBytes = 512 * 1024;
  uint64_t row_begin_ = 0;
  uint64_t row_bytes_ = 0;
  uint64_t pitch_ = 0;
  int64_t next_row_ = 0;
  int64_t rows_ = 0;
  int64_t per_step_ = 0;
};

// The tile after block b (in walk order) of band [y_begin, y_end) (output rows and blocks): the
// next block, or after the last one the first block of the band below, which this thread usually
// runs next, unless the band ends the output (g.out_h).
inline void PlanNextTile(TilePrefetch* prefetch, const Affine& a, const Geometry& g,
                         size_t pixel_bytes, const Walk& walk, int64_t blocks, int64_t b,
                         int64_t y_begin, int64_t y_end) {
  int64_t next = b + 1;
  int64_t ya = y_begin, yb = y_end;
  if (next == blocks) {
    next = 0;
    ya = y_end;
    yb = std::min(g.out_h, y_end + (y_end - y_begin));
  }
  if (ya >= yb) {  // the band is the image's last: nothing to fetch
    prefetch->Clear();
    return;
  }
  const int64_t x0 = (walk.reverse_x ? blocks - 1 - next : next) * kBlockCols;
  const int64_t x1 = std::min(g.out_w, x0 + kBlockCols);
  prefetch->Plan(a, g, pixel_bytes, x0, x1, ya, yb, y_end - y_begin);
}



// Up to four channels of one pixel as floats in lanes 0..3. Reads four elements from p (whole
// pixel or not): the caller makes sure they exist.
TP_AVX2 __m128 Load4(const float* p) { return _mm_loadu_ps(p); }
TP_AVX2 __m128 Load4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(v)));
}

// Stores lanes 0 .. kC - 1 of a blended pixel as RoundBlend<T> does.
template <int kC>
TP_AVX2 void Store4(__m128 v, float* out) {
  if constexpr (kC == 4) {
    _mm_storeu_ps(out, v);
  } else {
    _mm_storel_pi(reinterpret_cast<__m64*>(out), v);
    _mm_store_ss(out + 2, _mm_movehl_ps(v, v));
  }
}
template <int kC>
TP_AVX2 void Store4(__m128 v, uint8_t* out) {
  // SaturateU8: clamp to [0, 255] (a blend of uint8 taps is never NaN), then round to nearest
  // even, which cvtps2dq does in the default rounding mode; the packs cannot saturate further.
  v = _mm_min_ps(_mm_max_ps(v, _mm_setzero_ps()), _mm_set1_ps(255.0f));
  __m128i i = _mm_cvtps_epi32(v);
  i = _mm_packus_epi16(_mm_packus_epi32(i, i), i);
  const uint32_t bytes = static_cast<uint32_t>(_mm_cvtsi128_si32(i));
  if constexpr (kC == 4) {
    std::memcpy(out, &bytes, 4);
  } else {
    const uint16_t low = static_cast<uint16_t>(bytes);
    std::memcpy(out, &low, 2);
    out[2] = static_cast<uint8_t>(bytes >> 16);
  }
}

// The four-tap blend of pixel j's 3 or 4 channels, BlendTaps lane by lane.
TP_AVX2 __m128 Blend4(__m128 v00, __m128 v01, __m128 v10, __m128 v11, const RowTaps* t,
                      int64_t j) {
  __m128 v = _mm_mul_ps(v00, _mm_broadcast_ss(t->w00 + j));
  v = _mm_add_ps(v, _mm_mul_ps(v01, _mm_broadcast_ss(t->w01 + j)));
  v = _mm_add_ps(v, _mm_mul_ps(v10, _mm_broadcast_ss(t->w10 + j)));
  return _mm_add_ps(v, _mm_mul_ps(v11, _mm_broadcast_ss(t->w11 + j)));
}

// Eight one-channel pixels j .. j + 7, blended lane by lane. (j need not be a multiple of 8: a
// reversed walk starts its groups at the block's right end.)
TP_AVX2 __m256 Blend8(__m256 v00, __m256 v01, __m256 v10, __m256 v11, const RowTaps* t,
                      int64_t j) {
  __m256 v = _mm256_mul_ps(v00, _mm256_loadu_ps(t->w00 + j));
  v = _mm256_add_ps(v, _mm256_mul_ps(v01, _mm256_loadu_ps(t->w01 + j)));
  v = _mm256_add_ps(v, _mm256_mul_ps(v10, _mm256_loadu_ps(t->w10 + j)));
  return _mm256_add_ps(v, _mm256_mul_ps(v11, _mm256_loadu_ps(t->w11 + j)));
}
TP_AVX2 __m256i Offsets8(const int32_t* o, int64_t j) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o + j));
}
// Eight taps, one per pixel, as floats: a gather of floats, or of the 4-byte words that start at
// uint8 taps (their first byte).
TP_AVX2 __m256 Gather8(const float* src, __m256i off) { return _mm256_i32gather_ps(src, off, 4); }
TP_AVX2 __m256 Gather8(const uint8_t* src, __m256i off) {
  const __m256i words = _mm256_i32gather_epi32(reinterpret_cast<const int*>(src), off, 1);
  return _mm256_cvtepi32_ps(_mm256_and_si256(words, _mm256_set1_epi32(0xff)));
}
// Byte kShift / 8 of each 32-bit lane, as a float.
template <int kShift>
TP_AVX2 __m256 ByteLane(__m256i words) {
  return _mm256_cvtepi32_ps(
      _mm256_and_si256(_mm256_srli_epi32(words, kShift), _mm256_set1_epi32(0xff)));
}

// Eight integers in [0, 255] as bytes.
TP_AVX2 void StoreBytes8(__m256i v, uint8_t* out) {
  const __m128i words =
      _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(words, words));
}
TP_AVX2 void Store8(__m256 v, float* out) { _mm256_storeu_ps(out, v); }
TP_AVX2 void Store8(__m256 v, uint8_t* out) {
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
  StoreBytes8(_mm256_cvtps_epi32(v), out);
}

// Whether pixels j .. j + 7 are all finished the way `how` says.
TP_AVX2 bool All8(const RowTaps* t, int64_t j, int32_t how) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t->how + j));
  return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(h, _mm256_set1_epi32(how)))) ==
         0xff;
}

// Visits the columns of a block row in walk order: `row.Eight(j)` for each run of eight pixels
// j .. j + 7 that it takes whole (when kGroups; false: one at a time), `row.One(j)` for every
// other column.
template <bool kGroups, typename Row>
TP_AVX2 void VisitColumns(int64_t cols, bool reverse, const Row& row) {
  if (!reverse) {
    int64_t j = 0;
    if constexpr (kGroups) {
      for (; j + 8 <= cols; j += 8) {
        if (!row.Eight(j)) {
          for (int64_t k = j; k < j + 8; ++k) row.One(k);
        }
      }
    }
    for (; j < cols; ++j) row.One(j);
  } else {
    int64_t j = cols;
    if constexpr (kGroups) {
      for (; j >= 8; j -= 8) {
        if (!row.Eight(j - 8)) {
          for (int64_t k = j - 1; k >= j - 8; --k) row.One(k);
        }
      }
    }
    for (; j > 0; --j) row.One(j - 1);
  }
}

// Eight doubles (two halves) limited to [lo, hi] and converted to int32.
TP_AVX2 __m256i LimitedToInt(__m256d v0, __m256d v1, __m256d lo, __m256d hi) {
  return _mm256_set_m128i(_mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(v1, lo), hi)),
                          _mm256_cvttpd_epi32(_mm256_min_pd(_mm256_max_pd(v0, lo), hi)));
}

// One output row of a column block, bilinear (T is float or uint8_t, kC 1, 3 or 4).
template <typename T, int kC>
struct BilinearRow {
  using P = Pixel<T>;
  using Acc = typename P::Acc;
  static constexpr int64_t cn = kC;
  const T* src;
  const Geometry& g;
  const Affine& a;
  Border border;
  T fill;
  const float* table;
  const RowTaps* t;
  int64_t x0;  // the block's first column
  int64_t y;
  T* out_row;  // the block row's first pixel

  // One-channel rows with the edge border, the commonest case of a rotated image: positions,
  // weights and clamped taps of eight pixels computed and blended at once, without the pass's
  // arrays. Writes the row and returns true unless the row holds a far position or a tap too
  // close to the sample's end for the gathers; then it returns false, having written some pixels
  // or none, and the caller runs the general pass and visit over the whole row.
  TP_AVX2 bool FusedRow(const PassConstants& k, int64_t cols, bool reverse, T* out) const {
    if constexpr (kC != 1) {
      return false;
    } else {
      if (border != Border::kEdge || cols % 8 != 0) return false;
      const double yd = static_cast<double>(y);
      // Positions are affine along the row: if both ends are well inside (-2^51, 2^51), so is
      // every pixel between, and none is far.
      for (const int64_t x : {x0, x0 + cols - 1}) {
        const double xd = static_cast<double>(x);
        if (!(std::fabs(SourceX(a.m, xd, yd)) < 2251799813685248.0 &&
              std::fabs(SourceY(a.m, xd, yd)) < 2251799813685248.0)) {
          return false;
        }
      }
      const __m256d m1y = _mm256_set1_pd(a.m[1] * yd);
      const __m256d m4y = _mm256_set1_pd(a.m[4] * yd);
      const __m256d lo = _mm256_set1_pd(-1.0);
      const __m256d hi_x = k.w;
      const __m256d hi_y = k.h;
      const __m256i last_x = _mm256_set1_epi32(static_cast<int32_t>(g.w - 1));
      const __m256i last_y = _mm256_set1_epi32(static_cast<int32_t>(g.h - 1));
      const __m256i zero = _mm256_setzero_si256();
      const __m256i one = _mm256_set1_epi32(1);
      const __m256i row = _mm256_set1_epi32(static_cast<int32_t>(g.w));
      const __m256i bound = _mm256_set1_epi32(_mm_cvtsi128_si32(k.bound));
      for (int64_t n = 0; n < cols; n += 8) {
        const int64_t j = reverse ? cols - 8 - n : n;
        __m256d fl_x[2], fl_y[2];
        __m128 w[4][2];
        for (int h = 0; h < 2; ++h) {
          __m256d sx;
          __m256d sy;
          PositionsAvx2(k, static_cast<double>(x0 + j + 4 * h), m1y, m4y, &sx, &sy);
          const Weights4 wt = BilinearWeights4(k, sx, sy);
          fl_x[h] = wt.fl_x;
          fl_y[h] = wt.fl_y;
          w[0][h] = wt.w00;
          w[1][h] = wt.w01;
          w[2][h] = wt.w10;
          w[3][h] = wt.w11;
        }
        // Floors limited to [-1, n] in double (so that they convert exactly), then the taps
        // clamped to the image in int32: the edge border's ResolveBorder.
        const __m256i fx_i = LimitedToInt(fl_x[0], fl_x[1], lo, hi_x);
        const __m256i fy_i = LimitedToInt(fl_y[0], fl_y[1], lo, hi_y);
        const __m256i cx0 = _mm256_max_epi32(_mm256_min_epi32(fx_i, last_x), zero);
        const __m256i cx1 = _mm256_max_epi32(_mm256_min_epi32(_mm256_add_epi32(fx_i, one), last_x), zero);
        const __m256i ry0 =
            _mm256_mullo_epi32(_mm256_max_epi32(_mm256_min_epi32(fy_i, last_y), zero), row);
        const __m256i ry1 = _mm256_mullo_epi32(
            _mm256_max_epi32(_mm256_min_epi32(_mm256_add_epi32(fy_i, one), last_y), zero), row);
        const __m256i o00 = _mm256_add_epi32(ry0, cx0);
        const __m256i o01 = _mm256_add_epi32(ry0, cx1);
        const __m256i o10 = _mm256_add_epi32(ry1, cx0);
        const __m256i o11 = _mm256_add_epi32(ry1, cx1);
        if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(bound, o11))) != 0xff) {
          return false;
        }
        const __m256 w00 = _mm256_set_m128(w[0][1], w[0][0]);
        const __m256 w01 = _mm256_set_m128(w[1][1], w[1][0]);
        const __m256 w10 = _mm256_set_m128(w[2][1], w[2][0]);
        const __m256 w11 = _mm256_set_m128(w[3][1], w[3][0]);
        __m256 v00, v01, v10, v11;
        if constexpr (std::is_same_v<T, uint8_t>) {
          const __m256i adjacent = _mm256_and_si256(
              _mm256_cmpeq_epi32(o01, _mm256_add_epi32(o00, one)),
              _mm256_cmpeq_epi32(o11, _mm256_add_epi32(o10, one)));
          if (_mm256_movemask_ps(_mm256_castsi256_ps(adjacent)) == 0xff) {
            const __m256i top = _mm256_i32gather_epi32(reinterpret_cast<const int*>(src), o00, 1);
            const __m256i bottom =
                _mm256_i32gather_epi32(reinterpret_cast<const int*>(src), o10, 1);
            v00 = ByteLane<0>(top), v01 = ByteLane<8>(top);
            v10 = ByteLane<0>(bottom), v11 = ByteLane<8>(bottom);
          } else {
            v00 = Gather8(src, o00), v01 = Gather8(src, o01);
            v10 = Gather8(src, o10), v11 = Gather8(src, o11);
          }
        } else {
          v00 = Gather8(src, o00), v01 = Gather8(src, o01);
          v10 = Gather8(src, o10), v11 = Gather8(src, o11);
        }
        __m256 v = _mm256_mul_ps(v00, w00);
        v = _mm256_add_ps(v, _mm256_mul_ps(v01, w01));
        v = _mm256_add_ps(v, _mm256_mul_ps(v10, w10));
        Store8(_mm256_add_ps(v, _mm256_mul_ps(v11, w11)), out + j);
      }
      return true;
    }
  }

  // Eight one-channel pixels at once where all eight are kByTaps or all kFillTaps.
  TP_AVX2 bool Eight(int64_t j) const {
    if constexpr (kC == 1) {
      if (All8(t, j, kByTaps)) {
        const __m256i o00 = Offsets8(t->o00, j);
        const __m256i o10 = Offsets8(t->o10, j);
        if constexpr (std::is_same_v<T, uint8_t>) {
          // Where each pixel's right taps follow its left ones (all but edge-clamped columns),
          // one 4-byte word holds both: two gathers instead of four.
          const __m256i one = _mm256_set1_epi32(1);
          const __m256i adjacent = _mm256_and_si256(
              _mm256_cmpeq_epi32(Offsets8(t->o01, j), _mm256_add_epi32(o00, one)),
              _mm256_cmpeq_epi32(Offsets8(t->o11, j), _mm256_add_epi32(o10, one)));
          if (_mm256_movemask_ps(_mm256_castsi256_ps(adjacent)) == 0xff) {
            const __m256i top = _mm256_i32gather_epi32(reinterpret_cast<const int*>(src), o00, 1);
            const __m256i bottom =
                _mm256_i32gather_epi32(reinterpret_cast<const int*>(src), o10, 1);
            Store8(Blend8(ByteLane<0>(top), ByteLane<8>(top), ByteLane<0>(bottom),
                          ByteLane<8>(bottom), t, j),
                   out_row + j);
            return true;
          }
        }
        Store8(Blend8(Gather8(src, o00), Gather8(src, Offsets8(t->o01, j)), Gather8(src, o10),
                      Gather8(src, Offsets8(t->o11, j)), t, j),
               out_row + j);
        return true;
      }
      if (All8(t, j, kFillTaps)) {
        const __m256 f = _mm256_set1_ps(static_cast<float>(P::Load(fill, table)));
        Store8(Blend8(f, f, f, f, t, j), out_row + j);
        return true;
      }
    }
    return false;
  }

  TP_AVX2 void One(int64_t j) const {
    T* out = out_row + j * cn;
    const int32_t how = t->how[j];
    if (how == kByTaps || how == kFillTaps) {
      if constexpr (kC == 1) {
        const BilinearWeights<Acc> wt{t->w00[j], t->w01[j], t->w10[j], t->w11[j]};
        const Acc f = P::Load(fill, table);
        const bool taps = how == kByTaps;
        out[0] = P::Store(BlendTaps(taps ? P::Load(src[t->o00[j]], table) : f,
                                    taps ? P::Load(src[t->o01[j]], table) : f,
                                    taps ? P::Load(src[t->o10[j]], table) : f,
                                    taps ? P::Load(src[t->o11[j]], table) : f, wt));
      } else if (how == kByTaps) {
        Store4<kC>(Blend4(Load4(src + t->o00[j]), Load4(src + t->o01[j]), Load4(src + t->o10[j]),
                          Load4(src + t->o11[j]), t, j),
                   out);
      } else {
        const __m128 f = _mm_set1_ps(static_cast<float>(P::Load(fill, table)));
        Store4<kC>(Blend4(f, f, f, f, t, j), out);
      }
      return;
    }
    if (how == kFillValue) {
      for (int64_t c = 0; c < cn; ++c) out[c] = fill;
      return;
    }
    // The portable code, for a pixel of a border mode the pass does not resolve or whose vector
    // loads would pass the sample's end.
    const double xd = static_cast<double>(x0 + j), yd = static_cast<double>(y);
    const double sx = SourceX(a.m, xd, yd);
    const double sy = SourceY(a.m, xd, yd);
    const int64_t ix = FloorToInt(sx);
    const int64_t iy = FloorToInt(sy);
    const BilinearWeights<Acc> wt = MakeBilinearWeights<Acc>(sx - static_cast<double>(ix),
                                                             sy - static_cast<double>(iy));
    BorderBilinear<T>(src, g, cn, ix, iy, wt, border, fill, table, out);
  }
};

// One output row of a column block, nearest.
template <typename T, int kC>
struct NearestRow {
  static constexpr int64_t cn = kC;
  const T* src;
  const Geometry& g;
  const Affine& a;
  Border border;
  T fill;
  const RowTaps* t;
  int64_t x0;
  int64_t y;
  T* out_row;

  TP_AVX2 bool FusedRow(const PassConstants&, int64_t, bool, T*) const { return false; }

  TP_AVX2 bool Eight(int64_t j) const {
    if constexpr (kC == 1) {
      if (All8(t, j, kByTaps)) {
        const __m256i off = Offsets8(t->o00, j);
        if constexpr (std::is_same_v<T, float>) {
          _mm256_storeu_ps(out_row + j, _mm256_i32gather_ps(src, off, 4));
        } else {
          // Eight byte loads outrun a gather of words here.
          alignas(32) int32_t o[8];
          _mm256_store_si256(reinterpret_cast<__m256i*>(o), off);
          T* out = out_row + j;
          for (int k = 0; k < 8; ++k) out[k] = src[o[k]];
        }
        return true;
      }
    }
    return false;
  }

  TP_AVX2 void One(int64_t j) const {
    T* out = out_row + j * cn;
    const int32_t how = t->how[j];
    const T* p;
    if (how == kByTaps) {
      p = src + t->o00[j];
    } else if (how == kFillValue) {
      p = nullptr;
    } else {
      const double xd = static_cast<double>(x0 + j), yd = static_cast<double>(y);
      p = NearestTap(src, g, cn, SourceX(a.m, xd, yd), SourceY(a.m, xd, yd), border);
    }
    if (p != nullptr) {
      std::memcpy(out, p, sizeof(T) * cn);
    } else {
      for (int64_t c = 0; c < cn; ++c) out[c] = fill;
    }
  }
};

// The elements a row's fast paths read from a tap on (RowTaps::o00..o11): 4 for the vector loads
// of 3 or 4 channels and the uint8 gathers' words, 1 for float32 gathers, c for nearest copies.
template <typename T, int kC>
constexpr int64_t TapReach(bool nearest) {
  if (kC == 1) return std::is_same_v<T, uint8_t> ? 4 : 1;
  return nearest ? kC : 4;
}

using PassFn = void (*)(const PassConstants&, int64_t, int64_t, int64_t, const Affine&,
                       RowTaps*);

template <int kC, int kBorder>
__attribute__((target("avx2"))) void BilinearPass(const PassConstants& k, int64_t y, int64_t x0,
                                                  int64_t cols, const Affine& a, RowTaps* t) {
  BilinearTapsAvx2<kC, kBorder>(k, y, x0, cols, a, t);
}
template <int kC, int kBorder>
__attribute__((target("avx2"))) void NearestPass(const PassConstants& k, int64_t y, int64_t x0,
                                                 int64_t cols, const Affine& a, RowTaps* t) {
  NearestTapsAvx2<kC, kBorder>(k, y, x0, cols, a, t);
}

// The pass for a border, compiled for it.
template <int kC, bool kNearest>
PassFn PickPass(Border border) {
  constexpr int kEdge = static_cast<int>(Border::kEdge);
  constexpr int kConstant = static_cast<int>(Border::kConstant);
  if (border == Border::kEdge) {
    return kNearest ? NearestPass<kC, kEdge> : BilinearPass<kC, kEdge>;
  }
  if (border == Border::kConstant) {
    return kNearest ? NearestPass<kC, kConstant> : BilinearPass<kC, kConstant>;
  }
  return kNearest ? NearestPass<kC, kAnyBorder> : BilinearPass<kC, kAnyBorder>;
}

// Copies `bytes` from `stage` to `out` with non-temporal stores where `out` is 16-byte aligned:
// whole cache lines go to memory without being read first and without evicting the source.
TP_AVX2 void StreamOut(const unsigned char* stage, unsigned char* out, size_t bytes) {
  size_t head = (16 - reinterpret_cast<uintptr_t>(out) % 16) % 16;
  if (head > bytes) head = bytes;
  std::memcpy(out, stage, head);
  size_t i = head;
  for (; i + 16 <= bytes; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(stage + i)));
  }
  std::memcpy(out + i, stage + i, bytes - i);
}

template <typename T, int kC, typename Row, typename Pass>
TP_AVX2 void RowsAvx2Loop(const T* src, const Geometry& g, const Affine& a, int64_t y_begin,
                          int64_t y_end, const PassConstants& k, RowTaps* t, Row& r, Pass pass,
                          T* dst, WarpStores stores) {
  constexpr int64_t cn = kC;
  const int64_t row = g.out_w * cn;  // output row pitch
  // Streamed: each block row is written to this buffer, then to dst by StreamOut.
  alignas(64) T stage[kBlockCols * cn];
  const Walk walk = ForwardWalk(a, g.w);
  const int64_t blocks = (g.out_w + kBlockCols - 1) / kBlockCols;
  TilePrefetch prefetch;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t x0 = (walk.reverse_x ? blocks - 1 - b : b) * kBlockCols;
    const int64_t x1 = std::min(g.out_w, x0 + kBlockCols);
    const int64_t cols = x1 - x0;
    if (b == 0) {  // the band's first tile, in case nobody fetched it ahead
      prefetch.Plan(a, g, sizeof(T) * cn, x0, x1, y_begin, y_end, 1);
      prefetch.Step(src);
    }
    PlanNextTile(&prefetch, a, g, sizeof(T) * cn, walk, blocks, b, y_begin, y_end);
    for (int64_t i = 0; i < y_end - y_begin; ++i) {
      const int64_t y = walk.reverse_y ? y_end - 1 - i : y_begin + i;
      prefetch.Step(src);
      r.x0 = x0;
      r.y = y;
      T* const out = dst + (y - y_begin) * row + x0 * cn;
      r.out_row = stores == WarpStores::kStreamed ? stage : out;
      if (!r.FusedRow(k, cols, walk.reverse_x, r.out_row)) {
        pass(k, y, x0, cols, a, t);
        VisitColumns<kC == 1>(cols, walk.reverse_x, r);
      }
      if (stores == WarpStores::kStreamed) {
        StreamOut(reinterpret_cast<const unsigned char*>(stage),
                  reinterpret_cast<unsigned char*>(out), sizeof(T) * cn * cols);
      }
    }
  }
  // Non-temporal stores are weakly ordered: make them visible before the caller signals that
  // the rows are done.
  if (stores == WarpStores::kStreamed) _mm_sfence();
}

// Rows [y_begin, y_end) of one sample into dst, nearest or bilinear.
template <typename T, int kC, bool kNearest>
__attribute__((target("avx2"))) void RowsAvx2Of(const T* src, T* dst, const Geometry& g,
                                                const Affine& a, int64_t y_begin, int64_t y_end,
                                                Border border, T fill, WarpStores stores) {
  RowTaps taps;
  const PassConstants k = MakePassConstants(a, g, border, TapReach<T, kC>(kNearest));
  using Row = std::conditional_t<kNearest, NearestRow<T, kC>, BilinearRow<T, kC>>;
  Row r = [&] {
    if constexpr (kNearest) {
      return Row{src, g, a, border, fill, &taps, 0, 0, nullptr};
    } else {
      return Row{src, g, a, border, fill, HalfToFloatTable(), &taps, 0, 0, nullptr};
    }
  }();
  RowsAvx2Loop<T, kC>(src, g, a, y_begin, y_end, k, &taps, r, PickPass<kC, kNearest>(border), dst,
                      stores);
}

#undef TP_AVX2

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");

// Runs the AVX2 loops where they apply (uint8 or float32; 1, 3 or 4 channels; element offsets
// of a sample below 2^31); false where the caller must take the portable ones.
template <typename T>
bool RowsAvx2(const T* in, T* rows, const Geometry& g, const Affine& a, int64_t y_begin,
              int64_t y_end, const WarpParams& params, T fill, WarpStores stores) {
  if constexpr (!std::is_same_v<T, float> && !std::is_same_v<T, uint8_t>) {
    return false;
  } else {
    if (g.h * g.w * g.c >= (int64_t{1} << 31) - 64) return false;
    const bool nearest = params.interp == Interp::kNearest;
    switch (g.c) {
#define TP_WARP_AVX2_CASE(C)                                                                   \
  case C:                                                                                      \
    (nearest ? RowsAvx2Of<T, C, true> : RowsAvx2Of<T, C, false>)(in, rows, g, a, y_begin, y_end, \
                                                               params.border, fill, stores); \
    return true;
      TP_WARP_AVX2_CASE(1)
      TP_WARP_AVX2_CASE(3)
      TP_WARP_AVX2_CASE(4)
#undef TP_WARP_AVX2_CASE
      default:
        return false;
    }
  }
}

#else  // !defined(__x86_64__)

const bool kHaveAvx2 = false;
template <typename T>
bool RowsAvx2(const T*, T*, const Geometry&, const Affine&, int64_t, int64_t, const WarpParams&,
              T, WarpStores) {
  return false;
}

#endif  // defined(__x86_64__)

// Rows [y_begin, y_end) of sample n into `rows` (packed from row y_begin, g.out_w pixels each).
template <typename T, int kC>
void RowsTyped(WarpIsa isa, WarpStores stores, const ConstTensorView& src, const Geometry& g,
               int64_t n, int64_t y_begin, int64_t y_end, const Affine& a, const WarpParams& params,
               T* rows) {
  // `fill` converted as kCast converts (elementwise.h).
  const T fill = FromDouble<T>(CastDouble(params.fill, DTypeOf<T>::kValue));
  const T* in = src.as<T>() + n * src.shape.sample_elements();
  if (isa == WarpIsa::kAvx2 && RowsAvx2(in, rows, g, a, y_begin, y_end, params, fill, stores)) {
    return;
  }
  // Source positions of one block row (the loops fill at most kBlockCols of each).
  double sxs[kBlockCols];
  double sys[kBlockCols];
  if (params.interp == Interp::kNearest) {
    NearestRows<T, kC>(in, rows, g, a, y_begin, y_end, params.border, fill, sxs, sys);
  } else {
    BilinearRows<T, kC>(in, rows, g, a, y_begin, y_end, params.border, fill, sxs, sys);
  }
}

template <typename T>
void RowsChannels(WarpIsa isa, WarpStores stores, const ConstTensorView& src, const Geometry& g,
                  int64_t n, int64_t y_begin, int64_t y_end, const Affine& a,
                  const WarpParams& params, T* rows) {
  switch (src.shape.c) {
    case 1:
      return RowsTyped<T, 1>(isa, stores, src, g, n, y_begin, y_end, a, params, rows);
    case 3:
      return RowsTyped<T, 3>(isa, stores, src, g, n, y_begin, y_end, a, params, rows);
    case 4:
      return RowsTyped<T, 4>(isa, stores, src, g, n, y_begin, y_end, a, params, rows);
    default:
      return RowsTyped<T, 0>(isa, stores, src, g, n, y_begin, y_end, a, params, rows);
  }
}

// Every row entry point: rows [y_begin, y_end) of sample n of an output `g.out_w` wide.
void RowsOf(WarpIsa isa, const ConstTensorView& src, const Geometry& g, int64_t n, int64_t y_begin,
            int64_t y_end, const Affine& inverse, const WarpParams& params, void* rows,
            WarpStores stores) {
  switch (src.dtype) {
    case DType::kUInt8:
      return RowsChannels(isa, stores, src, g, n, y_begin, y_end, inverse, params,
                          static_cast<uint8_t*>(rows));
    case DType::kInt32:
      return RowsChannels(isa, stores, src, g, n, y_begin, y_end, inverse, params,
                          static_cast<int32_t*>(rows));
    case DType::kFloat32:
      return RowsChannels(isa, stores, src, g, n, y_begin, y_end, inverse, params,
                          static_cast<float*>(rows));
    case DType::kFloat16:
      return RowsChannels(isa, stores, src, g, n, y_begin, y_end, inverse, params,
                          static_cast<Half*>(rows));
  }
}

// The geometry of a row-band call that names only the output's width: its height is unknown, so
// the band below is assumed to exist (a prefetch hint, clipped to the source, at worst wasted).
Geometry BandGeometry(const BatchShape& s, int64_t out_w) {
  return Geometry{s.h, s.w, s.c, std::numeric_limits<int64_t>::max(), out_w};
}

const WarpIsa kBestIsa = kHaveAvx2 ? WarpIsa::kAvx2 : WarpIsa::kPortable;

}  // namespace

absl::Status CheckWarpSource(absl::string_view function, const ConstTensorView& src,
                             absl::Span<const Affine> inverse, const WarpParams& params) {
  TP_RETURN_IF_ERROR(CheckSourceView(function, src));
  TP_RETURN_IF_ERROR(CheckPerSampleCount(function, "affine maps", inverse.size(), src.shape.n));
  if (params.interp != Interp::kNearest && params.interp != Interp::kBilinear) {
    return PreconditionError(function, absl::StrCat("interpolation ",
                                                    static_cast<int>(params.interp),
                                                    "; expected nearest or bilinear"));
  }
  if (static_cast<int>(params.border) > static_cast<int>(Border::kWrap)) {
    return PreconditionError(function, absl::StrCat("border ", static_cast<int>(params.border),
                                                    "; expected one of Border's values"));
  }
  return absl::OkStatus();
}

absl::Status CheckWarpDestination(absl::string_view function, const ConstTensorView& src,
                                  const TensorView& dst, DType dtype) {
  const BatchShape& s = src.shape;
  const BatchShape& d = dst.shape;
  if (d.n != s.n || d.c != s.c || d.h < 1 || d.w < 1) {
    return PreconditionError(
        function,
        absl::StrCat("dst shape ", ShapeString(d), "; expected n = ", s.n, " and c = ", s.c,
                     " (src shape ", ShapeString(s), ") and a height and width >= 1"));
  }
  if (dst.dtype != dtype) {
    return PreconditionError(function, absl::StrCat("dst dtype ", DTypeName(dst.dtype),
                                                    "; expected ", DTypeName(dtype)));
  }
  if (dst.data == nullptr) return PreconditionError(function, "dst data is null");
  const auto sb = reinterpret_cast<uintptr_t>(src.data);
  const auto db = reinterpret_cast<uintptr_t>(dst.data);
  if (sb < db + dst.bytes() && db < sb + src.bytes()) {
    return PreconditionError(function, "src and dst overlap; expected distinct memory");
  }
  return absl::OkStatus();
}

bool WarpIsaSupported(WarpIsa isa) { return isa == WarpIsa::kPortable || kHaveAvx2; }

void WarpAffineRowsCpuIsa(WarpIsa isa, const ConstTensorView& src, int64_t n, int64_t y_begin,
                          int64_t y_end, int64_t out_w, const Affine& inverse,
                          const WarpParams& params, void* rows, WarpStores stores) {
  RowsOf(isa, src, BandGeometry(src.shape, out_w), n, y_begin, y_end, inverse, params, rows,
         stores);
}

void WarpAffineRowsCpuIsa(WarpIsa isa, const ConstTensorView& src, int64_t n, int64_t y_begin,
                          int64_t y_end, const Affine& inverse, const WarpParams& params,
                          void* rows, WarpStores stores) {
  const BatchShape& s = src.shape;
  RowsOf(isa, src, Geometry{s.h, s.w, s.c, s.h, s.w}, n, y_begin, y_end, inverse, params, rows,
         stores);
}

void WarpAffineRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                       int64_t out_w, const Affine& inverse, const WarpParams& params, void* rows) {
  WarpAffineRowsCpuIsa(kBestIsa, src, n, y_begin, y_end, out_w, inverse, params, rows,
                       WarpStores::kCached);
}

void WarpAffineRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                       const Affine& inverse, const WarpParams& params, void* rows) {
  WarpAffineRowsCpuIsa(kBestIsa, src, n, y_begin, y_end, inverse, params, rows,
                       WarpStores::kCached);
}

absl::Status WarpAffineCpu(const ConstTensorView& src, const TensorView& dst,
                           absl::Span<const Affine> inverse, const WarpParams& params,
                           ThreadPool* pool) {
  constexpr char kFn[] = "WarpAffineCpu";
  TP_RETURN_IF_ERROR(CheckWarpSource(kFn, src, inverse, params));
  TP_RETURN_IF_ERROR(CheckWarpDestination(kFn, src, dst, src.dtype));
  const BatchShape& s = src.shape;
  const BatchShape& d = dst.shape;  // the output: s.n samples of d.h x d.w pixels
  const Geometry g{s.h, s.w, s.c, d.h, d.w};
  // (sample, row band) tasks; a small image is one task and runs on the calling thread.
  const int64_t band_rows = std::max<int64_t>(1, (kMinTaskPixels + d.w - 1) / d.w);
  const int64_t bands = (d.h + band_rows - 1) / band_rows;
  const size_t row_bytes = static_cast<size_t>(d.w * d.c) * DTypeSize(dst.dtype);
  auto* out = static_cast<unsigned char*>(dst.data);
  // A result larger than the last-level cache share goes out with non-temporal stores: it would
  // not stay in cache anyway, and writing it through the cache first reads every line from
  // memory. The 64-image W2 batch (50 MB) then ran at the per-image speed of one image.
  const WarpStores stores = static_cast<uint64_t>(dst.bytes()) >= kStreamedMinBytes
                                ? WarpStores::kStreamed
                                : WarpStores::kCached;
  // With at least 4 samples per thread, a task is a whole sample: its bands then run in order on
  // one thread, which has fetched each band's first tile ahead (TilePrefetch) while finishing
  // the band before. Split by band across threads, that fetch served the other thread.
  const int threads = pool == nullptr ? 1 : pool->size();
  const int64_t per_task = s.n >= 4 * static_cast<int64_t>(threads) ? bands : 1;
  ParallelFor(pool, s.n * bands / per_task, [&](int64_t task) {
    for (int64_t t = task * per_task; t < (task + 1) * per_task; ++t) {
      const int64_t n = t / bands;
      const int64_t y_begin = (t % bands) * band_rows;
      const int64_t y_end = std::min(d.h, y_begin + band_rows);
      RowsOf(kBestIsa, src, g, n, y_begin, y_end, inverse.size() == 1 ? inverse[0] : inverse[n],
             params, out + (n * d.h + y_begin) * row_bytes, stores);
    }
  });
  return absl::OkStatus();
}

}  // namespace tensorprep::kernels
