// Affine warp of an NHWC batch: the one geometric kernel. Rotation, flips, resize, crop, pad and
// their compositions are all expressed as a per-sample affine map (output pixel -> source
// position) and an output height and width, and run through it.
#ifndef TENSORPREP_KERNELS_WARP_WARP_H_
#define TENSORPREP_KERNELS_WARP_WARP_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/common/host_device.h"
#include "kernels/common/tensor.h"
#include "kernels/common/thread_pool.h"

namespace tensorprep::kernels {

enum class Interp : uint8_t { kNearest, kBilinear };
// Same meanings as the wire API's Border (skimage modes in brackets):
// kConstant ('constant'), kEdge ('edge'), kReflect ('symmetric', cba|abc|cba),
// kReflect101 ('reflect', cb|abc|ba), kWrap ('wrap').
enum class Border : uint8_t { kConstant, kEdge, kReflect, kReflect101, kWrap };

// Maps an OUTPUT pixel centre (x, y) to the SOURCE position it samples:
//   sx = m[0] * x + m[1] * y + m[2]
//   sy = m[3] * x + m[4] * y + m[5]
// Pixel (i, j) of row i, column j has its centre at x = j, y = i. Evaluated in double precision,
// in exactly this order (no fused multiply-add), by every backend and by the reference.
struct Affine {
  double m[6] = {1, 0, 0, 0, 1, 0};

  // The composition `this` after `first`: (this ∘ first)(p) = this(first(p)).
  TP_HD Affine Then(const Affine& first) const;  // defined below
};

// Identity-free helpers for building inverse maps (output -> source).
// Counter-clockwise rotation by `angle_deg` about ((w-1)/2, (h-1)/2): returns the map from an
// output pixel to the source pixel it samples. Multiples of 90 degrees use exact sines and cosines,
// so they are exact pixel permutations on square images.
Affine RotationInverse(double angle_deg, int64_t h, int64_t w);
// Left-right (horizontal) and/or up-down (vertical) mirror: x -> w-1-x, y -> h-1-y.
Affine FlipInverse(bool horizontal, bool vertical, int64_t h, int64_t w);

struct WarpParams {
  Interp interp = Interp::kBilinear;
  Border border = Border::kConstant;
  double fill = 0;  // for kConstant, converted to the dtype as a cast would
};

// dst[n] (x, y) = sample(src[n], inverse[n](x, y)) for every sample n and every output pixel
// (x, y) of dst: 0 <= x < dst.shape.w, 0 <= y < dst.shape.h. The output's height and width may
// differ from the source's (resize, crop, pad): the loops run over the destination, the borders
// and the bounds of sampling are the source's.
//
// Sampling. Nearest takes the pixel at (floor(sx + 0.5), floor(sy + 0.5)), resolved through the
// border. Bilinear blends the four pixels around (sx, sy) with weights computed in double; each
// tap outside the image is resolved through the border (kConstant taps give `fill`). Results for
// integer dtypes are rounded to nearest (ties to even) and saturated. uint8, float32 and float16
// are blended in float (weights rounded to float), int32 in double; float16 is rounded once. All
// four taps always contribute (a tap of weight 0 too), so non-finite source values or `fill`
// propagate as IEEE arithmetic says.
// A position with |sx| or |sy| >= 2^52, or not finite (only a degenerate map reaches one), samples
// `fill` whatever the border: there the double has no fractional part left to interpolate.
//
// `inverse` has src.shape.n entries, or 1 entry used for every sample. dst has src's dtype, batch
// size n and channel count c, any height and width >= 1, and does not overlap src
// (CheckWarpDestination). Spreads (sample, row band) tasks over `pool` (null: inline). Returns
// INTERNAL when these preconditions are broken (kernels/common/checks.h); never throws.
// Thread-safe for distinct outputs.
absl::Status WarpAffineCpu(const ConstTensorView& src, const TensorView& dst,
                           absl::Span<const Affine> inverse, const WarpParams& params,
                           ThreadPool* pool);

// The preconditions every warp entry point (CPU, CUDA, the CPU backend's fused path) checks on
// its source and arguments, before its own checks of the destination (kernels/common/checks.h):
// src shape and data, `inverse` count (1 or src.shape.n), interpolation and border in their
// enums. INTERNAL "<function>: <what>" otherwise. Thread-safe.
absl::Status CheckWarpSource(absl::string_view function, const ConstTensorView& src,
                             absl::Span<const Affine> inverse, const WarpParams& params);

// The destination check of every warp entry point, after CheckWarpSource passed: dst.shape.n and
// dst.shape.c equal src's, dst.shape.h and dst.shape.w >= 1 (they may differ from src's),
// dst.dtype equals `dtype` (src.dtype, or the output dtype of a fused element-wise chain), data
// not null, and no byte of dst within src's bytes. INTERNAL "<function>: <what>" otherwise.
// Thread-safe; never dereferences either view.
absl::Status CheckWarpDestination(absl::string_view function, const ConstTensorView& src,
                                  const TensorView& dst, DType dtype);

TP_HD Affine Affine::Then(const Affine& f) const {
  Affine r;
  r.m[0] = m[0] * f.m[0] + m[1] * f.m[3];
  r.m[1] = m[0] * f.m[1] + m[1] * f.m[4];
  r.m[2] = m[0] * f.m[2] + m[1] * f.m[5] + m[2];
  r.m[3] = m[3] * f.m[0] + m[4] * f.m[3];
  r.m[4] = m[3] * f.m[1] + m[4] * f.m[4];
  r.m[5] = m[3] * f.m[2] + m[4] * f.m[5] + m[5];
  return r;
}

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_WARP_WARP_H_
