#include "server/service.h"

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace tensorprep::server {

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

MetricDevice ToMetricDevice(handlers::DeviceKind d) {
  return d == handlers::DeviceKind::kCuda ? MetricDevice::kCuda : MetricDevice::kCpu;
}

}  // namespace

struct PreprocessorService::Job {
  const pb::ProcessRequest* request = nullptr;
  std::unique_ptr<handlers::PreparedRequest> prepared;
  Clock::time_point arrival;
  Clock::time_point enqueued;
  std::chrono::system_clock::time_point deadline;
};

PreprocessorService::PreprocessorService(const handlers::Processor& processor, WorkQueue& queue,
                                         Metrics& metrics, ServiceOptions options)
    : processor_(processor), queue_(queue), metrics_(metrics), options_(options) {}

absl::Status PreprocessorService::RunJob(Job& job, pb::ProcessResponse* response,
                                         bool cancelled) {
  const int64_t queue_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - job.enqueued).count();
  // Work whose caller is gone or out of time is dropped before it runs.
  if (cancelled) {
    return absl::CancelledError("the client cancelled the call before the request ran");
  }
  if (std::chrono::system_clock::now() > job.deadline) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the deadline passed while the request waited ", queue_ns / 1000, " us in the queue"));
  }
  auto stats = processor_.Run(*job.request, *job.prepared, response);
  if (!stats.ok()) return stats.status();
  const MetricDevice device = ToMetricDevice(stats->device);
  pb::ServerTimings* t = response->mutable_timings();
  t->set_queue_ns(queue_ns);
  t->set_total_ns(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - job.arrival).count());
  metrics_.ObserveStage(Stage::kDecode, device, t->decode_ns() * 1e-9);
  metrics_.ObserveStage(Stage::kQueue, device, queue_ns * 1e-9);
  metrics_.ObserveStage(Stage::kKernel, device, t->kernel_ns() * 1e-9);
  metrics_.ObserveStage(Stage::kEncode, device, t->encode_ns() * 1e-9);
  for (const handlers::StepTiming& s : stats->steps) {
    metrics_.ObserveKernel(static_cast<int>(s.kind), device, s.seconds);
  }
  metrics_.AddSamples(device, static_cast<uint64_t>(stats->samples));
  metrics_.AddBytes(job.prepared->bytes_in, stats->bytes_out);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PreprocessorService::Process(grpc::CallbackServerContext* ctx,
                                                       const pb::ProcessRequest* request,
                                                       pb::ProcessResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kProcess);
  auto prepared = processor_.Prepare(*request);
  if (!prepared.ok()) {
    metrics_.RequestFinished(Rpc::kProcess, static_cast<int>(ToGrpcStatus(prepared.status()).error_code()),
                             SecondsSince(arrival));
    reactor->Finish(ToGrpcStatus(prepared.status()));
    return reactor;
  }
  auto job = std::make_unique<Job>();
  job->request = request;
  job->prepared = std::move(*prepared);
  job->arrival = arrival;
  job->enqueued = Clock::now();
  job->deadline = ctx->deadline();
  metrics_.AddQueued(1);
  // gRPC keeps ctx, request and response alive until Finish.
  queue_.Submit([this, ctx, reactor, response, job = std::move(job)]() mutable {
    metrics_.AddQueued(-1);
    const grpc::Status status = ToGrpcStatus(RunJob(*job, response, ctx->IsCancelled()));
    metrics_.RequestFinished(Rpc::kProcess, static_cast<int>(status.error_code()),
                             SecondsSince(job->arrival));
    reactor->Finish(status);
  });
  return reactor;
}

grpc::ServerUnaryReactor* PreprocessorService::ListOps(grpc::CallbackServerContext* ctx,
                                                       const pb::ListOpsRequest*,
                                                       pb::ListOpsResponse* response) {
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kListOps);
  handlers::DescribeOps(processor_.backends(), response);
  response->set_server_version(TENSORPREP_VERSION);
  metrics_.RequestFinished(Rpc::kListOps, 0, SecondsSince(arrival));
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

