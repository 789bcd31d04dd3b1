// CPU flip: a permuting copy. Vertical flips copy whole rows; horizontal flips reverse the pixel
// order of each row with a kernel chosen per pixel size and instruction set (reverse_row.h).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/common/checks.h"
#include "kernels/common/status.h"
#include "kernels/flip/flip.h"
#include "kernels/flip/flip_rows.h"
#include "kernels/flip/reverse_row.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tensorprep::kernels {
namespace {

// Smallest task worth a hand-off to another thread (bytes copied).
constexpr int64_t kMinTaskBytes = 64 * 1024;

// ---- portable kernels -----------------------------------------------------------------------

// Every kernel reads its source row forwards (and writes backwards): on the development machine
// a row read backwards ran at 0.52-0.57 of memcpy's bandwidth, read forwards at 0.75 or more.

// The pixel size fixed at compile time, so that each pixel is one load and one store (or two).
template <int kBytes>
void ReverseRowFixed(const unsigned char* src, unsigned char* dst, int64_t w, int64_t) {
  unsigned char* d = dst + (w - 1) * kBytes;
  for (int64_t x = 0; x < w; ++x, src += kBytes, d -= kBytes) std::memcpy(d, src, kBytes);
}

void ReverseRowGeneric(const unsigned char* src, unsigned char* dst, int64_t w, int64_t pixel) {
  unsigned char* d = dst + (w - 1) * pixel;
  for (int64_t x = 0; x < w; ++x, src += pixel, d -= pixel) {
    std::memcpy(d, src, static_cast<size_t>(pixel));
  }
}

// The pixel sizes with kernels of their own: make(std::integral_constant<int, kP>{}) for one of
// them, nullptr for any other size.
template <typename Make>
ReverseRowFn ForFixedSize(int64_t pixel, Make make) {
  switch (pixel) {
    case 1:
      return make(std::integral_constant<int, 1>{});
    case 2:
      return make(std::integral_constant<int, 2>{});
    case 3:
      return make(std::integral_constant<int, 3>{});
    case 4:
      return make(std::integral_constant<int, 4>{});
    case 6:
      return make(std::integral_constant<int, 6>{});
    case 8:
      return make(std::integral_constant<int, 8>{});
    case 12:
      return make(std::integral_constant<int, 12>{});
    case 16:
      return make(std::integral_constant<int, 16>{});
    default:
      return nullptr;
  }
}

ReverseRowFn PortableKernel(int64_t pixel) {
  const ReverseRowFn fixed =
      ForFixedSize(pixel, [](auto p) -> ReverseRowFn { return ReverseRowFixed<decltype(p)::value>; });
  return fixed != nullptr ? fixed : ReverseRowGeneric;
}

// ---- AVX2 kernels ---------------------------------------------------------------------------

#if defined(__x86_64__)
const bool kHaveAvx2 = __builtin_cpu_supports("avx2");

// A block of whole pixels that is also a whole number of 32-byte registers: 32 bytes when the
// pixel size divides 32, 96 bytes (three registers) for 3, 6 and 12. Reversing a block is a fixed
// byte permutation; vpshufb permutes only inside 16-byte lanes, so each output register is the OR
// of one shuffle per source lane it draws from, with that lane broadcast to both halves and the
// other bytes of the control set to zero them. The controls are computed here at compile time.
template <int kP>
struct ShuffleBlock {
  static constexpr int kRegs = kP % 3 == 0 ? 3 : 1;
  static constexpr int kBytes = 32 * kRegs;
  static constexpr int kPixels = kBytes / kP;
  static constexpr int kLanes = 2 * kRegs;  // 16-byte lanes of the source block
  static_assert(kBytes % kP == 0 && kP <= 16, "a block holds whole pixels");

  // control[r][s]: vpshufb control for output register r from source lane s; used[r][s]: whether
  // any byte of register r comes from lane s.
  signed char control[kRegs][kLanes][32];
  bool used[kRegs][kLanes];

  constexpr ShuffleBlock() : control(), used() {
    for (int r = 0; r < kRegs; ++r) {
      for (int s = 0; s < kLanes; ++s) {
        used[r][s] = false;
        for (int t = 0; t < 32; ++t) control[r][s][t] = -128;  // high bit: byte becomes zero
      }
    }
    for (int k = 0; k < kBytes; ++k) {
      // Output byte k is byte k % kP of output pixel k / kP, which is source pixel
      // kPixels - 1 - k / kP of the block.
      const int from = (kPixels - 1 - k / kP) * kP + k % kP;
      used[k / 32][from / 16] = true;
      control[k / 32][from / 16][k % 32] = static_cast<signed char>(from % 16);
    }
  }
};

template <int kP>
constexpr ShuffleBlock<kP> kShuffleBlock{};

// Output register kR of a block: the OR over source lanes kS, kS + 1, ... that it draws from.
template <int kP, int kR, int kS>
__attribute__((target("avx2"))) inline __m256i GatherLanes(const unsigned char* src, __m256i acc) {
  if constexpr (kS == ShuffleBlock<kP>::kLanes) {
    return acc;
  } else {
    if constexpr (kShuffleBlock<kP>.used[kR][kS]) {
      const __m256i lane = _mm256_broadcastsi128_si256(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * kS)));
      const __m256i control =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kShuffleBlock<kP>.control[kR][kS]));
      acc = _mm256_or_si256(acc, _mm256_shuffle_epi8(lane, control));
    }
    return GatherLanes<kP, kR, kS + 1>(src, acc);
  }
}

