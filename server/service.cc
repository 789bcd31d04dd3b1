#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "kernels/common/tensor.h"
#include "server/security.h"
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

int CodeOf(const absl::Status& s) { return static_cast<int>(ToGrpcStatus(s).error_code()); }

// Same prefix as the processor's errors, so a client can tell which request of many failed.
absl::Status WithRequestId(const absl::Status& s, const std::string& id) {
  if (s.ok() || id.empty()) return s;
  return absl::Status(s.code(), absl::StrCat("request '", id, "': ", s.message()));
}

}  // namespace

struct PreprocessorService::Job {
  const pb::ProcessRequest* request = nullptr;
  std::unique_ptr<handlers::PreparedRequest> prepared;
  Clock::time_point arrival;
  Clock::time_point enqueued;
  std::chrono::system_clock::time_point deadline;
  AdmissionTicket ticket;  // the server-wide reservation, given back when the job goes
};

namespace {

// What one unary call owns while it waits and runs. `job` is declared last because it holds
// views into `request`: members are destroyed in reverse order, so it goes first.
struct UnaryCall {
  pb::ProcessRequest request;
  pb::ProcessResponse response;
  std::unique_ptr<PreprocessorService::Job> job;
};

}  // namespace

absl::Status PreprocessorService::ParseRequest(grpc::ByteBuffer* bytes, const std::string& what,
                                               pb::ProcessRequest* request) {
  const size_t size = bytes->Length();
  const grpc::Status s = grpc::SerializationTraits<pb::ProcessRequest>::Deserialize(bytes, request);
  if (s.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, " is not a valid tensorprep.v1.ProcessRequest message (", size,
      " bytes that protobuf cannot parse); check that the client sends messages of this API"));
}

PreprocessorService::PreprocessorService(const handlers::Processor& processor, WorkQueue& queue,
                                         Metrics& metrics, ServiceOptions options)
    : processor_(processor),
      queue_(queue),
      metrics_(metrics),
      options_(std::move(options)),
      admission_(options_.admission) {}

uint64_t PreprocessorService::InFlightBytes(const pb::ProcessRequest& request,
                                            const handlers::PreparedRequest& prepared) {
  // Sizes were bounded by the decoder's limits, so none of this can overflow. Results written
  // to shared memory are the client's memory, not the server's.
  return request.ByteSizeLong() + handlers::Processor::InlineOutputBytes(prepared);
}

absl::Status PreprocessorService::RunJob(Job& job, pb::ProcessResponse* response,
                                         ResultBuffer* result, bool cancelled) {
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
  const bool main_in_shm = job.prepared->main_out.data != nullptr;
  if (!main_in_shm) {
    *result = ResultBuffer::Allocate(handlers::Processor::MainOutputBytes(*job.prepared));
  }
  auto stats = processor_.Run(*job.request, *job.prepared, response, result->data());
  if (job.prepared->device == handlers::DeviceKind::kCuda &&
      (!stats.ok() || stats->device != handlers::DeviceKind::kCuda)) {
    // The device failed this request (it fell back or failed): if that lost the device's
    // context (see the CUDA backend), the gauge shows it from now on.
    for (const handlers::Backend* b : processor_.backends()) {
      if (b->kind() == handlers::DeviceKind::kCuda) {
        metrics_.SetDeviceUsable(MetricDevice::kCuda, b->usable());
      }
    }
  }
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
  const pb::Transfer& transfer = response->transfer();
  metrics_.AddTransfer(transfer.inline_bytes_in(), transfer.inline_bytes_out(),
                       transfer.shm_bytes_in(), transfer.shm_bytes_out());
  if (options_.shm != nullptr &&
      (transfer.shm_bytes_in() != 0 || transfer.shm_bytes_out() != 0)) {
    metrics_.SetSharedMemory(options_.shm->regions(), options_.shm->mapped_bytes());
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* PreprocessorService::Process(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request_bytes,
                                                       grpc::ByteBuffer* response_bytes) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kProcess);
  CountAccepted();
  auto fail = [&](const absl::Status& s) {
    metrics_.RequestFinished(Rpc::kProcess, CodeOf(s), SecondsSince(arrival));
    reactor->Finish(ToGrpcStatus(s));
    CountAnswered();
    return reactor;
  };
  absl::Status auth = CheckBearerToken(ctx->client_metadata(), options_.auth_token);
  if (!auth.ok()) return fail(auth);
  auto call = std::make_unique<UnaryCall>();
  // gRPC allocated the buffer non-const and destroys it only after Finish; parsing empties it,
  // so that the wire bytes are freed now, as gRPC's own decoder would, not after the response.
  absl::Status parsed =
      ParseRequest(const_cast<grpc::ByteBuffer*>(request_bytes), "the request", &call->request);
  if (!parsed.ok()) return fail(parsed);
  const pb::ProcessRequest& request = call->request;
  auto prepared = processor_.Prepare(request);
  if (!prepared.ok()) return fail(prepared.status());
  auto ticket = admission_.Acquire(InFlightBytes(request, **prepared));
  if (!ticket.ok()) return fail(WithRequestId(ticket.status(), request.request_id()));
  call->job = std::make_unique<Job>();
  Job& job = *call->job;
  job.request = &request;
  job.prepared = std::move(*prepared);
  job.arrival = arrival;
  job.enqueued = Clock::now();
  job.deadline = ctx->deadline();
  job.ticket = std::move(*ticket);
  metrics_.AddQueued(1);
  // gRPC keeps ctx and response_bytes alive until Finish.
  queue_.Submit([this, ctx, reactor, response_bytes, call = std::move(call)]() mutable {
    metrics_.AddQueued(-1);
    ResultBuffer result;
    absl::Status s = RunJob(*call->job, &call->response, &result, ctx->IsCancelled());
    if (s.ok()) s = SerializeResponse(call->response, std::move(result), response_bytes);
    metrics_.RequestFinished(Rpc::kProcess, CodeOf(s), SecondsSince(call->job->arrival));
    call.reset();  // gives the reservation back before the response leaves
    reactor->Finish(ToGrpcStatus(s));
    CountAnswered();
  });
  return reactor;
}

