// Shared-memory tensors over real gRPC on loopback: registration and its refusals, results in
// shared memory equal to inline results bit for bit (unary and stream), hostile references, a
// region unregistered while a request uses it, and an object truncated under the server. After
// every refusal the server must still answer a good request.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/config.h"
#include "tests/handlers/request_util.h"
#include "tests/kernels/test_util.h"
#include "tests/server/test_server.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;
using handlers::testing::AddFlip;
using handlers::testing::AddRotate;
using handlers::testing::RandomPipeline;
using handlers::testing::Wire;
using kernels::BatchShape;
using kernels::DType;
using kernels::testing::RandomBuffer;

const std::string& Prefix() {
  static const std::string* prefix =
      new std::string(absl::StrCat("/tensorprep-test-", getpid(), "-"));
  return *prefix;
}

// A POSIX shared-memory object the test owns, mapped; removed when it goes.
class ShmObject {
 public:
  explicit ShmObject(size_t bytes, const std::string& prefix = Prefix()) : size_(bytes) {
    static std::atomic<int> counter{0};
    key_ = absl::StrCat(prefix, counter.fetch_add(1));
    fd_ = shm_open(key_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    EXPECT_GE(fd_, 0) << std::strerror(errno);
    EXPECT_EQ(ftruncate(fd_, static_cast<off_t>(bytes)), 0);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    EXPECT_NE(p, MAP_FAILED);
    data_ = static_cast<uint8_t*>(p);
  }
  ~ShmObject() {
    munmap(data_, size_);
    close(fd_);
    shm_unlink(key_.c_str());
  }
  const std::string& key() const { return key_; }
  uint8_t* data() { return data_; }
  int fd() const { return fd_; }

 private:
  std::string key_;
  int fd_ = -1;
  uint8_t* data_ = nullptr;
  size_t size_;
};

v1::SharedMemoryRef Ref(const std::string& region, uint64_t offset, uint64_t bytes) {
  v1::SharedMemoryRef r;
  r.set_region(region);
  r.set_offset(offset);
  r.set_byte_size(bytes);
  return r;
}

// Moves a wire tensor's bytes into the region at `offset` and replaces them by a reference.
void ToShm(v1::Tensor* t, const std::string& region, uint8_t* base, uint64_t offset) {
  std::memcpy(base + offset, t->data().data(), t->data().size());
  *t->mutable_shm() = Ref(region, offset, t->data().size());
  t->clear_data();
}

constexpr uint64_t kRegionBytes = uint64_t{16} << 20;

class ShmTest : public ::testing::Test {
 protected:
  static TestServerOptions Options(bool enabled) {
    TestServerOptions o;
    o.threads = 2;
    if (enabled) {
      o.shm.key_prefix = Prefix();
      o.shm.max_regions_per_client = 4;
      o.shm.max_mapped_bytes = uint64_t{64} << 20;
    }
    return o;
  }

  void SetUp() override {
    server_ = std::make_unique<TestServer>(Options(true));
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Preprocessor::NewStub(channel_);
  }

  grpc::Status Register(const std::string& key, uint64_t offset, uint64_t bytes,
                        std::string* handle, const std::string& expect = "") {
    v1::RegisterSharedMemoryRequest req;
    req.set_key(key);
    req.set_offset(offset);
    req.set_byte_size(bytes);
    req.set_expect_prefix(expect);
    req.set_name("test region");
    v1::RegisterSharedMemoryResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub_->RegisterSharedMemory(&ctx, req, &resp);
    if (handle != nullptr) *handle = resp.region();
    return s;
  }

  grpc::Status Unregister(const std::string& handle) {
    v1::UnregisterSharedMemoryRequest req;
    req.set_region(handle);
    v1::UnregisterSharedMemoryResponse resp;
    grpc::ClientContext ctx;
    return stub_->UnregisterSharedMemory(&ctx, req, &resp);
  }

  grpc::Status Status(const std::string& handle, v1::SharedMemoryStatusResponse* resp) {
    v1::SharedMemoryStatusRequest req;
    if (!handle.empty()) req.add_regions(handle);
    grpc::ClientContext ctx;
    return stub_->SharedMemoryStatus(&ctx, req, resp);
  }

