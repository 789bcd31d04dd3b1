// `tensorprep bench`: random data through a seed workload, with memory bounded by the number of
// distinct requests, not by the number of requests sent.
#ifndef TENSORPREP_CLIENT_CPP_BENCH_H_
#define TENSORPREP_CLIENT_CPP_BENCH_H_

#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/cpp/client.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::client {

// Distinct requests kept beyond --inflight by default, so that the requests in flight and the
// ones about to be sent never share data.
inline constexpr int64_t kExtraDistinct = 4;

struct BenchOptions {
  std::string workload = "W2";  // W1, W2, W3 or small
  int64_t batch = 1;
  bool stream = false;    // one ProcessStream instead of unary calls one after another
  int64_t requests = 50;  // measured requests
  int64_t warmup = 5;     // requests before the measurement (a stream of their own)
  int inflight = 4;       // unanswered requests on a stream
  // Distinct random batches generated up front and sent in turn (each with its own request id
  // and sample offset); 0 = inflight + kExtraDistinct. Never more than warmup + requests.
  int64_t distinct = 0;
  v1::Device device = v1::DEVICE_AUTO;
  bool json = false;  // one JSON line instead of the text report
  // Seconds between progress lines on the progress stream; 0 prints one per request, a negative
  // value none. The first line comes only after this long, so short runs print nothing.
  double progress_seconds = 5;
  // Memory the run may use, in MiB; 0 = what the system has available (MemAvailable in
  // /proc/meminfo, or a smaller cgroup limit).
  int64_t max_memory_mb = 0;
  // The client's message limit (ClientOptions::max_message_mb): larger requests fail up front.
  int max_message_mb = 256;
  // The client's ClientOptions::shm. Other than off, the batches are placed in the client's
  // shared memory once (Client::Allocate) and sent with Call / StreamCalls, so that on the
  // shared-memory path no request copies a tensor (results are dropped as they arrive); the
  // report says which transport the requests took and why not shared memory.
  ShmMode shm = ShmMode::kOff;
};

// INVALID_ARGUMENT naming the flags when a count is out of range (e.g. --batch 0).
absl::Status ValidateBenchOptions(const BenchOptions& options);

// Runs the benchmark against `client`: writes the report to `out` and progress lines to
// `progress`. Before generating any data it checks the options (INVALID_ARGUMENT), the size of a
// request against max_message_mb (INVALID_ARGUMENT) and the memory the run needs against the
// budget (RESOURCE_EXHAUSTED, naming both figures); a failed call or a failed request returns the
// server's status. Memory is about distinct + 12 requests (distinct + 12 + 2 x inflight on a
// stream) plus 64 bytes per request sent.
// Not thread-safe with respect to `out` and `progress`; `client` may be shared.
absl::Status RunBench(const Client& client, const BenchOptions& options, std::FILE* out,
                      std::FILE* progress);

// Bytes this process may still allocate: MemAvailable, lowered by a cgroup v2 memory.max when
// one is set. NOT_FOUND when /proc/meminfo cannot be read.
absl::StatusOr<int64_t> AvailableMemoryBytes();

}  // namespace tensorprep::client

#endif  // TENSORPREP_CLIENT_CPP_BENCH_H_
