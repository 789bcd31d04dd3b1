// Limits, backpressure, deadlines and cancellation, over real gRPC on loopback. Work is held in
// the queue by a task the test puts there itself (a latch), so what is queued, refused or
// dropped is decided by the test, never by timing.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "prometheus/metric_family.h"
#include "server/admission.h"
#include "tests/server/test_server.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;
using Code = absl::StatusCode;

// A uint8 N x H x W x 1 batch of value (i % 200), with "add 1": the expected output is i % 200 + 1.
v1::ProcessRequest AddOneRequest(int64_t n, int64_t h, int64_t w, const std::string& id = "") {
  v1::ProcessRequest r;
  r.set_request_id(id);
  auto* t = r.mutable_images();
  t->set_dtype(v1::DTYPE_UINT8);
  for (int64_t d : {n, h, w, int64_t{1}}) t->add_shape(d);
  std::string data(static_cast<size_t>(n * h * w), '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i % 200);
  t->set_data(std::move(data));
  r.mutable_pipeline()->add_ops()->mutable_add()->add_value(1);
  return r;
}

void ExpectAddedOne(const v1::ProcessResponse& r, size_t bytes) {
  ASSERT_FALSE(r.has_error()) << r.error().message();
  std::string want(bytes, '\0');
  for (size_t i = 0; i < bytes; ++i) want[i] = static_cast<char>(i % 200 + 1);
  ASSERT_EQ(r.images().data().size(), bytes);
  ASSERT_TRUE(r.images().data() == want) << "wrong values";
}

// Sum of the values (gauges, counters) or sample counts (histograms) of `name`'s series whose
// labels include every pair of `labels`.
double MetricSum(prometheus::Registry& registry, const std::string& name,
                 const std::map<std::string, std::string>& labels = {}) {
  double sum = 0;
  for (const prometheus::MetricFamily& f : registry.Collect()) {
    if (f.name != name) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      bool match = true;
      for (const auto& [k, v] : labels) {
        bool found = false;
        for (const auto& l : m.label) found |= l.name == k && l.value == v;
        match &= found;
      }
      if (!match) continue;
      switch (f.type) {
        case prometheus::MetricType::Gauge:
          sum += m.gauge.value;
          break;
        case prometheus::MetricType::Counter:
          sum += m.counter.value;
          break;
        case prometheus::MetricType::Histogram:
          sum += static_cast<double>(m.histogram.sample_count);
          break;
        default:
          break;
      }
    }
  }
  return sum;
}

// ---- Admission on its own -------------------------------------------------------------------

TEST(AdmissionTest, BudgetsOfBytesAndRequestsAreEnforcedAndGivenBack) {
  server::Admission admission({/*max_bytes=*/100, /*max_requests=*/2});
  auto a = admission.Acquire(60);
  ASSERT_TRUE(a.ok());
  auto b = admission.Acquire(50);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kResourceExhausted);
  EXPECT_NE(b.status().message().find("--max-inflight-mb"), std::string::npos) << b.status();
  EXPECT_NE(b.status().message().find("has 40 free"), std::string::npos) << b.status();
  auto c = admission.Acquire(40);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(admission.bytes_in_use(), 100u);
  auto d = admission.Acquire(0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("limit of 2 requests in flight (--max-inflight-requests)"),
            std::string::npos)
      << d.status();
  {
    server::AdmissionTicket moved = std::move(*a);
    EXPECT_EQ(a->bytes(), 0u);
    EXPECT_EQ(admission.bytes_in_use(), 100u);
  }  // `moved` gives its 60 back here
  EXPECT_EQ(admission.bytes_in_use(), 40u);
  EXPECT_EQ(admission.requests_in_use(), 1);
  c->Release();
  c->Release();  // idempotent
  EXPECT_EQ(admission.bytes_in_use(), 0u);
  EXPECT_EQ(admission.requests_in_use(), 0);
  auto huge = admission.Acquire(101);
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("can never fit"), std::string::npos) << huge.status();
}

TEST(AdmissionTest, ConcurrentAcquireNeverOvercommits) {
  server::Admission admission({/*max_bytes=*/1000, /*max_requests=*/1000});
  std::atomic<int> admitted{0};
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        auto ticket = admission.Acquire(300);
        if (!ticket.ok()) continue;
        ++admitted;
        if (admission.bytes_in_use() > 1000) over = true;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(over.load());
  EXPECT_GT(admitted.load(), 0);
  EXPECT_EQ(admission.bytes_in_use(), 0u);
  EXPECT_EQ(admission.requests_in_use(), 0);
}

