// The image decoder (kernels/codec): headers read without decoding, JPEG against OpenCV's
// decoder of the same files, a box of a JPEG equal to that box of the whole image for every
// chroma subsampling, PNG against the pixels it was written from over every colour type, bit
// depth, palette and interlacing, and every corrupt, truncated or foreign file refused with what
// is wrong.
#include "kernels/codec/image_decode.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/codec/image_files.h"

namespace tensorprep::kernels {
namespace {

using tensorprep::testing::EncodeCmykJpeg;
using tensorprep::testing::EncodeJpeg;
using tensorprep::testing::EncodePng;
using tensorprep::testing::OpenCvDecode;
using tensorprep::testing::Pixels;
using tensorprep::testing::PngOptions;
using tensorprep::testing::Subsampling;
using tensorprep::testing::SyntheticImage;

// Decodes `box` of `file` into a Pixels of `channels`.
absl::StatusOr<Pixels> Decode(const std::string& file, int channels, DecodeBox box = {}) {
  auto header = ReadImageHeader(file);
  if (!header.ok()) return header.status();
  if (box.height == 0) box = {0, 0, header->height, header->width};
  Pixels p{box.height, box.width, channels,
           std::vector<uint8_t>(static_cast<size_t>(box.height * box.width * channels))};
  absl::Status s = DecodeImage(file, *header, channels, box, p.data.data(), box.width * channels);
  if (!s.ok()) return s;
  return p;
}

// ---- headers --------------------------------------------------------------------------------

TEST(ImageHeaderTest, ReadsFormatSizeAndChannelsWithoutDecoding) {
  const Pixels rgb = SyntheticImage(37, 53, 3, 1);
  auto jpeg = ReadImageHeader(EncodeJpeg(rgb, 90, Subsampling::k420, false));
  ASSERT_TRUE(jpeg.ok()) << jpeg.status();
  EXPECT_EQ(jpeg->format, ImageFormat::kJpeg);
  EXPECT_EQ(jpeg->height, 37);
  EXPECT_EQ(jpeg->width, 53);
  EXPECT_EQ(jpeg->stored_channels, 3);
  auto progressive = ReadImageHeader(EncodeJpeg(rgb, 90, Subsampling::k444, true));
  ASSERT_TRUE(progressive.ok()) << progressive.status();
  EXPECT_EQ(progressive->width, 53);
  PngOptions palette;
  palette.colour_type = 3;
  palette.palette = {0, 0, 0, 255, 0, 0};
  Pixels idx = SyntheticImage(5, 7, 1, 2);
  for (auto& v : idx.data) v %= 2;
  auto png = ReadImageHeader(EncodePng(idx, palette));
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(png->format, ImageFormat::kPng);
  EXPECT_EQ(png->height, 5);
  EXPECT_EQ(png->width, 7);
  EXPECT_TRUE(png->palette);
}

// A decompression bomb is caught here: the header's size is read, nothing is allocated.
TEST(ImageHeaderTest, DeclaredSizeIsReadFromAFewBytes) {
  std::string png = EncodePng(SyntheticImage(2, 2, 3, 3), {});
  // IHDR width and height (big-endian at bytes 16 and 20): 100000 x 100000.
  for (int off : {16, 20}) {
    png[off] = 0;
    png[off + 1] = 0x01;
    png[off + 2] = static_cast<char>(0x86);
    png[off + 3] = static_cast<char>(0xA0);
  }
  auto h = ReadImageHeader(png.substr(0, 33));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->height, 100000);
  EXPECT_EQ(h->width, 100000);
}

TEST(ImageHeaderTest, RefusesForeignTruncatedAndEmptyFiles) {
  const std::string jpeg = EncodeJpeg(SyntheticImage(16, 16, 3, 4), 90, Subsampling::k420, false);
  const std::string png = EncodePng(SyntheticImage(16, 16, 3, 4), {});
  struct Case {
    std::string file;
    std::string message;
  };
  const Case cases[] = {
      {"GIF89a\x01\x00\x01\x00", "unsupported image format: expected a JPEG or PNG file, got a GIF file"},
      {std::string("RIFF\0\0\0\0WEBPVP8 ", 16), "got a WebP file"},
      {"BM\x36\x00", "got a BMP file"},
      {"hello", "got bytes 68 65 6c 6c 6f"},
      {"", "got no bytes"},
      {jpeg.substr(0, 20), "JPEG file cut short: 20 bytes, before its frame header (SOF)"},
      {png.substr(0, 20), "PNG file cut short: 20 bytes, before the end of its header"},
  };
  for (const Case& c : cases) {
    auto h = ReadImageHeader(c.file);
    ASSERT_FALSE(h.ok()) << c.message;
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(h.status().message().find(c.message), std::string::npos) << h.status();
  }
  std::string zero = png;
  for (int off = 16; off < 20; ++off) zero[off] = 0;
  auto h = ReadImageHeader(zero);
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.status().message().find("declares a size of 16x0"), std::string::npos) << h.status();
}

