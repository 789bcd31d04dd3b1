// The C++ client's shared-memory path against an in-process server: results through Call and
// StreamCalls on shared memory equal the inline results bit for bit (uint8 and float32 batches
// with an aux label, unary and stream), the transport falls back to inline bytes by itself when
// the server has shared memory off, the pool reuses its slots instead of growing, slots come back
// when results are destroyed, and memory from Allocate is sent without a copy. The pool's arena
// and its quarantine are checked on their own too.
#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/cpp/client.h"
#include "client/cpp/shm_pool.h"
#include "tests/server/test_server.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;
using client::AuxInput;
using client::CallRequest;
using client::CallResult;
using client::ShmMode;
using client::TensorInput;
using client::Transport;

constexpr uint64_t kMiB = uint64_t{1} << 20;

const std::string& Prefix() {
  static const std::string* prefix =
      new std::string(absl::StrCat("/tensorprep-ctest-", getpid(), "-"));
  return *prefix;
}

// Objects in /dev/shm whose names start with the test's prefix: the pool unlinks its objects
// right after registering them, so there must never be any.
int ObjectsLeft() {
  int n = 0;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  while (dirent* e = readdir(dir)) {
    if (absl::StartsWith(absl::StrCat("/", e->d_name), Prefix())) ++n;
  }
  closedir(dir);
  return n;
}

TestServerOptions ServerOptions(bool shm) {
  TestServerOptions o;
  o.threads = 2;
  if (shm) {
    o.shm.key_prefix = Prefix();
    o.shm.max_regions_per_client = 8;
    o.shm.max_mapped_bytes = 256 * kMiB;
  }
  return o;
}

client::Client MakeClient(const TestServer& server, ShmMode mode, uint64_t pool_mb = 4,
                          uint64_t max_mb = 64) {
  client::ClientOptions o;
  o.timeout = std::chrono::milliseconds(60000);
  o.shm = mode;
  o.shm_pool_mb = pool_mb;
  o.shm_max_mb = max_mb;
  return server.MakeClient(o);
}

// Random tensor bytes: uint8 over all values, float32 in [0, 1), int32 class ids in [0, 21).
std::string RandomBytes(v1::DType dtype, int64_t elements, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(static_cast<size_t>(elements * client::DTypeSize(dtype)), '\0');
  for (int64_t i = 0; i < elements; ++i) {
    if (dtype == v1::DTYPE_UINT8) {
      out[i] = static_cast<char>(rng() & 0xff);
    } else if (dtype == v1::DTYPE_FLOAT32) {
      const float v = static_cast<float>(rng() >> 8) * 0x1.0p-24f;
      std::memcpy(&out[4 * i], &v, 4);
    } else {
      const int32_t v = static_cast<int32_t>(rng() % 21);
      std::memcpy(&out[4 * i], &v, 4);
    }
  }
  return out;
}

// One batch of images with a label map, as owned bytes.
struct Batch {
  v1::DType dtype;
  std::vector<int64_t> shape;        // N, H, W, C
  std::vector<int64_t> label_shape;  // N, H, W
  v1::DType label_dtype;
  std::string images, labels;
};

Batch MakeBatch(v1::DType dtype, v1::DType label_dtype, int64_t n, int64_t h, int64_t w,
                uint32_t seed) {
  Batch b{dtype, {n, h, w, 3}, {n, h, w}, label_dtype, "", ""};
  b.images = RandomBytes(dtype, n * h * w * 3, seed);
  b.labels = RandomBytes(label_dtype, n * h * w, seed + 1);
  return b;
}

