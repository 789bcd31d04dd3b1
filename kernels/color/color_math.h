// The per-pixel arithmetic of the colour adjustments (color.h), written once for host and device
// (TP_HD) and free of CUDA headers: the CPU kernel calls these functions in its tile loops, the
// CUDA kernel per pixel, so both round identically. Every operation is a single correctly rounded
// float32 operation in torchvision's order (AddRn, MulRn, ... from kernels/common/numerics.h: no
// fused multiply-add on either side). Written without branches that depend on pixel values, so
// that the compiler vectorises the CPU loops. Pure functions: thread-safe.
#ifndef TENSORPREP_KERNELS_COLOR_COLOR_MATH_H_
#define TENSORPREP_KERNELS_COLOR_COLOR_MATH_H_

#include <cstdint>

#include "kernels/color/color.h"
#include "kernels/common/half.h"
#include "kernels/common/host_device.h"
#include "kernels/common/numerics.h"
#include "kernels/common/tensor.h"

namespace tensorprep::kernels::color {

// How a value computed in float32 becomes a member of the batch's dtype (color.h).
enum class Rounding : uint8_t {
  kNone,   // float32
  kTrunc,  // uint8: toward zero (the values are already within [0, 255])
  kHalf,   // float16: to nearest even
};

// `v` rounded to the nearest binary16 value (ties to even, overflow to +-inf), kept in a float:
// RoundFloatToHalf (kernels/common/half.h) without its branches. Adding and removing 2^(e + 13),
// where 2^e <= |v| < 2^(e+1) (e at least -14, the binary16 subnormal grid), leaves exactly the 10
// fraction bits binary16 keeps, rounded as the default mode does.
TP_HD float RoundHalfGrid(float v) {
  const uint32_t bits = FloatBits(v);
  const uint32_t sign = bits & 0x80000000u;
  const float a = BitsToFloat(bits & 0x7fffffffu);
  uint32_t e = (bits >> 23) & 0xffu;
  e = e < 113u ? 113u : e;  // 2^-14
  // a >= 65520 (half-way to 65536 and beyond) overflows; NaN falls through and stays NaN. The
  // magic constant for the top exponents is clamped so that it stays finite.
  const float magic = BitsToFloat(((e > 142u ? 142u : e) + 13u) << 23);
  const float rounded = SubRn(AddRn(a, magic), magic);
  const float r = a >= 65520.0f ? BitsToFloat(0x7f800000u) : rounded;
  return BitsToFloat(FloatBits(r) | sign);
}

template <Rounding kR>
TP_HD float ToDType(float v) {
  if constexpr (kR == Rounding::kTrunc) {
    return static_cast<float>(static_cast<int32_t>(v));
  } else if constexpr (kR == Rounding::kHalf) {
    return RoundHalfGrid(v);
  } else {
    return v;
  }
}

// min(max(v, 0), bound) as torch.clamp: NaN stays NaN, -0 stays -0.
TP_HD float Clamp0(float v, float bound) { return v < 0.0f ? 0.0f : (v > bound ? bound : v); }

// torchvision's rgb_to_grayscale in float32 (not yet converted to the dtype).
TP_HD float Gray(float r, float g, float b) {
  return AddRn(AddRn(MulRn(0.2989f, r), MulRn(0.587f, g)), MulRn(0.114f, b));
}

// One blend step: clamp(F(a * x) + o_term) with o_term = F(F(1 - r) * other) computed by the caller.
TP_HD float Blend(float a, float x, float o_term, float bound) {
  return Clamp0(AddRn(MulRn(a, x), o_term), bound);
}

// torchvision's adjust_hue on one pixel in float32 (values already scaled to [0, 1] for uint8):
// _rgb2hsv, the shift, _hsv2rgb. `shift` is F(hue_factor).
TP_HD void Hue(float& r, float& g, float& b, float shift) {
  const float maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
  const float minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
  const bool eqc = maxc == minc;
  const float cr = SubRn(maxc, minc);
  const float s = DivRn(cr, eqc ? 1.0f : maxc);
  const float crd = eqc ? 1.0f : cr;
  const float rc = DivRn(SubRn(maxc, r), crd);
  const float gc = DivRn(SubRn(maxc, g), crd);
  const float bc = DivRn(SubRn(maxc, b), crd);
  // torchvision multiplies each candidate by its 0/1 mask and adds the three; with finite
  // candidates that is the selected one (a zero's sign cannot survive the "+ 1" below).
  const float hr = SubRn(bc, gc);
  const float hg = SubRn(AddRn(2.0f, rc), bc);
  const float hb = SubRn(AddRn(4.0f, gc), rc);
  const float h0 = maxc == r ? hr : (maxc == g ? hg : hb);
  // fmod(h / 6 + 1, 1): h is within [-1, 5], so y is within [5/6, 11/6] and y - 1 is exact.
  const float y = AddRn(DivRn(h0, 6.0f), 1.0f);
  const float h1 = y >= 1.0f ? SubRn(y, 1.0f) : y;
  // (h + shift) mod 1 as torch.remainder: a is within [-0.5, 1.5).
  const float a = AddRn(h1, shift);
  const float h = a < 0.0f ? AddRn(a, 1.0f) : (a >= 1.0f ? SubRn(a, 1.0f) : a);
  const float v = maxc;
  const float h6 = MulRn(h, 6.0f);
  // h6 is within [0, 6] here (or NaN, replaced below): truncation is floor.
  const int32_t i0 = static_cast<int32_t>(h6 == h6 ? h6 : 0.0f);
  const float f = SubRn(h6, static_cast<float>(i0));
  const int32_t i = i0 == 6 ? 0 : i0;
  const float p = Clamp0(MulRn(v, SubRn(1.0f, s)), 1.0f);
  const float q = Clamp0(MulRn(v, SubRn(1.0f, MulRn(s, f))), 1.0f);
  const float t = Clamp0(MulRn(v, SubRn(1.0f, MulRn(s, SubRn(1.0f, f)))), 1.0f);
  // i: 0 (v, t, p), 1 (q, v, p), 2 (p, v, t), 3 (p, q, v), 4 (t, p, v), 5 (v, p, q). Compared as
  // floats and assigned in steps: the form the compiler turns into vector selects.
  const float fi = static_cast<float>(i);
  float ro = p;
  ro = fi == 1.0f ? q : ro;
  ro = fi == 4.0f ? t : ro;
  ro = (fi == 0.0f) | (fi == 5.0f) ? v : ro;
  float go = p;
  go = fi == 0.0f ? t : go;
  go = fi == 3.0f ? q : go;
  go = (fi == 1.0f) | (fi == 2.0f) ? v : go;
  float bo = p;
  bo = fi == 2.0f ? t : bo;
  bo = fi == 5.0f ? q : bo;
  bo = (fi == 3.0f) | (fi == 4.0f) ? v : bo;
  // torchvision's einsum multiplies every candidate by its 0/1 mask, so a NaN among p, q, t or
  // v, or an infinite v, makes all three channels NaN; so does a NaN channel (torch.max
  // propagates it into v) or an infinite one (its rc, gc or bc is inf / inf, hence h). x - x is 0
  // for finite x and NaN otherwise; subtracting a zero keeps every value, -0 included.
  const float z = AddRn(AddRn(AddRn(SubRn(r, r), SubRn(g, g)), AddRn(SubRn(b, b), SubRn(v, v))),
                        AddRn(AddRn(SubRn(p, p), SubRn(q, q)), SubRn(t, t)));
  r = SubRn(ro, z);
  g = SubRn(go, z);
  b = SubRn(bo, z);
}

// An adjustment as the kernels apply it, with its constants rounded to float32 once on the host.
struct ColorStep {
  ColorKind kind = ColorKind::kBrightness;
  float a = 1;       // F(factor), or F(hue factor) for kHue
  float b = 0;       // F(1 - factor) (computed in double first)
  float b_zero = 0;  // F(b * 0): brightness's second term (+0, or -0 when b < 0)
};

// The step for `adjust` (whose factor is valid, color.h).
inline ColorStep MakeColorStep(const ColorAdjust& adjust) {
  ColorStep s;
  s.kind = adjust.kind;
  s.a = static_cast<float>(adjust.factor);
  s.b = static_cast<float>(1.0 - adjust.factor);
  s.b_zero = s.b * 0.0f;
  return s;
}

// The contrast step's second term for a sample whose mean gray value is `mean`.
TP_HD float ContrastTerm(const ColorStep& s, float mean) { return MulRn(s.b, mean); }

// The mean of a sample from the double sum of its gray values (color.h).
TP_HD float MeanFromSum(double sum, int64_t pixels) {
  return DivRn(static_cast<float>(sum), static_cast<float>(pixels));
}

// One pixel through one step of kind K; `contrast_term` is ContrastTerm for this sample (kContrast
// only). Values enter and leave as members of the dtype (rounded by kR).
template <ColorKind K, Rounding kR>
TP_HD void Step(const ColorStep& s, float contrast_term, float& r, float& g, float& b) {
  constexpr float kBound = kR == Rounding::kTrunc ? 255.0f : 1.0f;
  if constexpr (K == ColorKind::kBrightness || K == ColorKind::kContrast) {
    const float term = K == ColorKind::kBrightness ? s.b_zero : contrast_term;
    r = ToDType<kR>(Blend(s.a, r, term, kBound));
    g = ToDType<kR>(Blend(s.a, g, term, kBound));
    b = ToDType<kR>(Blend(s.a, b, term, kBound));
  } else if constexpr (K == ColorKind::kSaturation) {
    // rgb_to_grayscale(img) keeps the dtype: truncated for uint8.
    const float gray = kR == Rounding::kTrunc ? ToDType<kR>(Gray(r, g, b)) : Gray(r, g, b);
    const float term = MulRn(s.b, gray);
    r = ToDType<kR>(Blend(s.a, r, term, kBound));
    g = ToDType<kR>(Blend(s.a, g, term, kBound));
    b = ToDType<kR>(Blend(s.a, b, term, kBound));
  } else if constexpr (K == ColorKind::kHue) {
    if constexpr (kR == Rounding::kTrunc) {
      r = DivRn(r, 255.0f);
      g = DivRn(g, 255.0f);
      b = DivRn(b, 255.0f);
      Hue(r, g, b, s.a);
      r = ToDType<kR>(MulRn(r, 255.0f));
      g = ToDType<kR>(MulRn(g, 255.0f));
      b = ToDType<kR>(MulRn(b, 255.0f));
    } else {
      Hue(r, g, b, s.a);
      r = ToDType<kR>(r);
      g = ToDType<kR>(g);
      b = ToDType<kR>(b);
    }
  } else {  // kGrayscale
    r = ToDType<kR>(Gray(r, g, b));
    g = r;
    b = r;
  }
}

// Step with the kind chosen at run time (s.kind is valid, CheckColorChains).
template <Rounding kR>
TP_HD void ApplyStep(const ColorStep& s, float contrast_term, float& r, float& g, float& b) {
  switch (s.kind) {
    case ColorKind::kBrightness:
      return Step<ColorKind::kBrightness, kR>(s, contrast_term, r, g, b);
    case ColorKind::kContrast:
      return Step<ColorKind::kContrast, kR>(s, contrast_term, r, g, b);
    case ColorKind::kSaturation:
      return Step<ColorKind::kSaturation, kR>(s, contrast_term, r, g, b);
    case ColorKind::kHue:
      return Step<ColorKind::kHue, kR>(s, contrast_term, r, g, b);
    case ColorKind::kGrayscale:
      return Step<ColorKind::kGrayscale, kR>(s, contrast_term, r, g, b);
  }
}

// The gray value a contrast step averages: the pixel's gray converted to the dtype for uint8 (as
// torchvision's rgb_to_grayscale(img).to(float32)), unrounded float32 for the floating dtypes.
template <Rounding kR>
TP_HD float ContrastGray(float r, float g, float b) {
  return kR == Rounding::kTrunc ? ToDType<kR>(Gray(r, g, b)) : Gray(r, g, b);
}

// The fixed order in which a row's 8 lane sums are added (color.h).
TP_HD double CombineLanes(const double* l) {
  return AddRn(AddRn(AddRn(l[0], l[1]), AddRn(l[2], l[3])), AddRn(AddRn(l[4], l[5]), AddRn(l[6], l[7])));
}

inline constexpr int kLanes = 8;

}  // namespace tensorprep::kernels::color

#endif  // TENSORPREP_KERNELS_COLOR_COLOR_MATH_H_