  grpc::Status Process(const v1::ProcessRequest& req, v1::ProcessResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return stub_->Process(&ctx, req, resp);
  }

  // A request the server must still answer correctly after a refusal: add 1 to 24 uint8.
  void ExpectServing() {
    v1::ProcessRequest r;
    v1::Tensor* t = r.mutable_images();
    t->set_dtype(v1::DTYPE_UINT8);
    for (int64_t d : {1, 2, 4, 3}) t->add_shape(d);
    std::string data(24, '\0');
    for (int i = 0; i < 24; ++i) data[i] = static_cast<char>(i);
    t->set_data(data);
    r.mutable_pipeline()->add_ops()->mutable_add()->add_value(1);
    v1::ProcessResponse resp;
    grpc::Status s = Process(r, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    for (int i = 0; i < 24; ++i) ASSERT_EQ(static_cast<int>(resp.images().data()[i]), i + 1);
  }

  std::unique_ptr<TestServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Preprocessor::Stub> stub_;
};

TEST_F(ShmTest, ListOpsAdvertisesTheTerms) {
  v1::ListOpsResponse ops;
  grpc::ClientContext ctx;
  ASSERT_TRUE(stub_->ListOps(&ctx, v1::ListOpsRequest(), &ops).ok());
  EXPECT_TRUE(ops.shared_memory().enabled());
  EXPECT_EQ(ops.shared_memory().key_prefix(), Prefix());
  EXPECT_EQ(ops.shared_memory().max_regions_per_client(), 4u);
  EXPECT_EQ(ops.shared_memory().max_mapped_bytes(), uint64_t{64} << 20);
}

TEST_F(ShmTest, RegisterStatusUnregister) {
  ShmObject obj(kRegionBytes);
  std::memcpy(obj.data() + 4096, "nonce-1234", 10);
  std::string handle;
  grpc::Status s = Register(obj.key(), 4096, 1 << 20, &handle, "nonce-1234");
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(handle.size(), 32u);
  EXPECT_EQ(handle.find_first_not_of("0123456789abcdef"), std::string::npos);

  v1::SharedMemoryStatusResponse st;
  ASSERT_TRUE(Status(handle, &st).ok());
  ASSERT_EQ(st.regions_size(), 1);
  EXPECT_EQ(st.regions(0).byte_size(), 1u << 20);
  EXPECT_EQ(st.regions(0).name(), "test region");
  EXPECT_EQ(st.regions(0).requests_in_use(), 0u);
  EXPECT_FALSE(st.regions(0).broken());
  EXPECT_EQ(st.client_regions(), 1u);
  EXPECT_EQ(st.mapped_bytes(), 1u << 20);

  // Without handles: totals only, never a handle.
  v1::SharedMemoryStatusResponse totals;
  ASSERT_TRUE(Status("", &totals).ok());
  EXPECT_EQ(totals.regions_size(), 0);
  EXPECT_EQ(totals.client_regions(), 1u);

  ASSERT_TRUE(Unregister(handle).ok());
  EXPECT_EQ(Unregister(handle).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::SharedMemoryStatusResponse after;
  EXPECT_EQ(Status(handle, &after).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(Status("", &after).ok());
  EXPECT_EQ(after.client_regions(), 0u);
  EXPECT_EQ(after.mapped_bytes(), 0u);
}

TEST_F(ShmTest, RegistrationRefusals) {
  ShmObject obj(1 << 20);
  ShmObject outside(4096, "/tensorprep-other-");
  const uint64_t u64max = std::numeric_limits<uint64_t>::max();
  struct Case {
    std::string name, key;
    uint64_t offset, bytes;
    std::string expect;
    grpc::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"outside prefix", outside.key(), 0, 4096, "", grpc::StatusCode::PERMISSION_DENIED,
       "start with"},
      {"just the prefix", Prefix(), 0, 4096, "", grpc::StatusCode::PERMISSION_DENIED, "go on"},
      {"slash inside", Prefix() + "a/b", 0, 4096, "", grpc::StatusCode::INVALID_ARGUMENT,
       "no other '/'"},
      {"no such object", Prefix() + "missing", 0, 4096, "", grpc::StatusCode::NOT_FOUND,
       "no shared-memory object"},
      {"past the end", obj.key(), 4096, 1 << 20, "", grpc::StatusCode::INVALID_ARGUMENT,
       "past the object's end"},
      {"zero bytes", obj.key(), 0, 0, "", grpc::StatusCode::INVALID_ARGUMENT, "byte_size"},
      {"overflow", obj.key(), u64max - 10, 100, "", grpc::StatusCode::INVALID_ARGUMENT,
       "overflows"},
      {"other memory", obj.key(), 0, 4096, "not what is there",
       grpc::StatusCode::FAILED_PRECONDITION, "differ"},
      {"over the byte limit", obj.key(), 0, uint64_t{65} << 20, "",
       grpc::StatusCode::RESOURCE_EXHAUSTED, "--shm-max-mb"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    grpc::Status s = Register(c.key, c.offset, c.bytes, nullptr, c.expect);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_NE(s.error_message().find(c.message), std::string::npos) << s.error_message();
    // Keys are never echoed (the prefix, which is the server's own setting, may be).
    EXPECT_EQ(s.error_message().find(obj.key()), std::string::npos);
    EXPECT_EQ(s.error_message().find("missing"), std::string::npos);
    ExpectServing();
  }
  v1::SharedMemoryStatusResponse st;
  ASSERT_TRUE(Status("", &st).ok());
  EXPECT_EQ(st.client_regions(), 0u);
  EXPECT_EQ(st.mapped_bytes(), 0u);
}

TEST_F(ShmTest, RegionLimitPerClient) {
  ShmObject obj(1 << 20);
  std::vector<std::string> handles(4);
  for (std::string& h : handles) ASSERT_TRUE(Register(obj.key(), 0, 4096, &h).ok());
  grpc::Status s = Register(obj.key(), 0, 4096, nullptr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find("--shm-max-regions"), std::string::npos);
  ASSERT_TRUE(Unregister(handles[0]).ok());
  EXPECT_TRUE(Register(obj.key(), 0, 4096, &handles[0]).ok());
  for (const std::string& h : handles) EXPECT_TRUE(Unregister(h).ok());
}

TEST_F(ShmTest, DisabledServerRefusesEverything) {
  TestServer off(Options(false));
  auto channel = grpc::CreateChannel(off.address(), grpc::InsecureChannelCredentials());
  auto stub = v1::Preprocessor::NewStub(channel);
  ShmObject obj(1 << 20);
  {
    v1::RegisterSharedMemoryRequest req;
    req.set_key(obj.key());
    req.set_byte_size(4096);
    v1::RegisterSharedMemoryResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = stub->RegisterSharedMemory(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(s.error_message().find("disabled"), std::string::npos);
  }
  {
    v1::ListOpsResponse ops;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ListOps(&ctx, v1::ListOpsRequest(), &ops).ok());
    EXPECT_FALSE(ops.shared_memory().enabled());
  }
  v1::ProcessRequest r;
  *r.mutable_images() = Wire(RandomBuffer(DType::kFloat32, {1, 4, 4, 3}, 1, -1, 1),
                             v1::DTYPE_FLOAT32, false);
  ToShm(r.mutable_images(), std::string(32, 'a'), obj.data(), 0);
  v1::ProcessResponse resp;
  grpc::ClientContext ctx;
  grpc::Status s = stub->Process(&ctx, r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
}

// Random pipelines with an aux label, inline and through shared memory (inputs and outputs),
// unary and stream: the same bytes.
TEST_F(ShmTest, SharedMemoryResultsEqualInlineResults) {
  ShmObject obj(kRegionBytes);
  std::string handle;
  ASSERT_TRUE(Register(obj.key(), 0, kRegionBytes, &handle).ok());
  std::mt19937 rng(7);
  for (int round = 0; round < 24; ++round) {
    SCOPED_TRACE(round);
    const bool nearest = round % 3 == 0;
    const int64_t c = round % 4 == 1 ? 1 : 3;
    const BatchShape shape{1 + round % 3, 9 + round % 5, 12 + round % 7, c};
    const DType dtype = round % 2 == 0 ? DType::kFloat32 : DType::kUInt8;
    const v1::DType wire_dtype = dtype == DType::kFloat32 ? v1::DTYPE_FLOAT32 : v1::DTYPE_UINT8;
    v1::ProcessRequest inline_req;
    inline_req.set_request_id(absl::StrCat("r", round));
    inline_req.set_seed(round);
    double lo, hi;
    kernels::testing::DefaultRange(dtype, &lo, &hi);
    *inline_req.mutable_images() = Wire(RandomBuffer(dtype, shape, round, lo, hi), wire_dtype,
                                        false);
    v1::AuxTensor* label = inline_req.add_aux();
    label->set_name("label");
    *label->mutable_tensor() = Wire(
        RandomBuffer(DType::kInt32, {shape.n, shape.h, shape.w, 1}, 100 + round, 0, 20),
        v1::DTYPE_INT32, true);
    label->set_fill(255);
    if (dtype == DType::kFloat32) {
      *inline_req.mutable_pipeline() = RandomPipeline(rng, nearest, static_cast<int>(c));
    } else {
      AddRotate(*inline_req.mutable_pipeline(), 10.0 * round,
                nearest ? v1::INTERPOLATION_NEAREST : v1::INTERPOLATION_BILINEAR);
      AddFlip(*inline_req.mutable_pipeline(), v1::FLIP_AXIS_HORIZONTAL);
    }
    v1::ProcessResponse want;
    grpc::Status s = Process(inline_req, &want);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(want.transfer().shm_bytes_in(), 0u);
    EXPECT_GT(want.transfer().inline_bytes_out(), 0u);

    // Inputs at 0 and after it; outputs after those, each 64-byte aligned.
    v1::ProcessRequest shm_req = inline_req;
    const uint64_t in_bytes = inline_req.images().data().size();
    const uint64_t label_bytes = inline_req.aux(0).tensor().data().size();
    const uint64_t out_bytes = want.images().data().size();
    auto align = [](uint64_t x) { return (x + 63) / 64 * 64; };
    const uint64_t label_at = align(in_bytes);
    const uint64_t out_at = label_at + align(label_bytes);
    const uint64_t label_out_at = out_at + align(out_bytes) + 128;
    ToShm(shm_req.mutable_images(), handle, obj.data(), 0);
    ToShm(shm_req.mutable_aux(0)->mutable_tensor(), handle, obj.data(), label_at);
    // Reservations may be larger than the result.
    *shm_req.mutable_images_output() = Ref(handle, out_at, out_bytes + 64);
    *shm_req.mutable_aux(0)->mutable_output() = Ref(handle, label_out_at, label_bytes);
    std::memset(obj.data() + out_at, 0xAB, out_bytes + 64);
    std::memset(obj.data() + label_out_at, 0xAB, label_bytes);

    v1::ProcessResponse got;
    s = Process(shm_req, &got);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_TRUE(got.images().data().empty());
    EXPECT_EQ(got.images().shm().region(), handle);
    EXPECT_EQ(got.images().shm().offset(), out_at);
    EXPECT_EQ(got.images().dtype(), want.images().dtype());
    EXPECT_EQ(got.images().shape_size(), want.images().shape_size());
    ASSERT_EQ(got.aux_size(), 1);
    EXPECT_EQ(got.aux(0).tensor().shm().offset(), label_out_at);
    EXPECT_EQ(std::memcmp(obj.data() + out_at, want.images().data().data(), out_bytes), 0);
    EXPECT_EQ(obj.data()[out_at + out_bytes], 0xAB) << "wrote past the result";
    EXPECT_EQ(std::memcmp(obj.data() + label_out_at, want.aux(0).tensor().data().data(),
                          label_bytes),
              0);
    EXPECT_EQ(got.transfer().inline_bytes_in(), 0u);
    EXPECT_EQ(got.transfer().shm_bytes_in(), in_bytes + label_bytes);
    EXPECT_EQ(got.transfer().inline_bytes_out(), 0u);
    EXPECT_EQ(got.transfer().shm_bytes_out(), out_bytes + label_bytes);

    // The same on a stream, with the main output inline and the label's in shared memory.
    v1::ProcessRequest mixed = shm_req;
    mixed.clear_images_output();
    std::memset(obj.data() + label_out_at, 0xCD, label_bytes);
    grpc::ClientContext ctx;
    auto stream = stub_->ProcessStream(&ctx);
    ASSERT_TRUE(stream->Write(mixed));
    stream->WritesDone();
    v1::ProcessResponse streamed;
    ASSERT_TRUE(stream->Read(&streamed));
    ASSERT_FALSE(streamed.has_error()) << streamed.error().message();
    EXPECT_TRUE(stream->Finish().ok());
    EXPECT_TRUE(streamed.images().data() == want.images().data());
    EXPECT_EQ(std::memcmp(obj.data() + label_out_at, want.aux(0).tensor().data().data(),
                          label_bytes),
              0);
    EXPECT_EQ(streamed.transfer().inline_bytes_out(), out_bytes);
    EXPECT_EQ(streamed.transfer().shm_bytes_out(), label_bytes);
  }
  EXPECT_TRUE(Unregister(handle).ok());
}

TEST_F(ShmTest, HostileReferences) {
  ShmObject obj(1 << 20);
  ShmObject other(1 << 20);
  std::string handle, second;
  ASSERT_TRUE(Register(obj.key(), 0, 1 << 20, &handle).ok());
  // The same object a second time (a second handle): overlaps are found across handles too.
  ASSERT_TRUE(Register(obj.key(), 4096, 65536, &second).ok());
  const uint64_t u64max = std::numeric_limits<uint64_t>::max();
  const uint64_t bytes = 2 * 8 * 8 * 3 * 4;  // 2x8x8x3 float32

  auto base = [&] {
    v1::ProcessRequest r;
    r.set_request_id("hostile");
    *r.mutable_images() = Wire(RandomBuffer(DType::kFloat32, {2, 8, 8, 3}, 3, -1, 1),
                               v1::DTYPE_FLOAT32, false);
    ToShm(r.mutable_images(), handle, obj.data(), 0);
    AddFlip(*r.mutable_pipeline(), v1::FLIP_AXIS_VERTICAL);
    return r;
  };
  struct Case {
    std::string name;
    std::function<void(v1::ProcessRequest&)> mutate;
    grpc::StatusCode code;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"unknown handle",
       [&](v1::ProcessRequest& r) { r.mutable_images()->mutable_shm()->set_region(std::string(32, 'f')); },
       grpc::StatusCode::NOT_FOUND, "images.shm.region"},
      {"empty handle", [&](v1::ProcessRequest& r) { r.mutable_images()->mutable_shm()->clear_region(); },
       grpc::StatusCode::NOT_FOUND, "images.shm.region"},
      {"past the region",
       [&](v1::ProcessRequest& r) { r.mutable_images()->mutable_shm()->set_offset((1 << 20) - 64); },
       grpc::StatusCode::INVALID_ARGUMENT, "outside the region"},
      {"offset overflows",
       [&](v1::ProcessRequest& r) { r.mutable_images()->mutable_shm()->set_offset(u64max - 8); },
       grpc::StatusCode::INVALID_ARGUMENT, "outside the region"},
      {"size overflows",
       [&](v1::ProcessRequest& r) {
         r.mutable_images()->mutable_shm()->set_offset(64);
         r.mutable_images()->mutable_shm()->set_byte_size(u64max - 32);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "outside the region"},
      {"wrong size",
       [&](v1::ProcessRequest& r) { r.mutable_images()->mutable_shm()->set_byte_size(bytes - 4); },
       grpc::StatusCode::INVALID_ARGUMENT, "images.shm.byte_size"},
      {"misaligned",
       [&](v1::ProcessRequest& r) { r.mutable_images()->mutable_shm()->set_offset(2); },
       grpc::StatusCode::INVALID_ARGUMENT, "images.shm.offset"},
      {"data and shm",
       [&](v1::ProcessRequest& r) { r.mutable_images()->set_data(std::string(bytes, '\0')); },
       grpc::StatusCode::INVALID_ARGUMENT, "either in data or in shm"},
      {"output over the input",
       [&](v1::ProcessRequest& r) { *r.mutable_images_output() = Ref(handle, 64, bytes); },
       grpc::StatusCode::INVALID_ARGUMENT, "overlaps the shared-memory bytes of the input images"},
      {"output over the input through another handle",
       [&](v1::ProcessRequest& r) {
         r.mutable_images()->mutable_shm()->set_offset(8192);
         *r.mutable_images_output() = Ref(second, 4096, bytes);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "overlaps"},
      {"output too small",
       [&](v1::ProcessRequest& r) { *r.mutable_images_output() = Ref(handle, 65536, bytes - 1); },
       grpc::StatusCode::INVALID_ARGUMENT, "images_output.byte_size"},
      {"output unknown handle",
       [&](v1::ProcessRequest& r) { *r.mutable_images_output() = Ref("nope", 65536, bytes); },
       grpc::StatusCode::NOT_FOUND, "images_output.region"},
      {"two outputs in one place",
       [&](v1::ProcessRequest& r) {
         *r.mutable_images_output() = Ref(handle, 65536, bytes);
         v1::AuxTensor* a = r.add_aux();
         a->set_name("mask");
         *a->mutable_tensor() = Wire(RandomBuffer(DType::kUInt8, {2, 8, 8, 1}, 4, 0, 9),
                                     v1::DTYPE_UINT8, true);
         *a->mutable_output() = Ref(handle, 65536 + 100, 128);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "aux[0].output: overlaps the shared-memory place of "
                                           "images_output"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ProcessRequest r = base();
    c.mutate(r);
    v1::ProcessResponse resp;
    grpc::Status s = Process(r, &resp);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_NE(s.error_message().find(c.message), std::string::npos) << s.error_message();
    EXPECT_EQ(s.error_message().find(handle), std::string::npos) << "echoed a handle";
    EXPECT_EQ(s.error_message().find(obj.key()), std::string::npos) << "echoed a key";
    // On a stream: the same code in the response's error, and the stream goes on.
    grpc::ClientContext ctx;
    auto stream = stub_->ProcessStream(&ctx);
    ASSERT_TRUE(stream->Write(r));
    stream->WritesDone();
    v1::ProcessResponse streamed;
    ASSERT_TRUE(stream->Read(&streamed));
    EXPECT_EQ(streamed.error().code(), static_cast<int>(c.code)) << streamed.error().message();
    EXPECT_TRUE(stream->Finish().ok());
    ExpectServing();
  }
  // A handle of another region works: a handle is a capability, given or not.
  v1::ProcessRequest good = base();
  *good.mutable_images_output() = Ref(second, 0, bytes);
  v1::ProcessResponse resp;
  grpc::Status s = Process(good, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(Unregister(handle).ok());
  EXPECT_TRUE(Unregister(second).ok());
}

// Unregistering while a request waits in the queue: the request still runs on the mapped
// memory and succeeds; the mapping goes when it is done.
TEST_F(ShmTest, UnregisterWhileInFlight) {
  ShmObject obj(1 << 20);
  std::string handle;
  ASSERT_TRUE(Register(obj.key(), 0, 1 << 20, &handle).ok());
  v1::ProcessRequest r;
  *r.mutable_images() = Wire(RandomBuffer(DType::kFloat32, {2, 8, 8, 3}, 5, -1, 1),
                             v1::DTYPE_FLOAT32, false);
  const std::string input = r.images().data();
  ToShm(r.mutable_images(), handle, obj.data(), 0);
  *r.mutable_images_output() = Ref(handle, 4096, input.size());
  r.mutable_pipeline()->add_ops()->mutable_multiply()->add_value(2);

  grpc::Status result;
  std::thread caller;
  {
    Blocker b1(server_->queue()), b2(server_->queue());
    caller = std::thread([&] {
      v1::ProcessResponse resp;
      result = Process(r, &resp);
    });
    ASSERT_TRUE(Eventually([&] { return server_->queue().depth() == 1; }));
    v1::SharedMemoryStatusResponse st;
    ASSERT_TRUE(Status(handle, &st).ok());
    EXPECT_EQ(st.regions(0).requests_in_use(), 2u);  // its input and its output
    ASSERT_TRUE(Unregister(handle).ok());
    EXPECT_EQ(Status(handle, &st).error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(server_->shm().mapped_bytes(), 1u << 20) << "unmapped under a queued request";
  }
  caller.join();
  ASSERT_TRUE(result.ok()) << result.error_message();
  const float* in = reinterpret_cast<const float*>(input.data());
  const float* out = reinterpret_cast<const float*>(obj.data() + 4096);
  for (size_t i = 0; i < input.size() / 4; ++i) ASSERT_EQ(out[i], in[i] * 2) << i;
  EXPECT_TRUE(Eventually([&] { return server_->shm().mapped_bytes() == 0; }));
}

// The client truncates its object under the server: no crash, the request fails with
// FAILED_PRECONDITION, the region refuses later requests, and the server keeps serving.
TEST_F(ShmTest, TruncatedObjectBreaksTheRegionNotTheServer) {
  for (const bool while_queued : {false, true}) {
    SCOPED_TRACE(while_queued ? "truncated while queued" : "truncated before");
    ShmObject obj(1 << 20);
    std::string handle;
    ASSERT_TRUE(Register(obj.key(), 0, 1 << 20, &handle).ok());
    v1::ProcessRequest r;
    *r.mutable_images() = Wire(RandomBuffer(DType::kFloat32, {4, 32, 32, 3}, 6, -1, 1),
                               v1::DTYPE_FLOAT32, false);
    ToShm(r.mutable_images(), handle, obj.data(), 0);
    *r.mutable_images_output() = Ref(handle, 65536, r.images().shm().byte_size());
    AddRotate(*r.mutable_pipeline(), 30);
    grpc::Status result;
    if (while_queued) {
      std::thread caller;
      {
        Blocker b1(server_->queue()), b2(server_->queue());
        caller = std::thread([&] {
          v1::ProcessResponse resp;
          result = Process(r, &resp);
        });
        ASSERT_TRUE(Eventually([&] { return server_->queue().depth() == 1; }));
        ASSERT_EQ(ftruncate(obj.fd(), 0), 0);
      }
      caller.join();
    } else {
      ASSERT_EQ(ftruncate(obj.fd(), 0), 0);
      v1::ProcessResponse resp;
      result = Process(r, &resp);
    }
    EXPECT_EQ(result.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
        << result.error_message();
    EXPECT_NE(result.error_message().find("shrank"), std::string::npos) << result.error_message();
    v1::SharedMemoryStatusResponse st;
    ASSERT_TRUE(Status(handle, &st).ok());
    EXPECT_TRUE(st.regions(0).broken());
    v1::ProcessResponse again;
    grpc::Status s = Process(r, &again);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_NE(s.error_message().find("broken"), std::string::npos) << s.error_message();
    ExpectServing();
    EXPECT_TRUE(Unregister(handle).ok());
  }
}

TEST(ShmConfigTest, FlagsAndEnvironment) {
  auto c = server::ParseConfig({}, {});
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->shm_prefix, "") << "shared memory must be off unless the operator enables it";
  EXPECT_EQ(c->uds, "");
  c = server::ParseConfig({"--shm-prefix", "/tp-", "--shm-max-regions=3", "--uds", "/x/s.sock"},
                          {"TENSORPREP_SHM_MAX_MB=512", "TENSORPREP_SHM_PREFIX=/other-"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->shm_prefix, "/tp-");  // the flag wins
  EXPECT_EQ(c->shm_max_regions, 3);
  EXPECT_EQ(c->shm_max_mb, 512);
  EXPECT_EQ(c->uds, "/x/s.sock");
  for (const char* bad : {"tp-", "/", "/a/b", ""}) {
    auto r = server::ParseConfig({"--shm-prefix", bad}, {});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(server::ParseConfig({"--shm-max-regions", "0"}, {}).ok());
  EXPECT_FALSE(server::ParseConfig({"--uds", ""}, {}).ok());
}

}  // namespace
}  // namespace tensorprep::testing