// ---- the server's limits ----------------------------------------------------------------------

TEST(LimitsTest, UnaryPastTheRequestLimitIsResourceExhaustedAndAdmittedOnesComplete) {
  TestServerOptions o;
  o.threads = 1;
  o.service.admission.max_requests = 2;
  TestServer server(o);
  client::Client client = server.MakeClient();
  auto blocker = std::make_unique<Blocker>(server.queue());
  std::vector<std::future<absl::StatusOr<v1::ProcessResponse>>> admitted;
  for (int i = 0; i < 2; ++i) {
    admitted.push_back(std::async(std::launch::async, [&] {
      return client.Process(AddOneRequest(1, 16, 16));
    }));
  }
  ASSERT_TRUE(Eventually([&] { return server.service().admission().requests_in_use() == 2; }));
  auto refused = client.Process(AddOneRequest(1, 16, 16, "third"));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("request 'third': the server is at its limit of 2 "
                                            "requests in flight (--max-inflight-requests)"),
            std::string::npos)
      << refused.status();
  blocker->Release();
  for (auto& f : admitted) {
    auto r = f.get();
    ASSERT_TRUE(r.ok()) << r.status();
    ExpectAddedOne(*r, 256);
  }
  EXPECT_TRUE(Eventually([&] { return server.service().admission().requests_in_use() == 0; }));
  EXPECT_EQ(server.service().admission().bytes_in_use(), 0u);
}

TEST(LimitsTest, UnaryPastTheByteBudgetIsResourceExhausted) {
  TestServerOptions o;
  o.threads = 1;
  o.service.admission.max_bytes = 100000;
  TestServer server(o);
  client::Client client = server.MakeClient();
  // 40000 bytes in + 40000 out fit once, not twice.
  auto blocker = std::make_unique<Blocker>(server.queue());
  auto first = std::async(std::launch::async,
                          [&] { return client.Process(AddOneRequest(1, 200, 200)); });
  ASSERT_TRUE(Eventually([&] { return server.service().admission().requests_in_use() == 1; }));
  EXPECT_GT(server.service().admission().bytes_in_use(), 80000u);
  auto second = client.Process(AddOneRequest(1, 200, 200));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kResourceExhausted);
  EXPECT_NE(second.status().message().find("in-flight budget (100000 bytes, --max-inflight-mb)"),
            std::string::npos)
      << second.status();
  EXPECT_NE(second.status().message().find("retry later"), std::string::npos);
  // Bigger than the whole budget: refused even when idle.
  blocker->Release();
  auto r = first.get();
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectAddedOne(*r, 40000);
  auto huge = client.Process(AddOneRequest(1, 300, 300));
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), Code::kResourceExhausted);
  EXPECT_NE(huge.status().message().find("can never fit"), std::string::npos) << huge.status();
  EXPECT_EQ(server.service().admission().bytes_in_use(), 0u);
}

TEST(LimitsTest, TensorPastTheTensorLimitIsResourceExhaustedWithoutItsBytesBeingSent) {
  TestServerOptions o;
  o.processor.limits.max_tensor_bytes = 1 << 20;
  TestServer server(o);
  v1::ProcessRequest r = AddOneRequest(1, 1, 1);
  r.mutable_images()->set_shape(1, 1 << 20);  // declared 2^20 + ... bytes, 1 sent
  r.mutable_images()->set_shape(2, 2);
  auto resp = server.MakeClient().Process(r);
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), Code::kResourceExhausted);
  EXPECT_NE(resp.status().message().find(
                "images: 1x1048576x2x1 uint8 is 2097152 bytes, over the server's max tensor size "
                "of 1048576 bytes"),
            std::string::npos)
      << resp.status();
}

TEST(LimitsTest, StreamRequestBiggerThanTheStreamWindowIsRefusedAndTheStreamGoesOn) {
  TestServerOptions o;
  o.service.stream_max_bytes = 64 << 10;
  TestServer server(o);
  const v1::ProcessRequest big = AddOneRequest(1, 200, 200, "big");  // 80 KB in flight
  const v1::ProcessRequest small = AddOneRequest(1, 50, 50, "small");
  std::map<std::string, v1::ProcessResponse> got;
  absl::Status s = server.MakeClient().Stream(
      {&big, &small}, 2, [&](v1::ProcessResponse& r) { got[r.request_id()] = r; });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(got["big"].error().code(), static_cast<int>(Code::kResourceExhausted));
  EXPECT_NE(got["big"].error().message().find(
                "over the per-stream limit of 65536 bytes (--stream-inflight-mb)"),
            std::string::npos)
      << got["big"].error().message();
  ExpectAddedOne(got["small"], 2500);
}