template <int kP, int... kR>
__attribute__((target("avx2"))) inline void ReverseBlockAvx2(const unsigned char* src,
                                                             unsigned char* dst,
                                                             std::integer_sequence<int, kR...>) {
  (_mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * kR),
                       GatherLanes<kP, kR, 0>(src, _mm256_setzero_si256())),
   ...);
}

template <int kP>
__attribute__((target("avx2"))) void ReverseRowAvx2(const unsigned char* src, unsigned char* dst,
                                                    int64_t w, int64_t pixel) {
  using Block = ShuffleBlock<kP>;
  constexpr int64_t kG = Block::kPixels;
  constexpr auto kRegs = std::make_integer_sequence<int, Block::kRegs>();
  if (w < kG) return ReverseRowFixed<kP>(src, dst, w, pixel);
  // Output pixels [x, x + kG) are source pixels [w - x - kG, w - x), reversed. Blocks go from the
  // row's end to its start, so that the source is read forwards.
  int64_t x = w - kG;
  for (; x >= 0; x -= kG) ReverseBlockAvx2<kP>(src + (w - x - kG) * kP, dst + x * kP, kRegs);
  // A partial first block: the block that starts the row, overlapping the one after it (its last
  // pixels are written twice, with the same values).
  if (x > -kG) ReverseBlockAvx2<kP>(src + (w - kG) * kP, dst, kRegs);
}

ReverseRowFn Avx2Kernel(int64_t pixel) {
  return ForFixedSize(pixel,
                      [](auto p) -> ReverseRowFn { return ReverseRowAvx2<decltype(p)::value>; });
}
#endif  // defined(__x86_64__)

}  // namespace

bool FlipIsaSupported(FlipIsa isa) {
  switch (isa) {
    case FlipIsa::kPortable:
      return true;
    case FlipIsa::kAvx2:
#if defined(__x86_64__)
      return kHaveAvx2;
#else
      return false;
#endif
  }
  return false;
}

ReverseRowFn ReverseRowKernel(FlipIsa isa, int64_t pixel) {
  if (pixel < 1) return nullptr;
  switch (isa) {
    case FlipIsa::kPortable:
      return PortableKernel(pixel);
    case FlipIsa::kAvx2:
#if defined(__x86_64__)
      return Avx2Kernel(pixel);
#else
      return nullptr;
#endif
  }
  return nullptr;
}

ReverseRowFn FlipRowKernel(int64_t pixel) {
  if (FlipIsaSupported(FlipIsa::kAvx2)) {
    if (const ReverseRowFn fn = ReverseRowKernel(FlipIsa::kAvx2, pixel)) return fn;
  }
  return ReverseRowKernel(FlipIsa::kPortable, pixel);
}

absl::Status CheckFlipSource(absl::string_view function, const ConstTensorView& src,
                             absl::Span<const FlipFlags> flags) {
  TP_RETURN_IF_ERROR(CheckSourceView(function, src));
  return CheckPerSampleCount(function, "flag sets", flags.size(), src.shape.n);
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
  const ReverseRowFn reverse = f.horizontal ? FlipRowKernel(pixel) : nullptr;
  for (int64_t y = y_begin; y < y_end; ++y) {
    const unsigned char* r = sample_in + (f.vertical ? s.h - 1 - y : y) * row;
    unsigned char* o = out + (y - y_begin) * row;
    if (f.horizontal) {
      reverse(r, o, s.w, pixel);
    } else {
      std::memcpy(o, r, row);
    }
  }
}

absl::Status FlipCpu(const ConstTensorView& src, const TensorView& dst,
                     absl::Span<const FlipFlags> flags, ThreadPool* pool) {
  constexpr char kFn[] = "FlipCpu";
  TP_RETURN_IF_ERROR(CheckFlipSource(kFn, src, flags));
  TP_RETURN_IF_ERROR(CheckDestinationView(kFn, src, dst, src.dtype, Aliasing::kDistinct));
  const BatchShape& s = src.shape;
  auto* out = static_cast<unsigned char*>(dst.data);
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
