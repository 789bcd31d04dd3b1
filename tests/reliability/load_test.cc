// Bounded load on the real binary: many concurrent streams and unary callers on loopback for a
// fixed time (and at most a fixed number of requests). Every response is checked against a
// result computed here; the test requires zero errors, a bounded p99 and bounded growth of the
// server's resident memory. The bounds are deliberately generous (a noisy shared machine must
// not fail it); the figures themselves are printed for docs/reliability.md.
//
// Environment (defaults are the short CI run; scripts/soak.sh sets the long one):
//   TENSORPREP_LOAD_SECONDS (20), TENSORPREP_LOAD_MAX_REQUESTS (2000000),
//   TENSORPREP_LOAD_STREAMS (8), TENSORPREP_LOAD_UNARY (8),
//   TENSORPREP_LOAD_P99_MS (2000), TENSORPREP_LOAD_RSS_GROWTH_MB (200).
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/cpp/client.h"
#include "tests/reliability/server_process.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;
using Clock = std::chrono::steady_clock;

double EnvOr(const char* name, double fallback) {
  const char* v = std::getenv(name);
  return v == nullptr || *v == '\0' ? fallback : std::atof(v);
}

// Request k: an N x 32 x 32 x 3 uint8 batch plus (k % 50); the expected output is computed
// element by element here (saturating at 255).
struct Case {
  v1::ProcessRequest request;
  std::string want;
};

Case MakeCase(int k) {
  Case c;
  const int64_t n = 1 + k % 4;
  auto* t = c.request.mutable_images();
  t->set_dtype(v1::DTYPE_UINT8);
  for (int64_t d : {n, int64_t{32}, int64_t{32}, int64_t{3}}) t->add_shape(d);
  std::string data(static_cast<size_t>(n * 32 * 32 * 3), '\0');
  c.want.resize(data.size());
  const int add = k % 50;
  for (size_t i = 0; i < data.size(); ++i) {
    const int v = static_cast<int>((i * 7 + k) % 256);
    data[i] = static_cast<char>(v);
    c.want[i] = static_cast<char>(std::min(255, v + add));
  }
  t->set_data(std::move(data));
  c.request.mutable_pipeline()->add_ops()->mutable_add()->add_value(add);
  c.request.set_request_id(std::to_string(k));
  return c;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5))];
}