// Rotation (bilinear, edge), a random flip drawn from the seed and, for floats, a normalisation:
// geometric ops the label follows and one the label does not.
v1::Pipeline MakePipeline(v1::DType dtype) {
  v1::Pipeline p;
  auto* rot = p.add_ops()->mutable_rotate();
  rot->set_angle_deg(23.5);
  rot->set_interpolation(v1::INTERPOLATION_BILINEAR);
  rot->set_border(v1::BORDER_EDGE);
  auto* flip = p.add_ops()->mutable_random_flip();
  flip->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  flip->set_p(0.5);
  if (dtype == v1::DTYPE_FLOAT32) {
    auto* norm = p.add_ops()->mutable_normalize();
    norm->add_mean(0.5);
    norm->add_std(0.25);
  } else {
    p.add_ops()->mutable_add()->add_value(3);
  }
  return p;
}

CallRequest MakeCall(const Batch& b, const void* images = nullptr, const void* labels = nullptr) {
  CallRequest c;
  c.request_id = "c";
  c.images = TensorInput{b.dtype, b.shape, images != nullptr ? images : b.images.data()};
  const void* label_data = labels != nullptr ? labels : b.labels.data();
  c.aux.push_back(AuxInput{"label", TensorInput{b.label_dtype, b.label_shape, label_data}});
  c.pipeline = MakePipeline(b.dtype);
  c.device = v1::DEVICE_CPU;
  c.seed = 99;
  c.sample_offset = 5;
  return c;
}

// The same request with inline bytes, as Process sends it: the reference result.
v1::ProcessRequest InlineRequest(const Batch& b) {
  v1::ProcessRequest r;
  r.set_request_id("inline");
  r.mutable_images()->set_dtype(b.dtype);
  for (int64_t d : b.shape) r.mutable_images()->add_shape(d);
  r.mutable_images()->set_data(b.images);
  v1::AuxTensor* aux = r.add_aux();
  aux->set_name("label");
  aux->mutable_tensor()->set_dtype(b.label_dtype);
  for (int64_t d : b.label_shape) aux->mutable_tensor()->add_shape(d);
  aux->mutable_tensor()->set_data(b.labels);
  *r.mutable_pipeline() = MakePipeline(b.dtype);
  r.set_device(v1::DEVICE_CPU);
  r.set_seed(99);
  r.set_sample_offset(5);
  return r;
}

std::string Bytes(const client::TensorResult& t) {
  return std::string(reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size());
}

void ExpectSame(const CallResult& got, const v1::ProcessResponse& want) {
  EXPECT_EQ(got.images.dtype, want.images().dtype());
  EXPECT_EQ(got.images.shape,
            std::vector<int64_t>(want.images().shape().begin(), want.images().shape().end()));
  ASSERT_EQ(got.images.bytes.size(), want.images().data().size());
  EXPECT_TRUE(Bytes(got.images) == want.images().data()) << "images differ";
  ASSERT_EQ(got.aux.size(), 1u);
  ASSERT_EQ(want.aux_size(), 1);
  EXPECT_EQ(got.aux[0].name, "label");
  EXPECT_EQ(got.aux[0].tensor.dtype, want.aux(0).tensor().dtype());
  EXPECT_TRUE(Bytes(got.aux[0].tensor) == want.aux(0).tensor().data()) << "label differs";
}

class ShmClientTest : public ::testing::TestWithParam<v1::DType> {
 protected:
  void SetUp() override { server_ = std::make_unique<TestServer>(ServerOptions(true)); }
  Batch MakeParamBatch(uint32_t seed, int64_t n = 3) {
    const v1::DType label = GetParam() == v1::DTYPE_UINT8 ? v1::DTYPE_UINT8 : v1::DTYPE_INT32;
    return MakeBatch(GetParam(), label, n, 37, 53, seed);
  }
  std::unique_ptr<TestServer> server_;
};

