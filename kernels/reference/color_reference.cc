// Deliberately plain: an image is three planes of doubles, each op is written like torchvision's
// function (functional_tensor.py in torchvision 0.14), a torch operation becomes a loop over the
// whole image, and F() rounds to float32 where torch's float32 arithmetic rounds. Only the
// binary16 grid (kernels/common/numerics.h, tested on its own) is shared with the kernels.
#include "kernels/reference/color_reference.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/common/numerics.h"
#include "kernels/reference/reference.h"

namespace tensorprep::kernels::reference {
namespace {

// torch's float32 arithmetic: the exact result of one operation on float32 operands (exact in
// double for +, -, * and / of two float32 values; only division needs the rounding below to be
// exact, which it is because double carries more than 2 * 24 + 2 bits) rounded to float32.
double F(double x) { return static_cast<double>(static_cast<float>(x)); }

struct Image {
  int64_t h = 0, w = 0;
  std::vector<double> r, g, b;  // row-major planes
  size_t size() const { return r.size(); }
};

// The dtype's conversion of a float32 result (color.h): .to(uint8) truncates, float16 rounds to
// nearest even with IEEE overflow.
double ToDType(double v, DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return std::trunc(v);
    case DType::kFloat16:
      if (std::isnan(v)) return v;
      if (std::fabs(v) >= 65520.0) return std::copysign(HUGE_VAL, v);
      return RoundToHalfGrid(v);
    default:
      return v;
  }
}

// rgb_to_grayscale without the final .to(dtype).
std::vector<double> GrayFloat(const Image& img) {
  std::vector<double> out(img.size());
  const double cr = F(0.2989), cg = F(0.587), cb = F(0.114);
  for (size_t i = 0; i < img.size(); ++i) {
    out[i] = F(F(F(cr * img.r[i]) + F(cg * img.g[i])) + F(cb * img.b[i]));
  }
  return out;
}

// _blend(img, other, ratio): (ratio * img + (1.0 - ratio) * other).clamp(0, bound).to(dtype).
double Blend(double x, double other, double ratio, DType dtype) {
  const double bound = dtype == DType::kUInt8 ? 255.0 : 1.0;
  double v = F(F(F(ratio) * x) + F(F(1.0 - ratio) * other));
  // torch.clamp: NaN stays NaN, and -0 stays -0 (std::max(-0.0, 0.0) is its first operand).
  if (!std::isnan(v)) v = std::min(std::max(v, 0.0), bound);
  return ToDType(v, dtype);
}

void BlendImage(Image& img, const std::vector<double>& other, double ratio, DType dtype) {
  for (size_t i = 0; i < img.size(); ++i) {
    img.r[i] = Blend(img.r[i], other[i], ratio, dtype);
    img.g[i] = Blend(img.g[i], other[i], ratio, dtype);
    img.b[i] = Blend(img.b[i], other[i], ratio, dtype);
  }
}

void Brightness(Image& img, double ratio, DType dtype) {
  BlendImage(img, std::vector<double>(img.size(), 0.0), ratio, dtype);
}

void Saturation(Image& img, double ratio, DType dtype) {
  std::vector<double> gray = GrayFloat(img);
  if (dtype == DType::kUInt8) {
    for (double& v : gray) v = std::trunc(v);
  }
  BlendImage(img, gray, ratio, dtype);
}

// The sample's mean gray value in color.h's summation order.
double Mean(const Image& img, DType dtype) {
  std::vector<double> gray = GrayFloat(img);
  if (dtype == DType::kUInt8) {
    for (double& v : gray) v = std::trunc(v);
  }
  double sum = 0;
  for (int64_t y = 0; y < img.h; ++y) {
    double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t x = 0; x < img.w; ++x) lanes[x % 8] += gray[static_cast<size_t>(y * img.w + x)];
    sum += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
           ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
  }
  return F(F(sum) / F(static_cast<double>(img.h * img.w)));
}

void Contrast(Image& img, double ratio, DType dtype) {
  BlendImage(img, std::vector<double>(img.size(), Mean(img, dtype)), ratio, dtype);
}

void Grayscale(Image& img, DType dtype) {
  std::vector<double> gray = GrayFloat(img);
  for (double& v : gray) v = ToDType(v, dtype);
  img.r = gray;
  img.g = gray;
  img.b = gray;
}

