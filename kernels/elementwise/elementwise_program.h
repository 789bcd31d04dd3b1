// A prepared element-wise chain that runs on any packed run of whole pixels: what ElementwiseCpu
// (elementwise.h) runs over a batch, exposed for callers that fuse the chain behind another
// kernel (the CPU backend applies it to each band of a warp's output while the band is in cache).
#ifndef TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_PROGRAM_H_
#define TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_PROGRAM_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"

namespace tensorprep::kernels {

// Immutable once made; thread-safe (Run may be called from many threads at once). Cheap to copy.
class ElementwiseProgram {
 public:
  // Checks `ops` for input dtype `in` with `channels` channels (CheckElementwiseChain, named
  // `function` in errors) and expands their operands. INTERNAL as CheckElementwiseChain.
  static absl::StatusOr<ElementwiseProgram> Make(absl::string_view function, DType in,
                                                 int64_t channels,
                                                 absl::Span<const ElementwiseOp> ops);

  DType input_dtype() const;
  DType output_dtype() const;

  // out[i] = chain(in[i]) for i in [0, count), with exactly ElementwiseCpu's results. `count` is
  // a multiple of the channel count and in[0] is channel 0. `in` and `out` are the same memory
  // when the dtypes have the same size, else distinct. Runs on the calling thread (tile-sized
  // scratch is per thread and reused).
  void Run(const void* in, void* out, int64_t count) const;

  // The chain on `pixels` consecutive NHWC pixels of one sample, written channels-first (planar)
  // into that sample's output: `in` holds pixels * channels() elements, pixel 0 of which is pixel
  // `first_pixel` of a sample with `plane_pixels` (H * W) pixels; the value of channel c of pixel
  // i goes to element c * plane_pixels + first_pixel + i of `out_sample`, the sample's first
  // output element. The values are Run's, bit for bit. Requires 0 <= first_pixel and
  // first_pixel + pixels <= plane_pixels; `in` and `out_sample`'s sample must not overlap. Checks
  // nothing (callers check views as ElementwiseCpu does). Bands of any size assembled into a
  // sample give the same bytes as one call over the whole sample. Runs on the calling thread; the
  // transposition goes through a tile-sized per-thread stage, so it stays in L1.
  void RunChannelsFirst(const void* in, void* out_sample, int64_t plane_pixels, int64_t first_pixel,
                        int64_t pixels) const;

  int64_t channels() const;

 private:
  struct Impl;
  explicit ElementwiseProgram(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_PROGRAM_H_
