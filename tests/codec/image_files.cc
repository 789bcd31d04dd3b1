#include "tests/codec/image_files.h"

#include <gtest/gtest.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <random>

// clang-format off
#include <jpeglib.h>  // after <cstdio>
// clang-format on
#include <png.h>

#include <cstring>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace tensorprep::testing {

Pixels SyntheticImage(int64_t h, int64_t w, int c, uint32_t seed) {
  Pixels p{h, w, c, std::vector<uint8_t>(static_cast<size_t>(h * w * c))};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  const double fx = 2 + 6 * u(rng), fy = 2 + 6 * u(rng), phase = 6.28 * u(rng);
  const int64_t bx = static_cast<int64_t>(u(rng) * w), by = static_cast<int64_t>(u(rng) * h);
  std::normal_distribution<double> noise(0, 6);
  for (int64_t y = 0; y < h; ++y) {
    for (int64_t x = 0; x < w; ++x) {
      for (int ch = 0; ch < c; ++ch) {
        double v = 128 + 90 * std::sin(fx * x / w + fy * y / h * (ch + 1) + phase + ch);
        if (x > bx && y > by) v = 255 - v;  // an edge
        v += noise(rng);
        p.data[static_cast<size_t>((y * w + x) * c + ch)] =
            static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      }
    }
  }
  return p;
}

namespace {

struct JpegWriteError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
};

[[noreturn]] void JpegWriteErrorExit(j_common_ptr cinfo) {
  std::longjmp(reinterpret_cast<JpegWriteError*>(cinfo->err)->jump, 1);
}

std::string Compress(const Pixels& p, int quality, J_COLOR_SPACE in_space, Subsampling s,
                     bool progressive) {
  jpeg_compress_struct cinfo;
  JpegWriteError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = JpegWriteErrorExit;
  unsigned char* mem = nullptr;
  unsigned long size = 0;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&cinfo);
    std::free(mem);
    ADD_FAILURE() << "libjpeg failed to encode the test image";
    return "";
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &mem, &size);
  cinfo.image_width = static_cast<JDIMENSION>(p.w);
  cinfo.image_height = static_cast<JDIMENSION>(p.h);
  cinfo.input_components = p.c;
  cinfo.in_color_space = in_space;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (p.c == 3) {
    const int h = s == Subsampling::k444 ? 1 : 2;
    const int v = s == Subsampling::k420 ? 2 : 1;
    cinfo.comp_info[0].h_samp_factor = h;
    cinfo.comp_info[0].v_samp_factor = v;
    for (int k = 1; k < 3; ++k) {
      cinfo.comp_info[k].h_samp_factor = 1;
      cinfo.comp_info[k].v_samp_factor = 1;
    }
  }
  if (progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(p.data.data()) +
                   static_cast<size_t>(cinfo.next_scanline) * static_cast<size_t>(p.w * p.c);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(mem), size);
  std::free(mem);
  return out;
}

void PngWrite(png_structp png, png_bytep data, png_size_t n) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<char*>(data), n);
}
void PngFlush(png_structp) {}

}  // namespace

std::string EncodeJpeg(const Pixels& p, int quality, Subsampling s, bool progressive) {
  return Compress(p, quality, p.c == 1 ? JCS_GRAYSCALE : JCS_RGB, s, progressive);
}

std::string EncodeCmykJpeg(const Pixels& p, int quality) {
  return Compress(p, quality, JCS_CMYK, Subsampling::k444, false);
}

Pixels OpenCvDecode(const std::string& file, int channels) {
  cv::Mat m = cv::imdecode(
      cv::Mat(1, static_cast<int>(file.size()), CV_8UC1, const_cast<char*>(file.data())),
      channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
  if (m.empty()) {
    ADD_FAILURE() << "OpenCV could not decode the file";
    return {};
  }
  if (channels == 3) cv::cvtColor(m, m, cv::COLOR_BGR2RGB);
  Pixels p{m.rows, m.cols, channels, std::vector<uint8_t>(m.total() * m.elemSize())};
  for (int y = 0; y < m.rows; ++y) {
    std::memcpy(p.data.data() + static_cast<size_t>(y) * m.cols * channels, m.ptr(y),
                static_cast<size_t>(m.cols) * channels);
  }
  return p;
}

std::string EncodePng(const Pixels& p, const PngOptions& o) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    ADD_FAILURE() << "libpng failed to encode the test image";
    return "";
  }
  png_set_write_fn(png, &out, PngWrite, PngFlush);
  png_set_IHDR(png, info, static_cast<png_uint_32>(p.w), static_cast<png_uint_32>(p.h),
               o.bit_depth, o.colour_type,
               o.interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (o.colour_type == PNG_COLOR_TYPE_PALETTE) {
    std::vector<png_color> colours(o.palette.size() / 3);
    for (size_t i = 0; i < colours.size(); ++i) {
      colours[i] = {o.palette[3 * i], o.palette[3 * i + 1], o.palette[3 * i + 2]};
    }
    png_set_PLTE(png, info, colours.data(), static_cast<int>(colours.size()));
    if (!o.trns.empty()) {
      png_set_tRNS(png, info, o.trns.data(), static_cast<int>(o.trns.size()), nullptr);
    }
  }
  png_write_info(png, info);
  // Rows in the file's own layout: packed below 8 bits, big-endian pairs at 16.
  const size_t row_bytes = png_get_rowbytes(png, info);
  std::vector<std::vector<uint8_t>> rows(static_cast<size_t>(p.h), std::vector<uint8_t>(row_bytes));
  const int64_t samples = p.w * p.c;
  for (int64_t y = 0; y < p.h; ++y) {
    std::vector<uint8_t>& r = rows[static_cast<size_t>(y)];
    const uint8_t* src = p.data.data() + y * samples;
    for (int64_t i = 0; i < samples; ++i) {
      if (o.bit_depth == 16) {
        r[2 * i] = src[i];
        r[2 * i + 1] = static_cast<uint8_t>(255 - src[i]);
      } else if (o.bit_depth == 8) {
        r[i] = src[i];
      } else {
        const int per_byte = 8 / o.bit_depth;
        const int shift = 8 - o.bit_depth * (1 + static_cast<int>(i % per_byte));
        const uint8_t mask = static_cast<uint8_t>((1 << o.bit_depth) - 1);
        r[i / per_byte] |= static_cast<uint8_t>((src[i] & mask) << shift);
      }
    }
  }
  std::vector<png_bytep> pointers;
  for (auto& r : rows) pointers.push_back(r.data());
  png_write_image(png, pointers.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

}  // namespace tensorprep::testing