// ---- JPEG ---------------------------------------------------------------------------------

TEST(JpegDecodeTest, EqualsOpenCvForEverySubsamplingAndProgressive) {
  for (Subsampling s : {Subsampling::k444, Subsampling::k422, Subsampling::k420}) {
    for (bool progressive : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "subsampling " << static_cast<int>(s)
                                        << " progressive " << progressive);
      const std::string file = EncodeJpeg(SyntheticImage(45, 67, 3, 5), 85, s, progressive);
      for (int channels : {3, 1}) {
        auto got = Decode(file, channels);
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_EQ(got->data, OpenCvDecode(file, channels).data) << "channels " << channels;
      }
    }
  }
}

TEST(JpegDecodeTest, GreyFileGivesItsPlaneOrThreeCopies) {
  const std::string file = EncodeJpeg(SyntheticImage(20, 30, 1, 6), 90, Subsampling::k444, false);
  auto grey = Decode(file, 1);
  auto rgb = Decode(file, 3);
  ASSERT_TRUE(grey.ok() && rgb.ok());
  EXPECT_EQ(grey->data, OpenCvDecode(file, 1).data);
  for (size_t i = 0; i < grey->data.size(); ++i) {
    for (int c = 0; c < 3; ++c) ASSERT_EQ(rgb->data[3 * i + c], grey->data[i]) << i;
  }
}

// Box decoding skips whole blocks around the box: the pixels must be those of a full decode,
// chroma upsampling at the box's edges included, for boxes touching every edge and 1 pixel wide.
TEST(JpegDecodeTest, BoxEqualsTheSameBoxOfTheWholeImage) {
  std::mt19937 rng(7);
  for (Subsampling s : {Subsampling::k444, Subsampling::k422, Subsampling::k420}) {
    for (bool progressive : {false, true}) {
      const int64_t h = 83, w = 121;
      const std::string file = EncodeJpeg(SyntheticImage(h, w, 3, 8), 80, s, progressive);
      for (int channels : {3, 1}) {
        auto whole = Decode(file, channels);
        ASSERT_TRUE(whole.ok()) << whole.status();
        std::vector<DecodeBox> boxes = {{0, 0, h, w},      {0, 0, 1, 1},       {h - 1, w - 1, 1, 1},
                                        {17, 33, 40, 50},  {16, 32, 16, 16},   {0, 60, h, 1},
                                        {50, 0, 1, w},     {1, 1, h - 2, w - 2}};
        for (int k = 0; k < 40; ++k) {
          DecodeBox b;
          b.top = std::uniform_int_distribution<int64_t>(0, h - 1)(rng);
          b.left = std::uniform_int_distribution<int64_t>(0, w - 1)(rng);
          b.height = std::uniform_int_distribution<int64_t>(1, h - b.top)(rng);
          b.width = std::uniform_int_distribution<int64_t>(1, w - b.left)(rng);
          boxes.push_back(b);
        }
        for (const DecodeBox& b : boxes) {
          SCOPED_TRACE(::testing::Message()
                       << "subsampling " << static_cast<int>(s) << " progressive " << progressive
                       << " channels " << channels << " box " << b.top << "," << b.left << " "
                       << b.height << "x" << b.width);
          auto got = Decode(file, channels, b);
          ASSERT_TRUE(got.ok()) << got.status();
          for (int64_t y = 0; y < b.height; ++y) {
            for (int64_t x = 0; x < b.width; ++x) {
              for (int c = 0; c < channels; ++c) {
                ASSERT_EQ(got->at(y, x, c), whole->at(b.top + y, b.left + x, c))
                    << "at " << y << "," << x << "," << c;
              }
            }
          }
        }
      }
    }
  }
}