TEST_P(ShmClientTest, UnaryEqualsInlineBitForBit) {
  client::Client shm = MakeClient(*server_, ShmMode::kOn);
  client::Client inline_client = server_->MakeClient();
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    const Batch b = MakeParamBatch(seed);
    auto want = inline_client.Process(InlineRequest(b));
    ASSERT_TRUE(want.ok()) << want.status();
    auto got = shm.Call(MakeCall(b));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->transport, Transport::kShm);
    EXPECT_EQ(got->transport_reason, "");
    EXPECT_EQ(got->request_id, "c");
    EXPECT_TRUE(got->images.bytes.in_shared_memory());
    EXPECT_TRUE(got->aux[0].tensor.bytes.in_shared_memory());
    // Every tensor byte went through shared memory, none inside the messages.
    EXPECT_EQ(got->transfer.inline_bytes_in(), 0u);
    EXPECT_EQ(got->transfer.inline_bytes_out(), 0u);
    EXPECT_EQ(got->transfer.shm_bytes_in(), b.images.size() + b.labels.size());
    EXPECT_EQ(got->client_copy_bytes, b.images.size() + b.labels.size());
    ExpectSame(*got, *want);

    // copy=true: the same bytes, in ordinary memory.
    auto copied = shm.Call(MakeCall(b), /*copy=*/true);
    ASSERT_TRUE(copied.ok()) << copied.status();
    EXPECT_EQ(copied->transport, Transport::kShm);
    EXPECT_FALSE(copied->images.bytes.in_shared_memory());
    ExpectSame(*copied, *want);
  }
  EXPECT_EQ(shm.transport(), Transport::kShm);
  EXPECT_EQ(shm.shm_reason(), "");
  EXPECT_EQ(ObjectsLeft(), 0);
}

TEST_P(ShmClientTest, StreamEqualsInlineBitForBit) {
  client::Client shm = MakeClient(*server_, ShmMode::kOn);
  client::Client inline_client = server_->MakeClient();
  constexpr int kCount = 12;
  std::vector<Batch> batches;
  std::vector<CallRequest> calls;
  for (int i = 0; i < kCount; ++i) batches.push_back(MakeParamBatch(100 + i, 1 + i % 3));
  for (int i = 0; i < kCount; ++i) {
    calls.push_back(MakeCall(batches[i]));
    calls.back().request_id = absl::StrCat("caller-", i);
    calls.back().sample_offset = i;
  }
  std::map<size_t, CallResult> results;
  absl::Status s = shm.StreamCalls(
      kCount, [&](size_t i) -> const CallRequest& { return calls[i]; }, 3,
      [&](size_t i, absl::StatusOr<CallResult> r) {
        ASSERT_TRUE(r.ok()) << r.status();
        results.emplace(i, std::move(*r));
      });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(results.size(), static_cast<size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    SCOPED_TRACE(i);
    v1::ProcessRequest r = InlineRequest(batches[i]);
    r.set_sample_offset(i);
    auto want = inline_client.Process(r);
    ASSERT_TRUE(want.ok()) << want.status();
    const CallResult& got = results.at(i);
    EXPECT_EQ(got.request_id, absl::StrCat("caller-", i));
    EXPECT_EQ(got.transport, Transport::kShm);
    EXPECT_TRUE(got.images.bytes.in_shared_memory());
    ExpectSame(got, *want);
  }
  results.clear();
  auto stats = shm.shm_stats();
  ASSERT_TRUE(stats.has_value());
  EXPECT_EQ(stats->in_use_bytes, 0u);
  EXPECT_EQ(stats->quarantined_slots, 0u);
}

TEST_P(ShmClientTest, AllocatedInputsAreSentWithoutACopy) {
  client::Client shm = MakeClient(*server_, ShmMode::kOn);
  const Batch b = MakeParamBatch(7);
  auto images = shm.Allocate(b.images.size());
  auto labels = shm.Allocate(b.labels.size());
  ASSERT_TRUE(images.ok() && labels.ok());
  ASSERT_TRUE(images->in_shared_memory());
  std::memcpy(images->data(), b.images.data(), b.images.size());
  std::memcpy(labels->data(), b.labels.data(), b.labels.size());
  auto got = shm.Call(MakeCall(b, images->data(), labels->data()));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->transport, Transport::kShm);
  EXPECT_EQ(got->client_copy_bytes, 0u);
  EXPECT_EQ(got->transfer.shm_bytes_in(), b.images.size() + b.labels.size());
  auto want = server_->MakeClient().Process(InlineRequest(b));
  ASSERT_TRUE(want.ok()) << want.status();
  ExpectSame(*got, *want);
  // The inputs are untouched: the results went to slots of their own.
  EXPECT_EQ(std::memcmp(images->data(), b.images.data(), b.images.size()), 0);
}