TEST(LoadTest, ConcurrentStreamsAndUnaryCallersZeroErrorsBoundedLatencyAndMemory) {
  const double seconds = EnvOr("TENSORPREP_LOAD_SECONDS", 20);
  const auto max_requests = static_cast<uint64_t>(EnvOr("TENSORPREP_LOAD_MAX_REQUESTS", 2e6));
  const int streams = static_cast<int>(EnvOr("TENSORPREP_LOAD_STREAMS", 8));
  const int unary = static_cast<int>(EnvOr("TENSORPREP_LOAD_UNARY", 8));
  const double p99_bound_ms = EnvOr("TENSORPREP_LOAD_P99_MS", 2000);
  const double rss_bound_mb = EnvOr("TENSORPREP_LOAD_RSS_GROWTH_MB", 200);

  ServerProcess server(TENSORPREP_SERVER_BIN, {"--device", "cpu", "--threads", "2"});
  ASSERT_TRUE(server.ok()) << server.error();
  std::vector<Case> cases;
  for (int k = 0; k < 64; ++k) cases.push_back(MakeCase(k));

  client::ClientOptions options;
  options.target = server.address();
  options.timeout = std::chrono::milliseconds(60000);
  const client::Client client(options);

  std::atomic<uint64_t> done{0}, errors{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<double> unary_ms, stream_ms;  // GUARDED_BY(mu)
  std::string first_error;                  // GUARDED_BY(mu)
  auto fail = [&](const std::string& what) {
    ++errors;
    std::lock_guard<std::mutex> lock(mu);
    if (first_error.empty()) first_error = what;
  };
  auto verify = [&](const v1::ProcessResponse& r) {
    if (r.has_error()) return fail(r.error().message());
    const int k = std::atoi(r.request_id().c_str());
    if (k < 0 || k >= static_cast<int>(cases.size()) || r.images().data() != cases[k].want) {
      fail("wrong result for request " + r.request_id());
    }
  };

  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  auto more = [&] { return !stop && Clock::now() < deadline && done < max_requests; };
  std::vector<std::thread> threads;
  for (int u = 0; u < unary; ++u) {
    threads.emplace_back([&, u] {
      std::vector<double> local;
      for (int i = u; more(); i += 7) {
        const Case& c = cases[i % cases.size()];
        const auto t0 = Clock::now();
        auto r = client.Process(c.request);
        local.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        ++done;
        if (!r.ok()) {
          fail(r.status().ToString());
        } else {
          verify(*r);
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      unary_ms.insert(unary_ms.end(), local.begin(), local.end());
    });
  }
  for (int s = 0; s < streams; ++s) {
    threads.emplace_back([&, s] {
      std::vector<double> local;
      // Streams of 64 requests, 8 in flight; a fresh stream after each.
      std::vector<const v1::ProcessRequest*> batch;
      for (size_t k = 0; k < cases.size(); ++k) {
        batch.push_back(&cases[(k + s) % cases.size()].request);
      }
      while (more()) {
        // Written by the client's writer thread, read by its reader thread.
        std::vector<std::atomic<int64_t>> sent(batch.size());
        absl::Status st = client.Stream(
            batch, 8,
            [&](v1::ProcessResponse& r) {
              ++done;
              const size_t k = static_cast<size_t>(std::atoi(r.request_id().c_str()));
              const size_t pos = (k + cases.size() - s % cases.size()) % cases.size();
              const int64_t now_ns = Clock::now().time_since_epoch().count();
              local.push_back(static_cast<double>(now_ns - sent[pos].load()) * 1e-6);
              verify(r);
            },
            [&](size_t i) { sent[i] = Clock::now().time_since_epoch().count(); });
        if (!st.ok()) fail(st.ToString());
      }
      std::lock_guard<std::mutex> lock(mu);
      stream_ms.insert(stream_ms.end(), local.begin(), local.end());
    });
  }
  // RSS after a warm-up, then its peak to the end.
  std::this_thread::sleep_for(std::chrono::duration<double>(std::min(2.0, seconds / 4)));
  const long long rss_start = server.RssBytes();
  long long rss_peak = rss_start;
  while (more()) {
    rss_peak = std::max(rss_peak, server.RssBytes());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  stop = true;
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  rss_peak = std::max(rss_peak, server.RssBytes());

  const double unary_p50 = Percentile(unary_ms, 0.5), unary_p99 = Percentile(unary_ms, 0.99);
  const double stream_p50 = Percentile(stream_ms, 0.5), stream_p99 = Percentile(stream_ms, 0.99);
  const double growth_mb = static_cast<double>(rss_peak - rss_start) / (1 << 20);
  std::printf(
      "load: %.1f s, %d streams + %d unary callers, %llu requests (%.0f/s), %llu errors; "
      "unary p50 %.2f ms p99 %.2f ms; stream p50 %.2f ms p99 %.2f ms; server RSS %.1f MiB "
      "after warm-up, peak %.1f MiB (growth %.1f MiB)\n",
      wall, streams, unary, static_cast<unsigned long long>(done.load()), done / wall,
      static_cast<unsigned long long>(errors.load()), unary_p50, unary_p99, stream_p50,
      stream_p99, rss_start / 1048576.0, rss_peak / 1048576.0, growth_mb);
  EXPECT_EQ(errors.load(), 0u) << first_error;
  EXPECT_GT(done.load(), 0u);
  if (unary > 0) {
    EXPECT_GT(unary_ms.size(), 0u);
    EXPECT_LT(unary_p99, p99_bound_ms);
  }
  if (streams > 0) {
    EXPECT_GT(stream_ms.size(), 0u);
    EXPECT_LT(stream_p99, p99_bound_ms);
  }
  EXPECT_GT(rss_start, 0);
  EXPECT_LT(growth_mb, rss_bound_mb);
  // The server is still healthy and exits cleanly.
  auto h = client.Health();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, "SERVING");
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(60), 0) << server.Stderr();
}

}  // namespace
}  // namespace tensorprep::testing
