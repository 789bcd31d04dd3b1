// Graceful shutdown of the real binary: SIGTERM in the middle of unary and stream load. The
// server must refuse new connections, finish every request it accepted (the client gets a
// response for each), and exit 0. "Accepted" is counted by the server itself and printed on
// exit; the client's count of responses must equal it.
//
// The drain delay and connection max age are tested with clients that never retry (retries off
// on the channel), so that any call the server cancels or refuses shows up as an error.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"

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

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A channel without retry policies. With `transparent_retries` false it never retries, so a call
// the server cancels or refuses fails; with true it keeps gRPC's default transparent retries of
// calls that never reached the server (a stream a GOAWAY refused before the server saw it), and
// nothing else. `health_checked`: round_robin over the target's addresses, picking only those
// whose grpc.health.v1 Watch says SERVING for the Preprocessor (what the project's clients do);
// otherwise pick_first. Its own subchannel pool, so that it shares no connection with another
// channel of this process.
std::shared_ptr<grpc::Channel> PolicyFreeChannel(const std::string& target, bool health_checked,
                                                 bool transparent_retries) {
  grpc::ChannelArguments args;
  if (!transparent_retries) args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (health_checked) {
    args.SetServiceConfigJSON(R"json({
      "loadBalancingConfig": [{"round_robin": {}}],
      "healthCheckConfig": {"serviceName": "tensorprep.v1.Preprocessor"}
    })json");
  }
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

std::shared_ptr<grpc::Channel> NoRetryChannel(const std::string& target, bool health_checked) {
  return PolicyFreeChannel(target, health_checked, /*transparent_retries=*/false);
}

// grpc.health.v1 Check of `service` over `channel`: "SERVING", "NOT_SERVING", or the call's error.
std::string HealthOf(const std::shared_ptr<grpc::Channel>& channel, const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status s = stub->Check(&ctx, request, &response);
  if (!s.ok()) return "error " + std::to_string(s.error_code()) + ": " + s.error_message();
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

// The server's own "requests accepted=N answered=M" exit line; false when it is missing.
bool ExitCounts(const ServerProcess& server, uint64_t* accepted, uint64_t* answered) {
  std::smatch m;
  const std::string err = server.Stderr();
  if (!std::regex_search(err, m, std::regex("requests accepted=(\\d+) answered=(\\d+)"))) {
    return false;
  }
  *accepted = std::stoull(m[1]);
  *answered = std::stoull(m[2]);
  return true;
}

// Local ports of this network namespace's established TCP connections to 127.0.0.1:`port`, i.e.
// the client ends of the connections a server on that port holds. gRPC's client sockets are
// IPv6 with IPv4-mapped addresses where it can, so both tables are read.
std::set<int> ClientPortsTo(int port) {
  std::set<int> out;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      if (state != "01") continue;  // TCP_ESTABLISHED
      const size_t lc = local.find(':'), rc = remote.find(':');
      if (lc == std::string::npos || rc == std::string::npos) continue;
      // 127.0.0.1 as /proc writes it: 0100007F, or ::ffff:127.0.0.1 ending in it.
      const std::string host = remote.substr(0, rc);
      if (host.size() < 8 || host.compare(host.size() - 8, 8, "0100007F") != 0) continue;
      if (std::stoi(remote.substr(rc + 1), nullptr, 16) != port) continue;
      out.insert(std::stoi(local.substr(lc + 1), nullptr, 16));
    }
  }
  return out;
}

