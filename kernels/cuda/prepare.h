// Internal to the CUDA backend (host code, no CUDA headers): checks a launcher's preconditions with
// the functions the CPU kernels use (kernels/common/checks.h), plus the device's own (32-bit
// geometry, alignment), and prepares the kernel's arguments, with every per-launch
// parameter (matrices, flags, op tables) packed into one blob that is uploaded with one copy.
// The tests run the same preparation with the blob left in host memory and the kernels' per-element
// functions (kernel_math.h) on the host.
#ifndef TENSORPREP_KERNELS_CUDA_PREPARE_H_
#define TENSORPREP_KERNELS_CUDA_PREPARE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/cuda/kernel_math.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/flip/flip.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels::cuda::detail {

struct ChainTable {
  std::vector<DeviceOp> ops;
  std::vector<double> values;   // the per-channel vectors, back to back
  DType out = DType::kFloat32;  // ElementwiseOutputDType(in, ops)
};

// Checks `ops` for an input of dtype `in` with `channels` channels (CheckElementwiseChain, the
// CPU backend's precondition check, named `function` in errors) and builds its table: each op
// records the dtype entering it, and clamp bounds are converted to that dtype up front.
// What only the device needs of a view on top of the shared checks (kernels/common/checks.h):
// height, width and channels below 2^31 (the kernels index them in 32 bits) and data aligned to
// its element size (a misaligned access is a sticky error that would lose the context). INTERNAL
// "<function>: <what> ..." otherwise.
absl::Status CheckDeviceView(const char* function, const char* what, const BatchShape& shape,
                             DType dtype, const void* data);

absl::StatusOr<ChainTable> BuildChainTable(const char* function, DType in, int64_t channels,
                                           absl::Span<const ElementwiseOp> ops);

// Arrays appended at 16-byte aligned offsets into one byte buffer, uploaded with one copy.
class ParamBlob {
 public:
  // Appends `count` objects of trivially copyable T and returns their byte offset.
  template <typename T>
  size_t Append(const T* data, size_t count) {
    const size_t offset = (bytes_.size() + 15) & ~size_t{15};
    bytes_.resize(offset + count * sizeof(T));
    if (count > 0) std::memcpy(bytes_.data() + offset, data, count * sizeof(T));
    return offset;
  }
  const unsigned char* data() const { return bytes_.data(); }
  size_t size() const { return bytes_.size(); }

 private:
  std::vector<unsigned char> bytes_;
};

// A prepared launch: kernel arguments whose parameter pointers are bound by Bind() once the blob
// has a home (device memory for a launch, its own host bytes for a host run). `in` and `out` are
// the source and destination dtypes.
struct WarpLaunch {
  WarpArgs args;
  ParamBlob blob;
  size_t matrices_at = 0, ops_at = 0, values_at = 0;
  DType in = DType::kFloat32, out = DType::kFloat32;
  void Bind(const void* base);
};
struct FlipLaunch {
  FlipArgs args;
  ParamBlob blob;
  size_t element_size = 1;
  void Bind(const void* base);
};
struct ElementwiseLaunch {
  ElementwiseArgs args;
  ParamBlob blob;
  size_t ops_at = 0, values_at = 0;
  DType in = DType::kFloat32, out = DType::kFloat32;
  void Bind(const void* base);
};

// Precondition checks (INTERNAL "<function>: <what>", kernels/common/checks.h) and preparation
// for WarpElementwiseCuda, FlipCuda and ElementwiseCuda (cuda_api.h). Pointers are not
// dereferenced.
absl::StatusOr<WarpLaunch> PrepareWarp(const char* function, const ConstTensorView& src,
                                       const TensorView& dst, absl::Span<const Affine> inverse,
                                       const WarpParams& params,
                                       absl::Span<const ElementwiseOp> post_ops);
absl::StatusOr<FlipLaunch> PrepareFlip(const ConstTensorView& src, const TensorView& dst,
                                       absl::Span<const FlipFlags> flags);
absl::StatusOr<ElementwiseLaunch> PrepareElementwise(const ConstTensorView& src,
                                                     const TensorView& dst,
                                                     absl::Span<const ElementwiseOp> ops,
                                                     bool channels_first = false);

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_PREPARE_H_
