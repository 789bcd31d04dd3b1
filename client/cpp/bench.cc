#include "client/cpp/bench.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace tensorprep::client {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kMiB = 1024.0 * 1024.0;
// Request-sized buffers beyond the distinct requests: serialised requests not yet on the wire,
// responses received but not yet read and the parsed response, the retry buffer of a unary
// call, and what the allocator keeps after they are freed. Peak RSS of W3 runs of 16 MiB
// requests was the distinct requests plus 6-8 of these for unary calls, and plus up to 28 for
// a stream with 8 in flight (2,000 requests; 1-16 in flight over 60-400 requests gave fewer).
constexpr int64_t kBufferedRequests = 12;
int64_t BufferedRequests(bool stream, int inflight) {
  return kBufferedRequests + (stream ? 2 * static_cast<int64_t>(inflight) : 0);
}
// Per request sent: the round trip, server, kernel, queue and network times and the send time
// (6 x 8 bytes), plus the copies sorted for the percentiles.
constexpr int64_t kRecordBytesPerRequest = 64;
// Request id, pipeline and protobuf framing, on top of the tensors.
constexpr int64_t kRequestOverheadBytes = 1024;

struct TensorSpec {
  v1::DType dtype = v1::DTYPE_UINT8;
  std::vector<int64_t> shape;
  int64_t int_values = 0;  // int32 tensors draw from [0, int_values)
};

struct WorkloadSpec {
  TensorSpec images;
  std::optional<TensorSpec> label;  // sent as the aux tensor "label"
  v1::Pipeline pipeline;
};

int64_t DTypeBytes(v1::DType dtype) {
  return dtype == v1::DTYPE_FLOAT32 || dtype == v1::DTYPE_INT32 ? 4 : 1;
}

int64_t Elements(const TensorSpec& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  return n;
}

// In double so that an absurd --batch gives an absurd size rather than an overflow; the size is
// checked against memory before any int64 arithmetic on it.
double TensorBytes(const TensorSpec& t) {
  double n = static_cast<double>(DTypeBytes(t.dtype));
  for (int64_t d : t.shape) n *= static_cast<double>(d);
  return n;
}

absl::StatusOr<WorkloadSpec> MakeWorkloadSpec(const std::string& name, int64_t batch) {
  WorkloadSpec w;
  if (name == "W1") {
    w.images = {v1::DTYPE_INT32, {batch, 1, 100000}, 1000001};
    w.pipeline.add_ops()->mutable_add()->add_value(1);
  } else if (name == "W2") {
    w.images = {v1::DTYPE_FLOAT32, {batch, 256, 256, 3}};
    auto* rot = w.pipeline.add_ops()->mutable_rotate();
    rot->set_angle_deg(30);
    rot->set_interpolation(v1::INTERPOLATION_BILINEAR);
    rot->set_border(v1::BORDER_EDGE);
  } else if (name == "W3") {
    w.images = {v1::DTYPE_FLOAT32, {batch, 256, 256, 3}};
    w.label = TensorSpec{v1::DTYPE_INT32, {batch, 256, 256}, 21};
    auto* f = w.pipeline.add_ops()->mutable_random_flip();
    f->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    f->set_p(0.5);
  } else if (name == "small") {
    w.images = {v1::DTYPE_UINT8, {batch, 64, 64, 3}};
    w.pipeline.add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--workload: expected W1, W2, W3 or small, got '", name, "'"));
  }
  return w;
}

// SplitMix64 (Steele, Lea and Flood, 2014): a few cycles per 64 bits, so that generating the
// distinct batches costs little next to sending them; statistical quality is beside the point
// for benchmark data.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

// Fills the Elements(spec) values at `p` with random values: float32 uniform in [0, 1), int32
// uniform in [0, int_values), uint8 uniform over all values.
void FillRandomBytes(const TensorSpec& spec, uint64_t seed, char* p) {
  const int64_t n = Elements(spec);
  SplitMix64 rng(seed);
  if (spec.dtype == v1::DTYPE_FLOAT32) {
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(rng.Next() >> 40) * 0x1.0p-24f;
      std::memcpy(p + 4 * i, &v, 4);
    }
  } else if (spec.dtype == v1::DTYPE_INT32) {
    const uint64_t range = static_cast<uint64_t>(spec.int_values);
    for (int64_t i = 0; i < n; ++i) {
      const auto v = static_cast<int32_t>(((rng.Next() >> 32) * range) >> 32);
      std::memcpy(p + 4 * i, &v, 4);
    }
  } else {
    for (int64_t i = 0; i < n; i += 8) {
      const uint64_t v = rng.Next();
      std::memcpy(p + i, &v, static_cast<size_t>(std::min<int64_t>(8, n - i)));
    }
  }
}

