// The per-element code of the CUDA kernels, written for host and device (TP_HD) and free of CUDA
// headers: the .cu kernels only loop over elements and call these functions, and the tests run the
// very same functions on the host (no GPU needed) against the reference. The scalar rules they
// build on (correctly rounded arithmetic, rounding and saturation, kCast, border resolution) are
// the project's shared ones: kernels/common/numerics.h, kernels/common/half.h,
// kernels/warp/sampling.h.
//
// A value travelling through a kernel is held as a double that is exactly a member of its current
// dtype (uint8, int32, float32 and float16 values are all exact in double). Each op computes in the
// precision its dtype prescribes (elementwise.h) and rounds back, so a fused chain rounds exactly
// as the ops do when run one by one. No fused multiply-add: device arithmetic goes through the
// round-to-nearest intrinsics, and the library is also compiled with --fmad=false.
#ifndef TENSORPREP_KERNELS_CUDA_KERNEL_MATH_H_
#define TENSORPREP_KERNELS_CUDA_KERNEL_MATH_H_

#include <math.h>

#include <cstdint>

#include "kernels/common/half.h"
#include "kernels/common/host_device.h"
#include "kernels/common/numerics.h"
#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/warp/sampling.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels::cuda::detail {

// ---- Element-wise chains ----------------------------------------------------------------------

// One op of a chain as the kernels see it (built on the host by BuildChainTable, prepare.h).
struct DeviceOp {
  ElementwiseKind kind = ElementwiseKind::kAdd;
  DType in = DType::kFloat32;  // dtype of the value entering this op
  DType to = DType::kFloat32;  // kCast only
  uint8_t has_lo = 0;
  uint8_t has_hi = 0;
  int32_t a_offset = 0;  // into OpChain::values; a_count is 1 (broadcast) or C
  int32_t a_count = 0;
  int32_t b_offset = 0;
  int32_t b_count = 0;
  double lo = 0;  // clamp bounds, already converted to `in` as kCast would
  double hi = 0;
};

struct OpChain {
  const DeviceOp* ops = nullptr;
  const double* values = nullptr;
  int32_t count = 0;
};

template <typename F>
TP_HD F Arith(ElementwiseKind kind, F x, F a) {
  switch (kind) {
    case ElementwiseKind::kAdd:
      return AddRn(x, a);
    case ElementwiseKind::kSubtract:
      return SubRn(x, a);
    case ElementwiseKind::kMultiply:
      return MulRn(x, a);
    default:  // kDivide
      return DivRn(x, a);
  }
}

TP_HD double PerChannel(const double* values, int32_t offset, int32_t count, int c) {
  return values[offset + (count == 1 ? 0 : c)];
}

// Applies `op` to `v` (a member of op.in) of channel `c`.
TP_HD double ApplyOp(const DeviceOp& op, const double* values, double v, int c) {
  const bool floating = op.in == DType::kFloat32 || op.in == DType::kFloat16;
  switch (op.kind) {
    case ElementwiseKind::kAdd:
    case ElementwiseKind::kSubtract:
    case ElementwiseKind::kMultiply:
    case ElementwiseKind::kDivide: {
      const double a = PerChannel(values, op.a_offset, op.a_count, c);
      if (floating) {
        const float r = Arith(op.kind, static_cast<float>(v), static_cast<float>(a));
        return op.in == DType::kFloat16 ? RoundFloatToHalf(r) : r;
      }
      return CastDouble(Arith(op.kind, v, a), op.in);
    }
    case ElementwiseKind::kNormalize: {  // floating only (validated on the host)
      const float mean = static_cast<float>(PerChannel(values, op.a_offset, op.a_count, c));
      const float stddev = static_cast<float>(PerChannel(values, op.b_offset, op.b_count, c));
      const float r = DivRn(SubRn(static_cast<float>(v), mean), stddev);
      return op.in == DType::kFloat16 ? RoundFloatToHalf(r) : r;
    }
    case ElementwiseKind::kClamp:
      // NaN compares false both ways and stays NaN.
      if (op.has_lo && v < op.lo) return op.lo;
      if (op.has_hi && v > op.hi) return op.hi;
      return v;
    case ElementwiseKind::kCast:
      return CastDouble(v, op.to);
  }
  return v;
}

