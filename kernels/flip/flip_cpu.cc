// CPU flip: a permuting copy. Vertical flips copy whole rows; horizontal flips copy pixels
// (C * element bytes each) in reverse order, with the pixel size fixed at compile time for the
// common sizes so that each copy is a single load and store.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/flip/flip.h"
#include "kernels/flip/flip_rows.h"

namespace tensorprep::kernels {
namespace {

// Smallest task worth a hand-off to another thread (bytes copied).
constexpr int64_t kMinTaskBytes = 64 * 1024;

template <int kBytes>
void ReverseRowFixed(const unsigned char* src, unsigned char* dst, int64_t w) {
  const unsigned char* s = src + (w - 1) * kBytes;
  for (int64_t x = 0; x < w; ++x, s -= kBytes, dst += kBytes) std::memcpy(dst, s, kBytes);
}

void ReverseRow(const unsigned char* src, unsigned char* dst, int64_t w, int64_t pixel) {
  switch (pixel) {
    case 1:
      return ReverseRowFixed<1>(src, dst, w);
    case 2:
      return ReverseRowFixed<2>(src, dst, w);
    case 3:
      return ReverseRowFixed<3>(src, dst, w);
    case 4:
      return ReverseRowFixed<4>(src, dst, w);
    case 6:
      return ReverseRowFixed<6>(src, dst, w);
    case 8:
      return ReverseRowFixed<8>(src, dst, w);
    case 12:
      return ReverseRowFixed<12>(src, dst, w);
    case 16:
      return ReverseRowFixed<16>(src, dst, w);
    default: {
      const unsigned char* s = src + (w - 1) * pixel;
      for (int64_t x = 0; x < w; ++x, s -= pixel, dst += pixel) std::memcpy(dst, s, pixel);
    }
  }
}

std::string ShapeString(const BatchShape& s) {
  return absl::StrCat("(", s.n, ", ", s.h, ", ", s.w, ", ", s.c, ")");
}

}  // namespace

absl::Status ValidateFlipSource(const ConstTensorView& src, absl::Span<const FlipFlags> flags) {
  const BatchShape& s = src.shape;
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("flip: src shape ", ShapeString(s), "; expected every dimension >= 1"));
  }
  if (src.data == nullptr) {
    return absl::InvalidArgumentError("flip: null data pointer; expected src and dst memory");
  }
  if (flags.size() != 1 && static_cast<int64_t>(flags.size()) != s.n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flip: ", flags.size(), " flag sets; expected 1 or ", s.n, " (one per sample)"));
  }
  return absl::OkStatus();
}

void FlipRowsCpu(const ConstTensorView& src, int64_t n, int64_t y_begin, int64_t y_end,
                 const FlipFlags& f, void* rows) {
  const BatchShape& s = src.shape;
  const int64_t pixel = s.c * static_cast<int64_t>(DTypeSize(src.dtype));
  const int64_t row = s.w * pixel;
  const unsigned char* sample_in = static_cast<const unsigned char*>(src.data) + n * s.h * row;
  auto* out = static_cast<unsigned char*>(rows);
  if (!f.horizontal && !f.vertical) {  // rows are contiguous: one copy for the band
    std::memcpy(out, sample_in + y_begin * row, (y_end - y_begin) * row);
    return;
  }
  for (int64_t y = y_begin; y < y_end; ++y) {
    const unsigned char* r = sample_in + (f.vertical ? s.h - 1 - y : y) * row;
    unsigned char* o = out + (y - y_begin) * row;
    if (f.horizontal) {
      ReverseRow(r, o, s.w, pixel);
    } else {
      std::memcpy(o, r, row);
    }
  }
}

absl::Status FlipCpu(const ConstTensorView& src, const TensorView& dst,
                     absl::Span<const FlipFlags> flags, ThreadPool* pool) {
  const BatchShape& s = src.shape;
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("flip: src shape ", ShapeString(s), "; expected every dimension >= 1"));
  }
  if (!(dst.shape == s)) {
    return absl::InvalidArgumentError(absl::StrCat("flip: dst shape ", ShapeString(dst.shape),
                                                   "; expected src shape ", ShapeString(s)));
  }
  if (dst.dtype != src.dtype) {
    return absl::InvalidArgumentError(absl::StrCat("flip: dst dtype ", DTypeName(dst.dtype),
                                                   "; expected src dtype ", DTypeName(src.dtype)));
  }
  if (src.data == nullptr || dst.data == nullptr) {
    return absl::InvalidArgumentError("flip: null data pointer; expected src and dst memory");
  }
  const absl::Status valid = ValidateFlipSource(src, flags);
  if (!valid.ok()) return valid;
  const auto* in = static_cast<const unsigned char*>(src.data);
  auto* out = static_cast<unsigned char*>(dst.data);
  if (in < out + dst.bytes() && out < in + src.bytes()) {
    return absl::InvalidArgumentError("flip: src and dst overlap; expected distinct memory");
  }

  const int64_t pixel = s.c * static_cast<int64_t>(DTypeSize(src.dtype));
  const int64_t row = s.w * pixel;
  const int64_t band_rows = std::max<int64_t>(1, kMinTaskBytes / row);
  const int64_t bands = (s.h + band_rows - 1) / band_rows;
  ParallelFor(pool, s.n * bands, [&](int64_t task) {
    const int64_t n = task / bands;
    const int64_t y_begin = (task % bands) * band_rows;
    const int64_t y_end = std::min(s.h, y_begin + band_rows);
    FlipRowsCpu(src, n, y_begin, y_end, flags.size() == 1 ? flags[0] : flags[n],
                out + (n * s.h + y_begin) * row);
  });
  return absl::OkStatus();
}

}  // namespace tensorprep::kernels