int PortOf(const ServerProcess& server) {
  const std::string a = server.address();
  return std::stoi(a.substr(a.rfind(':') + 1));
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
  std::map<absl::StatusCode, std::string> refusal_text;  // the first message of each code
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
    refusal_text.emplace(s.code(), std::string(s.message()));
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
  // A call refused by the closed listener or the GOAWAY fails UNAVAILABLE. A call that reached
  // the transport in the instant the server stopped accepting is cancelled by gRPC before any
  // handler sees it (CANCELLED, no message of ours; docs/reliability.md, "Without a delay"): about
  // 1 run in 10 here. Neither was accepted, which the accounting below proves.
  for (const auto& [c, n] : refusals) {
    EXPECT_TRUE(c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kCancelled)
        << n << " calls failed with " << c << ", the first: " << refusal_text[c];
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

TEST(DrainDelayTest, NoRetryClientOnHealthCheckedRoundRobinSeesNoErrorWhileAReplicaDrains) {
  // Two replicas behind one round_robin channel that watches health and never retries. Replica A
  // gets SIGTERM mid-load: with a drain delay it says NOT_SERVING while still serving, the
  // channel stops picking it, and only then does it shut down, so no call is cancelled.
  constexpr double kDelay = 2;
  ServerProcess a(TENSORPREP_SERVER_BIN, {"--device", "cpu", "--threads", "2",
                                          "--drain-delay-seconds", "2", "--grace-seconds", "10"});
  ASSERT_TRUE(a.ok()) << a.error();
  ServerProcess b(TENSORPREP_SERVER_BIN, {"--device", "cpu", "--threads", "2"});
  ASSERT_TRUE(b.ok()) << b.error();
  auto stub = v1::Preprocessor::NewStub(
      NoRetryChannel("ipv4:" + a.address() + "," + b.address(), /*health_checked=*/true));
  const v1::ProcessRequest request = FlipRequest(3);
  const std::string want = Flipped(request.images().data());
  const std::string peer_a = "ipv4:" + a.address(), peer_b = "ipv4:" + b.address();

  std::mutex mu;
  std::vector<std::string> errors;  // every failed call: code and message
  uint64_t wrong = 0;               // OK calls with the wrong content
  std::map<std::string, uint64_t> by_peer;
  uint64_t b_after_signal = 0;  // calls B answered after the signal was sent
  std::atomic<bool> signalled{false}, stop{false};
  std::vector<std::thread> callers;
  // Eight callers keep calls in flight at every moment; with a drain delay of 0 most runs see
  // calls CANCELLED here (checked by hand: 5 of 6 runs).
  for (int t = 0; t < 8; ++t) {
    callers.emplace_back([&] {
      while (!stop) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        v1::ProcessResponse response;
        const bool after = signalled;
        const grpc::Status s = stub->Process(&ctx, request, &response);
        std::lock_guard<std::mutex> lock(mu);
        if (!s.ok()) {
          errors.push_back(std::to_string(s.error_code()) + ": " + s.error_message());
          continue;
        }
        if (response.images().data() != want) ++wrong;
        ++by_peer[ctx.peer()];
        if (after && ctx.peer() == peer_b) ++b_after_signal;
      }
    });
  }
  auto count = [&](const std::string& peer) {
    std::lock_guard<std::mutex> lock(mu);
    return by_peer[peer];
  };
  // Load on both replicas first (round_robin alternates once both are up).
  const auto warm = Clock::now();
  while ((count(peer_a) < 50 || count(peer_b) < 50) && SecondsSince(warm) < 20) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_GE(count(peer_a), 50u) << "replica A never got load";
  ASSERT_GE(count(peer_b), 50u) << "replica B never got load";

  const auto signal_time = Clock::now();
  signalled = true;
  a.Signal(SIGTERM);
  const int code = a.Wait(kDelay + 20);
  const double took = SecondsSince(signal_time);
  // B keeps answering after A is gone.
  const auto after = Clock::now();
  const uint64_t b_at_exit = count(peer_b);
  while (count(peer_b) < b_at_exit + 50 && SecondsSince(after) < 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  for (auto& t : callers) t.join();

  EXPECT_EQ(code, 0) << a.Stderr();
  EXPECT_GE(took, kDelay) << "A exited before its drain delay was over";
  EXPECT_TRUE(errors.empty()) << errors.size() << " calls failed; first: " << errors.front();
  EXPECT_EQ(wrong, 0u);
  EXPECT_GE(b_after_signal, 50u) << "B did not carry the load after A's signal";
  uint64_t accepted = 0, answered = 0;
  ASSERT_TRUE(ExitCounts(a, &accepted, &answered)) << a.Stderr();
  EXPECT_EQ(accepted, answered);
  EXPECT_EQ(accepted, count(peer_a)) << "every request A accepted reached the client, and no more";
  for (const char* phase : {"SIGTERM: health NOT_SERVING; still serving for the drain delay",
                            "drain delay over", "shutting down: refusing new calls"}) {
    EXPECT_NE(a.Stderr().find(phase), std::string::npos) << phase << "\n" << a.Stderr();
  }
  std::printf(
      "A: accepted=%llu answered=%llu exit after %.2f s; B answered %llu after the signal\n",
      static_cast<unsigned long long>(accepted), static_cast<unsigned long long>(answered), took,
      static_cast<unsigned long long>(b_after_signal));
}

TEST(DrainDelayTest, DuringTheDelayHealthIsNotServingAndProcessStillSucceeds) {
  ServerProcess server(TENSORPREP_SERVER_BIN, {"--device", "cpu", "--drain-delay-seconds", "60"});
  ASSERT_TRUE(server.ok()) << server.error();
  // A second signal then ends the delay. The channels are closed first: an idle connection of a
  // synchronous client holds the shutdown for seconds (10 s when tried here), since the client
  // reads it, and answers the GOAWAY, only when gRPC's backup poller runs.
  auto channel = NoRetryChannel(server.address(), /*health_checked=*/false);
  auto stub = v1::Preprocessor::NewStub(channel);
  const v1::ProcessRequest request = FlipRequest(5);
  const std::string want = Flipped(request.images().data());
  auto process = [&](v1::Preprocessor::Stub& s) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ProcessResponse response;
    const grpc::Status status = s.Process(&ctx, request, &response);
    if (!status.ok()) {
      return "error " + std::to_string(status.error_code()) + ": " + status.error_message();
    }
    return std::string(response.images().data() == want ? "ok" : "wrong content");
  };
  ASSERT_EQ(process(*stub), "ok");
  ASSERT_EQ(HealthOf(channel, ""), "SERVING");
  ASSERT_EQ(HealthOf(channel, "tensorprep.v1.Preprocessor"), "SERVING");

  server.Signal(SIGTERM);
  const auto start = Clock::now();
  while (HealthOf(channel, "tensorprep.v1.Preprocessor") != "NOT_SERVING" &&
         SecondsSince(start) < 10) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(HealthOf(channel, "tensorprep.v1.Preprocessor"), "NOT_SERVING");
  EXPECT_EQ(HealthOf(channel, ""), "NOT_SERVING");
  // Still serving: on the open connection, and on a new one (the listener is still open).
  for (int i = 0; i < 20; ++i) EXPECT_EQ(process(*stub), "ok") << "call " << i;
  auto fresh = v1::Preprocessor::NewStub(NoRetryChannel(server.address(), false));
  EXPECT_EQ(process(*fresh), "ok") << "a new connection during the delay";
  EXPECT_TRUE(server.Running());
  fresh.reset();
  stub.reset();
  channel.reset();

  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(20), 0) << server.Stderr();
  uint64_t accepted = 0, answered = 0;
  ASSERT_TRUE(ExitCounts(server, &accepted, &answered)) << server.Stderr();
  EXPECT_EQ(accepted, 22u);
  EXPECT_EQ(answered, 22u);
}

