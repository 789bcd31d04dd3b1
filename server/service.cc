#include "server/service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include <grpcpp/support/proto_buffer_reader.h>

#include "absl/strings/str_cat.h"
#include "handlers/error_text.h"
#include "kernels/common/tensor.h"
#include "server/security.h"
#include "server/status_util.h"
#include "server/stream_state.h"

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
  return absl::Status(s.code(), absl::StrCat(handlers::RequestIdPrefix(id), s.message()));
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
      admission_(options_.admission),
      prepare_queue_(std::max(1, options_.prepare_threads)) {}

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
  if (job.prepared->ragged) {
    metrics_.ObserveStage(Stage::kImageDecode, device, t->image_decode_ns() * 1e-9);
  }
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

void PreprocessorService::CountAccepted(Rpc rpc) {
  accepted_.fetch_add(1);
  metrics_.CountAccepted(rpc);
}

void PreprocessorService::CountAnswered(Rpc rpc, uint64_t n) {
  answered_.fetch_add(n);
  metrics_.CountAnswered(rpc, n);
}

void PreprocessorService::CountCancelled(Rpc rpc, uint64_t n) {
  cancelled_.fetch_add(n);
  metrics_.CountCancelled(rpc, n);
}

namespace {

// True for the statuses RunJob gives work it dropped because its caller was gone or late.
bool IsDropped(const absl::Status& s) {
  return s.code() == absl::StatusCode::kCancelled ||
         s.code() == absl::StatusCode::kDeadlineExceeded;
}

// Ends a unary call: metrics, the outcome count (before Finish, so that a count read once the
// server has stopped includes it), then the status. Exactly once per call.
void FinishUnary(PreprocessorService* service, grpc::CallbackServerContext* ctx,
                 grpc::ServerUnaryReactor* reactor, const absl::Status& s,
                 Clock::time_point arrival) {
  service->metrics().RequestFinished(Rpc::kProcess, CodeOf(s), SecondsSince(arrival));
  if (IsDropped(s) || ctx->IsCancelled()) {
    service->CountCancelled(Rpc::kProcess);
  } else {
    service->CountAnswered(Rpc::kProcess);
  }
  reactor->Finish(ToGrpcStatus(s));
}

// Parses, validates and admits one unary request on a prepare thread, then queues it. gRPC
// keeps ctx, the request and response buffers alive until Finish.
void PrepareUnary(PreprocessorService* service, grpc::CallbackServerContext* ctx,
                  grpc::ServerUnaryReactor* reactor, grpc::ByteBuffer* request_bytes,
                  grpc::ByteBuffer* response_bytes, Clock::time_point arrival) {
  if (ctx->IsCancelled()) {
    return FinishUnary(service, ctx, reactor,
                       absl::CancelledError("the client cancelled the call before it was read"),
                       arrival);
  }
  auto call = std::make_unique<UnaryCall>();
  // Parsing empties the buffer, so that the wire bytes are freed now, as gRPC's own decoder
  // would, not after the response.
  absl::Status parsed =
      PreprocessorService::ParseRequest(request_bytes, "the request", &call->request);
  if (!parsed.ok()) return FinishUnary(service, ctx, reactor, parsed, arrival);
  const pb::ProcessRequest& request = call->request;
  auto prepared = service->processor().Prepare(request);
  if (!prepared.ok()) return FinishUnary(service, ctx, reactor, prepared.status(), arrival);
  auto ticket =
      service->admission().Acquire(PreprocessorService::InFlightBytes(request, **prepared));
  if (!ticket.ok()) {
    return FinishUnary(service, ctx, reactor, WithRequestId(ticket.status(), request.request_id()),
                       arrival);
  }
  call->job = std::make_unique<PreprocessorService::Job>();
  PreprocessorService::Job& job = *call->job;
  job.request = &request;
  job.prepared = std::move(*prepared);
  job.arrival = arrival;
  job.enqueued = Clock::now();
  job.deadline = ctx->deadline();
  job.ticket = std::move(*ticket);
  service->metrics().AddQueued(1);
  service->queue().Submit(
      [service, ctx, reactor, response_bytes, arrival, call = std::move(call)]() mutable {
        service->metrics().AddQueued(-1);
        ResultBuffer result;
        absl::Status s =
            service->RunJob(*call->job, &call->response, &result, ctx->IsCancelled());
        if (s.ok()) s = SerializeResponse(call->response, std::move(result), response_bytes);
        call.reset();  // gives the reservation back before the response leaves
        FinishUnary(service, ctx, reactor, s, arrival);
      });
}

}  // namespace