TP_HD double ApplyChain(const OpChain& chain, double v, int c) {
  for (int32_t i = 0; i < chain.count; ++i) v = ApplyOp(chain.ops[i], chain.values, v, c);
  return v;
}

struct ElementwiseArgs {
  const void* src = nullptr;
  void* dst = nullptr;  // may equal src (same-size dtypes)
  int64_t total = 0;    // elements
  int32_t channels = 1;
  OpChain chain;
  // Channels-first output (dst planar per sample, distinct from src): pixels per sample (H * W)
  // and samples. plane == 0: dst is NHWC like src.
  int64_t plane = 0;
  int64_t samples = 0;
};

// Element `i` (of channel c = i % channels).
template <typename TIn, typename TOut>
TP_HD void ElementwiseElement(const ElementwiseArgs& a, int64_t i, int c) {
  const double v = ToDouble(static_cast<const TIn*>(a.src)[i]);
  static_cast<TOut*>(a.dst)[i] = FromDouble<TOut>(ApplyChain(a.chain, v, c));
}

// Where channel `c` of pixel `pixel` (y * W + x) of sample n lies in a channels-first (N, C, H,
// W) batch with `plane` (H * W) pixels per sample and `channels` channels.
TP_HD int64_t ChannelsFirstIndex(int64_t n, int64_t c, int64_t pixel, int64_t plane,
                                 int64_t channels) {
  return (n * channels + c) * plane + pixel;
}

// Channels-first output: every channel of pixel `pixel` of sample n, read NHWC, each stored in
// its channel's plane (consecutive threads write consecutive addresses of each plane).
template <typename TIn, typename TOut>
TP_HD void ElementwisePixelChannelsFirst(const ElementwiseArgs& a, int64_t n, int64_t pixel) {
  const TIn* in = static_cast<const TIn*>(a.src) + (n * a.plane + pixel) * a.channels;
  TOut* out = static_cast<TOut*>(a.dst);
  for (int32_t c = 0; c < a.channels; ++c) {
    out[ChannelsFirstIndex(n, c, pixel, a.plane, a.channels)] =
        FromDouble<TOut>(ApplyChain(a.chain, ToDouble(in[c]), c));
  }
}

// ---- Flip -------------------------------------------------------------------------------------

struct FlipArgs {
  const void* src = nullptr;
  void* dst = nullptr;
  int64_t n = 0;
  int32_t h = 0, w = 0, c = 0;
  const uint8_t* flags = nullptr;  // 2 bytes per entry: horizontal, vertical
  int64_t flag_stride = 0;         // entries per sample: 0 (one entry for all) or 1
};

// All channels of output pixel (x, y) of sample n. T only carries the element size.
template <typename T>
TP_HD void FlipPixel(const FlipArgs& a, int64_t n, int64_t y, int64_t x) {
  const uint8_t* f = a.flags + 2 * (n * a.flag_stride);
  const int64_t sx = f[0] ? a.w - 1 - x : x;
  const int64_t sy = f[1] ? a.h - 1 - y : y;
  const T* s = static_cast<const T*>(a.src) + ((n * a.h + sy) * a.w + sx) * a.c;
  T* d = static_cast<T*>(a.dst) + ((n * a.h + y) * a.w + x) * a.c;
  for (int32_t ch = 0; ch < a.c; ++ch) d[ch] = s[ch];
}

// ---- Warp -------------------------------------------------------------------------------------

struct WarpArgs {
  const void* src = nullptr;
  void* dst = nullptr;
  int64_t n = 0;
  int32_t h = 0, w = 0, c = 0;      // the source
  int32_t out_h = 0, out_w = 0;     // the output (n and c are the source's)
  const double* affines = nullptr;  // 6 doubles per entry (Affine::m)
  int64_t affine_stride = 0;        // entries per sample: 0 (one entry for all) or 1
  Interp interp = Interp::kBilinear;
  Border border = Border::kConstant;
  double fill = 0;  // already converted to the source dtype
  OpChain chain;    // applied to each sampled value before it is stored (may be empty)
};

