// Colour adjustments of RGB batches (brightness, contrast, saturation, hue, grayscale) with the
// semantics of torchvision.transforms.functional's tensor kernels (functional_tensor.py; v2's
// functional computes the same), applied as per-sample chains, so that a colour jitter (a factor
// set and an order drawn per sample) is one call.
//
// Semantics. Every op computes in float32 exactly as torchvision's tensor code does, one torch
// operation at a time (each rounded to float32, no fused multiply-add), and its result is converted
// to the batch's dtype before the next op reads it, as when torchvision's functions are called in
// sequence. With x a channel value, r the factor, F(v) rounding to float32, clamp(v) =
// min(max(v, 0), bound) (NaN stays NaN), bound = 255 for uint8 and 1 for floating dtypes:
//   blend(x, o)  = clamp(F(F(F(r) * x) + F(F(1 - r) * o)))      (1 - r computed in double)
//   gray(R,G,B)  = F(F(F(0.2989) R + F(0.587) G) + F(0.114) B)  (each product rounded)
//   kBrightness  blend(x, 0)
//   kSaturation  blend(x, gray_d) with gray_d the pixel's gray converted to the dtype (uint8)
//   kContrast    blend(x, mean) with mean = F(sum) / F(H * W), sum the sample's gray_d values
//                added in double in a fixed order: each row in 8 lanes (lane j adds the pixels
//                x = j, j + 8, ... in order), the lanes added as ((l0 + l1) + (l2 + l3)) +
//                ((l4 + l5) + (l6 + l7)), the rows' totals added in row order
//   kHue         torchvision's _rgb2hsv, h = (h + F(r)) mod 1, _hsv2rgb, step by step in float32;
//                uint8 goes through F(x / 255) and back through F(v * 255)
//   kGrayscale   gray(R,G,B) converted to the dtype; 3 equal channels, or 1 where the chain ends
//                with it and dst has 1 channel
// Conversion to the dtype: uint8 truncates toward zero (torch's .to(uint8) of a value already
// clamped to [0, 255]); float32 keeps the value; float16 rounds to nearest even. float16 is computed
// as float32 (the op applied to the widened image, its result rounded to float16 once): torch 1.13
// has no CPU kernels for these ops on float16, and on a GPU it would round after every primitive.
//
// Parity with torchvision 0.14 / torch 1.13 (CPU), measured on random images (1x1, 7x13, 64x48,
// 224x224, 512x512 and 1024x1000; factors 0, 0.3, 0.5, 1, 1.7, 5, 1000; hue -0.5 .. 0.5):
//   uint8, every op:                          identical (max difference 0)
//   float32 brightness, saturation, hue, gray: identical (max difference 0)
//   float32 contrast: the mean is the correctly summed one here, torch sums in float32 (cascade),
//                     so the mean differs by up to 1 float32 ulp: max difference 1.2e-7 for
//                     factors up to 5, 6.1e-5 at factor 1000 (|1 - r| * ulp(mean))
//   float16: torch 1.13 cannot run these ops on float16 on the CPU; by construction the result is
//            torch's float32 result for the widened image, rounded to float16 (contrast: as above)
// Out-of-range float values (negative, above 1, infinite, NaN) follow the same formulas. Hue picks
// the selected HSV sector's values where torchvision adds all six masked by 0 or 1, which is the
// same for finite candidates; where torchvision's sum meets a NaN or an infinity (a NaN or
// infinite channel, max - min overflowing, a maximum of 0 with a negative minimum) all three
// channels are NaN, as in torchvision.
//
// Backends: ColorCpu and ColorCuda (kernels/cuda/cuda_api.h) compute the same float32 operations in
// the same order and give identical bits for every dtype and any thread count or batch split; the
// reference (kernels/reference/color_reference.h) spells the formulas out op by op and the tests
// compare both backends with it exactly.
#ifndef TENSORPREP_KERNELS_COLOR_COLOR_H_
#define TENSORPREP_KERNELS_COLOR_COLOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/common/thread_pool.h"

namespace tensorprep::kernels {

enum class ColorKind : uint8_t { kBrightness, kContrast, kSaturation, kHue, kGrayscale };

// "brightness", "contrast", "saturation", "hue", "grayscale" ("unknown" for other values).
const char* ColorKindName(ColorKind kind);

// One adjustment. `factor` is the brightness, contrast or saturation factor (1 = unchanged) or the
// hue shift in turns (0 = unchanged); kGrayscale ignores it.
struct ColorAdjust {
  ColorKind kind = ColorKind::kBrightness;
  double factor = 1;
};

// The largest brightness, contrast or saturation factor: below it no uint8 computation overflows
// float32 (torchvision accepts any non-negative factor; larger ones saturate every pixel anyway).
inline constexpr double kMaxColorFactor = 1e30;

// The factors an adjustment accepts, [lo, hi]: brightness, contrast and saturation
// [0, kMaxColorFactor], hue [-0.5, 0.5], grayscale any (the factor is ignored). The one statement
// of this rule (kernels/common/checks.h): the op registry words the client's INVALID_ARGUMENT from
// it, CheckColorChains applies it as the kernels' precondition. Pure; thread-safe.
struct ColorFactorRange {
  double lo = 0;
  double hi = 0;
};
ColorFactorRange ColorFactorLimits(ColorKind kind);
// Whether `factor` is within ColorFactorLimits(kind) (never for NaN, except kGrayscale).
bool ColorFactorValid(ColorKind kind, double factor);

// The preconditions of a call (kernels/common/checks.h), for a source view and the destination's
// channel count: src passes CheckSourceView, has 3 channels and dtype uint8, float32 or float16;
// chains has 1 entry (for every sample) or src.shape.n (one per sample); every adjustment has a
// known kind and a valid factor (ColorFactorValid); out_channels is 3, or 1 when every chain ends
// with kGrayscale. INTERNAL "<function>: <what>" otherwise. Pure; thread-safe.
absl::Status CheckColorChains(absl::string_view function, const ConstTensorView& src,
                              int64_t out_channels,
                              absl::Span<const std::vector<ColorAdjust>> chains);

// The destination view (kernels/common/checks.h): shape (src's n, h, w, 3 or 1), src's dtype, data
// not null, and either no overlap with src or exactly src's memory with 3 channels (in place).
// `src` is assumed to have passed CheckColorChains. INTERNAL "<function>: <what>" otherwise. Pure.
absl::Status CheckColorDestination(absl::string_view function, const ConstTensorView& src,
                                   const TensorView& dst);

// dst = each sample of src with its chain applied in order (chains[0] for every sample when there
// is one chain, else chains[i] for sample i). An empty chain copies. dst must have src's n, h, w
// and dtype and 3 channels, or 1 when every chain ends with kGrayscale; dst may be exactly src's
// memory (in place, 3 channels), otherwise the two must not overlap. Spreads samples over `pool`
// (null: inline), and the rows of large samples when there are fewer samples than threads; the
// result does not depend on the pool. INTERNAL when the views or chains break the preconditions
// (CheckColorChains and the above); never throws. Thread-safe for distinct dst.
absl::Status ColorCpu(const ConstTensorView& src, const TensorView& dst,
                      absl::Span<const std::vector<ColorAdjust>> chains, ThreadPool* pool);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_COLOR_COLOR_H_