TEST(LimitsTest, StreamOverTheServerBudgetGetsErrorResponsesNotABrokenStream) {
  TestServerOptions o;
  o.threads = 1;
  o.service.admission.max_requests = 1;
  TestServer server(o);
  auto blocker = std::make_unique<Blocker>(server.queue());
  // A unary call holds the only slot while the stream sends.
  client::Client client = server.MakeClient();
  auto holder = std::async(std::launch::async, [&] { return client.Process(AddOneRequest(1, 8, 8)); });
  ASSERT_TRUE(Eventually([&] { return server.service().admission().requests_in_use() == 1; }));
  const v1::ProcessRequest a = AddOneRequest(1, 8, 8, "a"), b = AddOneRequest(1, 8, 8, "b");
  std::map<std::string, v1::ProcessResponse> got;
  absl::Status s = client.Stream({&a, &b}, 2, [&](v1::ProcessResponse& r) { got[r.request_id()] = r; });
  ASSERT_TRUE(s.ok()) << s;
  for (const char* id : {"a", "b"}) {
    EXPECT_EQ(got[id].error().code(), static_cast<int>(Code::kResourceExhausted)) << id;
    EXPECT_NE(got[id].error().message().find("--max-inflight-requests"), std::string::npos);
  }
  blocker->Release();
  auto r = holder.get();
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectAddedOne(*r, 64);
}

TEST(LimitsTest, SlowReaderIsSlowedDownAndTheServerHoldsABoundedAmount) {
  TestServerOptions o;
  o.stream_inflight = 2;
  o.service.stream_max_bytes = 8 << 20;
  TestServer server(o);
  constexpr int kRequests = 100;
  constexpr int64_t kSide = 1024;  // 1 MiB of uint8 per request, 100 MiB in all
  const v1::ProcessRequest req = AddOneRequest(1, kSide, kSide);
  const uint64_t per_request_bytes = req.ByteSizeLong() + 8 + kSide * kSide;  // + its id

  auto stub = v1::Preprocessor::NewStub(grpc::CreateChannel(server.address(),
                                                            grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto stream = stub->ProcessStream(&ctx);
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; i < kRequests; ++i) {
      v1::ProcessRequest r = req;
      r.set_request_id(std::to_string(i));
      if (!stream->Write(r)) break;
      ++written;
    }
    stream->WritesDone();
  });
  // Nobody reads for a while: the server must stop reading, and so the writer must stall.
  uint64_t max_bytes = 0;
  int64_t max_requests = 0;
  for (int i = 0; i < 200; ++i) {
    max_bytes = std::max(max_bytes, server.service().admission().bytes_in_use());
    max_requests = std::max(max_requests, server.service().admission().requests_in_use());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const int written_while_stalled = written.load();
  EXPECT_LT(written_while_stalled, 40) << "the writer was not slowed down";
  std::printf("writes completed while nobody read: %d of %d\n", written_while_stalled, kRequests);
  EXPECT_LE(max_requests, 2);
  EXPECT_LE(max_bytes, 2 * per_request_bytes);
  // Now read everything: every request is answered, correctly.
  v1::ProcessResponse resp;
  int received = 0;
  while (stream->Read(&resp)) {
    ExpectAddedOne(resp, kSide * kSide);
    ++received;
  }
  writer.join();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(received, kRequests);
  EXPECT_EQ(server.service().admission().bytes_in_use(), 0u);
}

// ---- deadlines and cancellation --------------------------------------------------------------