// Without exact edges a box that starts on a block column is decoded straight into the caller's
// rows: all but its first and last column (where they are not the image's) equal the whole
// decode; the block width is read from the header.
TEST(JpegDecodeTest, BoxOnBlockColumnsWithoutExactEdges) {
  std::mt19937 rng(19);
  for (Subsampling s : {Subsampling::k444, Subsampling::k422, Subsampling::k420}) {
    const int64_t h = 70, w = 131;
    const std::string file = EncodeJpeg(SyntheticImage(h, w, 3, 20), 85, s, false);
    auto header = ReadImageHeader(file);
    ASSERT_TRUE(header.ok());
    EXPECT_EQ(header->block_width, s == Subsampling::k444 ? 8 : 16);
    auto whole = Decode(file, 3);
    ASSERT_TRUE(whole.ok());
    for (int k = 0; k < 30; ++k) {
      DecodeBox b;
      b.top = std::uniform_int_distribution<int64_t>(0, h - 1)(rng);
      b.left = std::uniform_int_distribution<int64_t>(0, (w - 1) / header->block_width)(rng) *
               header->block_width;
      b.height = std::uniform_int_distribution<int64_t>(1, h - b.top)(rng);
      b.width = std::uniform_int_distribution<int64_t>(1, w - b.left)(rng);
      SCOPED_TRACE(::testing::Message() << "subsampling " << static_cast<int>(s) << " box "
                                        << b.top << "," << b.left << " " << b.height << "x"
                                        << b.width);
      std::vector<uint8_t> out(static_cast<size_t>(b.height * b.width * 3));
      ASSERT_TRUE(DecodeImage(file, *header, 3, b, out.data(), b.width * 3, false).ok());
      const int64_t x_from = b.left > 0 ? 1 : 0;
      const int64_t x_to = b.left + b.width < w ? b.width - 1 : b.width;
      for (int64_t y = 0; y < b.height; ++y) {
        for (int64_t x = x_from; x < x_to; ++x) {
          for (int c = 0; c < 3; ++c) {
            ASSERT_EQ(out[static_cast<size_t>((y * b.width + x) * 3 + c)],
                      whole->at(b.top + y, b.left + x, c))
                << "at " << y << "," << x << "," << c;
          }
        }
      }
    }
  }
}

// CMYK files (Adobe's inverted convention) become RGB = C * K / 255 per channel, rounded.
TEST(JpegDecodeTest, CmykBecomesRgbAndGrey) {
  Pixels cmyk = SyntheticImage(16, 24, 4, 9);
  const std::string file = EncodeCmykJpeg(cmyk, 100);
  auto header = ReadImageHeader(file);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->stored_channels, 4);
  // Against the source values, within what coding at quality 100 loses.
  auto rgb = Decode(file, 3);
  auto grey = Decode(file, 1);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  ASSERT_TRUE(grey.ok()) << grey.status();
  for (int64_t y = 0; y < 16; ++y) {
    for (int64_t x = 0; x < 24; ++x) {
      const double k = cmyk.at(y, x, 3);
      double want[3];
      for (int c = 0; c < 3; ++c) {
        want[c] = cmyk.at(y, x, c) * k / 255.0;
        ASSERT_NEAR(rgb->at(y, x, c), want[c], 6) << y << "," << x << "," << c;
      }
      const double luma = 0.299 * rgb->at(y, x, 0) + 0.587 * rgb->at(y, x, 1) +
                          0.114 * rgb->at(y, x, 2);
      ASSERT_NEAR(grey->at(y, x, 0), luma, 0.51) << y << "," << x;
    }
  }
}