// FillRandomBytes straight into the message's buffer: no second copy.
void FillRandom(const TensorSpec& spec, uint64_t seed, v1::Tensor* t) {
  t->set_dtype(spec.dtype);
  for (int64_t d : spec.shape) t->add_shape(d);
  std::string* data = t->mutable_data();
  data->resize(static_cast<size_t>(Elements(spec) * DTypeBytes(spec.dtype)));
  FillRandomBytes(spec, seed, data->data());
}

// The seed of distinct request `slot`'s images (its label's is the next one).
uint64_t SlotSeed(int64_t slot) {
  return 0x7465'6e73'6f72'0000ULL + 2 * static_cast<uint64_t>(slot);
}

// Distinct request `slot`: its own random images (and labels), the workload's pipeline.
v1::ProcessRequest BuildRequest(const WorkloadSpec& w, int64_t slot, v1::Device device) {
  v1::ProcessRequest r;
  const uint64_t seed = SlotSeed(slot);
  FillRandom(w.images, seed, r.mutable_images());
  if (w.label) {
    v1::AuxTensor* aux = r.add_aux();
    aux->set_name("label");
    FillRandom(*w.label, seed + 1, aux->mutable_tensor());
  }
  *r.mutable_pipeline() = w.pipeline;
  r.set_device(device);
  r.set_seed(7);
  return r;
}

// Distinct request `slot` for Call / StreamCalls: the same data as BuildRequest's, generated
// straight into memory from Client::Allocate (the client's shared memory on that path).
struct PlacedRequest {
  Buffer images, label;
  CallRequest call;
};

absl::StatusOr<PlacedRequest> BuildPlacedRequest(const Client& client, const WorkloadSpec& w,
                                                 int64_t slot, v1::Device device) {
  PlacedRequest r;
  const uint64_t seed = SlotSeed(slot);
  auto images =
      client.Allocate(static_cast<size_t>(Elements(w.images) * DTypeBytes(w.images.dtype)));
  if (!images.ok()) return images.status();
  r.images = std::move(*images);
  FillRandomBytes(w.images, seed, reinterpret_cast<char*>(r.images.data()));
  r.call.images = TensorInput{w.images.dtype, w.images.shape, r.images.data()};
  if (w.label) {
    auto label =
        client.Allocate(static_cast<size_t>(Elements(*w.label) * DTypeBytes(w.label->dtype)));
    if (!label.ok()) return label.status();
    r.label = std::move(*label);
    FillRandomBytes(*w.label, seed + 1, reinterpret_cast<char*>(r.label.data()));
    r.call.aux.push_back(
        AuxInput{"label", TensorInput{w.label->dtype, w.label->shape, r.label.data()}});
  }
  r.call.pipeline = w.pipeline;
  r.call.device = device;
  r.call.seed = 7;
  return r;
}

std::string HumanBytes(double bytes) {
  if (bytes >= 1024 * kMiB) return absl::StrFormat("%.2f GiB", bytes / (1024 * kMiB));
  if (bytes >= kMiB) return absl::StrFormat("%.1f MiB", bytes / kMiB);
  return absl::StrFormat("%.1f KiB", bytes / 1024);
}

// Progress lines on long runs, at most one per interval across all phases, so that a run never
// stays silent for longer than the interval (generation, warm-up and measurement each shorter
// than it still print when together they are longer). Not thread-safe: Begin, Update and End
// must not overlap (a stream's reader thread alone calls Update while the stream runs).
class Progress {
 public:
  Progress(std::FILE* out, double interval_s, int64_t batch)
      : out_(out), interval_s_(interval_s), batch_(batch), last_line_(Clock::now()) {}