INSTANTIATE_TEST_SUITE_P(DTypes, ShmClientTest,
                         ::testing::Values(v1::DTYPE_UINT8, v1::DTYPE_FLOAT32),
                         [](const auto& info) {
                           return info.param == v1::DTYPE_UINT8 ? std::string("uint8")
                                                                : std::string("float32");
                         });

TEST(ShmClientFallbackTest, AutoFallsBackToInlineWhenTheServerHasShmOff) {
  TestServer off(ServerOptions(false));
  client::Client automatic = MakeClient(off, ShmMode::kAuto);
  const Batch b = MakeBatch(v1::DTYPE_FLOAT32, v1::DTYPE_INT32, 2, 16, 24, 5);
  auto got = automatic.Call(MakeCall(b));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->transport, Transport::kInline);
  EXPECT_TRUE(absl::StrContains(got->transport_reason, "disabled")) << got->transport_reason;
  EXPECT_EQ(automatic.transport(), Transport::kInline);
  EXPECT_TRUE(absl::StrContains(automatic.shm_reason(), "disabled")) << automatic.shm_reason();
  EXPECT_FALSE(got->images.bytes.in_shared_memory());
  EXPECT_EQ(got->transfer.shm_bytes_in(), 0u);
  EXPECT_GT(got->transfer.inline_bytes_in(), 0u);
  auto want = off.MakeClient().Process(InlineRequest(b));
  ASSERT_TRUE(want.ok()) << want.status();
  ExpectSame(*got, *want);
  EXPECT_FALSE(automatic.shm_stats().has_value());
  // Allocate hands out ordinary memory then, which Call sends inline.
  auto buffer = automatic.Allocate(64);
  ASSERT_TRUE(buffer.ok());
  EXPECT_FALSE(buffer->in_shared_memory());

  // A stream falls back too.
  int answered = 0;
  const CallRequest call = MakeCall(b);
  absl::Status s = automatic.StreamCalls(
      4, [&](size_t) -> const CallRequest& { return call; }, 2,
      [&](size_t, absl::StatusOr<CallResult> r) {
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(r->transport, Transport::kInline);
        ExpectSame(*r, *want);
        ++answered;
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(answered, 4);

  // Required shared memory is an error that says why; off never asks.
  client::Client required = MakeClient(off, ShmMode::kOn);
  auto refused = required.Call(MakeCall(b));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "disabled")) << refused.status();
  client::Client never = MakeClient(off, ShmMode::kOff);
  auto plain = never.Call(MakeCall(b));
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->transport, Transport::kInline);
  EXPECT_TRUE(absl::StrContains(plain->transport_reason, "off")) << plain->transport_reason;
}

TEST(ShmClientFallbackTest, AutoUsesShmWhenTheServerAllowsIt) {
  TestServer on(ServerOptions(true));
  client::Client automatic = MakeClient(on, ShmMode::kAuto);
  ASSERT_TRUE(automatic.Connect().ok());
  EXPECT_EQ(automatic.transport(), Transport::kShm);
  const Batch b = MakeBatch(v1::DTYPE_UINT8, v1::DTYPE_UINT8, 2, 16, 24, 6);
  auto got = automatic.Call(MakeCall(b));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->transport, Transport::kShm);
  EXPECT_EQ(on.shm().regions(), 1u);
  EXPECT_EQ(ObjectsLeft(), 0);
}

