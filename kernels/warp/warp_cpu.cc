// CPU affine warp: per-row source coordinates in double, an interior path that reads the four
// taps directly, and border resolution only for pixels whose taps leave the image.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/common/half.h"
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

constexpr double kFar = 4503599627370496.0;  // 2^52, see warp.h
// Smallest task worth a hand-off to another thread.
constexpr int64_t kMinTaskPixels = 16384;
// Output columns per block (see BilinearRows).
constexpr int64_t kBlockCols = 64;

// binary16 -> float for every bit pattern: one load instead of a branchy decode per tap.
const float* HalfTable() {
  static const float* const table = [] {
    static float t[65536];
    for (uint32_t i = 0; i < 65536; ++i) t[i] = HalfToFloat(Half{static_cast<uint16_t>(i)});
    return t;
  }();
  return table;
}

// Per-dtype loading into the blend type and storing back with the rounding warp.h specifies.
template <typename T>
struct Pixel;

template <>
struct Pixel<uint8_t> {
  using Acc = float;
  static float Load(uint8_t v, const float*) { return v; }
  static uint8_t Store(float a) {
    a = a < 0.0f ? 0.0f : (a > 255.0f ? 255.0f : a);
    // Adding and removing 1.5 * 2^23 rounds to nearest, ties to even, in the default mode.
    const float r = (a + 12582912.0f) - 12582912.0f;
    return static_cast<uint8_t>(static_cast<int>(r));
  }
};

template <>
struct Pixel<int32_t> {
  using Acc = double;  // float cannot hold every int32
  static double Load(int32_t v, const float*) { return v; }
  static int32_t Store(double a) {
    a = a < -2147483648.0 ? -2147483648.0 : (a > 2147483647.0 ? 2147483647.0 : a);
    const double r = (a + 6755399441055744.0) - 6755399441055744.0;  // 1.5 * 2^52
    return static_cast<int32_t>(r);
  }
};

template <>
struct Pixel<float> {
  using Acc = float;
  static float Load(float v, const float*) { return v; }
  static float Store(float a) { return a; }
};

template <>
struct Pixel<Half> {
  using Acc = float;
  static float Load(Half v, const float* table) { return table[v.bits]; }
  static Half Store(float a) { return FloatToHalf(a); }
};

// `fill` converted as kCast converts (elementwise.h).
template <typename T>
T FillAs(double fill);
template <>
uint8_t FillAs<uint8_t>(double v) {
  if (std::isnan(v)) return 0;
  v = std::nearbyint(v);
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}
template <>
int32_t FillAs<int32_t>(double v) {
  if (std::isnan(v)) return 0;
  v = std::nearbyint(v);
  return static_cast<int32_t>(v < -2147483648.0 ? -2147483648.0
                                                : (v > 2147483647.0 ? 2147483647.0 : v));
}
template <>
float FillAs<float>(double v) {
  return static_cast<float>(v);
}
template <>
Half FillAs<Half>(double v) {
  if (!std::isfinite(v)) return FloatToHalf(static_cast<float>(v));
  v = std::clamp(v, -65504.0, 65504.0);
  // Round on binary16's grid in double (through float would round twice), then convert exactly.
  const double mag = std::fabs(v);
  int e;
  std::frexp(mag, &e);
  const int q = std::max(e - 11, -24);  // exponent of the spacing; -24 below the normal range
  const double r = std::ldexp(std::nearbyint(std::ldexp(mag, -q)), q);
  return FloatToHalf(static_cast<float>(std::copysign(r, v)));
}

// Index through the border; -1 when the border supplies `fill`.
inline int64_t Resolve(int64_t i, int64_t n, Border border) {
  if (static_cast<uint64_t>(i) < static_cast<uint64_t>(n)) return i;
  switch (border) {
    case Border::kConstant:
      return -1;
    case Border::kEdge:
      return i < 0 ? 0 : n - 1;
    case Border::kReflect: {
      const int64_t p = 2 * n;
      int64_t r = i % p;
      if (r < 0) r += p;
      return r < n ? r : p - 1 - r;
    }
    case Border::kReflect101: {
      if (n == 1) return 0;
      const int64_t p = 2 * n - 2;
      int64_t r = i % p;
      if (r < 0) r += p;
      return r < n ? r : p - r;
    }
    case Border::kWrap: {
      int64_t r = i % n;
      if (r < 0) r += n;
      return r;
    }
  }
  return -1;
}

// floor for |v| < 2^52 without a libm call.
inline int64_t FloorToInt(double v) {
  int64_t i = static_cast<int64_t>(v);
  return static_cast<double>(i) > v ? i - 1 : i;
}

struct Geometry {
  int64_t h;
  int64_t w;
  int64_t c;
};