namespace {

// One bidirectional stream. Reads one request at a time; each request is prepared on the
// reaction thread (cheap checks) and run on the WorkQueue; finished responses are written one at
// a time in completion order. Reading pauses while `stream_max_inflight` requests are unsettled
// (running or waiting to be written), which is what gives the client backpressure.
class StreamReactor final : public grpc::ServerBidiReactor<pb::ProcessRequest, pb::ProcessResponse> {
 public:
  StreamReactor(PreprocessorService* service, grpc::CallbackServerContext* ctx)
      : service_(service), ctx_(ctx), max_inflight_(std::max(1, service->options().stream_max_inflight)) {
    service_->metrics().AddOpenStreams(1);
    next_ = std::make_unique<pb::ProcessRequest>();
    StartRead(next_.get());
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool finish;
      {
        std::lock_guard<std::mutex> lock(mu_);
        reads_done_ = true;
        finish = ShouldFinishLocked();
      }
      if (finish) DoFinish();
      return;
    }
    std::unique_ptr<pb::ProcessRequest> request = std::move(next_);
    const Clock::time_point arrival = Clock::now();
    service_->metrics().RequestStarted(Rpc::kProcessStream);
    bool read_more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++in_flight_;
      read_more = in_flight_ < max_inflight_;
      if (!read_more) read_paused_ = true;
    }
    if (read_more) {
      next_ = std::make_unique<pb::ProcessRequest>();
      StartRead(next_.get());
    }
    Dispatch(std::move(request), arrival);
  }

  void OnWriteDone(bool ok) override {
    const pb::ProcessResponse* next_write = nullptr;
    bool resume = false;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      writes_.pop_front();
      --in_flight_;
      if (!ok) {
        // The client is gone: what is queued for writing can never be delivered.
        write_failed_ = true;
        in_flight_ -= static_cast<int>(writes_.size());
        writes_.clear();
      }
      if (!writes_.empty()) {
        next_write = writes_.front().get();
      } else {
        writing_ = false;
      }
      resume = MaybeResumeLocked();
      finish = ShouldFinishLocked();
    }
    if (next_write != nullptr) StartWrite(next_write);
    if (resume) {
      next_ = std::make_unique<pb::ProcessRequest>();
      StartRead(next_.get());
    }
    if (finish) DoFinish();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }

  void OnDone() override {
    service_->metrics().AddOpenStreams(-1);
    delete this;
  }

 private:
  void Dispatch(std::unique_ptr<pb::ProcessRequest> request, Clock::time_point arrival) {
    auto response = std::make_unique<pb::ProcessResponse>();
    auto prepared = service_->processor().Prepare(*request);
    if (!prepared.ok()) {
      SetError(*request, prepared.status(), response.get());
      Complete(std::move(response), prepared.status(), arrival);
      return;
    }
    auto job = std::make_unique<PreprocessorService::Job>();
    job->request = request.get();
    job->prepared = std::move(*prepared);
    job->arrival = arrival;
    job->enqueued = Clock::now();
    job->deadline = ctx_->deadline();
    service_->metrics().AddQueued(1);
    service_->queue().Submit([this, arrival, request = std::move(request), job = std::move(job),
                              response = std::move(response)]() mutable {
      service_->metrics().AddQueued(-1);
      bool cancelled;
      {
        std::lock_guard<std::mutex> lock(mu_);
        cancelled = cancelled_ || write_failed_;
      }
      const absl::Status s = service_->RunJob(*job, response.get(), cancelled);
      if (!s.ok()) SetError(*request, s, response.get());
      job.reset();  // drops the views into `request` before it goes
      Complete(std::move(response), s, arrival);
    });
  }

  static void SetError(const pb::ProcessRequest& request, const absl::Status& s,
                       pb::ProcessResponse* response) {
    const grpc::Status g = ToGrpcStatus(s);
    response->Clear();
    response->set_request_id(request.request_id());
    response->mutable_error()->set_code(static_cast<int>(g.error_code()));
    response->mutable_error()->set_message(g.error_message());
  }

  // Hands a settled request's response to the writer (or drops it if the client is gone).
  void Complete(std::unique_ptr<pb::ProcessResponse> response, const absl::Status& s,
                Clock::time_point arrival) {
    service_->metrics().RequestFinished(Rpc::kProcessStream,
                                        static_cast<int>(ToGrpcStatus(s).error_code()),
                                        SecondsSince(arrival));
    const pb::ProcessResponse* to_write = nullptr;
    bool resume = false;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (write_failed_ || cancelled_) {
        --in_flight_;
        resume = MaybeResumeLocked();
        finish = ShouldFinishLocked();
      } else {
        writes_.push_back(std::move(response));
        if (!writing_) {
          writing_ = true;
          to_write = writes_.front().get();
        }
      }
    }
    if (to_write != nullptr) StartWrite(to_write);
    if (resume) {
      next_ = std::make_unique<pb::ProcessRequest>();
      StartRead(next_.get());
    }
    if (finish) DoFinish();
  }

  bool MaybeResumeLocked() {
    if (read_paused_ && !reads_done_ && !write_failed_ && !cancelled_ &&
        in_flight_ < max_inflight_) {
      read_paused_ = false;
      return true;
    }
    return false;
  }

  // True exactly once: when nothing is running or waiting to be written and no more requests
  // can come (the client closed its side, or can no longer be written to).
  bool ShouldFinishLocked() {
    if (finished_ || in_flight_ != 0 || writing_ || !writes_.empty()) return false;
    if (!(reads_done_ || write_failed_ || (cancelled_ && read_paused_))) return false;
    finished_ = true;
    return true;
  }

  void DoFinish() {
    bool cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled = cancelled_;
    }
    Finish(cancelled ? grpc::Status::CANCELLED : grpc::Status::OK);
  }

  PreprocessorService* service_;
  grpc::CallbackServerContext* ctx_;
  const int max_inflight_;
  std::unique_ptr<pb::ProcessRequest> next_;  // the buffer of the one outstanding read

  std::mutex mu_;
  int in_flight_ = 0;  // GUARDED_BY(mu_): read and not yet written or dropped
  std::deque<std::unique_ptr<pb::ProcessResponse>> writes_;  // GUARDED_BY(mu_)
  bool writing_ = false;       // GUARDED_BY(mu_): a StartWrite is outstanding
  bool read_paused_ = false;   // GUARDED_BY(mu_)
  bool reads_done_ = false;    // GUARDED_BY(mu_)
  bool write_failed_ = false;  // GUARDED_BY(mu_)
  bool cancelled_ = false;     // GUARDED_BY(mu_)
  bool finished_ = false;      // GUARDED_BY(mu_)
};

}  // namespace

grpc::ServerBidiReactor<pb::ProcessRequest, pb::ProcessResponse>*
PreprocessorService::ProcessStream(grpc::CallbackServerContext* ctx) {
  return new StreamReactor(this, ctx);
}

}  // namespace tensorprep::server
