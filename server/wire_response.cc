#include "server/wire_response.h"

#include <google/protobuf/io/coded_stream.h>

#include <cstdint>
#include <new>

#include "absl/strings/str_cat.h"

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

}  // namespace

ResultBuffer ResultBuffer::Allocate(size_t bytes) {
  ResultBuffer b;
  if (bytes == 0) return b;
  const size_t rounded = (bytes + 63) / 64 * 64;  // aligned_alloc wants a multiple of the alignment
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  b.data_.reset(p);
  b.size_ = bytes;
  return b;
}

grpc::Slice ResultBuffer::ReleaseToSlice() {
  const size_t size = size_;
  size_ = 0;
  return grpc::Slice(data_.release(), size, [](void* p) { std::free(p); });
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