TEST(JpegDecodeTest, RefusesTruncatedAndCorruptData) {
  const std::string file = EncodeJpeg(SyntheticImage(64, 64, 3, 10), 90, Subsampling::k420, false);
  auto h = ReadImageHeader(file);
  ASSERT_TRUE(h.ok());
  std::vector<uint8_t> out(64 * 64 * 3);
  // Cut in the middle of the entropy-coded data: libjpeg would pad with grey; we refuse.
  absl::Status cut = DecodeImage(file.substr(0, file.size() / 2), *h, 3, {0, 0, 64, 64},
                                 out.data(), 64 * 3);
  EXPECT_EQ(cut.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cut.message().find("corrupt JPEG file: Premature end of JPEG file"),
            std::string::npos)
      << cut;
  // Garbage in the scan: a marker where data should be, or bad Huffman codes.
  std::string bad = file;
  for (size_t i = file.size() / 2; i < file.size() / 2 + 64; ++i) bad[i] = static_cast<char>(0xFF);
  absl::Status corrupt = DecodeImage(bad, *h, 3, {0, 0, 64, 64}, out.data(), 64 * 3);
  EXPECT_EQ(corrupt.code(), absl::StatusCode::kInvalidArgument) << corrupt;
  EXPECT_NE(corrupt.message().find("corrupt JPEG file"), std::string::npos) << corrupt;
  // A header that disagrees with the file.
  ImageHeader wrong = *h;
  wrong.height = 65;
  absl::Status mismatch = DecodeImage(file, wrong, 3, {0, 0, 64, 64}, out.data(), 64 * 3);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatch.message().find("its frame is 64x64"), std::string::npos) << mismatch;
}

// ---- PNG ----------------------------------------------------------------------------------

TEST(PngDecodeTest, EveryColourTypeBitDepthAndInterlacing) {
  const Pixels rgb = SyntheticImage(19, 23, 3, 11);
  const Pixels rgba = SyntheticImage(19, 23, 4, 12);
  const Pixels grey = SyntheticImage(19, 23, 1, 13);
  const Pixels grey_alpha = SyntheticImage(19, 23, 2, 14);
  auto luma = [](uint32_t r, uint32_t g, uint32_t b) {
    return static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
  };
  for (bool interlace : {false, true}) {
    for (int depth : {8, 16}) {
      SCOPED_TRACE(::testing::Message() << "interlace " << interlace << " depth " << depth);
      PngOptions o;
      o.interlace = interlace;
      o.bit_depth = depth;
      o.colour_type = 2;
      auto a = Decode(EncodePng(rgb, o), 3);
      ASSERT_TRUE(a.ok()) << a.status();
      EXPECT_EQ(a->data, rgb.data);  // 16-bit: the high byte, which holds the value
      auto a1 = Decode(EncodePng(rgb, o), 1);
      ASSERT_TRUE(a1.ok()) << a1.status();
      for (int64_t i = 0; i < 19 * 23; ++i) {
        ASSERT_EQ(a1->data[i], luma(rgb.data[3 * i], rgb.data[3 * i + 1], rgb.data[3 * i + 2]));
      }
      o.colour_type = 6;
      auto b = Decode(EncodePng(rgba, o), 3);
      ASSERT_TRUE(b.ok()) << b.status();
      for (int64_t i = 0; i < 19 * 23; ++i) {
        for (int c = 0; c < 3; ++c) ASSERT_EQ(b->data[3 * i + c], rgba.data[4 * i + c]) << i;
      }
      o.colour_type = 0;
      auto g3 = Decode(EncodePng(grey, o), 3);
      auto g1 = Decode(EncodePng(grey, o), 1);
      ASSERT_TRUE(g3.ok() && g1.ok());
      EXPECT_EQ(g1->data, grey.data);
      for (int64_t i = 0; i < 19 * 23; ++i) {
        for (int c = 0; c < 3; ++c) ASSERT_EQ(g3->data[3 * i + c], grey.data[i]);
      }
      o.colour_type = 4;
      auto ga = Decode(EncodePng(grey_alpha, o), 1);
      ASSERT_TRUE(ga.ok()) << ga.status();
      for (int64_t i = 0; i < 19 * 23; ++i) ASSERT_EQ(ga->data[i], grey_alpha.data[2 * i]);
    }
  }
}