  // A new phase of `total` items; `images` says whether an item is a batch of images sent.
  void Begin(const char* phase, const char* unit, int64_t total, bool images) {
    phase_ = phase;
    unit_ = unit;
    total_ = total;
    images_ = images;
    printed_ = 0;
    start_ = Clock::now();
  }

  void Update(int64_t done) {
    if (interval_s_ < 0 || out_ == nullptr) return;
    const auto now = Clock::now();
    if (std::chrono::duration<double>(now - last_line_).count() < interval_s_) return;
    Print(done, now);
  }

  // Closes the phase with a line for its last item when it printed any line: a long phase
  // always ends with "total/total".
  void End() {
    if (printed_ > 0 && printed_ < total_) Print(total_, Clock::now());
  }

 private:
  void Print(int64_t done, Clock::time_point now) {
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
    std::string line = absl::StrFormat("tensorprep bench: %s %d/%d %s (%d%%), %.1f/s", phase_, done,
                                       total_, unit_, total_ > 0 ? done * 100 / total_ : 100, rate);
    if (images_)
      absl::StrAppendFormat(&line, ", %.1f images/s", rate * static_cast<double>(batch_));
    absl::StrAppendFormat(&line, ", %.1f s\n", elapsed);
    std::fputs(line.c_str(), out_);
    std::fflush(out_);
    last_line_ = now;
    printed_ = done;
  }

  std::FILE* out_;
  const double interval_s_;
  const int64_t batch_;
  Clock::time_point last_line_;
  Clock::time_point start_;
  const char* phase_ = "";
  const char* unit_ = "";
  int64_t total_ = 0;
  int64_t printed_ = 0;
  bool images_ = false;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

// `text` inside a JSON string: quotes, backslashes and control characters escaped.
std::string JsonEscape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool ReadFirstLine(const std::string& path, std::string* line) {
  std::ifstream in(path);
  return in && std::getline(in, *line);
}

}  // namespace

absl::StatusOr<int64_t> AvailableMemoryBytes() {
  std::ifstream meminfo("/proc/meminfo");
  if (!meminfo) return absl::NotFoundError("cannot read /proc/meminfo");
  int64_t available = -1;
  for (std::string line; std::getline(meminfo, line);) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "MemAvailable:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, "kB");
    int64_t kb;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kb)) available = kb * 1024;
    break;
  }
  if (available < 0) return absl::NotFoundError("no MemAvailable in /proc/meminfo");
  // In a container the cgroup's limit is usually the tighter one (cgroup v2: "0::/path").
  std::string cgroup;
  if (ReadFirstLine("/proc/self/cgroup", &cgroup) && absl::StartsWith(cgroup, "0::")) {
    const std::string dir = absl::StrCat("/sys/fs/cgroup", cgroup.substr(3));
    std::string max_text, current_text;
    int64_t max, current;
    if (ReadFirstLine(dir + "/memory.max", &max_text) &&
        ReadFirstLine(dir + "/memory.current", &current_text) && absl::SimpleAtoi(max_text, &max) &&
        absl::SimpleAtoi(current_text, &current)) {
      available = std::min(available, std::max<int64_t>(0, max - current));
    }
  }
  return available;
}

absl::Status ValidateBenchOptions(const BenchOptions& o) {
  if (o.batch < 1 || o.requests < 1 || o.warmup < 0 || o.inflight < 1 || o.distinct < 0 ||
      o.max_memory_mb < 0) {
    return absl::InvalidArgumentError(
        "need --batch >= 1, --requests >= 1, --warmup >= 0, --inflight >= 1, --distinct >= 0, "
        "--max-memory-mb >= 0");
  }
  return absl::OkStatus();
}

