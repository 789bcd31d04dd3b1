#include "server/wire_response.h"

#include <google/protobuf/io/coded_stream.h>

#include <cstdint>
#include <cstring>
#include <iterator>
#include <new>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace tensorprep::server {

namespace {

using google::protobuf::io::CodedOutputStream;

// Field numbers and wire type from tensorprep.proto: ProcessResponse.images = 2, Tensor.data = 3,
// both length-delimited (wire type 2).
constexpr uint32_t kImagesTag = (2 << 3) | 2;
constexpr uint32_t kDataTag = (3 << 3) | 2;

absl::Status TooLarge(size_t bytes) {
  return absl::InternalError(absl::StrCat("cannot serialise a response of ", bytes,
                                          " bytes: protobuf messages stop at 2 GiB"));
}

// Every result buffer is one allocation: a 64-byte header holding the capacity, then the data
// (64-byte aligned). The data pointer alone is what gRPC hands back to the slice's destroy
// callback, so the header is how a released buffer finds its size class.
constexpr size_t kHeader = 64;
constexpr size_t kCachedMin = size_t{1} << 20;     // smaller buffers go back to malloc
constexpr size_t kSizeClass = size_t{2} << 20;     // cached capacities are multiples of this

size_t Capacity(size_t bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;  // aligned_alloc wants a multiple of 64
  return bytes < kCachedMin ? rounded : (rounded + kSizeClass - 1) / kSizeClass * kSizeClass;
}

class Cache {
 public:
  // A cached allocation (header address) of exactly `capacity`, or null.
  void* Take(size_t capacity) {
    absl::MutexLock lock(&mu_);
    for (auto it = kept_.rbegin(); it != kept_.rend(); ++it) {  // most recently released first
      if (it->capacity == capacity) {
        void* p = it->base;
        bytes_ -= capacity;
        kept_.erase(std::next(it).base());
        return p;
      }
    }
    return nullptr;
  }

  // Keeps the allocation or frees it.
  void Give(void* base, size_t capacity) {
    std::vector<void*> freed;
    {
      absl::MutexLock lock(&mu_);
      if (capacity < kSizeClass || capacity > limit_) {
        freed.push_back(base);
      } else {
        kept_.push_back({base, capacity});
        bytes_ += capacity;
        Trim(&freed);
      }
    }
    for (void* p : freed) std::free(p);  // outside the lock: munmap can take a while
  }

  void SetLimit(size_t bytes) {
    std::vector<void*> freed;
    {
      absl::MutexLock lock(&mu_);
      limit_ = bytes;
      Trim(&freed);
    }
    for (void* p : freed) std::free(p);
  }

  size_t Bytes() {
    absl::MutexLock lock(&mu_);
    return bytes_;
  }

 private:
  struct Kept {
    void* base;
    size_t capacity;
  };

  void Trim(std::vector<void*>* freed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t drop = 0;
    while (bytes_ > limit_) {
      bytes_ -= kept_[drop].capacity;
      freed->push_back(kept_[drop].base);
      ++drop;
    }
    kept_.erase(kept_.begin(), kept_.begin() + static_cast<std::ptrdiff_t>(drop));
  }

  absl::Mutex mu_;
  std::vector<Kept> kept_ ABSL_GUARDED_BY(mu_);  // least recently released first
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  size_t limit_ ABSL_GUARDED_BY(mu_) = size_t{256} << 20;
};

Cache& TheCache() {
  static Cache* const cache = new Cache;  // never destroyed: slices may outlive main's locals
  return *cache;
}

void ReleaseData(void* data) {
  if (data == nullptr) return;
  void* base = static_cast<unsigned char*>(data) - kHeader;
  size_t capacity;
  std::memcpy(&capacity, base, sizeof(capacity));
  TheCache().Give(base, capacity);
}

}  // namespace

void SetResultBufferCacheLimit(size_t bytes) { TheCache().SetLimit(bytes); }
size_t ResultBufferCacheBytes() { return TheCache().Bytes(); }

void ResultBuffer::Free::operator()(void* p) const { ReleaseData(p); }

ResultBuffer ResultBuffer::Allocate(size_t bytes) {
  ResultBuffer b;
  if (bytes == 0) return b;
  const size_t capacity = Capacity(bytes);
  void* base = capacity >= kSizeClass ? TheCache().Take(capacity) : nullptr;
  if (base == nullptr) {
    base = std::aligned_alloc(64, kHeader + capacity);
    if (base == nullptr) throw std::bad_alloc();
    std::memcpy(base, &capacity, sizeof(capacity));
  }
  b.data_.reset(static_cast<unsigned char*>(base) + kHeader);
  b.size_ = bytes;
  return b;
}

grpc::Slice ResultBuffer::ReleaseToSlice() {
  const size_t size = size_;
  size_ = 0;
  return grpc::Slice(data_.release(), size, ReleaseData);
}

absl::Status SerializeResponse(::tensorprep::v1::ProcessResponse& response, ResultBuffer result,
                               grpc::ByteBuffer* out) {
  constexpr size_t kMax = static_cast<size_t>(INT32_MAX);
  if (result.size() == 0) {
    const size_t size = response.ByteSizeLong();
    if (size > kMax) return TooLarge(size);
    grpc::Slice message(size);
    response.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(message.begin()));
    *out = grpc::ByteBuffer(&message, 1);
    return absl::OkStatus();
  }
  // images { dtype, shape, data = <result> }, then the other fields. The images field is taken
  // out of the message while the rest is serialised and put back afterwards.
  ::tensorprep::v1::Tensor images;
  images.Swap(response.mutable_images());
  response.clear_images();
  const size_t tensor_head = images.ByteSizeLong();  // dtype and shape; data is empty
  const size_t rest_size = response.ByteSizeLong();
  const uint64_t n = result.size();
  const uint64_t inner =
      tensor_head + CodedOutputStream::VarintSize32(kDataTag) + CodedOutputStream::VarintSize64(n) + n;
  const size_t head_size =
      CodedOutputStream::VarintSize32(kImagesTag) + CodedOutputStream::VarintSize64(inner) + inner - n;
  if (head_size + n + rest_size > kMax) {
    response.mutable_images()->Swap(&images);
    return TooLarge(head_size + n + rest_size);
  }
  grpc::Slice head(head_size);
  uint8_t* p = const_cast<uint8_t*>(head.begin());
  p = CodedOutputStream::WriteVarint32ToArray(kImagesTag, p);
  p = CodedOutputStream::WriteVarint64ToArray(inner, p);
  p = images.SerializeWithCachedSizesToArray(p);
  p = CodedOutputStream::WriteVarint32ToArray(kDataTag, p);
  CodedOutputStream::WriteVarint64ToArray(n, p);
  grpc::Slice rest(rest_size);
  response.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(rest.begin()));
  response.mutable_images()->Swap(&images);
  const grpc::Slice slices[] = {std::move(head), result.ReleaseToSlice(), std::move(rest)};
  *out = grpc::ByteBuffer(slices, 3);
  return absl::OkStatus();
}

}  // namespace tensorprep::server