TEST(CancellationTest, ExpiredAndCancelledWorkIsDroppedBeforeItRunsAndGaugesReturnToZero) {
  TestServerOptions o;
  o.threads = 1;
  TestServer server(o);
  prometheus::Registry& reg = server.registry();
  auto blocker = std::make_unique<Blocker>(server.queue());

  // Unary calls whose deadline passes while they wait behind the blocker.
  client::ClientOptions short_deadline;
  short_deadline.timeout = std::chrono::milliseconds(200);
  client::Client hasty = server.MakeClient(short_deadline);
  std::vector<std::future<absl::Status>> unary;
  for (int i = 0; i < 6; ++i) {
    unary.push_back(std::async(std::launch::async, [&] {
      return hasty.Process(AddOneRequest(1, 32, 32)).status();
    }));
  }
  // A stream whose client cancels while its requests wait.
  auto stub = v1::Preprocessor::NewStub(grpc::CreateChannel(server.address(),
                                                            grpc::InsecureChannelCredentials()));
  grpc::ClientContext stream_ctx;
  auto stream = stub->ProcessStream(&stream_ctx);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Write(AddOneRequest(1, 32, 32)));
  ASSERT_TRUE(Eventually([&] { return server.queue().depth() == 9; }));
  EXPECT_EQ(MetricSum(reg, "tensorprep_requests_in_flight"), 9);
  stream_ctx.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (auto& f : unary) EXPECT_EQ(f.get().code(), Code::kDeadlineExceeded);
  // The server's deadline is its arrival time plus the timeout left when the client sent the
  // call, so it can fall a little after the client's (by the headers' transit, milliseconds on a
  // loaded machine). Release the queue only once it has surely passed too.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  blocker->Release();
  EXPECT_TRUE(Eventually([&] {
    return MetricSum(reg, "tensorprep_requests_in_flight") == 0 &&
           MetricSum(reg, "tensorprep_queued_requests") == 0 &&
           MetricSum(reg, "tensorprep_streams_open") == 0 &&
           server.service().admission().requests_in_use() == 0 && server.queue().depth() == 0;
  }));
  EXPECT_EQ(server.service().admission().bytes_in_use(), 0u);
  // None of the nine ran a kernel.
  EXPECT_EQ(MetricSum(reg, "tensorprep_stage_duration_seconds", {{"stage", "kernel"}}), 0);
  EXPECT_EQ(MetricSum(reg, "tensorprep_requests_total", {{"rpc", "Process"}, {"code", "OK"}}), 0);
  const double dropped =
      MetricSum(reg, "tensorprep_requests_total", {{"rpc", "Process"}, {"code", "CANCELLED"}}) +
      MetricSum(reg, "tensorprep_requests_total",
                {{"rpc", "Process"}, {"code", "DEADLINE_EXCEEDED"}});
  EXPECT_EQ(dropped, 6);
  EXPECT_EQ(MetricSum(reg, "tensorprep_requests_total",
                      {{"rpc", "ProcessStream"}, {"code", "CANCELLED"}}),
            3);
  // And the server still works.
  auto ok = server.MakeClient().Process(AddOneRequest(2, 8, 8));
  ASSERT_TRUE(ok.ok()) << ok.status();
  ExpectAddedOne(*ok, 128);
  EXPECT_EQ(MetricSum(reg, "tensorprep_stage_duration_seconds", {{"stage", "kernel"}}), 1);
}

