// Graceful shutdown of the real binary: SIGTERM in the middle of unary and stream load. The
// server must refuse new connections, finish every request it accepted (the client gets a
// response for each), and exit 0. "Accepted" is counted by the server itself and printed on
// exit; the client's count of responses must equal it.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "client/cpp/client.h"
#include "tests/reliability/server_process.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;

// 2x48x48x3 uint8, flipped left-right; the expected output is computed here.
v1::ProcessRequest FlipRequest(int seed) {
  v1::ProcessRequest r;
  auto* t = r.mutable_images();
  t->set_dtype(v1::DTYPE_UINT8);
  for (int64_t d : {2, 48, 48, 3}) t->add_shape(d);
  std::string data(2 * 48 * 48 * 3, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 31 + seed) % 251);
  t->set_data(std::move(data));
  r.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  return r;
}

std::string Flipped(const std::string& in) {
  std::string out(in.size(), '\0');
  for (int n = 0; n < 2; ++n)
    for (int y = 0; y < 48; ++y)
      for (int x = 0; x < 48; ++x)
        for (int c = 0; c < 3; ++c)
          out[((n * 48 + y) * 48 + x) * 3 + c] = in[((n * 48 + y) * 48 + (47 - x)) * 3 + c];
  return out;
}

TEST(ShutdownTest, SigtermMidLoadLosesNoAcceptedRequestAndExitsZero) {
  ServerProcess server(TENSORPREP_SERVER_BIN,
                       {"--device", "cpu", "--threads", "2", "--grace-seconds", "30"});
  ASSERT_TRUE(server.ok()) << server.error();
  const v1::ProcessRequest request = FlipRequest(7);
  const std::string want = Flipped(request.images().data());

  std::atomic<uint64_t> responses{0};  // every response the client got, good or bad
  std::atomic<uint64_t> wrong{0};      // responses with wrong content or unexpected errors
  std::mutex mu;
  std::map<absl::StatusCode, int> refusals;  // calls that failed as a whole
  std::atomic<bool> stop{false};
  client::ClientOptions options;
  options.target = server.address();
  options.timeout = std::chrono::milliseconds(60000);
  const client::Client client(options);
  auto check = [&](const v1::ProcessResponse& r) {
    ++responses;
    if (r.has_error() || r.images().data() != want) ++wrong;
  };
  auto refused = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    ++refusals[s.code()];
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {  // unary callers until the server refuses them
    threads.emplace_back([&] {
      while (!stop) {
        auto r = client.Process(request);
        if (!r.ok()) {
          refused(r.status());
          return;
        }
        check(*r);
      }
    });
  }
  for (int t = 0; t < 2; ++t) {  // streams of 50, one after another, until refused
    threads.emplace_back([&] {
      std::vector<const v1::ProcessRequest*> batch(50, &request);
      while (!stop) {
        absl::Status s = client.Stream(batch, 4, check);
        if (!s.ok()) {
          refused(s);
          return;
        }
      }
    });
  }
  // One slow stream that is open across the signal: it must be allowed to finish.
  constexpr int kSlow = 60;
  std::atomic<int> slow_received{0};
  absl::Status slow_status;
  std::thread slow([&] {
    std::vector<const v1::ProcessRequest*> batch(kSlow, &request);
    slow_status = client.Stream(
        batch, 1,
        [&](v1::ProcessResponse& r) {
          check(r);
          ++slow_received;
        },
        [](size_t) { std::this_thread::sleep_for(std::chrono::milliseconds(25)); });
  });

  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  ASSERT_GT(responses.load(), 0u);
  ASSERT_LT(slow_received.load(), kSlow / 2) << "the slow stream ended before the signal";
  server.Signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Draining: still running (the slow stream is open), but a new connection is refused.
  EXPECT_TRUE(server.Running());
  client::ClientOptions fresh = options;
  fresh.timeout = std::chrono::milliseconds(2000);
  auto late = client::Client(fresh).Process(request);
  EXPECT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), absl::StatusCode::kUnavailable) << late.status();

  slow.join();
  stop = true;
  for (auto& t : threads) t.join();
  const int code = server.Wait(60);
  EXPECT_EQ(code, 0) << server.Stderr();

  EXPECT_TRUE(slow_status.ok()) << slow_status;
  EXPECT_EQ(slow_received.load(), kSlow);
  EXPECT_EQ(wrong.load(), 0u);
  for (const auto& [c, n] : refusals) {
    EXPECT_EQ(c, absl::StatusCode::kUnavailable) << n << " calls failed with " << c;
  }
  std::smatch m;
  const std::string err = server.Stderr();
  ASSERT_TRUE(std::regex_search(err, m, std::regex("requests accepted=(\\d+) answered=(\\d+)")))
      << err;
  const uint64_t accepted = std::stoull(m[1]), answered = std::stoull(m[2]);
  EXPECT_EQ(accepted, answered);
  EXPECT_EQ(responses.load(), accepted) << "the client got a response for every accepted request";
  std::printf("accepted=%llu answered=%llu client responses=%llu\n",
              static_cast<unsigned long long>(accepted),
              static_cast<unsigned long long>(answered),
              static_cast<unsigned long long>(responses.load()));
}

TEST(ShutdownTest, GracePeriodBoundsTheDrainAndTheExitIsStillClean) {
  // A stream that never half-closes would keep the server forever without the grace period.
  ServerProcess server(TENSORPREP_SERVER_BIN, {"--device", "cpu", "--grace-seconds", "1"});
  ASSERT_TRUE(server.ok()) << server.error();
  auto stub = v1::Preprocessor::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  auto stream = stub->ProcessStream(&ctx);
  ASSERT_TRUE(stream->Write(FlipRequest(1)));
  v1::ProcessResponse r;
  ASSERT_TRUE(stream->Read(&r));
  const auto start = std::chrono::steady_clock::now();
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(30), 0) << server.Stderr();
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(took, 15) << "the grace period was not enforced";
  EXPECT_FALSE(stream->Read(&r));
  stream->Finish();
}

}  // namespace
}  // namespace tensorprep::testing