TEST(ShmClientPoolTest, SlotsAreReusedAcrossManyCalls) {
  TestServer server(ServerOptions(true));
  client::Client shm = MakeClient(server, ShmMode::kOn, /*pool_mb=*/2, /*max_mb=*/64);
  const Batch b = MakeBatch(v1::DTYPE_FLOAT32, v1::DTYPE_INT32, 2, 64, 64, 8);  // 128 KiB
  auto first = shm.Call(MakeCall(b));
  ASSERT_TRUE(first.ok()) << first.status();
  first = absl::UnknownError("dropped");  // the result goes, and with it its slots
  const client::ShmPoolStats before = *shm.shm_stats();
  EXPECT_EQ(before.in_use_bytes, 0u);
  for (int i = 0; i < 200; ++i) {
    auto r = shm.Call(MakeCall(b));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->transport, Transport::kShm);
  }
  const client::ShmPoolStats after = *shm.shm_stats();
  EXPECT_EQ(after.regions, before.regions);
  EXPECT_EQ(after.mapped_bytes, before.mapped_bytes);
  EXPECT_EQ(after.in_use_bytes, 0u);
  EXPECT_EQ(server.shm().regions(), before.regions);
}

TEST(ShmClientPoolTest, SlotsComeBackWhenResultsAreDestroyed) {
  TestServer server(ServerOptions(true));
  // 2 MiB regions, 6 MiB in all: 30 held results of 256 KiB (7.5 MiB) do not fit.
  client::Client shm = MakeClient(server, ShmMode::kAuto, /*pool_mb=*/2, /*max_mb=*/6);
  const Batch b = MakeBatch(v1::DTYPE_FLOAT32, v1::DTYPE_INT32, 4, 64, 64, 9);  // 256 KiB
  std::vector<CallResult> held;
  int inline_calls = 0;
  for (int i = 0; i < 30; ++i) {
    auto r = shm.Call(MakeCall(b));
    ASSERT_TRUE(r.ok()) << r.status();
    if (r->transport == Transport::kInline) {
      ++inline_calls;
      EXPECT_TRUE(absl::StrContains(r->transport_reason, "pool is full")) << r->transport_reason;
    }
    held.push_back(std::move(*r));
  }
  // The pool grew to its cap, then sent the rest inline instead of failing (auto mode).
  EXPECT_GT(inline_calls, 0);
  const client::ShmPoolStats full = *shm.shm_stats();
  EXPECT_LE(full.mapped_bytes, 6 * kMiB);
  EXPECT_GT(full.in_use_bytes, 4 * kMiB);
  // The held results still hold the right bytes (nothing was overwritten by later calls).
  auto want = server.MakeClient().Process(InlineRequest(b));
  ASSERT_TRUE(want.ok());
  for (const CallResult& r : held) ExpectSame(r, *want);
  held.clear();
  EXPECT_EQ(shm.shm_stats()->in_use_bytes, 0u);
  // And the freed slots carry the next calls without growing the pool.
  for (int i = 0; i < 10; ++i) {
    auto r = shm.Call(MakeCall(b));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->transport, Transport::kShm);
    held.push_back(std::move(*r));
  }
  EXPECT_EQ(shm.shm_stats()->mapped_bytes, full.mapped_bytes);

  // With shared memory required, a full pool is an error instead.
  client::Client required = MakeClient(server, ShmMode::kOn, 1, 1);
  std::vector<CallResult> keep;
  absl::Status last;
  for (int i = 0; i < 8 && last.ok(); ++i) {
    auto r = required.Call(MakeCall(b));
    if (r.ok())
      keep.push_back(std::move(*r));
    else
      last = r.status();
  }
  EXPECT_EQ(last.code(), absl::StatusCode::kResourceExhausted) << last;
}

TEST(ShmClientPoolTest, ResultsOutliveTheClientAndRegionsAreUnregistered) {
  TestServer server(ServerOptions(true));
  const Batch b = MakeBatch(v1::DTYPE_UINT8, v1::DTYPE_UINT8, 2, 16, 16, 10);
  auto want = server.MakeClient().Process(InlineRequest(b));
  ASSERT_TRUE(want.ok());
  CallResult kept;
  {
    client::Client shm = MakeClient(server, ShmMode::kOn);
    auto r = shm.Call(MakeCall(b));
    ASSERT_TRUE(r.ok()) << r.status();
    kept = std::move(*r);
    EXPECT_EQ(server.shm().regions(), 1u);
  }
  // The client unregistered its region when it went; the result's memory stays mapped here.
  EXPECT_EQ(server.shm().regions(), 0u);
  ExpectSame(kept, *want);
}