// _rgb2hsv, the shift and _hsv2rgb on one pixel of float32 values.
void HuePixel(double& r, double& g, double& b, double hue_factor) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  // torch.max / torch.min over the channels propagate NaN.
  if (std::isnan(r) || std::isnan(g) || std::isnan(b)) {
    r = g = b = nan;
    return;
  }
  const double maxc = std::max(std::max(r, g), b);
  const double minc = std::min(std::min(r, g), b);
  const bool eqc = maxc == minc;
  const double cr = F(maxc - minc);
  const double s = F(cr / (eqc ? 1.0 : maxc));
  const double crd = eqc ? 1.0 : cr;
  const double rc = F(F(maxc - r) / crd);
  const double gc = F(F(maxc - g) / crd);
  const double bc = F(F(maxc - b) / crd);
  // hr, hg and hb are each multiplied by a 0/1 mask and added: 0 * NaN is NaN.
  const double mr = maxc == r ? 1.0 : 0.0;
  const double mg = (maxc == g && maxc != r) ? 1.0 : 0.0;
  const double mb = (maxc != g && maxc != r) ? 1.0 : 0.0;
  const double hr = F(mr * F(bc - gc));
  const double hg = F(mg * F(F(2.0 + rc) - bc));
  const double hb = F(mb * F(F(4.0 + gc) - rc));
  double h = F(F(hr + hg) + hb);
  h = std::fmod(F(F(h / 6.0) + 1.0), 1.0);  // exact
  // (h + hue_factor) % 1.0: torch.remainder.
  const double a = F(h + F(hue_factor));
  double m = std::fmod(a, 1.0);
  if (m != 0 && m < 0) m = F(m + 1.0);
  h = m;
  const double v = maxc;
  const double h6 = F(h * 6.0);
  const double fi = std::floor(h6);
  const double f = F(h6 - fi);
  const auto clamp01 = [](double x) { return std::isnan(x) ? x : std::min(std::max(x, 0.0), 1.0); };
  const double p = clamp01(F(v * F(1.0 - s)));
  const double q = clamp01(F(v * F(1.0 - F(s * f))));
  const double t = clamp01(F(v * F(1.0 - F(s * F(1.0 - f)))));
  if (std::isnan(h6)) {  // floor(NaN).to(int32) selects no sector that avoids the NaN in f
    r = g = b = nan;
    return;
  }
  const int i = static_cast<int>(fi) % 6;
  // einsum("...ijk, ...xijk -> ...xjk", mask, a4): every channel adds all six candidates times
  // their 0/1 mask; a NaN or infinite candidate makes the sum NaN.
  const double a1[6] = {v, q, p, p, t, v};
  const double a2[6] = {t, v, v, q, p, p};
  const double a3[6] = {p, p, t, v, v, q};
  const auto pick = [&](const double* cand) {
    double sum = 0;
    for (int k = 0; k < 6; ++k) sum += (k == i ? 1.0 : 0.0) * cand[k];
    return sum;
  };
  r = pick(a1);
  g = pick(a2);
  b = pick(a3);
}

void Hue(Image& img, double hue_factor, DType dtype) {
  for (size_t i = 0; i < img.size(); ++i) {
    double r = img.r[i], g = img.g[i], b = img.b[i];
    if (dtype == DType::kUInt8) {  // img.to(float32) / 255.0
      r = F(r / 255.0);
      g = F(g / 255.0);
      b = F(b / 255.0);
    }
    HuePixel(r, g, b, hue_factor);
    if (dtype == DType::kUInt8) {  // (img * 255.0).to(uint8)
      r = F(r * 255.0);
      g = F(g * 255.0);
      b = F(b * 255.0);
    }
    img.r[i] = ToDType(r, dtype);
    img.g[i] = ToDType(g, dtype);
    img.b[i] = ToDType(b, dtype);
  }
}

}  // namespace

std::vector<double> Color(const ConstTensorView& src,
                          absl::Span<const std::vector<ColorAdjust>> chains, int64_t out_channels) {
  const BatchShape& s = src.shape;
  const std::vector<double> in = ToDoubles(src);
  std::vector<double> out;
  out.reserve(static_cast<size_t>(s.n * s.h * s.w * out_channels));
  const size_t pixels = static_cast<size_t>(s.h * s.w);
  for (int64_t n = 0; n < s.n; ++n) {
    Image img;
    img.h = s.h;
    img.w = s.w;
    for (size_t i = 0; i < pixels; ++i) {
      const size_t at = (static_cast<size_t>(n) * pixels + i) * 3;
      img.r.push_back(in[at]);
      img.g.push_back(in[at + 1]);
      img.b.push_back(in[at + 2]);
    }
    for (const ColorAdjust& a : chains[chains.size() == 1 ? 0 : static_cast<size_t>(n)]) {
      switch (a.kind) {
        case ColorKind::kBrightness:
          Brightness(img, a.factor, src.dtype);
          break;
        case ColorKind::kContrast:
          Contrast(img, a.factor, src.dtype);
          break;
        case ColorKind::kSaturation:
          Saturation(img, a.factor, src.dtype);
          break;
        case ColorKind::kHue:
          Hue(img, a.factor, src.dtype);
          break;
        case ColorKind::kGrayscale:
          Grayscale(img, src.dtype);
          break;
      }
    }
    for (size_t i = 0; i < pixels; ++i) {
      out.push_back(img.r[i]);
      if (out_channels == 3) {
        out.push_back(img.g[i]);
        out.push_back(img.b[i]);
      }
    }
  }
  return out;
}

}  // namespace tensorprep::kernels::reference
