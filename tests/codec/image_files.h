// Test image files made in memory: JPEG through libjpeg (subsampling, progressive, grey, CMYK)
// and PNG through libpng with any colour type, bit depth, palette and interlacing; and OpenCV's
// decode of a file as the independent reference. Shared by the codec and image_list tests.
#ifndef TENSORPREP_TESTS_CODEC_IMAGE_FILES_H_
#define TENSORPREP_TESTS_CODEC_IMAGE_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

namespace tensorprep::testing {

// An 8-bit image, rows of w * c bytes.
struct Pixels {
  int64_t h = 0;
  int64_t w = 0;
  int c = 0;
  std::vector<uint8_t> data;
  uint8_t at(int64_t y, int64_t x, int ch) const { return data[(y * w + x) * c + ch]; }
};

// Smooth gradients with noise and a few edges: realistic for JPEG, different every seed.
Pixels SyntheticImage(int64_t h, int64_t w, int c, uint32_t seed);

enum class Subsampling { k444, k422, k420 };
// A JPEG of `p` (c = 1 or 3, RGB); fails the test (ADD_FAILURE) and returns "" on error.
std::string EncodeJpeg(const Pixels& p, int quality, Subsampling s, bool progressive);
// A CMYK JPEG (with libjpeg's Adobe marker, so readers take the values as inverted) of `p`,
// c = 4.
std::string EncodeCmykJpeg(const Pixels& p, int quality);

struct PngOptions {
  int colour_type = 2;  // 0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGB + alpha
  int bit_depth = 8;    // 16: each sample written as (v << 8) | (255 - v)
  bool interlace = false;
  std::vector<uint8_t> palette;  // colour type 3: RGB triples
  std::vector<uint8_t> trns;     // colour type 3: alpha per palette entry (optional)
};
// OpenCV's decode of a whole file as RGB (channels 3) or grey (1): an independent decoder to
// compare with.
Pixels OpenCvDecode(const std::string& file, int channels);

// A PNG of `p`, whose c matches the colour type (palette: c = 1, the indices; bit depths below 8
// take the low bits of each value).
std::string EncodePng(const Pixels& p, const PngOptions& options);

}  // namespace tensorprep::testing

#endif  // TENSORPREP_TESTS_CODEC_IMAGE_FILES_H_