absl::Status RunBench(const Client& client, const BenchOptions& o, std::FILE* out,
                      std::FILE* progress_out) {
  if (absl::Status s = ValidateBenchOptions(o); !s.ok()) return s;
  auto spec = MakeWorkloadSpec(o.workload, o.batch);
  if (!spec.ok()) return spec.status();
  const int64_t batch = o.batch, warmup = o.warmup, requests = o.requests;
  const int64_t total = warmup + requests;
  const bool default_distinct = o.distinct == 0;
  const int64_t distinct =
      std::min(total, default_distinct ? o.inflight + kExtraDistinct : o.distinct);

  // Everything the run will hold, checked before a byte of it is allocated.
  const double request_bytes = TensorBytes(spec->images) +
                               (spec->label ? TensorBytes(*spec->label) : 0) +
                               kRequestOverheadBytes;
  const int64_t buffered = BufferedRequests(o.stream, o.inflight);
  const double need = static_cast<double>(distinct + buffered) * request_bytes +
                      static_cast<double>(total) * kRecordBytesPerRequest;
  std::optional<double> budget;
  std::string budget_source;
  if (o.max_memory_mb > 0) {
    budget = static_cast<double>(o.max_memory_mb) * kMiB;
    budget_source = absl::StrCat("--max-memory-mb ", o.max_memory_mb, " allows");
  } else if (auto available = AvailableMemoryBytes(); available.ok()) {
    budget = static_cast<double>(*available);
    budget_source = "the system has available";
  }
  if (budget && need > *budget) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "bench would need about %s of memory but %s %s: %d distinct %s requests of batch %d "
        "(%s each; --distinct %d%s), about %d more for gRPC's buffers and the responses%s, and "
        "%d bytes per request for the timings of %d requests. Lower --batch, --inflight or "
        "--distinct%s",
        HumanBytes(need), budget_source, HumanBytes(*budget), distinct, o.workload, batch,
        HumanBytes(request_bytes), distinct,
        default_distinct ? absl::StrCat(" = --inflight ", o.inflight, " + ", kExtraDistinct) : "",
        buffered, o.stream ? absl::StrCat(" (12 + 2 x --inflight ", o.inflight, ")") : "",
        kRecordBytesPerRequest, total, o.max_memory_mb > 0 ? ", or raise --max-memory-mb" : ""));
  }
  // Requests through shared memory carry references only (inline ones still need the limit).
  if (o.shm != ShmMode::kOn && request_bytes > o.max_message_mb * kMiB) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a %s request of batch %d is %s, more than --max-message-mb %d allows; lower --batch or "
        "raise --max-message-mb (and the server's)",
        o.workload, batch, HumanBytes(request_bytes), o.max_message_mb));
  }

  Progress progress(progress_out, o.progress_seconds, batch);
  std::vector<v1::ProcessRequest> ring;  // --shm off: the distinct requests, bytes inline
  std::vector<PlacedRequest> placed;     // otherwise: batches in memory from Client::Allocate
  progress.Begin("generated", "distinct requests", distinct, false);
  if (o.shm == ShmMode::kOff) {
    ring.reserve(static_cast<size_t>(distinct));
    for (int64_t s = 0; s < distinct; ++s) {
      ring.push_back(BuildRequest(*spec, s, o.device));
      progress.Update(s + 1);
    }
  } else {
    placed.reserve(static_cast<size_t>(distinct));
    for (int64_t s = 0; s < distinct; ++s) {
      auto r = BuildPlacedRequest(client, *spec, s, o.device);
      if (!r.ok()) return r.status();
      placed.push_back(std::move(*r));
      progress.Update(s + 1);
    }
  }
  progress.End();
  const size_t request_size = placed.empty()
                                  ? ring[0].ByteSizeLong()
                                  : static_cast<size_t>(request_bytes - kRequestOverheadBytes);
  // Request i goes out in the buffer of ring slot i % distinct with its own id and sample
  // offset. Only one thread at a time calls this (the unary loop, or a stream's writer), and a
  // slot is rewritten only after the request before it in that slot was written.
  auto request_for = [&](int64_t i) -> const v1::ProcessRequest& {
    v1::ProcessRequest& r = ring[static_cast<size_t>(i % distinct)];
    r.set_request_id(std::to_string(i));
    r.set_sample_offset(static_cast<uint64_t>(i * batch));
    return r;
  };
  // The same for the placed batches (Call / StreamCalls read a request only while preparing it).
  auto call_for = [&](int64_t i) -> const CallRequest& {
    CallRequest& c = placed[static_cast<size_t>(i % distinct)].call;
    c.request_id = std::to_string(i);
    c.sample_offset = static_cast<uint64_t>(i * batch);
    return c;
  };

  std::vector<double> rtt(total, 0), server(total, 0), kernel(total, 0), queue(total, 0);
  std::vector<Clock::time_point> sent(total);
  std::string device_used;
  double wall = 0;
  // Transports of the measured requests, and why the last inline one was not shared memory.
  int64_t shm_requests = 0;
  std::string inline_reason =
      o.shm == ShmMode::kOff ? "shared memory is turned off (--shm off)" : "";
  auto record_call = [&](int64_t i, Clock::duration round_trip, const CallResult& r) {
    rtt[i] = std::chrono::duration<double>(round_trip).count();
    server[i] = r.timings.total_ns() * 1e-9;
    kernel[i] = r.timings.kernel_ns() * 1e-9;
    queue[i] = r.timings.queue_ns() * 1e-9;
    device_used = v1::Device_Name(r.device).substr(7);
    if (i < warmup) return;
    if (r.transport == Transport::kShm) {
      ++shm_requests;
    } else {
      inline_reason = r.transport_reason;
    }
  };
  if (!o.stream) {
    auto run = [&](int64_t first, int64_t count) -> absl::Status {
      for (int64_t k = 0; k < count; ++k) {
        const int64_t i = first + k;
        if (!placed.empty()) {
          const CallRequest& call = call_for(i);
          const auto start = Clock::now();
          auto r = client.Call(call);  // the result, and its slots, go at the end of this scope
          if (!r.ok()) return r.status();
          record_call(i, Clock::now() - start, *r);
          progress.Update(k + 1);
          continue;
        }
        const v1::ProcessRequest& request = request_for(i);
        const auto start = Clock::now();
        auto r = client.Process(request);
        if (!r.ok()) return r.status();
        rtt[i] = std::chrono::duration<double>(Clock::now() - start).count();
        server[i] = r->timings().total_ns() * 1e-9;
        kernel[i] = r->timings().kernel_ns() * 1e-9;
        queue[i] = r->timings().queue_ns() * 1e-9;
        device_used = v1::Device_Name(r->device()).substr(7);
        progress.Update(k + 1);
      }
      progress.End();
      return absl::OkStatus();
    };
    progress.Begin("warm-up", "requests", warmup, true);
    if (absl::Status s = run(0, warmup); !s.ok()) return s;
    progress.Begin("measured", "requests", requests, true);
    const auto start = Clock::now();
    if (absl::Status s = run(warmup, requests); !s.ok()) return s;
    wall = std::chrono::duration<double>(Clock::now() - start).count();
  } else {
    // Warm-up on its own stream, then the measured stream.
    absl::Status err = absl::OkStatus();
    std::mutex sent_mu;
    int64_t answered = 0;
    auto collect = [&](v1::ProcessResponse& r) {
      progress.Update(++answered);
      int64_t i;
      if (!absl::SimpleAtoi(r.request_id(), &i) || i < 0 || i >= total) {
        err = absl::InternalError(absl::StrCat("a response names request_id '",
                                               r.request_id().substr(0, 64), "', not one sent"));
        return;
      }
      if (r.has_error()) {
        err = absl::Status(static_cast<absl::StatusCode>(r.error().code()), r.error().message());
        return;
      }
      Clock::time_point sent_at;
      {
        std::lock_guard<std::mutex> lock(sent_mu);
        sent_at = sent[i];
      }
      rtt[i] = std::chrono::duration<double>(Clock::now() - sent_at).count();
      server[i] = r.timings().total_ns() * 1e-9;
      kernel[i] = r.timings().kernel_ns() * 1e-9;
      queue[i] = r.timings().queue_ns() * 1e-9;
      device_used = v1::Device_Name(r.device()).substr(7);
    };
    auto run = [&](int64_t first, int64_t count) -> absl::Status {
      answered = 0;
      auto on_send = [&](size_t k) {
        std::lock_guard<std::mutex> lock(sent_mu);
        sent[first + k] = Clock::now();
      };
      absl::Status s;
      if (!placed.empty()) {
        s = client.StreamCalls(
            static_cast<size_t>(count),
            [&](size_t k) -> const CallRequest& { return call_for(first + k); }, o.inflight,
            [&](size_t k, absl::StatusOr<CallResult> r) {  // dropped here: the slots go back
              progress.Update(++answered);
              if (!r.ok()) {
                err = r.status();
                return;
              }
              const int64_t i = first + static_cast<int64_t>(k);
              Clock::time_point sent_at;
              {
                std::lock_guard<std::mutex> lock(sent_mu);
                sent_at = sent[i];
              }
              record_call(i, Clock::now() - sent_at, *r);
            },
            /*copy=*/false, on_send);
      } else {
        s = client.Stream(
            static_cast<size_t>(count),
            [&](size_t k) -> const v1::ProcessRequest& { return request_for(first + k); },
            o.inflight, collect, on_send);
      }
      progress.End();
      return s;
    };
    if (warmup > 0) {
      progress.Begin("warm-up", "requests", warmup, true);
      if (absl::Status s = run(0, warmup); !s.ok()) return s;
    }
    progress.Begin("measured", "requests", requests, true);
    const auto start = Clock::now();
    absl::Status s = run(warmup, requests);
    wall = std::chrono::duration<double>(Clock::now() - start).count();
    if (!s.ok()) return s;
    if (!err.ok()) return err;
  }

  auto tail = [&](const std::vector<double>& v) {
    return std::vector<double>(v.begin() + warmup, v.end());
  };
  std::vector<double> network(total);
  for (int64_t i = 0; i < total; ++i) network[i] = rtt[i] - server[i];
  const double images_per_s = static_cast<double>(requests * batch) / wall;
  const double p50 = Percentile(tail(rtt), 0.5), p99 = Percentile(tail(rtt), 0.99);
  const double mb_per_s = static_cast<double>(requests) * request_size / wall / 1e6;
  const char* transport = shm_requests == requests ? "shm" : shm_requests == 0 ? "inline" : "mixed";
  if (shm_requests == requests) inline_reason.clear();
  if (o.json) {
    std::fprintf(
        out,
        "{\"workload\":\"%s\",\"batch\":%lld,\"mode\":\"%s\",\"requests\":%lld,\"device\":\"%s\","
        "\"images_per_s\":%.3f,\"request_mb_per_s\":%.3f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,"
        "\"server_p50_ms\":%.4f,\"kernel_p50_ms\":%.4f,\"queue_p50_ms\":%.4f,"
        "\"network_p50_ms\":%.4f,\"transport\":\"%s\",\"shm_requests\":%lld,"
        "\"transport_reason\":\"%s\"}\n",
        o.workload.c_str(), static_cast<long long>(batch), o.stream ? "stream" : "unary",
        static_cast<long long>(requests), device_used.c_str(), images_per_s, mb_per_s, p50 * 1e3,
        p99 * 1e3, Percentile(tail(server), 0.5) * 1e3, Percentile(tail(kernel), 0.5) * 1e3,
        Percentile(tail(queue), 0.5) * 1e3, Percentile(tail(network), 0.5) * 1e3, transport,
        static_cast<long long>(shm_requests), JsonEscape(inline_reason).c_str());
  } else {
    std::fprintf(out, "%s batch=%lld mode=%s requests=%lld device=%s\n", o.workload.c_str(),
                 static_cast<long long>(batch), o.stream ? "stream" : "unary",
                 static_cast<long long>(requests), device_used.c_str());
    std::fprintf(out, "  throughput   %.1f images/s  (%.1f MB/s of requests)\n", images_per_s,
                 mb_per_s);
    std::fprintf(out, "  round trip   p50 %.3f ms  p99 %.3f ms\n", p50 * 1e3, p99 * 1e3);
    std::fprintf(out, "  server       p50 %.3f ms  (kernel %.3f ms, queue %.3f ms)\n",
                 Percentile(tail(server), 0.5) * 1e3, Percentile(tail(kernel), 0.5) * 1e3,
                 Percentile(tail(queue), 0.5) * 1e3);
    std::fprintf(out, "  network+client p50 %.3f ms  (round trip minus server time)\n",
                 Percentile(tail(network), 0.5) * 1e3);
    // Only when --shm asked for it: without it the report stays as it always was (inline).
    if (o.shm != ShmMode::kOff) {
      std::fprintf(out, "  transport    %s  (%lld of %lld requests through shared memory%s%s)\n",
                   transport, static_cast<long long>(shm_requests),
                   static_cast<long long>(requests),
                   inline_reason.empty() ? "" : "; inline: ", inline_reason.c_str());
    }
  }
  return absl::OkStatus();
}

}  // namespace tensorprep::client
