// The inner loop of a horizontal flip: one row's pixels copied in reverse order, with one kernel
// per instruction set and pixel size. FlipCpu and FlipRowsCpu (flip.h, flip_rows.h) call
// FlipRowKernel; the rest is exposed so that the tests can run every kernel this CPU has, not
// only the one chosen for it.
#ifndef TENSORPREP_KERNELS_FLIP_REVERSE_ROW_H_
#define TENSORPREP_KERNELS_FLIP_REVERSE_ROW_H_

#include <cstdint>

namespace tensorprep::kernels {

// Writes pixels w-1, w-2, ..., 0 of `src` (w >= 1 pixels of `pixel` bytes each) to `dst`, packed.
// src and dst do not overlap; neither needs any alignment. Reads only src[0, w * pixel) and writes
// only dst[0, w * pixel). `pixel` must be the size the kernel was chosen for (the portable generic
// kernel takes any size >= 1). Thread-safe; never fails.
using ReverseRowFn = void (*)(const unsigned char* src, unsigned char* dst, int64_t w,
                              int64_t pixel);

enum class FlipIsa : uint8_t {
  kPortable,  // plain C++: fixed-size copies per pixel for the common sizes, memcpy otherwise
  kAvx2,      // 32-byte byte shuffles over blocks of whole pixels (x86-64 with AVX2)
};

// Whether this CPU runs `isa`'s kernels (kPortable: always). Fixed for the process.
bool FlipIsaSupported(FlipIsa isa);

// The kernel `isa` has for pixels of `pixel` bytes, or null where it has none (kAvx2: sizes
// other than 1, 2, 3, 4, 6, 8, 12 and 16, or a build without x86-64; kPortable: never null for
// pixel >= 1). Does not check FlipIsaSupported.
ReverseRowFn ReverseRowKernel(FlipIsa isa, int64_t pixel);

// The kernel the flips use for `pixel` bytes on this CPU: the AVX2 one where the CPU supports
// AVX2 and it has one for this size, otherwise the portable one. Never null for pixel >= 1.
ReverseRowFn FlipRowKernel(int64_t pixel);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_FLIP_REVERSE_ROW_H_