// Issue 13, item 4: every accepted request ends answered or cancelled, exactly, whatever the
// client did. Unary calls that expire or are cancelled while queued, one cancelled while it may be
// running, streams cancelled with requests queued and with responses unread, a stream that ends
// on a bad message, and plain successes; once the server is idle the service's counts and the
// exported counters agree and add up.
TEST(AccountingTest, AcceptedEqualsAnsweredPlusCancelledAfterCancellationsOnBothRpcs) {
  TestServerOptions o;
  o.threads = 1;
  o.stream_inflight = 2;
  TestServer server(o);
  prometheus::Registry& reg = server.registry();
  auto stub = v1::Preprocessor::NewStub(grpc::CreateChannel(server.address(),
                                                            grpc::InsecureChannelCredentials()));
  auto blocker = std::make_unique<Blocker>(server.queue());

  // Unary: three expire in the queue, three are cancelled by the client there.
  client::ClientOptions short_deadline;
  short_deadline.timeout = std::chrono::milliseconds(200);
  client::Client hasty = server.MakeClient(short_deadline);
  std::vector<std::future<absl::Status>> expiring;
  for (int i = 0; i < 3; ++i) {
    expiring.push_back(std::async(std::launch::async, [&] {
      return hasty.Process(AddOneRequest(1, 16, 16)).status();
    }));
  }
  std::vector<std::unique_ptr<grpc::ClientContext>> unary_ctx;
  std::vector<std::future<grpc::Status>> cancelled_unary;
  for (int i = 0; i < 3; ++i) {
    unary_ctx.push_back(std::make_unique<grpc::ClientContext>());
    grpc::ClientContext* ctx = unary_ctx.back().get();
    cancelled_unary.push_back(std::async(std::launch::async, [&stub, ctx] {
      v1::ProcessResponse r;
      return stub->Process(ctx, AddOneRequest(1, 16, 16), &r);
    }));
  }
  // A stream with two requests queued (its window), cancelled by the client.
  grpc::ClientContext queued_stream_ctx;
  auto queued_stream = stub->ProcessStream(&queued_stream_ctx);
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(queued_stream->Write(AddOneRequest(1, 16, 16)));
  ASSERT_TRUE(Eventually([&] { return server.queue().depth() == 8; }));
  for (auto& ctx : unary_ctx) ctx->TryCancel();
  queued_stream_ctx.TryCancel();
  EXPECT_EQ(queued_stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (auto& f : cancelled_unary) EXPECT_EQ(f.get().error_code(), grpc::StatusCode::CANCELLED);
  for (auto& f : expiring) EXPECT_EQ(f.get().code(), Code::kDeadlineExceeded);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the server's deadline too
  blocker->Release();

  // A stream whose client reads one response of several large ones, then cancels: responses
  // are running, queued or being written when it goes.
  {
    grpc::ClientContext ctx;
    auto stream = stub->ProcessStream(&ctx);
    for (int i = 0; i < 6; ++i) {
      if (!stream->Write(AddOneRequest(4, 256, 256, "big" + std::to_string(i)))) break;
      if (i == 1) {
        v1::ProcessResponse r;
        EXPECT_TRUE(stream->Read(&r));
      }
    }
    ctx.TryCancel();
    stream->Finish().IgnoreError();
  }
  // A unary call cancelled while it is queued or running (either is accounted).
  {
    grpc::ClientContext ctx;
    v1::ProcessResponse r;
    auto f = std::async(std::launch::async,
                        [&] { return stub->Process(&ctx, AddOneRequest(8, 512, 512), &r); });
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ctx.TryCancel();
    f.get().IgnoreError();
  }
  // A stream with a request that fails validation (answered with an error response).
  {
    const v1::ProcessRequest good = AddOneRequest(1, 8, 8, "good");
    v1::ProcessRequest bad = AddOneRequest(1, 8, 8, "bad");
    bad.mutable_images()->mutable_shape()->Clear();  // invalid, answered with an error
    std::map<std::string, v1::ProcessResponse> got;
    absl::Status s = server.MakeClient().Stream(
        {&good, &bad}, 2, [&](v1::ProcessResponse& r) { got[r.request_id()] = r; });
    EXPECT_TRUE(s.ok()) << s;
    EXPECT_EQ(got.size(), 2u);
  }
  // And plain successes on both RPCs.
  ASSERT_TRUE(server.MakeClient().Process(AddOneRequest(1, 8, 8)).ok());

  auto& svc = server.service();
  ASSERT_TRUE(Eventually([&] {
    return MetricSum(reg, "tensorprep_requests_in_flight") == 0 &&
           MetricSum(reg, "tensorprep_streams_open") == 0 && server.queue().depth() == 0 &&
           svc.accepted() == svc.answered() + svc.cancelled();
  })) << "accepted=" << svc.accepted() << " answered=" << svc.answered()
      << " cancelled=" << svc.cancelled();
  std::printf("accepted=%llu answered=%llu cancelled=%llu\n",
              static_cast<unsigned long long>(svc.accepted()),
              static_cast<unsigned long long>(svc.answered()),
              static_cast<unsigned long long>(svc.cancelled()));
  // 6 + 3 unary in the queue, 2 stream messages, 1 + 2 successes at least.
  EXPECT_GE(svc.accepted(), 14u);
  EXPECT_GE(svc.cancelled(), 3u + 3u + 2u);
  // The exported counters say the same, per RPC and in total.
  double accepted = 0, answered = 0, cancelled = 0, finished = 0;
  for (const char* rpc : {"Process", "ProcessStream"}) {
    SCOPED_TRACE(rpc);
    const double a = MetricSum(reg, "tensorprep_requests_accepted_total", {{"rpc", rpc}});
    const double n = MetricSum(reg, "tensorprep_requests_answered_total", {{"rpc", rpc}});
    const double c = MetricSum(reg, "tensorprep_requests_cancelled_total", {{"rpc", rpc}});
    const double f = MetricSum(reg, "tensorprep_requests_total", {{"rpc", rpc}});
    EXPECT_EQ(a, n + c);
    EXPECT_EQ(f, a) << "every accepted request is finished once in the by-code counter";
    EXPECT_GT(c, 0);
    accepted += a;
    answered += n;
    cancelled += c;
    finished += f;
  }
  EXPECT_EQ(accepted, static_cast<double>(svc.accepted()));
  EXPECT_EQ(answered, static_cast<double>(svc.answered()));
  EXPECT_EQ(cancelled, static_cast<double>(svc.cancelled()));
  EXPECT_EQ(server.service().admission().requests_in_use(), 0);
  EXPECT_EQ(server.service().admission().bytes_in_use(), 0u);
}

}  // namespace
}  // namespace tensorprep::testing