// All channels of output pixel (x, y) of sample n (0 <= x < out_w, 0 <= y < out_h): sample the
// source in TIn, run the chain, store as TOut.
template <typename TIn, typename TOut>
TP_HD void WarpPixel(const WarpArgs& a, int64_t n, int64_t y, int64_t x) {
  const int64_t w = a.w, h = a.h, channels = a.c;
  const TIn* src = static_cast<const TIn*>(a.src) + n * h * w * channels;
  TOut* dst = static_cast<TOut*>(a.dst) +
              ((n * static_cast<int64_t>(a.out_h) + y) * a.out_w + x) * channels;
  const double* m = a.affines + 6 * (n * a.affine_stride);
  const double xd = static_cast<double>(x), yd = static_cast<double>(y);
  const double sx = SourceX(m, xd, yd);
  const double sy = SourceY(m, xd, yd);

  if (IsFarPosition(sx, sy)) {
    for (int32_t ch = 0; ch < a.c; ++ch)
      dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, a.fill, ch));
    return;
  }
  if (a.interp == Interp::kNearest) {
    const int64_t ix = ResolveBorder(NearestIndex(sx), w, a.border);
    const int64_t iy = ResolveBorder(NearestIndex(sy), h, a.border);
    if (ix < 0 || iy < 0) {
      for (int32_t ch = 0; ch < a.c; ++ch)
        dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, a.fill, ch));
      return;
    }
    const TIn* p = src + (iy * w + ix) * channels;
    for (int32_t ch = 0; ch < a.c; ++ch) {
      dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, ToDouble(p[ch]), ch));
    }
    return;
  }

  const int64_t x0 = FloorToInt(sx), y0 = FloorToInt(sy);
  const double fx = SubRn(sx, static_cast<double>(x0)), fy = SubRn(sy, static_cast<double>(y0));
  using Acc = typename BlendAccumulator<TIn>::Type;
  const BilinearWeights<Acc> weights = MakeBilinearWeights<Acc>(fx, fy);
  const int64_t cx0 = ResolveBorder(x0, w, a.border), cx1 = ResolveBorder(x0 + 1, w, a.border);
  const int64_t cy0 = ResolveBorder(y0, h, a.border), cy1 = ResolveBorder(y0 + 1, h, a.border);
  // Element offsets of the four taps (channel 0), -1 for a tap that takes the fill value.
  const int64_t o00 = (cy0 < 0 || cx0 < 0) ? -1 : (cy0 * w + cx0) * channels;
  const int64_t o01 = (cy0 < 0 || cx1 < 0) ? -1 : (cy0 * w + cx1) * channels;
  const int64_t o10 = (cy1 < 0 || cx0 < 0) ? -1 : (cy1 * w + cx0) * channels;
  const int64_t o11 = (cy1 < 0 || cx1 < 0) ? -1 : (cy1 * w + cx1) * channels;
  for (int32_t ch = 0; ch < a.c; ++ch) {
    const double p00 = o00 < 0 ? a.fill : ToDouble(src[o00 + ch]);
    const double p01 = o01 < 0 ? a.fill : ToDouble(src[o01 + ch]);
    const double p10 = o10 < 0 ? a.fill : ToDouble(src[o10 + ch]);
    const double p11 = o11 < 0 ? a.fill : ToDouble(src[o11 + ch]);
    // Blended in the blend type and rounded to TIn as the CPU warp does (sampling.h), then
    // handed to the chain as a value of TIn.
    const TIn v = RoundBlend<TIn>(BlendTaps(static_cast<Acc>(p00), static_cast<Acc>(p01),
                                            static_cast<Acc>(p10), static_cast<Acc>(p11), weights));
    dst[ch] = FromDouble<TOut>(ApplyChain(a.chain, ToDouble(v), ch));
  }
}

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_KERNEL_MATH_H_
