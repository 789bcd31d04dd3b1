// Responses whose main result goes on the wire without a copy. The kernels write the result into
// a ResultBuffer; SerializeResponse then hands that memory to gRPC as a slice of its own after the
// rest of the message, so the result is neither zero-filled (as a std::string would be) nor
// copied by protobuf into the wire buffer.
//
// The wire bytes are one ordinary message with its fields in another order: first `images`
// (dtype, shape, then data, whose bytes are the result buffer itself), then every other field.
// Protobuf's encoding lets fields come in any order, and `images` occurs once, so every parser,
// hand-written ones included, reads the same message as if protobuf had serialised it.
#ifndef TENSORPREP_SERVER_WIRE_RESPONSE_H_
#define TENSORPREP_SERVER_WIRE_RESPONSE_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::server {

// Uninitialised, 64-byte aligned memory for one result, owned until it is released to gRPC.
//
// Buffers of 1 MiB and more are reused: when gRPC has sent one (or its owner drops it), it goes
// to a process-wide cache instead of back to the allocator, and the next result of the same size
// class (a multiple of 2 MiB) takes it with its pages still mapped. Without it every large
// result was fresh memory from mmap, and the kernel writing it paid a page fault per page: a
// 64-image W2 request cost 1.6x more per image in the kernel than 64 one-image requests. The
// cache keeps at most SetResultBufferCacheLimit bytes of capacity (least recently released out
// first); they are not part of the in-flight byte budget (--max-inflight-mb), so the server's
// peak is that budget plus this limit. A reused buffer holds an earlier result's bytes until the
// kernels overwrite them, which they do entirely.
class ResultBuffer {
 public:
  ResultBuffer() = default;
  ResultBuffer(ResultBuffer&& other) noexcept
      : data_(std::move(other.data_)), size_(std::exchange(other.size_, 0)) {}
  ResultBuffer& operator=(ResultBuffer&& other) noexcept {
    data_ = std::move(other.data_);
    size_ = std::exchange(other.size_, 0);
    return *this;
  }
  // Empty when `bytes` is 0; aborts like operator new when memory runs out.
  static ResultBuffer Allocate(size_t bytes);

  void* data() const { return data_.get(); }
  size_t size() const { return size_; }

  // A slice over the memory that frees (or caches) it when gRPC drops its last reference; leaves
  // this empty.
  grpc::Slice ReleaseToSlice();

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, Free> data_;
  size_t size_ = 0;
};

// Bytes of released result buffers kept for reuse, process-wide (default 256 MiB; 0 keeps none).
// Lowering it frees what no longer fits. Thread-safe.
void SetResultBufferCacheLimit(size_t bytes);
// Bytes held by the cache now. Thread-safe.
size_t ResultBufferCacheBytes();

// Serialises `response` into `out`. With a non-empty `result`, its bytes become images.data
// (response.images().data() must then be empty) and the buffer is released to `out`; `response`
// is left as it was. INTERNAL
// when protobuf cannot serialise the message (over 2 GiB).
absl::Status SerializeResponse(::tensorprep::v1::ProcessResponse& response,
                               ResultBuffer result, grpc::ByteBuffer* out);

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_WIRE_RESPONSE_H_