TEST(ShmClientPoolTest, SlotsOfAnAbandonedCallAreQuarantinedUntilTheServerIsDone) {
  TestServer server(ServerOptions(true));
  client::ClientOptions o;
  o.shm = ShmMode::kOn;
  o.shm_pool_mb = 1;
  o.shm_max_mb = 1;  // no growth: a shortage must be met by the quarantined slots
  o.timeout = std::chrono::milliseconds(300);
  client::Client shm = server.MakeClient(o);
  const Batch b = MakeBatch(v1::DTYPE_FLOAT32, v1::DTYPE_INT32, 2, 64, 64, 11);  // 128 KiB
  {
    // Both workers busy: the call waits in the queue until its deadline passes.
    Blocker b1(server.queue()), b2(server.queue());
    auto r = shm.Call(MakeCall(b));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded) << r.status();
    // Inputs (2 copies) and outputs (2): the server may still write into the outputs.
    EXPECT_EQ(shm.shm_stats()->quarantined_slots, 4u);
    EXPECT_EQ(shm.shm_stats()->in_use_bytes, 256 * 1024u);
  }
  // 768 KiB are free; the fourth 256 KiB block needs the quarantined ones, which come back once
  // the server reports the region idle.
  std::vector<client::Buffer> held;
  for (int i = 0; i < 3; ++i) {
    auto buffer = shm.Allocate(256 * 1024);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    held.push_back(std::move(*buffer));
  }
  EXPECT_TRUE(Eventually([&] {
    auto buffer = shm.Allocate(256 * 1024);
    if (!buffer.ok()) return false;
    held.push_back(std::move(*buffer));
    return true;
  }));
  EXPECT_EQ(shm.shm_stats()->quarantined_slots, 0u);
  EXPECT_EQ(shm.shm_stats()->mapped_bytes, 1 * kMiB);
}

// ---- the pool on its own -----------------------------------------------------------------------

TEST(ShmArenaTest, FirstFitCoalescesAndRefusesDoubleFrees) {
  client::ShmArena arena(64 * 10);
  auto a = arena.Alloc(1), b = arena.Alloc(65), c = arena.Alloc(64);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*b, 64u);  // 65 bytes take two 64-byte blocks
  EXPECT_EQ(*c, 192u);
  EXPECT_EQ(arena.used(), 256u);
  EXPECT_FALSE(arena.Alloc(64 * 7).has_value());
  ASSERT_TRUE(arena.Free(*b, 65).ok());
  EXPECT_EQ(arena.Free(*b, 65).code(), absl::StatusCode::kInternal);       // double free
  EXPECT_EQ(arena.Free(64 * 10, 64).code(), absl::StatusCode::kInternal);  // outside
  EXPECT_EQ(*arena.Alloc(100), 64u);  // first fit: the hole b left
  ASSERT_TRUE(arena.Free(64, 100).ok());
  ASSERT_TRUE(arena.Free(*a, 1).ok());
  ASSERT_TRUE(arena.Free(*c, 64).ok());
  EXPECT_EQ(arena.used(), 0u);
  EXPECT_EQ(arena.free_blocks(), 1u);  // all coalesced again
  EXPECT_EQ(arena.largest_free(), 640u);
}

