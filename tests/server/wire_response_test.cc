// The zero-copy response encoding against protobuf's own: the bytes SerializeResponse puts on the
// wire must parse into exactly the message protobuf would have serialised with the result in
// images.data, whatever else the response holds.
#include "server/wire_response.h"

#include "server/config.h"

#include <gtest/gtest.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
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

// A large result buffer that gRPC has sent comes back for the next result of its size class,
// with its bytes (and so its mapped pages) intact; small ones and ones over the limit do not.
TEST(ResultBufferCache, ReusesSentBuffersOfTheSameSizeClass) {
  SetResultBufferCacheLimit(0);  // empty, whatever ran before
  SetResultBufferCacheLimit(size_t{64} << 20);
  const size_t n = (size_t{3} << 20) + 100;  // size class: 4 MiB
  void* first;
  {
    ResultBuffer result = ResultBuffer::Allocate(n);
    first = result.data();
    static_cast<unsigned char*>(first)[n - 1] = 0x5a;
    v1::ProcessResponse response = Header();
    grpc::ByteBuffer wire;
    ASSERT_TRUE(SerializeResponse(response, std::move(result), &wire).ok());
    EXPECT_EQ(ResultBufferCacheBytes(), 0u) << "still owned by the wire";
  }  // gRPC drops the slice: the buffer goes to the cache
  EXPECT_EQ(ResultBufferCacheBytes(), size_t{4} << 20);
  {
    ResultBuffer again = ResultBuffer::Allocate((size_t{4} << 20) - 64);  // same class
    EXPECT_EQ(again.data(), first);
    EXPECT_EQ(static_cast<unsigned char*>(again.data())[n - 1], 0x5a);
    EXPECT_EQ(ResultBufferCacheBytes(), 0u);
    ResultBuffer other = ResultBuffer::Allocate(size_t{5} << 20);  // another class: fresh
    EXPECT_NE(other.data(), first);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(other.data()) % 64, 0u);
    again = ResultBuffer();  // dropped without being sent: cached too, the 4 MiB one first
  }
  EXPECT_EQ(ResultBufferCacheBytes(), (size_t{4} << 20) + (size_t{6} << 20));
  {
    ResultBuffer small = ResultBuffer::Allocate(1000);  // below 1 MiB: never cached
    ResultBuffer almost = ResultBuffer::Allocate((size_t{1} << 20) - 1);
  }
  EXPECT_EQ(ResultBufferCacheBytes(), (size_t{4} << 20) + (size_t{6} << 20));

  // Over the limit, the least recently released go first.
  SetResultBufferCacheLimit(size_t{7} << 20);
  EXPECT_EQ(ResultBufferCacheBytes(), size_t{6} << 20) << "the 4 MiB one, released first, went";
  SetResultBufferCacheLimit(0);
  EXPECT_EQ(ResultBufferCacheBytes(), 0u);
  {
    ResultBuffer kept_none = ResultBuffer::Allocate(size_t{2} << 20);
  }
  EXPECT_EQ(ResultBufferCacheBytes(), 0u);
  SetResultBufferCacheLimit(size_t{256} << 20);
}

// Many threads allocating and releasing at once: every buffer handed out is distinct while held.
TEST(ResultBufferCache, ConcurrentUseHandsOutDistinctBuffers) {
  SetResultBufferCacheLimit(0);
  SetResultBufferCacheLimit(size_t{16} << 20);
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &errors] {
      for (int i = 0; i < 200; ++i) {
        ResultBuffer b = ResultBuffer::Allocate(size_t{1} << 20);
        auto* p = static_cast<unsigned char*>(b.data());
        std::memset(p, t + 1, 4096);
        std::this_thread::yield();
        for (int k = 0; k < 4096; k += 512) {
          if (p[k] != t + 1) ++errors;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_LE(ResultBufferCacheBytes(), size_t{16} << 20);
  SetResultBufferCacheLimit(size_t{256} << 20);
}

TEST(ResultBufferCache, LimitIsAFlagAndAnEnvironmentVariable) {
  auto c = ParseConfig({}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->result_cache_mb, 256);
  c = ParseConfig({"--result-cache-mb", "0"}, {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->result_cache_mb, 0);
  c = ParseConfig({}, {"TENSORPREP_RESULT_CACHE_MB=1024"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->result_cache_mb, 1024);
  c = ParseConfig({"--result-cache-mb=-1"}, {});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("--result-cache-mb"), std::string::npos) << c.status();
  EXPECT_NE(Usage().find("--result-cache-mb"), std::string::npos);
}

}  // namespace
}  // namespace tensorprep::server