// A label map stored with a palette: one channel gives the indices (the labels), three the
// palette's colours; bit depths below 8 too.
TEST(PngDecodeTest, PaletteGivesIndicesOrColours) {
  for (int depth : {8, 4, 2, 1}) {
    SCOPED_TRACE(::testing::Message() << "depth " << depth);
    const int entries = 1 << std::min(depth, 4);
    Pixels labels = SyntheticImage(13, 17, 1, 15);
    for (auto& v : labels.data) v = static_cast<uint8_t>(v % entries);
    PngOptions o;
    o.colour_type = 3;
    o.bit_depth = depth;
    for (int i = 0; i < entries; ++i) {
      o.palette.push_back(static_cast<uint8_t>(10 * i));
      o.palette.push_back(static_cast<uint8_t>(255 - 10 * i));
      o.palette.push_back(static_cast<uint8_t>(7 * i));
    }
    o.trns.assign(static_cast<size_t>(entries), 128);
    const std::string file = EncodePng(labels, o);
    auto idx = Decode(file, 1);
    ASSERT_TRUE(idx.ok()) << idx.status();
    EXPECT_EQ(idx->data, labels.data);
    auto colours = Decode(file, 3);
    ASSERT_TRUE(colours.ok()) << colours.status();
    for (size_t i = 0; i < labels.data.size(); ++i) {
      for (int c = 0; c < 3; ++c) {
        ASSERT_EQ(colours->data[3 * i + c], o.palette[3 * labels.data[i] + c]) << i;
      }
    }
  }
}

// Grey below 8 bits is scaled to 0..255 (1 bit: 0 or 255), as other readers show it.
TEST(PngDecodeTest, LowBitGreyIsScaled) {
  Pixels bits = SyntheticImage(9, 11, 1, 16);
  for (auto& v : bits.data) v = v & 1;
  PngOptions o;
  o.colour_type = 0;
  o.bit_depth = 1;
  auto got = Decode(EncodePng(bits, o), 1);
  ASSERT_TRUE(got.ok()) << got.status();
  for (size_t i = 0; i < bits.data.size(); ++i) ASSERT_EQ(got->data[i], bits.data[i] ? 255 : 0);
}

TEST(PngDecodeTest, BoxOfRowsAndColumns) {
  const Pixels rgb = SyntheticImage(30, 40, 3, 17);
  for (bool interlace : {false, true}) {
    PngOptions o;
    o.interlace = interlace;
    auto got = Decode(EncodePng(rgb, o), 3, {5, 7, 11, 13});
    ASSERT_TRUE(got.ok()) << got.status();
    for (int64_t y = 0; y < 11; ++y) {
      for (int64_t x = 0; x < 13; ++x) {
        for (int c = 0; c < 3; ++c) ASSERT_EQ(got->at(y, x, c), rgb.at(5 + y, 7 + x, c));
      }
    }
  }
}

TEST(PngDecodeTest, RefusesTruncatedAndCorruptFiles) {
  const std::string file = EncodePng(SyntheticImage(32, 32, 3, 18), {});
  auto h = ReadImageHeader(file);
  ASSERT_TRUE(h.ok());
  std::vector<uint8_t> out(32 * 32 * 3);
  absl::Status cut =
      DecodeImage(file.substr(0, file.size() - 40), *h, 3, {0, 0, 32, 32}, out.data(), 96);
  EXPECT_EQ(cut.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cut.message().find("corrupt PNG file: "), std::string::npos) << cut;
  // A flipped byte inside the image data: libpng finds the compressed stream broken.
  std::string bad = file;
  bad[file.size() / 2] = static_cast<char>(bad[file.size() / 2] ^ 0x55);
  absl::Status crc = DecodeImage(bad, *h, 3, {0, 0, 32, 32}, out.data(), 96);
  EXPECT_EQ(crc.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(crc.message().find("corrupt PNG file: IDAT"), std::string::npos) << crc;
  // A header that promises more than the file holds.
  ImageHeader bigger = *h;
  bigger.height = 33;
  absl::Status mismatch = DecodeImage(file, bigger, 3, {0, 0, 33, 32}, out.data(), 96);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument) << mismatch;
}

}  // namespace
}  // namespace tensorprep::kernels