// A fake server for the pool: registrations succeed, and it says which regions are in use.
struct FakeServer {
  int registered = 0, unregistered = 0;
  std::map<std::string, uint32_t> in_use;
  client::ShmServerCalls Calls() {
    client::ShmServerCalls c;
    c.register_region = [this](const std::string&, uint64_t,
                               const std::string& nonce) -> absl::StatusOr<std::string> {
      EXPECT_EQ(nonce.size(), client::kShmNonceBytes);
      return absl::StrCat("handle-", registered++);
    };
    c.unregister_region = [this](const std::string&) {
      ++unregistered;
      return absl::OkStatus();
    };
    c.requests_in_use = [this](const std::vector<std::string>& handles)
        -> absl::StatusOr<std::map<std::string, uint32_t>> {
      std::map<std::string, uint32_t> out;
      for (const auto& h : handles) out[h] = in_use[h];
      return out;
    };
    return c;
  }
};

TEST(ShmPoolTest, QuarantinedSlotsComeBackOnlyWhenTheServerIsDone) {
  FakeServer fake;
  client::ShmPoolOptions o;
  o.key_prefix = Prefix();
  o.initial_bytes = 4096;
  o.max_bytes = 4096;
  o.max_regions = 1;
  auto pool = client::ShmPool::Create(o, fake.Calls());
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_EQ(ObjectsLeft(), 0);  // unlinked right after registering
  auto slots = (*pool)->AllocMany({2048, 2048});
  ASSERT_TRUE(slots.ok()) << slots.status();
  fake.in_use["handle-0"] = 1;  // the abandoned request still runs
  (*pool)->Quarantine(std::move(*slots));
  EXPECT_EQ((*pool)->stats().quarantined_slots, 2u);
  auto refused = (*pool)->Alloc(1024);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  fake.in_use["handle-0"] = 0;  // it finished
  auto slot = (*pool)->Alloc(1024);
  ASSERT_TRUE(slot.ok()) << slot.status();
  EXPECT_EQ((*pool)->stats().quarantined_slots, 0u);
  // Locate finds memory of the pool, and only that.
  auto ref = (*pool)->Locate(slot->data() + 64, 128);
  ASSERT_TRUE(ref.has_value());
  EXPECT_EQ(ref->region(), "handle-0");
  EXPECT_EQ(ref->offset(), slot->offset() + 64);
  int local = 0;
  EXPECT_FALSE((*pool)->Locate(&local, sizeof(local)).has_value());
  EXPECT_FALSE((*pool)->Locate(slot->data(), 8192).has_value());
  // Close unregisters; the slot's memory stays usable until the slot goes.
  (*pool)->Close();
  EXPECT_EQ(fake.unregistered, 1);
  slot->data()[0] = 1;
  EXPECT_EQ((*pool)->Alloc(64).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ShmPoolTest, GrowsUpToItsCapsAndSaysWhyNot) {
  FakeServer fake;
  client::ShmPoolOptions o;
  o.key_prefix = Prefix();
  o.initial_bytes = 64 * 1024;
  o.max_bytes = 2 * 64 * 1024;
  o.max_regions = 2;
  auto pool = client::ShmPool::Create(o, fake.Calls());
  ASSERT_TRUE(pool.ok()) << pool.status();
  auto a = (*pool)->Alloc(60 * 1024);
  auto b = (*pool)->Alloc(60 * 1024);  // a second region
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*pool)->stats().regions, 2u);
  auto c = (*pool)->Alloc(60 * 1024);  // a third would pass the caps
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StrContains(c.status().message(), "pool is full")) << c.status();
  a->Release();
  EXPECT_TRUE((*pool)->Alloc(60 * 1024).ok());  // reused, no growth
  EXPECT_EQ(fake.registered, 2);
  EXPECT_EQ(ObjectsLeft(), 0);
}

TEST(ShmPoolTest, ABadPrefixIsALocalFailure) {
  FakeServer fake;
  client::ShmPoolOptions o;
  o.key_prefix = "/no/slashes";
  client::ShmSetupFailure failure;
  auto pool = client::ShmPool::Create(o, fake.Calls(), &failure);
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(failure, client::ShmSetupFailure::kLocal);
  EXPECT_EQ(fake.registered, 0);
}

}  // namespace
}  // namespace tensorprep::testing
