// Internal to the CUDA backend (host code, no CUDA headers): turns an element-wise chain into the
// flat table the kernels read, and packs per-launch parameters into one upload.
#ifndef TENSORPREP_KERNELS_CUDA_OP_TABLE_H_
#define TENSORPREP_KERNELS_CUDA_OP_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/cuda/kernel_math.h"
#include "kernels/elementwise/elementwise.h"

namespace tensorprep::kernels::cuda::detail {

struct ChainTable {
  std::vector<DeviceOp> ops;
  std::vector<double> values;  // the per-channel vectors, back to back
  DType out = DType::kFloat32;  // ElementwiseOutputDType(in, ops)
};

// Validates `ops` for an input of dtype `in` with `channels` channels (ValidateElementwise, so the
// errors are the CPU backend's) and builds its table: each op records the dtype entering it, and
// clamp bounds are converted to that dtype up front.
absl::StatusOr<ChainTable> BuildChainTable(DType in, int64_t channels,
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

}  // namespace tensorprep::kernels::cuda::detail

#endif  // TENSORPREP_KERNELS_CUDA_OP_TABLE_H_