grpc::ServerUnaryReactor* PreprocessorService::ListOps(grpc::CallbackServerContext* ctx,
                                                       const pb::ListOpsRequest*,
                                                       pb::ListOpsResponse* response) {
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kListOps);
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::Status auth = CheckBearerToken(ctx->client_metadata(), options_.auth_token);
  if (auth.ok()) {
    handlers::DescribeOps(processor_.backends(), response);
    response->set_server_version(TENSORPREP_VERSION);
    DescribeSharedMemory(response->mutable_shared_memory());
  }
  metrics_.RequestFinished(Rpc::kListOps, CodeOf(auth), SecondsSince(arrival));
  // In the metrics' accounting only; the service's totals are Process and ProcessStream.
  metrics_.CountAccepted(Rpc::kListOps);
  metrics_.CountAnswered(Rpc::kListOps);
  reactor->Finish(ToGrpcStatus(auth));
  return reactor;
}

namespace {

// One bidirectional stream. Reads one request at a time; each request is prepared on the
// reaction thread (cheap checks) and run on the WorkQueue; finished responses are written one at
// a time in completion order. Reading pauses while `stream_max_inflight` requests or
// `stream_max_bytes` bytes are unsettled (running or waiting to be written), which is what gives
// the client backpressure: a slow reader slows its own stream and holds a bounded amount.
// A message that is not a ProcessRequest ends the stream: nothing more is read, the requests
// before it are answered, and the stream finishes with INVALID_ARGUMENT naming the message.
class StreamReactor final : public RawBidiReactor {
 public:
  StreamReactor(PreprocessorService* service, grpc::CallbackServerContext* ctx)
      : service_(service),
        ctx_(ctx),
        max_inflight_(std::max(1, service->options().stream_max_inflight)),
        max_bytes_(std::max<uint64_t>(1, service->options().stream_max_bytes)) {
    service_->metrics().AddOpenStreams(1);
    absl::Status auth = CheckBearerToken(ctx->client_metadata(), service->options().auth_token);
    if (!auth.ok()) {
      // Refused before anything is read; OnDone still comes and deletes this.
      service_->metrics().RequestStarted(Rpc::kProcessStream);
      service_->metrics().RequestFinished(Rpc::kProcessStream, CodeOf(auth), 0);
      finished_ = true;
      Finish(ToGrpcStatus(auth));
      return;
    }
    ReadNext();
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
    const Clock::time_point arrival = Clock::now();
    service_->metrics().RequestStarted(Rpc::kProcessStream);
    auto request = std::make_unique<pb::ProcessRequest>();
    ++messages_read_;
    const absl::Status parsed = PreprocessorService::ParseRequest(
        next_.get(), absl::StrCat("message ", messages_read_, " of this stream"), request.get());
    next_.reset();
    if (!parsed.ok()) {
      service_->metrics().RequestFinished(Rpc::kProcessStream, CodeOf(parsed),
                                          SecondsSince(arrival));
      bool finish;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stream_error_ = parsed;
        reads_done_ = true;  // read nothing after it: its request id is unknown
        finish = ShouldFinishLocked();
      }
      if (finish) DoFinish();
      return;
    }
    service_->CountAccepted();
    auto prepared = service_->processor().Prepare(*request);
    const uint64_t bytes = prepared.ok()
                               ? PreprocessorService::InFlightBytes(*request, **prepared)
                               : request->ByteSizeLong();
    bool read_more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++in_flight_;
      in_flight_bytes_ += bytes;
      read_more = in_flight_ < max_inflight_ && in_flight_bytes_ < max_bytes_ && !cancelled_;
      if (!read_more) read_paused_ = true;
    }
    if (read_more) ReadNext();
    if (!prepared.ok()) {
      Fail(*request, prepared.status(), arrival, bytes);
      return;
    }
    if (bytes > max_bytes_) {
      Fail(*request,
           WithRequestId(absl::ResourceExhaustedError(absl::StrCat(
                             "the request needs ", bytes,
                             " bytes in flight, over the per-stream limit of ", max_bytes_,
                             " bytes (--stream-inflight-mb); send it unary or in smaller "
                             "batches")),
                         request->request_id()),
           arrival, bytes);
      return;
    }
    auto ticket = service_->admission().Acquire(bytes);
    if (!ticket.ok()) {
      Fail(*request, WithRequestId(ticket.status(), request->request_id()), arrival, bytes);
      return;
    }
    auto job = std::make_unique<PreprocessorService::Job>();
    job->request = request.get();
    job->prepared = std::move(*prepared);
    job->arrival = arrival;
    job->enqueued = Clock::now();
    job->deadline = ctx_->deadline();
    job->ticket = std::move(*ticket);
    service_->metrics().AddQueued(1);
    service_->queue().Submit([this, arrival, bytes, request = std::move(request),
                              job = std::move(job)]() mutable {
      service_->metrics().AddQueued(-1);
      bool cancelled;
      {
        std::lock_guard<std::mutex> lock(mu_);
        cancelled = cancelled_ || write_failed_;
      }
      auto response = std::make_unique<pb::ProcessResponse>();
      ResultBuffer result;
      const absl::Status s = service_->RunJob(*job, response.get(), &result, cancelled);
      if (!s.ok()) {
        SetError(*request, s, response.get());
        result = ResultBuffer();
      }
      // The reservation now covers the response until it is written.
      AdmissionTicket ticket = std::move(job->ticket);
      job.reset();  // drops the views into `request` before it goes
      request.reset();
      Complete(std::move(response), std::move(result), s, arrival, bytes, std::move(ticket));
    });
  }

  void OnWriteDone(bool ok) override {
    const grpc::ByteBuffer* next_write = nullptr;
    bool resume = false;
    bool finish = false;
    std::deque<Pending> dropped;  // freed outside the lock
    {
      std::lock_guard<std::mutex> lock(mu_);
      dropped.push_back(std::move(writes_.front()));
      writes_.pop_front();
      --in_flight_;
      in_flight_bytes_ -= dropped.back().bytes;
      if (ok) {
        service_->CountAnswered();
      } else {
        // The client is gone: what is queued for writing can never be delivered.
        write_failed_ = true;
        for (Pending& p : writes_) {
          --in_flight_;
          in_flight_bytes_ -= p.bytes;
          dropped.push_back(std::move(p));
        }
        writes_.clear();
      }
      if (!writes_.empty()) {
        next_write = writes_.front().response.get();
      } else {
        writing_ = false;
      }
      resume = MaybeResumeLocked();
      finish = ShouldFinishLocked();
    }
    if (next_write != nullptr) StartWrite(next_write);
    if (resume) ReadNext();
    if (finish) DoFinish();
  }

  void OnCancel() override {
    bool finish;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      finish = ShouldFinishLocked();
    }
    if (finish) DoFinish();
  }

  void OnDone() override {
    service_->metrics().AddOpenStreams(-1);
    delete this;
  }

 private:
  struct Pending {
    std::unique_ptr<grpc::ByteBuffer> response;  // serialised
    uint64_t bytes = 0;  // this request's share of in_flight_bytes_
    AdmissionTicket ticket;  // its server-wide reservation (empty for refused requests)
  };

  static void SetError(const pb::ProcessRequest& request, const absl::Status& s,
                       pb::ProcessResponse* response) {
    SetErrorFor(request.request_id(), s, response);
  }
  static void SetErrorFor(std::string request_id, const absl::Status& s,
                          pb::ProcessResponse* response) {
    const grpc::Status g = ToGrpcStatus(s);
    response->Clear();
    response->set_request_id(std::move(request_id));
    response->mutable_error()->set_code(static_cast<int>(g.error_code()));
    response->mutable_error()->set_message(g.error_message());
  }

  // A request that is answered without running.
  void Fail(const pb::ProcessRequest& request, const absl::Status& s, Clock::time_point arrival,
            uint64_t bytes) {
    auto response = std::make_unique<pb::ProcessResponse>();
    SetError(request, s, response.get());
    Complete(std::move(response), ResultBuffer(), s, arrival, bytes, AdmissionTicket());
  }

  void ReadNext() {
    next_ = std::make_unique<grpc::ByteBuffer>();
    StartRead(next_.get());
  }

  // Hands a settled request's response to the writer (or drops it if the client is gone).
  // `result` holds the main result's bytes of a successful response.
  void Complete(std::unique_ptr<pb::ProcessResponse> response, ResultBuffer result,
                absl::Status s, Clock::time_point arrival, uint64_t bytes, AdmissionTicket ticket) {
    auto wire = std::make_unique<grpc::ByteBuffer>();
    const absl::Status serialized = SerializeResponse(*response, std::move(result), wire.get());
    if (!serialized.ok()) {
      s = WithRequestId(serialized, response->request_id());
      SetErrorFor(response->request_id(), s, response.get());
      SerializeResponse(*response, ResultBuffer(), wire.get()).IgnoreError();  // a few bytes
    }
    response.reset();
    service_->metrics().RequestFinished(Rpc::kProcessStream, CodeOf(s), SecondsSince(arrival));
    const grpc::ByteBuffer* to_write = nullptr;
    bool resume = false;
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (write_failed_ || cancelled_) {
        --in_flight_;
        in_flight_bytes_ -= bytes;
        resume = MaybeResumeLocked();
        finish = ShouldFinishLocked();
      } else {
        writes_.push_back(Pending{std::move(wire), bytes, std::move(ticket)});
        if (!writing_) {
          writing_ = true;
          to_write = writes_.front().response.get();
        }
      }
    }
    if (to_write != nullptr) StartWrite(to_write);
    if (resume) ReadNext();
    if (finish) DoFinish();
  }

  bool MaybeResumeLocked() {
    if (read_paused_ && !reads_done_ && !write_failed_ && !cancelled_ &&
        in_flight_ < max_inflight_ && in_flight_bytes_ < max_bytes_) {
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
    grpc::Status status = grpc::Status::OK;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) {
        status = grpc::Status::CANCELLED;
      } else if (!stream_error_.ok()) {
        status = ToGrpcStatus(stream_error_);
      }
    }
    Finish(status);
  }

  PreprocessorService* service_;
  grpc::CallbackServerContext* ctx_;
  const int max_inflight_;
  const uint64_t max_bytes_;
  std::unique_ptr<grpc::ByteBuffer> next_;  // the buffer of the one outstanding read
  uint64_t messages_read_ = 0;               // only touched by OnReadDone, one at a time

  std::mutex mu_;
  int in_flight_ = 0;             // GUARDED_BY(mu_): read and not yet written or dropped
  uint64_t in_flight_bytes_ = 0;  // GUARDED_BY(mu_): their InFlightBytes
  std::deque<Pending> writes_;    // GUARDED_BY(mu_)
  bool writing_ = false;          // GUARDED_BY(mu_): a StartWrite is outstanding
  bool read_paused_ = false;      // GUARDED_BY(mu_)
  bool reads_done_ = false;       // GUARDED_BY(mu_)
  bool write_failed_ = false;     // GUARDED_BY(mu_)
  bool cancelled_ = false;        // GUARDED_BY(mu_)
  bool finished_ = false;         // GUARDED_BY(mu_)
  absl::Status stream_error_;     // GUARDED_BY(mu_): ends the stream once the rest is written
};

}  // namespace

RawBidiReactor* PreprocessorService::ProcessStream(grpc::CallbackServerContext* ctx) {
  return new StreamReactor(this, ctx);
}

}  // namespace tensorprep::server
