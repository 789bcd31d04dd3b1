// Wire tensors <-> kernel views. The only place that knows how a tensorprep.v1.Tensor lays out.
#ifndef TENSORPREP_HANDLERS_TENSOR_CODEC_H_
#define TENSORPREP_HANDLERS_TENSOR_CODEC_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "handlers/shm_regions.h"
#include "kernels/common/tensor.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::handlers {

namespace pb = ::tensorprep::v1;

// An owned, suitably aligned byte buffer (64-byte aligned, uninitialised).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  void* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, Free> data_;
  size_t size_ = 0;
};

// A decoded input tensor: a view over the message's bytes when they are aligned for the dtype,
// else over `copy` (a copy the decoder made), or over a shared-memory region (`shm` then pins
// it). `rank` is the wire rank (3: NHW, 4: NHWC).
struct DecodedTensor {
  kernels::ConstTensorView view;
  int rank = 0;
  AlignedBuffer copy;  // empty unless the wire bytes were misaligned
  ShmSpan shm;         // set (shm.pin) when the bytes are in shared memory
};

// Wire dtype -> kernel dtype; INVALID_ARGUMENT naming `path` for unspecified or unknown values.
absl::StatusOr<kernels::DType> DecodeDType(int wire_dtype, const std::string& path);
pb::DType EncodeDType(kernels::DType dtype);

// Limits applied while decoding.
struct DecodeLimits {
  uint64_t max_tensor_bytes = uint64_t{1} << 40;  // per tensor
};

// Checks and views `t` as a batch of rank 3 (N,H,W) or 4 (N,H,W,C). INVALID_ARGUMENT names the
// field under `path` ("images.shape[2]: expected >= 1, got 0", "images.data: expected 12 bytes
// (1x2x2x3 uint8), got 10"), RESOURCE_EXHAUSTED when the tensor exceeds `limits`. The view points
// into `t`, which must outlive the result, or, when `t.shm` is set, into the region it names in
// `shm` (null: shared memory disabled), with the errors of SharedMemoryRegions::Resolve.
absl::StatusOr<DecodedTensor> DecodeBatch(const pb::Tensor& t, const std::string& path,
                                          const DecodeLimits& limits,
                                          const SharedMemoryRegions* shm = nullptr);

// Sets `t`'s dtype and shape (rank 3 drops C, which must then be 1) and sizes its data; returns a
// writable view over t's bytes. The bytes are uninitialised garbage until a kernel writes them.
kernels::TensorView PrepareOutput(pb::Tensor* t, kernels::DType dtype,
                                  const kernels::BatchShape& shape, int rank);
// The same, but the bytes live in `data` (shape.elements() * size of dtype bytes, aligned to the
// element size), which the view points to; t's data field is left empty.
kernels::TensorView PrepareOutput(pb::Tensor* t, kernels::DType dtype,
                                  const kernels::BatchShape& shape, int rank, void* data);

// "1x256x256x3 float32"
std::string DescribeShape(const kernels::BatchShape& shape, int rank, kernels::DType dtype);

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_TENSOR_CODEC_H_
