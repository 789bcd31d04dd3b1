// The zero-copy response encoding against protobuf's own: the bytes SerializeResponse puts on the
// wire must parse into exactly the message protobuf would have serialised with the result in
// images.data, whatever else the response holds.
#include "server/wire_response.h"

#include <gtest/gtest.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <cstring>
#include <string>
#include <vector>

namespace tensorprep::server {
namespace {

namespace v1 = ::tensorprep::v1;

std::string Flatten(grpc::ByteBuffer& bb) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(bb.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

v1::ProcessResponse Header() {
  v1::ProcessResponse r;
  r.set_request_id("batch-7");
  r.mutable_images()->set_dtype(v1::DTYPE_FLOAT32);
  for (int d : {2, 3, 5, 4}) r.mutable_images()->add_shape(d);
  auto* aux = r.add_aux();
  aux->set_name("mask");
  aux->mutable_tensor()->set_dtype(v1::DTYPE_UINT8);
  for (int d : {2, 3, 5}) aux->mutable_tensor()->add_shape(d);
  aux->mutable_tensor()->set_data(std::string(30, '\x07'));
  r.set_device(v1::DEVICE_CPU);
  r.mutable_timings()->set_kernel_ns(12345);
  return r;
}

TEST(WireResponse, ResultBytesParseAsImagesData) {
  // Sizes whose length prefixes take 1, 2 and 3 varint bytes.
  for (const size_t n : {size_t{100}, size_t{120}, size_t{40000}, size_t{3 << 20}}) {
    SCOPED_TRACE(n);
    v1::ProcessResponse response = Header();
    ResultBuffer result = ResultBuffer::Allocate(n);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(result.data()) % 64, 0u);
    auto* bytes = static_cast<unsigned char*>(result.data());
    for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<unsigned char>(i * 131 + 7);
    const std::string data(reinterpret_cast<const char*>(result.data()), n);

    grpc::ByteBuffer wire;
    ASSERT_TRUE(SerializeResponse(response, std::move(result), &wire).ok());
    EXPECT_EQ(result.size(), 0u) << "the buffer is handed to the wire";
    EXPECT_EQ(response.SerializeAsString(), Header().SerializeAsString())
        << "the response is left as it was";

    v1::ProcessResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(Flatten(wire)));
    v1::ProcessResponse want = Header();
    want.mutable_images()->set_data(data);
    EXPECT_EQ(parsed.SerializeAsString(), want.SerializeAsString());
    EXPECT_EQ(parsed.images().data(), data);
    EXPECT_EQ(wire.Length(), want.ByteSizeLong()) << "no byte more than protobuf's encoding";
  }
}

TEST(WireResponse, WithoutAResultIsProtobufsOwnEncoding) {
  v1::ProcessResponse response = Header();
  response.mutable_error()->set_code(3);
  response.mutable_error()->set_message("request 'batch-7': images: bad");
  grpc::ByteBuffer wire;
  ASSERT_TRUE(SerializeResponse(response, ResultBuffer(), &wire).ok());
  EXPECT_EQ(Flatten(wire), response.SerializeAsString());
}

}  // namespace
}  // namespace tensorprep::server