grpc::ServerUnaryReactor* PreprocessorService::Process(grpc::CallbackServerContext* ctx,
                                                       const grpc::ByteBuffer* request_bytes,
                                                       grpc::ByteBuffer* response_bytes) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kProcess);
  CountAccepted(Rpc::kProcess);
  absl::Status auth = CheckBearerToken(ctx->client_metadata(), options_.auth_token);
  if (!auth.ok()) {
    FinishUnary(this, ctx, reactor, auth, arrival);
    return reactor;
  }
  // Parsing and validation take time that grows with the message: not on this reaction thread.
  // gRPC allocated the request buffer non-const and destroys it only after Finish.
  prepare_queue_.Submit([this, ctx, reactor, request_bytes, response_bytes, arrival] {
    PrepareUnary(this, ctx, reactor, const_cast<grpc::ByteBuffer*>(request_bytes),
                 response_bytes, arrival);
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

// One bidirectional stream: wires gRPC's events to a StreamState, which holds every rule of
// its flow control, and carries out the actions it returns. A message is counted in flight the
// moment its read completes; it is parsed and prepared on the service's prepare threads (work
// that grows with the message stays off gRPC's reaction thread), run on the WorkQueue, and its
// response is written in completion order, one write at a time. The next message is read once
// the previous one is parsed and while the window (`stream_max_inflight` requests,
// `stream_max_bytes` bytes unsettled) has room: a slow reader slows its own stream and holds a
// bounded amount. A message that is not a ProcessRequest ends the stream: nothing more is read,
// the requests before it are answered, and the stream finishes with INVALID_ARGUMENT naming it.
//
// Lifetime: gRPC deletes nothing; OnDone deletes this. Every task that refers to `this` holds
// a request counted in flight, and StreamState hands out Finish only when none is, so OnDone
// cannot come while such a task exists.
class StreamReactor final : public RawBidiReactor {
 public:
  StreamReactor(PreprocessorService* service, grpc::CallbackServerContext* ctx)
      : service_(service),
        ctx_(ctx),
        max_bytes_(std::max<uint64_t>(1, service->options().stream_max_bytes)),
        state_(StreamLimits{service->options().stream_max_inflight, max_bytes_}) {
    service_->metrics().AddOpenStreams(1);
    absl::Status auth = CheckBearerToken(ctx->client_metadata(), service->options().auth_token);
    if (!auth.ok()) {
      // Refused before anything is read: one request, answered with the refusal. OnDone still
      // comes and deletes this.
      service_->metrics().RequestStarted(Rpc::kProcessStream);
      service_->CountAccepted(Rpc::kProcessStream);
      service_->metrics().RequestFinished(Rpc::kProcessStream, CodeOf(auth), 0);
      service_->CountAnswered(Rpc::kProcessStream);
      Apply(state_.Refuse(auth));
      return;
    }
    Apply(state_.Start());
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Apply(state_.ReadsDone());
      return;
    }
    // Counted in flight before anything else, so that nothing can finish the call under it.
    std::unique_ptr<grpc::ByteBuffer> message = std::move(next_);
    const uint64_t wire_bytes = message->Length();
    const StreamState::Arrival arrival_state = state_.MessageArrived(wire_bytes);
    if (!arrival_state.accepted) return;  // the stream is ending: discarded unread
    const Clock::time_point arrival = Clock::now();
    service_->metrics().RequestStarted(Rpc::kProcessStream);
    service_->CountAccepted(Rpc::kProcessStream);
    service_->prepare_queue().Submit(
        [this, message = std::move(message), index = arrival_state.index, wire_bytes,
         arrival]() mutable { Prepare(std::move(message), index, wire_bytes, arrival); });
  }

  void OnWriteDone(bool ok) override { Apply(state_.WriteDone(ok)); }

  void OnCancel() override { Apply(state_.Cancelled()); }

  void OnDone() override {
    service_->metrics().AddOpenStreams(-1);
    delete this;
  }

 private:
  struct Pending final : StreamState::Outgoing {
    std::unique_ptr<grpc::ByteBuffer> wire;  // the serialised response
    AdmissionTicket ticket;  // its server-wide reservation (empty for refused requests)
  };

  // On a prepare thread: parse, validate, admit, queue. The message is in flight throughout.
  void Prepare(std::unique_ptr<grpc::ByteBuffer> message, uint64_t index, uint64_t wire_bytes,
               Clock::time_point arrival) {
    auto request = std::make_unique<pb::ProcessRequest>();
    const absl::Status parsed = PreprocessorService::ParseRequest(
        message.get(), absl::StrCat("message ", index, " of this stream"), request.get());
    message.reset();
    if (!parsed.ok()) {
      service_->metrics().RequestFinished(Rpc::kProcessStream, CodeOf(parsed),
                                          SecondsSince(arrival));
      Apply(state_.MessageInvalid(wire_bytes, parsed));
      return;
    }
    auto prepared = service_->processor().Prepare(*request);
    const uint64_t bytes = prepared.ok()
                               ? PreprocessorService::InFlightBytes(*request, **prepared)
                               : request->ByteSizeLong();
    Apply(state_.MessagePrepared(wire_bytes, bytes));  // may start the next read
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
      auto response = std::make_unique<pb::ProcessResponse>();
      ResultBuffer result;
      const absl::Status s =
          service_->RunJob(*job, response.get(), &result, state_.ShouldDrop());
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

  static void SetError(const pb::ProcessRequest& request, const absl::Status& s,
                       pb::ProcessResponse* response) {
    SetErrorFor(request.request_id(), s, response);
  }
  static void SetErrorFor(std::string request_id, const absl::Status& s,
                          pb::ProcessResponse* response) {
    const grpc::Status g = ToGrpcStatus(s);
    response->Clear();
    // The id goes back whole (it is how the client matches the response); the message quotes
    // it with a bound.
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

  // Hands a settled request's response to the state: written in turn, or dropped if the client
  // is gone. `result` holds the main result's bytes of a successful response.
  void Complete(std::unique_ptr<pb::ProcessResponse> response, ResultBuffer result,
                absl::Status s, Clock::time_point arrival, uint64_t bytes, AdmissionTicket ticket) {
    auto pending = std::make_unique<Pending>();
    pending->wire = std::make_unique<grpc::ByteBuffer>();
    pending->bytes = bytes;
    pending->ticket = std::move(ticket);
    const absl::Status serialized =
        SerializeResponse(*response, std::move(result), pending->wire.get());
    if (!serialized.ok()) {
      s = WithRequestId(serialized, response->request_id());
      SetErrorFor(response->request_id(), s, response.get());
      SerializeResponse(*response, ResultBuffer(), pending->wire.get()).IgnoreError();  // small
    }
    response.reset();
    service_->metrics().RequestFinished(Rpc::kProcessStream, CodeOf(s), SecondsSince(arrival));
    Apply(state_.Completed(std::move(pending)));
  }

  void ReadNext() {
    next_ = std::make_unique<grpc::ByteBuffer>();
    StartRead(next_.get());
  }

  // Carries out what the state asked for, Finish last: after it OnDone may delete this.
  void Apply(StreamState::Actions a) {
    if (a.answered > 0) service_->CountAnswered(Rpc::kProcessStream, a.answered);
    if (a.cancelled > 0) service_->CountCancelled(Rpc::kProcessStream, a.cancelled);
    a.dropped.clear();  // frees responses and gives their reservations back
    if (a.start_write != nullptr) StartWrite(static_cast<Pending*>(a.start_write)->wire.get());
    if (a.start_read) {
      ReadNext();
      Apply(state_.ReadStarted());  // may finish; never asks for another read
      return;
    }
    if (a.finish) Finish(ToGrpcStatus(a.finish_status));
  }

  PreprocessorService* const service_;
  grpc::CallbackServerContext* const ctx_;
  const uint64_t max_bytes_;
  // The buffer of the one outstanding read: written by ReadNext, taken by OnReadDone; the state
  // asks for a read only when none is outstanding.
  std::unique_ptr<grpc::ByteBuffer> next_;
  StreamState state_;
};

}  // namespace

RawBidiReactor* PreprocessorService::ProcessStream(grpc::CallbackServerContext* ctx) {
  return new StreamReactor(this, ctx);
}

}  // namespace tensorprep::server
