// CPU affine warp: per-row source coordinates in double, an interior path that reads the four
// taps directly, and border resolution only for pixels whose taps leave the image.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/half.h"
#include "kernels/common/numerics.h"
#include "kernels/common/status.h"
#include "kernels/warp/sampling.h"
#include "kernels/warp/warp.h"
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

struct Geometry {
  int64_t h;
  int64_t w;
  int64_t c;
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

// kC > 0: channel count known at compile time; kC == 0: g.c at run time.
template <typename T, int kC>
void BilinearRows(const T* src, T* dst, const Geometry& g, const Affine& a, int64_t y_begin,
                  int64_t y_end, Border border, T fill, double* sxs, double* sys) {
  using P = Pixel<T>;
  using Acc = typename P::Acc;
  const float* table = HalfToFloatTable();
  const int64_t cn = kC > 0 ? kC : g.c;
  const int64_t row = g.w * cn;
  // Column blocks: the source footprint of a block of rows stays in L1 from one row to the
  // next, whatever the angle or mirror (a full row of a rotated image spans many source rows).
  // Blocks, rows and pixels are visited in the order that walks the source forwards (see Walk).
  const Walk walk = ForwardWalk(a, g.w);
  const int64_t blocks = (g.w + kBlockCols - 1) / kBlockCols;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t x0 = (walk.reverse_x ? blocks - 1 - b : b) * kBlockCols;
    const int64_t x1 = std::min(g.w, x0 + kBlockCols);
    const int64_t cols = x1 - x0;
    for (int64_t k = 0; k < y_end - y_begin; ++k) {
      const int64_t y = walk.reverse_y ? y_end - 1 - k : y_begin + k;
      RowPositions(a, y, x0, x1, sxs, sys);
      // Column x0 + j, j from 0 up or from cols - 1 down.
      const int64_t dj = walk.reverse_x ? -1 : 1;
      const int64_t step = dj * cn;
      int64_t j = walk.reverse_x ? cols - 1 : 0;
      T* out = dst + (y - y_begin) * row + (x0 + j) * cn;
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
          const T* p1 = p0 + row;
          for (int64_t c = 0; c < cn; ++c) {
            out[c] = P::Store(BlendTaps(P::Load(p0[c], table), P::Load(p0[c + cn], table),
                                        P::Load(p1[c], table), P::Load(p1[c + cn], table), wt));
          }
          continue;
        }
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
    }
  }
}

template <typename T, int kC>
void NearestRows(const T* src, T* dst, const Geometry& g, const Affine& a, int64_t y_begin,
                 int64_t y_end, Border border, T fill, double* sxs, double* sys) {
  const int64_t cn = kC > 0 ? kC : g.c;
  const int64_t row = g.w * cn;
  // Column blocks: the source footprint of a block of rows stays in L1 from one row to the
  // next, whatever the angle or mirror (a full row of a rotated image spans many source rows).
  // Blocks, rows and pixels are visited in the order that walks the source forwards (see Walk).
  const Walk walk = ForwardWalk(a, g.w);
  const int64_t blocks = (g.w + kBlockCols - 1) / kBlockCols;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t x0 = (walk.reverse_x ? blocks - 1 - b : b) * kBlockCols;
    const int64_t x1 = std::min(g.w, x0 + kBlockCols);
    const int64_t cols = x1 - x0;
    for (int64_t k = 0; k < y_end - y_begin; ++k) {
      const int64_t y = walk.reverse_y ? y_end - 1 - k : y_begin + k;
      RowPositions(a, y, x0, x1, sxs, sys);
      // Column x0 + j, j from 0 up or from cols - 1 down.
      const int64_t dj = walk.reverse_x ? -1 : 1;
      const int64_t step = dj * cn;
      int64_t j = walk.reverse_x ? cols - 1 : 0;
      T* out = dst + (y - y_begin) * row + (x0 + j) * cn;
      for (int64_t i = 0; i < cols; ++i, j += dj, out += step) {
        const double sx = sxs[j];
        const double sy = sys[j];
        const T* p = nullptr;
        if (!IsFarPosition(sx, sy)) {
          int64_t ix = NearestIndex(sx);
          int64_t iy = NearestIndex(sy);
          if (static_cast<uint64_t>(ix) >= static_cast<uint64_t>(g.w) ||
              static_cast<uint64_t>(iy) >= static_cast<uint64_t>(g.h)) {
            ix = ResolveBorder(ix, g.w, border);
            iy = ResolveBorder(iy, g.h, border);
          }
          if (ix >= 0 && iy >= 0) p = src + (iy * g.w + ix) * cn;
        }
        if (p != nullptr) {
          for (int64_t c = 0; c < cn; ++c) out[c] = p[c];
        } else {
          for (int64_t c = 0; c < cn; ++c) out[c] = fill;
        }
      }
    }
  }
}

