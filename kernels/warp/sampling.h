// How a warp samples (warp.h), written once for host and device (TP_HD): the source position of
// an output pixel, border resolution, the far-position rule, the nearest tap, and the bilinear weights, blend and rounding of each dtype.
// The CPU warp inlines these into its row loops, the CUDA warp kernel calls them per pixel, and the
// reference maps positions and resolves borders, far positions and nearest taps through them (its bilinear blend
// stays its own, in double: the oracle the others are held to within a tolerance). Tested once
// against independent expectations (numpy.pad's index patterns for every border mode at tiny
// sizes, hand-computed blends) in tests/kernels/numerics_test.cc. Pure functions: thread-safe.
#ifndef TENSORPREP_KERNELS_WARP_SAMPLING_H_
#define TENSORPREP_KERNELS_WARP_SAMPLING_H_

#include <math.h>

#include <cstdint>

#include "kernels/common/half.h"
#include "kernels/common/host_device.h"
#include "kernels/common/numerics.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels {

// Index `i` along an axis of `n` >= 1 pixels resolved through `border`: i itself when inside
// [0, n), else the inside index the border mode maps it to, or -1 when the tap takes the fill
// value (kConstant, or a `border` outside the enum). Any int64_t `i` whose distance to the axis
// fits in int64_t is fine (warp positions are below 2^52, see IsFarPosition).
TP_HD int64_t ResolveBorder(int64_t i, int64_t n, Border border) {
  if (static_cast<uint64_t>(i) < static_cast<uint64_t>(n)) return i;
  switch (border) {
    case Border::kConstant:
      return -1;
    case Border::kEdge:
      return i < 0 ? 0 : n - 1;
    case Border::kReflect: {  // cba|abc|cba: period 2n
      const int64_t p = 2 * n;
      int64_t r = i % p;
      if (r < 0) r += p;
      return r < n ? r : p - 1 - r;
    }
    case Border::kReflect101: {  // cb|abc|ba: period 2n - 2
      if (n == 1) return 0;
      const int64_t p = 2 * n - 2;
      int64_t r = i % p;
      if (r < 0) r += p;
      return r < n ? r : p - r;
    }
    case Border::kWrap: {
      int64_t r = i % n;
      return r < 0 ? r + n : r;
    }
  }
  return -1;
}

// Whether source position (sx, sy) samples the fill value whatever the border (warp.h): |sx| or
// |sy| at or beyond 2^52, or not finite. There a double has no fraction left to interpolate, and
// below it the conversion to int64_t stays defined.
TP_HD bool IsFarPosition(double sx, double sy) {
  const double kFar = 4503599627370496.0;  // 2^52
  return !(fabs(sx) < kFar && fabs(sy) < kFar);
}

// The source position that output pixel centre (x, y) samples under the 6 coefficients `m` of an
// Affine (warp.h): (m[0] * x + m[1] * y) + m[2] and (m[3] * x + m[4] * y) + m[5], each product and
// sum rounded once, in exactly this order.
TP_HD double SourceX(const double* m, double x, double y) {
  return AddRn(AddRn(MulRn(m[0], x), MulRn(m[1], y)), m[2]);
}
TP_HD double SourceY(const double* m, double x, double y) {
  return AddRn(AddRn(MulRn(m[3], x), MulRn(m[4], y)), m[5]);
}

// floor(v) as an integer, for |v| < 2^63 (not NaN), without a libm call.
TP_HD int64_t FloorToInt(double v) {
  const int64_t i = static_cast<int64_t>(v);
  return static_cast<double>(i) > v ? i - 1 : i;
}

// The nearest tap's index along an axis for source position `s` (not far): floor(s + 0.5).
TP_HD int64_t NearestIndex(double s) { return FloorToInt(AddRn(s, 0.5)); }

// ---- Bilinear -----------------------------------------------------------------------------------

// The blend type of each source dtype (warp.h): uint8, float32 and float16 blend in float, int32
// in double (float cannot hold every int32).
template <typename T>
struct BlendAccumulator {
  using Type = float;
};
template <>
struct BlendAccumulator<int32_t> {
  using Type = double;
};

// The four tap weights for fractional offsets (fx, fy) in [0, 1): computed in double, then rounded
// to the blend type Acc.
template <typename Acc>
struct BilinearWeights {
  Acc w00, w01, w10, w11;  // taps (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)
};
template <typename Acc>
TP_HD BilinearWeights<Acc> MakeBilinearWeights(double fx, double fy) {
  const double gx = SubRn(1.0, fx), gy = SubRn(1.0, fy);
  return {static_cast<Acc>(MulRn(gx, gy)), static_cast<Acc>(MulRn(fx, gy)),
          static_cast<Acc>(MulRn(gx, fy)), static_cast<Acc>(MulRn(fx, fy))};
}

// v00*w00 + v01*w01 + v10*w10 + v11*w11, summed left to right in Acc. Every tap contributes, a
// weight of 0 too, so non-finite taps propagate as IEEE arithmetic says.
template <typename Acc>
TP_HD Acc BlendTaps(Acc v00, Acc v01, Acc v10, Acc v11, const BilinearWeights<Acc>& w) {
  Acc v = MulRn(v00, w.w00);
  v = AddRn(v, MulRn(v01, w.w01));
  v = AddRn(v, MulRn(v10, w.w10));
  return AddRn(v, MulRn(v11, w.w11));
}

// A blended value stored as T: integers round to nearest (ties to even) and saturate (the blend of
// integer taps is never NaN), float16 rounds once (overflow to infinity), float32 is kept.
template <typename T>
TP_HD T RoundBlend(typename BlendAccumulator<T>::Type v);
template <>
TP_HD uint8_t RoundBlend<uint8_t>(float v) {
  return SaturateU8(v);
}
template <>
TP_HD int32_t RoundBlend<int32_t>(double v) {
  return SaturateI32(v);
}
template <>
TP_HD float RoundBlend<float>(float v) {
  return v;
}
template <>
TP_HD Half RoundBlend<Half>(float v) {
  return FloatToHalf(v);
}

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_WARP_SAMPLING_H_