TEST(DrainDelayTest, ASecondSignalEndsTheDelayAndTheServerExitsPromptly) {
  for (int second : {SIGTERM, SIGINT}) {
    ServerProcess server(TENSORPREP_SERVER_BIN,
                         {"--device", "cpu", "--drain-delay-seconds", "300"});
    ASSERT_TRUE(server.ok()) << server.error();
    server.Signal(SIGINT);
    ASSERT_TRUE(server.WaitForStderr("still serving for the drain delay", 10)) << server.Stderr();
    const auto start = Clock::now();
    server.Signal(second);
    EXPECT_EQ(server.Wait(10), 0) << server.Stderr();
    EXPECT_LT(SecondsSince(start), 10) << "the second signal did not end the delay";
    const std::string err = server.Stderr();
    EXPECT_NE(err.find(std::string(second == SIGTERM ? "SIGTERM" : "SIGINT") +
                       ": drain delay ended after"),
              std::string::npos)
        << err;
    EXPECT_NE(err.find("requests accepted=0 answered=0"), std::string::npos) << err;
  }
}

TEST(MaxConnectionAgeTest, LongLivedChannelReconnectsAndNoCallFails) {
  // Two servers, one with a 1 s connection age and one without, each loaded for 3.5 s by two
  // callers over one long-lived, health-checked channel, so calls are in flight whenever a GOAWAY
  // comes. The channel has no retry policy, only gRPC's default transparent retries: a call that
  // starts on the old connection just as the GOAWAY arrives is refused before the server sees it
  // and fails with UNAVAILABLE "GOAWAY received" when those are off too (seen once in 30-odd
  // runs); with them it moves to the new connection. Calls the server did see always complete. The client ends of the TCP connections to each server (from
  // /proc/net/tcp*) show the reconnections: several for the aged server, one for the other; and
  // that a replaced connection closes even though the health Watch stream was open on it.
  ServerProcess aged(TENSORPREP_SERVER_BIN,
                     {"--device", "cpu", "--max-connection-age-seconds", "1"});
  ASSERT_TRUE(aged.ok()) << aged.error();
  ServerProcess plain(TENSORPREP_SERVER_BIN, {"--device", "cpu"});
  ASSERT_TRUE(plain.ok()) << plain.error();
  const v1::ProcessRequest request = FlipRequest(9);
  const std::string want = Flipped(request.images().data());
  struct Target {
    const ServerProcess* server;
    std::unique_ptr<v1::Preprocessor::Stub> stub;
    std::set<int> ports;   // every client port seen connected
    size_t most_open = 0;  // most connections open at one time
    std::atomic<uint64_t> ok{0}, wrong{0};
    std::mutex mu;
    std::vector<std::string> errors;
  };
  Target targets[2];
  targets[0].server = &aged;
  targets[1].server = &plain;
  std::atomic<bool> stop{false};
  std::vector<std::thread> callers;
  for (Target& t : targets) {
    t.stub = v1::Preprocessor::NewStub(
        PolicyFreeChannel(t.server->address(), true, /*transparent_retries=*/true));
    for (int k = 0; k < 2; ++k) {
      callers.emplace_back([&] {
        while (!stop) {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
          v1::ProcessResponse response;
          const grpc::Status s = t.stub->Process(&ctx, request, &response);
          if (!s.ok()) {
            std::lock_guard<std::mutex> lock(t.mu);
            t.errors.push_back(std::to_string(s.error_code()) + ": " + s.error_message());
          } else {
            ++(response.images().data() == want ? t.ok : t.wrong);
          }
        }
      });
    }
  }
  const auto start = Clock::now();
  while (SecondsSince(start) < 3.5) {
    for (Target& t : targets) {
      const std::set<int> open = ClientPortsTo(PortOf(*t.server));
      t.ports.insert(open.begin(), open.end());
      t.most_open = std::max(t.most_open, open.size());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  stop = true;
  for (auto& c : callers) c.join();

  for (const Target& t : targets) {
    EXPECT_TRUE(t.errors.empty()) << t.server->address() << ": " << t.errors.size()
                                  << " calls failed; first: " << t.errors.front();
    EXPECT_EQ(t.wrong.load(), 0u);
    EXPECT_GT(t.ok.load(), 50u) << t.server->address();
  }
  EXPECT_GE(targets[0].ports.size(), 3u) << "the aged server's connection was not replaced";
  EXPECT_LE(targets[0].most_open, 2u) << "replaced connections stayed open";
  EXPECT_EQ(targets[1].ports.size(), 1u) << "without an age the one connection should stay";
  std::printf(
      "aged: %zu connections in 3.5 s (at most %zu open at once), %llu calls; plain: %zu "
      "connection(s), %llu calls\n",
      targets[0].ports.size(), targets[0].most_open,
      static_cast<unsigned long long>(targets[0].ok.load()), targets[1].ports.size(),
      static_cast<unsigned long long>(targets[1].ok.load()));
}

}  // namespace
}  // namespace tensorprep::testing