// Rows [y_begin, y_end) of sample n into `rows` (packed from row y_begin).
template <typename T, int kC>
void RowsTyped(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
               const Affine& a, const WarpParams& params, T* rows) {
  const BatchShape& s = src.shape;
  const Geometry g{s.h, s.w, s.c};
  // `fill` converted as kCast converts (elementwise.h).
  const T fill = FromDouble<T>(CastDouble(params.fill, DTypeOf<T>::kValue));
  const T* in = src.as<T>() + n * s.sample_elements();
  // Source positions of one row; reused by this thread's later bands.
  thread_local std::vector<double> positions;
  if (positions.size() < 2 * static_cast<size_t>(s.w)) positions.resize(2 * s.w);
  if (params.interp == Interp::kNearest) {
    NearestRows<T, kC>(in, rows, g, a, y_begin, y_end, params.border, fill, positions.data(),
                       positions.data() + s.w);
  } else {
    BilinearRows<T, kC>(in, rows, g, a, y_begin, y_end, params.border, fill, positions.data(),
                        positions.data() + s.w);
  }
}

template <typename T>
void RowsChannels(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                  const Affine& a, const WarpParams& params, T* rows) {
  switch (src.shape.c) {
    case 1:
      return RowsTyped<T, 1>(src, n, y_begin, y_end, a, params, rows);
    case 3:
      return RowsTyped<T, 3>(src, n, y_begin, y_end, a, params, rows);
    case 4:
      return RowsTyped<T, 4>(src, n, y_begin, y_end, a, params, rows);
    default:
      return RowsTyped<T, 0>(src, n, y_begin, y_end, a, params, rows);
  }
}

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

void WarpAffineRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                       const Affine& inverse, const WarpParams& params, void* rows) {
  switch (src.dtype) {
    case DType::kUInt8:
      return RowsChannels(src, n, y_begin, y_end, inverse, params, static_cast<uint8_t*>(rows));
    case DType::kInt32:
      return RowsChannels(src, n, y_begin, y_end, inverse, params, static_cast<int32_t*>(rows));
    case DType::kFloat32:
      return RowsChannels(src, n, y_begin, y_end, inverse, params, static_cast<float*>(rows));
    case DType::kFloat16:
      return RowsChannels(src, n, y_begin, y_end, inverse, params, static_cast<Half*>(rows));
  }
}

absl::Status WarpAffineCpu(const ConstTensorView& src, const TensorView& dst,
                           absl::Span<const Affine> inverse, const WarpParams& params,
                           ThreadPool* pool) {
  constexpr char kFn[] = "WarpAffineCpu";
  TP_RETURN_IF_ERROR(CheckWarpSource(kFn, src, inverse, params));
  TP_RETURN_IF_ERROR(CheckDestinationView(kFn, src, dst, src.dtype, Aliasing::kDistinct));
  const BatchShape& s = src.shape;
  // (sample, row band) tasks; a small image is one task and runs on the calling thread.
  const int64_t band_rows = std::max<int64_t>(1, (kMinTaskPixels + s.w - 1) / s.w);
  const int64_t bands = (s.h + band_rows - 1) / band_rows;
  const size_t row_bytes = static_cast<size_t>(s.w * s.c) * DTypeSize(src.dtype);
  auto* out = static_cast<unsigned char*>(dst.data);
  ParallelFor(pool, s.n * bands, [&](int64_t task) {
    const int64_t n = task / bands;
    const int64_t y_begin = (task % bands) * band_rows;
    const int64_t y_end = std::min(s.h, y_begin + band_rows);
    WarpAffineRowsCpu(src, n, y_begin, y_end, inverse.size() == 1 ? inverse[0] : inverse[n], params,
                      out + (n * s.h + y_begin) * row_bytes);
  });
  return absl::OkStatus();
}

}  // namespace tensorprep::kernels
