#include "kernels/codec/image_decode.h"

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

// clang-format off
#include <jpeglib.h>  // after <cstdio>: it uses FILE without including it
#include <jerror.h>
// clang-format on
#include <png.h>

#include "absl/strings/str_cat.h"

namespace tensorprep::kernels {

namespace {

// ITU-R 601 luma, in 16-bit fixed point, rounded: the grey of an RGB pixel.
inline uint8_t Luma(uint32_t r, uint32_t g, uint32_t b) {
  return static_cast<uint8_t>((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

uint32_t BigEndian16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t BigEndian32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

std::string DescribeStart(std::string_view file) {
  std::string hex;
  for (size_t i = 0; i < file.size() && i < 8; ++i) {
    absl::StrAppend(&hex, i ? " " : "",
                    absl::Hex(static_cast<unsigned char>(file[i]), absl::kZeroPad2));
  }
  return file.empty() ? "no bytes" : absl::StrCat("bytes ", hex);
}

constexpr unsigned char kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

absl::StatusOr<ImageHeader> ReadPngHeader(std::string_view file) {
  const auto* p = reinterpret_cast<const unsigned char*>(file.data());
  // Signature, then the IHDR chunk: length 13, type, width, height, bit depth, colour type, ...
  if (file.size() < 8 + 8 + 13) {
    return absl::InvalidArgumentError(
        absl::StrCat("PNG file cut short: ", file.size(), " bytes, before the end of its header"));
  }
  if (BigEndian32(p + 8) != 13 || std::memcmp(p + 12, "IHDR", 4) != 0) {
    return absl::InvalidArgumentError("corrupt PNG file: it does not start with an IHDR chunk");
  }
  ImageHeader h;
  h.format = ImageFormat::kPng;
  h.width = BigEndian32(p + 16);
  h.height = BigEndian32(p + 20);
  const int colour_type = p[25];
  switch (colour_type) {
    case 0: h.stored_channels = 1; break;
    case 2: h.stored_channels = 3; break;
    case 3: h.stored_channels = 1; h.palette = true; break;
    case 4: h.stored_channels = 2; break;
    case 6: h.stored_channels = 4; break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("corrupt PNG file: colour type ", colour_type, " in its header"));
  }
  return h;
}

absl::StatusOr<ImageHeader> ReadJpegHeader(std::string_view file) {
  const auto* p = reinterpret_cast<const unsigned char*>(file.data());
  const size_t n = file.size();
  size_t i = 2;  // after SOI
  while (true) {
    // Markers may be preceded by fill bytes 0xFF.
    while (i < n && p[i] == 0xFF && i + 1 < n && p[i + 1] == 0xFF) ++i;
    if (i + 4 > n) {
      return absl::InvalidArgumentError(
          absl::StrCat("JPEG file cut short: ", n, " bytes, before its frame header (SOF)"));
    }
    if (p[i] != 0xFF) {
      return absl::InvalidArgumentError(
          absl::StrCat("corrupt JPEG file: expected a marker at byte ", i, ", got 0x",
                       absl::Hex(p[i], absl::kZeroPad2)));
    }
    const unsigned marker = p[i + 1];
    if (marker == 0xD9 || marker == 0xDA) {
      return absl::InvalidArgumentError(
          "corrupt JPEG file: image data (or its end) before any frame header (SOF)");
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length
      i += 2;
      continue;
    }
    const size_t length = BigEndian16(p + i + 2);
    if (length < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("corrupt JPEG file: segment length ", length, " at byte ", i));
    }
    const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
                     marker != 0xCC;
    if (sof) {
      if (i + 10 > n) {
        return absl::InvalidArgumentError(
            absl::StrCat("JPEG file cut short: ", n, " bytes, inside its frame header (SOF)"));
      }
      if (marker != 0xC0 && marker != 0xC1 && marker != 0xC2) {
        // Lossless, hierarchical and arithmetic-coded JPEGs: libjpeg-turbo decodes arithmetic
        // coding, but not the others; all are rare outside medical imaging.
        if (marker != 0xC9 && marker != 0xCA) {
          return absl::InvalidArgumentError(
              absl::StrCat("unsupported JPEG process (frame marker 0xFF",
                           absl::Hex(marker, absl::kZeroPad2),
                           "): baseline, extended, progressive and arithmetic-coded JPEGs are "
                           "taken, lossless and hierarchical ones are not"));
        }
      }
      ImageHeader h;
      h.format = ImageFormat::kJpeg;
      h.height = BigEndian16(p + i + 5);
      h.width = BigEndian16(p + i + 7);
      h.stored_channels = p[i + 9];
      if (h.stored_channels != 1 && h.stored_channels != 3 && h.stored_channels != 4) {
        return absl::InvalidArgumentError(absl::StrCat(
            "unsupported JPEG: ", h.stored_channels, " components (1, 3 or 4 are taken)"));
      }
      // Each component: id, sampling factors (H << 4 | V), quantisation table.
      int max_h = 1;
      for (int k = 0; k < h.stored_channels && i + 12 + 3 * k < n; ++k) {
        max_h = std::max(max_h, p[i + 11 + 3 * k] >> 4);
      }
      h.block_width = h.stored_channels == 1 ? 8 : 8 * std::clamp(max_h, 1, 4);
      return h;
    }
    i += 2 + length;
  }
}

}  // namespace

const char* ImageFormatName(ImageFormat f) { return f == ImageFormat::kPng ? "PNG" : "JPEG"; }

absl::StatusOr<ImageHeader> ReadImageHeader(std::string_view file) {
  absl::StatusOr<ImageHeader> h;
  const auto* p = reinterpret_cast<const unsigned char*>(file.data());
  if (file.size() >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) {
    h = ReadJpegHeader(file);
  } else if (file.size() >= 8 && std::memcmp(p, kPngSignature, 8) == 0) {
    h = ReadPngHeader(file);
  } else {
    std::string what = DescribeStart(file);
    if (file.size() >= 6 && (file.substr(0, 6) == "GIF87a" || file.substr(0, 6) == "GIF89a")) {
      what = "a GIF file";
    } else if (file.size() >= 12 && file.substr(0, 4) == "RIFF" && file.substr(8, 4) == "WEBP") {
      what = "a WebP file";
    } else if (file.size() >= 2 && file.substr(0, 2) == "BM") {
      what = "a BMP file";
    } else if (file.size() >= 4 && (file.substr(0, 4) == "II*\0" || file.substr(0, 4) == "MM\0*")) {
      what = "a TIFF file";
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported image format: expected a JPEG or PNG file, got ", what));
  }
  if (h.ok() && (h->height == 0 || h->width == 0)) {
    return absl::InvalidArgumentError(absl::StrCat("corrupt ", ImageFormatName(h->format),
                                                   " file: its header declares a size of ",
                                                   h->height, "x", h->width));
  }
  return h;
}

namespace {

// ---- JPEG ----------------------------------------------------------------------------------
// libjpeg reports errors through a callback that must not return: it longjmps back to the
// decoding function, whose locals are all trivially destructible between setjmp and the end.

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void JpegErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings are corrupt data: a truncated file (which libjpeg would pad with grey), bad Huffman
// codes, data after the last marker. Only extraneous bytes between segments are harmless.
void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  if (cinfo->err->msg_code == JWRN_EXTRANEOUS_DATA) return;
  JpegErrorExit(cinfo);
}

// Decoded rows go to `row` (one scanline of the crop) and are copied into the caller's box.
absl::Status DecodeJpeg(std::string_view file, const ImageHeader& header, int channels,
                        const DecodeBox& box, uint8_t* out, int64_t out_stride,
                        bool exact_edges) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = JpegErrorExit;
  err.mgr.emit_message = JpegEmitMessage;
  err.message[0] = '\0';
  // Nothing with a destructor lives in this frame after setjmp: the scanline is libjpeg's, and
  // jpeg_destroy_decompress frees it.
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return absl::InvalidArgumentError(absl::StrCat("corrupt JPEG file: ", err.message));
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(file.data()),
               static_cast<unsigned long>(file.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.image_height != header.height || cinfo.image_width != header.width) {
    const std::string got = absl::StrCat(cinfo.image_height, "x", cinfo.image_width);
    jpeg_destroy_decompress(&cinfo);
    return absl::InvalidArgumentError(absl::StrCat("corrupt JPEG file: its frame is ", got,
                                                   ", its first frame header said ",
                                                   header.height, "x", header.width));
  }
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  int decoded_channels = channels;
  if (cmyk) {
    cinfo.out_color_space = JCS_CMYK;
    decoded_channels = 4;
  } else {
    cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  }
  jpeg_start_decompress(&cinfo);
  // Exact edges: widen the box by a pixel on each side (where there is one) before libjpeg aligns
  // it to whole blocks, since chroma upsampling reads the neighbouring samples.
  const int64_t margin = exact_edges ? 1 : 0;
  JDIMENSION x = static_cast<JDIMENSION>(std::max<int64_t>(box.left - margin, 0));
  const int64_t right = std::min<int64_t>(header.width, box.left + box.width + margin);
  JDIMENSION w = static_cast<JDIMENSION>(right - x);
  if (x != 0 || w != cinfo.output_width) jpeg_crop_scanline(&cinfo, &x, &w);
  // When libjpeg's columns are the box's, its rows go straight to the caller.
  const bool direct = !cmyk && x == static_cast<JDIMENSION>(box.left) &&
                      cinfo.output_width == static_cast<JDIMENSION>(box.width);
  JSAMPARRAY row = direct ? nullptr
                          : (*cinfo.mem->alloc_sarray)(
                                reinterpret_cast<j_common_ptr>(&cinfo), JPOOL_IMAGE,
                                static_cast<JDIMENSION>(cinfo.output_width * decoded_channels), 1);
  const int64_t skip_cols = box.left - x;
  if (box.top > 0) {
    jpeg_skip_scanlines(&cinfo, static_cast<JDIMENSION>(box.top));
  }
  const bool adobe_inverted = cinfo.saw_Adobe_marker;
  for (int64_t y = 0; y < box.height; ++y) {
    uint8_t* dst = out + y * out_stride;
    JSAMPROW direct_row[1] = {dst};
    if (jpeg_read_scanlines(&cinfo, direct ? direct_row : row, 1) != 1) {
      jpeg_destroy_decompress(&cinfo);
      return absl::InvalidArgumentError("corrupt JPEG file: fewer rows than its header declares");
    }
    if (direct) continue;
    const uint8_t* src = row[0] + skip_cols * decoded_channels;
    if (!cmyk) {
      std::memcpy(dst, src, static_cast<size_t>(box.width) * channels);
      continue;
    }
    // CMYK (Adobe files store it inverted): R = C * K / 255 and so on, as most viewers do.
    for (int64_t i = 0; i < box.width; ++i) {
      uint32_t c = src[4 * i], m = src[4 * i + 1], ye = src[4 * i + 2], k = src[4 * i + 3];
      if (!adobe_inverted) {
        c = 255 - c;
        m = 255 - m;
        ye = 255 - ye;
        k = 255 - k;
      }
      const uint8_t r = static_cast<uint8_t>((c * k + 127) / 255);
      const uint8_t g = static_cast<uint8_t>((m * k + 127) / 255);
      const uint8_t b = static_cast<uint8_t>((ye * k + 127) / 255);
      if (channels == 3) {
        dst[3 * i] = r;
        dst[3 * i + 1] = g;
        dst[3 * i + 2] = b;
      } else {
        dst[i] = Luma(r, g, b);
      }
    }
  }
  // The rows below the box are not needed; abort instead of decoding them for jpeg_finish.
  jpeg_abort_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return absl::OkStatus();
}

// ---- PNG -----------------------------------------------------------------------------------

struct PngSource {
  const unsigned char* data;
  size_t size;
  size_t pos;
};

struct PngError {
  char message[256];
};

void PngRead(png_structp png, png_bytep out, png_size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) png_error(png, "file cut short");
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

[[noreturn]] void PngErrorFn(png_structp png, png_const_charp message) {
  auto* err = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(err->message, sizeof(err->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarningFn(png_structp, png_const_charp) {}  // benign (e.g. an unknown ancillary chunk)

absl::Status DecodePng(std::string_view file, const ImageHeader& header, int channels,
                       const DecodeBox& box, uint8_t* out, int64_t out_stride) {
  PngError err;
  err.message[0] = '\0';
  PngSource src{reinterpret_cast<const unsigned char*>(file.data()), file.size(), 0};
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, PngErrorFn, PngWarningFn);
  if (png == nullptr) return absl::ResourceExhaustedError("out of memory starting libpng");
  png_infop info = png_create_info_struct(png);
  // Row storage, made before setjmp and reached through a reference that never changes, so a
  // longjmp back here finds it intact and it is freed on every return: the whole image for an
  // interlaced file (whose passes each cover the whole image), else one row.
  struct Scratch {
    std::vector<uint8_t> whole;
    std::vector<uint8_t> row;
    std::vector<png_bytep> rows;
  };
  const auto scratch = std::make_unique<Scratch>();
  Scratch& s = *scratch;
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::InvalidArgumentError(absl::StrCat("corrupt PNG file: ", err.message));
  }
  png_set_read_fn(png, &src, PngRead);
  // The caller checked the declared size; these keep libpng from being talked into more.
  png_set_user_limits(png, static_cast<png_uint_32>(header.width),
                      static_cast<png_uint_32>(header.height));
  png_read_info(png, info);
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, colour_type = 0, interlace = 0;
  png_get_IHDR(png, info, &width, &height, &bit_depth, &colour_type, &interlace, nullptr, nullptr);
  if (bit_depth == 16) png_set_strip_16(png);
  const bool palette = colour_type == PNG_COLOR_TYPE_PALETTE;
  const bool grey = (colour_type & PNG_COLOR_MASK_COLOR) == 0;
  if (palette && channels == 1) {
    png_set_packing(png);  // indices, one per byte: a label map stored with a palette
  } else if (palette) {
    png_set_palette_to_rgb(png);
  } else if (grey && bit_depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);
  }
  if (!palette || channels == 3) {
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    png_set_strip_alpha(png);
  }
  if (grey && channels == 3) png_set_gray_to_rgb(png);
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const int row_channels = png_get_channels(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);
  const bool convert_to_grey = channels == 1 && row_channels == 3;
  if ((row_channels != channels && !convert_to_grey) ||
      row_bytes != static_cast<size_t>(width) * row_channels) {
    png_error(png, "unexpected row layout after conversion");
  }
  auto deliver = [&](int64_t y, const uint8_t* src_row) {
    if (y < box.top || y >= box.top + box.height) return;
    uint8_t* dst = out + (y - box.top) * out_stride;
    const uint8_t* s = src_row + box.left * row_channels;
    if (!convert_to_grey) {
      std::memcpy(dst, s, static_cast<size_t>(box.width) * channels);
      return;
    }
    for (int64_t i = 0; i < box.width; ++i) dst[i] = Luma(s[3 * i], s[3 * i + 1], s[3 * i + 2]);
  };
  if (passes > 1) {
    s.whole.resize(row_bytes * height);
    s.rows.resize(height);
    for (png_uint_32 y = 0; y < height; ++y) s.rows[y] = s.whole.data() + y * row_bytes;
    png_read_image(png, s.rows.data());
    for (int64_t y = box.top; y < box.top + box.height; ++y) deliver(y, s.rows[y]);
  } else {
    s.row.resize(row_bytes);
    for (int64_t y = 0; y < box.top + box.height; ++y) {
      png_read_row(png, s.row.data(), nullptr);
      deliver(y, s.row.data());
    }
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeImage(std::string_view file, const ImageHeader& header, int channels,
                         const DecodeBox& box, uint8_t* out, int64_t out_stride,
                         bool exact_edges) {
  if (channels != 1 && channels != 3) {
    return absl::InternalError(absl::StrCat("DecodeImage: channels ", channels));
  }
  if (box.top < 0 || box.left < 0 || box.height < 1 || box.width < 1 ||
      box.top + box.height > header.height || box.left + box.width > header.width ||
      out_stride < box.width * channels) {
    return absl::InternalError("DecodeImage: the box is not inside the image");
  }
  return header.format == ImageFormat::kJpeg
             ? DecodeJpeg(file, header, channels, box, out, out_stride, exact_edges)
             : DecodePng(file, header, channels, box, out, out_stride);
}

}  // namespace tensorprep::kernels