// Fills the buffers with the source position of output pixels [x_begin, x_end) of row y, evaluated
// as warp.h says: (m0 * x + m1 * y) + m2. Hoisting m1 * y keeps that exact association.
inline void RowPositions(const Affine& a, int64_t y, int64_t x_begin, int64_t x_end, double* sx,
                         double* sy) {
  const double yd = static_cast<double>(y);
  const double ry = a.m[1] * yd;
  const double ry2 = a.m[4] * yd;
  const double m0 = a.m[0], m2 = a.m[2], m3 = a.m[3], m5 = a.m[5];
  for (int64_t x = x_begin; x < x_end; ++x) {
    const double xd = static_cast<double>(x);
    sx[x - x_begin] = m0 * xd + ry + m2;
    sy[x - x_begin] = m3 * xd + ry2 + m5;
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
  const float* table = HalfTable();
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
        if (!(std::fabs(sx) < kFar && std::fabs(sy) < kFar)) {
          for (int64_t c = 0; c < cn; ++c) out[c] = fill;
          continue;
        }
        const int64_t ix = FloorToInt(sx);
        const int64_t iy = FloorToInt(sy);
        const double fx = sx - static_cast<double>(ix);
        const double fy = sy - static_cast<double>(iy);
        const Acc w00 = static_cast<Acc>((1 - fx) * (1 - fy));
        const Acc w01 = static_cast<Acc>(fx * (1 - fy));
        const Acc w10 = static_cast<Acc>((1 - fx) * fy);
        const Acc w11 = static_cast<Acc>(fx * fy);
        if (static_cast<uint64_t>(ix) < static_cast<uint64_t>(g.w - 1) &&
            static_cast<uint64_t>(iy) < static_cast<uint64_t>(g.h - 1)) {
          const T* p0 = src + (iy * g.w + ix) * cn;
          const T* p1 = p0 + row;
          for (int64_t c = 0; c < cn; ++c) {
            out[c] = P::Store(P::Load(p0[c], table) * w00 + P::Load(p0[c + cn], table) * w01 +
                              P::Load(p1[c], table) * w10 + P::Load(p1[c + cn], table) * w11);
          }
          continue;
        }
        const int64_t x0 = Resolve(ix, g.w, border);
        const int64_t x1 = Resolve(ix + 1, g.w, border);
        const int64_t y0 = Resolve(iy, g.h, border);
        const int64_t y1 = Resolve(iy + 1, g.h, border);
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
          out[c] = P::Store(v00 * w00 + v01 * w01 + v10 * w10 + v11 * w11);
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
        if (std::fabs(sx) < kFar && std::fabs(sy) < kFar) {
          int64_t ix = FloorToInt(sx + 0.5);
          int64_t iy = FloorToInt(sy + 0.5);
          if (static_cast<uint64_t>(ix) >= static_cast<uint64_t>(g.w) ||
              static_cast<uint64_t>(iy) >= static_cast<uint64_t>(g.h)) {
            ix = Resolve(ix, g.w, border);
            iy = Resolve(iy, g.h, border);
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
  const T fill = FillAs<T>(params.fill);
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

std::string ShapeString(const BatchShape& s) {
  return absl::StrCat("(", s.n, ", ", s.h, ", ", s.w, ", ", s.c, ")");
}

}  // namespace

absl::Status ValidateWarpSource(const ConstTensorView& src, absl::Span<const Affine> inverse,
                                const WarpParams& params) {
  const BatchShape& s = src.shape;
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("warp: src shape ", ShapeString(s), "; expected every dimension >= 1"));
  }
  if (src.data == nullptr) {
    return absl::InvalidArgumentError("warp: null data pointer; expected src and dst memory");
  }
  if (inverse.size() != 1 && static_cast<int64_t>(inverse.size()) != s.n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "warp: ", inverse.size(), " affine maps; expected 1 or ", s.n, " (one per sample)"));
  }
  if (params.interp != Interp::kNearest && params.interp != Interp::kBilinear) {
    return absl::InvalidArgumentError(absl::StrCat(
        "warp: interpolation ", static_cast<int>(params.interp), "; expected nearest or bilinear"));
  }
  if (static_cast<int>(params.border) > static_cast<int>(Border::kWrap)) {
    return absl::InvalidArgumentError(absl::StrCat("warp: border ", static_cast<int>(params.border),
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
  const BatchShape& s = src.shape;
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("warp: src shape ", ShapeString(s), "; expected every dimension >= 1"));
  }
  if (!(dst.shape == s)) {
    return absl::InvalidArgumentError(absl::StrCat("warp: dst shape ", ShapeString(dst.shape),
                                                   "; expected src shape ", ShapeString(s)));
  }
  if (dst.dtype != src.dtype) {
    return absl::InvalidArgumentError(absl::StrCat("warp: dst dtype ", DTypeName(dst.dtype),
                                                   "; expected src dtype ", DTypeName(src.dtype)));
  }
  if (src.data == nullptr || dst.data == nullptr) {
    return absl::InvalidArgumentError("warp: null data pointer; expected src and dst memory");
  }
  const absl::Status valid = ValidateWarpSource(src, inverse, params);
  if (!valid.ok()) return valid;
  const auto* s0 = static_cast<const unsigned char*>(src.data);
  const auto* d0 = static_cast<const unsigned char*>(dst.data);
  if (s0 < d0 + dst.bytes() && d0 < s0 + src.bytes()) {
    return absl::InvalidArgumentError("warp: src and dst overlap; expected distinct memory");
  }
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
