// Decoding of encoded image files (JPEG with libjpeg-turbo, PNG with libpng) into uint8 HWC
// buffers. The header is read on its own first, by a small parser that allocates nothing, so that a
// caller can check the declared size against its limits before any large allocation (a
// "decompression bomb" declares a huge size in a few bytes). Errors are returned, never thrown;
// messages say what is wrong with the file, without a field path (the caller adds one).
// Thread-safe: every function may be called from many threads at once.
#ifndef TENSORPREP_KERNELS_CODEC_IMAGE_DECODE_H_
#define TENSORPREP_KERNELS_CODEC_IMAGE_DECODE_H_

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tensorprep::kernels {

enum class ImageFormat : int { kJpeg = 0, kPng = 1 };
const char* ImageFormatName(ImageFormat f);  // "JPEG", "PNG"

struct ImageHeader {
  ImageFormat format = ImageFormat::kJpeg;
  int64_t height = 0;
  int64_t width = 0;
  // Channels as stored: 1 (grey, or a PNG palette), 3 (RGB/YCbCr), 4 (CMYK, or RGB + alpha),
  // 2 (grey + alpha).
  int stored_channels = 0;
  bool palette = false;  // a PNG with a palette (colour type 3)
  // JPEG: the width of a column of whole blocks (8 times the largest horizontal sampling factor
  // of a colour file, 8 for a grey one); a box that starts on a multiple of it is decoded
  // straight into the caller's rows (see DecodeImage).
  int block_width = 8;
};

// Reads the format and the declared size from the first bytes of `file`: JPEG (the first SOF
// marker) or PNG (the IHDR chunk). INVALID_ARGUMENT for an unknown format (naming what the first
// bytes look like), a file cut short before its size, or a size of 0. Reads only `file`.
absl::StatusOr<ImageHeader> ReadImageHeader(std::string_view file);

// A box of the decoded image, in pixels: rows [top, top + height), columns [left, left + width).
struct DecodeBox {
  int64_t top = 0;
  int64_t left = 0;
  int64_t height = 0;
  int64_t width = 0;
};

// Decodes `file` (whose header is `header`, from ReadImageHeader) into `out`: box.height rows of
// box.width * channels bytes, `out_stride` bytes apart; the box must lie inside the image (the
// whole image is {0, 0, height, width}). `channels` is 3 (RGB; grey is replicated, alpha dropped,
// a palette expanded, CMYK converted) or 1 (grey: a JPEG's luma plane, a PNG's grey samples or
// palette indices, RGB converted with ITU-R 601 weights). 16-bit PNG samples keep their high byte.
// A JPEG box is decoded by skipping the rows and columns around it where the format allows
// (whole blocks), and gives the same pixels as the same box of a full decode. With
// `exact_edges` false the pixels of the box's first and last column may differ from a full
// decode where they are not the image's (chroma upsampling there lacks its outer neighbour), and
// a box whose left edge is a multiple of header.block_width is then decoded straight into `out`,
// without a copy: for a caller that reads the box only 1 pixel or more inside such edges.
// INVALID_ARGUMENT for a corrupt or truncated file (what the decoder said), or one whose size
// differs from `header`'s. Writes only inside the box's rows of `out`.
absl::Status DecodeImage(std::string_view file, const ImageHeader& header, int channels,
                         const DecodeBox& box, uint8_t* out, int64_t out_stride,
                         bool exact_edges = true);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_CODEC_IMAGE_DECODE_H_
