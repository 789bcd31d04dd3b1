// The tensorprep.v1.Preprocessor gRPC service on the callback API. It only translates: protobuf
// in, handlers::Processor does the work on the WorkQueue, protobuf and grpc::Status out. It also
// guards the door: the bearer token, the server-wide in-flight budget (Admission) and the
// per-stream window.
//
// Process and ProcessStream take the raw message bytes and parse them here, so that bytes which
// are not a ProcessRequest get INVALID_ARGUMENT with a message (gRPC's own decoder answers a
// unary call with an empty UNIMPLEMENTED, and on a stream reports the bad message as the end of
// the client's requests, which would end the stream OK with later requests unread).
#ifndef TENSORPREP_SERVER_SERVICE_H_
#define TENSORPREP_SERVER_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include <grpcpp/support/byte_buffer.h>

#include "handlers/processor.h"
#include "server/admission.h"
#include "server/metrics.h"
#include "server/wire_response.h"
#include "server/work_queue.h"
#include "tensorprep/v1/tensorprep.grpc.pb.h"

namespace tensorprep::server {

namespace pb = ::tensorprep::v1;

struct ServiceOptions {
  // Requests of one stream being processed or waiting to be written, and the bytes they hold
  // (request + response); at either limit the stream stops reading, so gRPC flow control slows
  // the client instead of memory growing. One request bigger than `stream_max_bytes` can never
  // fit and gets RESOURCE_EXHAUSTED.
  int stream_max_inflight = 8;
  uint64_t stream_max_bytes = uint64_t{256} << 20;
  // Server-wide budget shared by unary calls and streams.
  AdmissionLimits admission;
  // When non-empty, every call must carry "authorization: Bearer <auth_token>".
  std::string auth_token;
  // Shared-memory regions (not owned; outlives the service); null or disabled: the shared-memory
  // RPCs answer FAILED_PRECONDITION.
  handlers::SharedMemoryRegions* shm = nullptr;
  // Threads that parse and validate request messages (work that grows with the message), off
  // gRPC's reaction threads and apart from the WorkQueue, so that a large message stalls
  // neither other calls' reactions nor admission behind running kernels.
  int prepare_threads = 2;
};

// Who a shared-memory caller is, for the per-client region limit and the KServe v2 region
// names: the connection's peer and the token it shows (so two connections are two clients; all
// clients of a Unix socket share one peer, and only their tokens tell them apart).
std::string ShmClientOf(grpc::CallbackServerContext* ctx);

// Thread-safe. `processor`, `queue` and `metrics` are not owned and must outlive the service
// and every call it started (shut the grpc::Server down before destroying them).
using RawBidiReactor = grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>;

class PreprocessorService final
    : public pb::Preprocessor::WithRawCallbackMethod_Process<
          pb::Preprocessor::WithRawCallbackMethod_ProcessStream<
              pb::Preprocessor::WithCallbackMethod_ListOps<
                  pb::Preprocessor::WithCallbackMethod_RegisterSharedMemory<
                      pb::Preprocessor::WithCallbackMethod_SharedMemoryStatus<
                          pb::Preprocessor::WithCallbackMethod_UnregisterSharedMemory<
                              pb::Preprocessor::Service>>>>>> {
 public:
  PreprocessorService(const handlers::Processor& processor, WorkQueue& queue, Metrics& metrics,
                      ServiceOptions options);

  grpc::ServerUnaryReactor* Process(grpc::CallbackServerContext* ctx,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  RawBidiReactor* ProcessStream(grpc::CallbackServerContext* ctx) override;
  // The shared-memory RPCs (server/shm_service.cc). A client, for the per-client region limit,
  // is the transport peer together with the bearer token.
  grpc::ServerUnaryReactor* RegisterSharedMemory(
      grpc::CallbackServerContext* ctx, const pb::RegisterSharedMemoryRequest* request,
      pb::RegisterSharedMemoryResponse* response) override;
  grpc::ServerUnaryReactor* SharedMemoryStatus(grpc::CallbackServerContext* ctx,
                                               const pb::SharedMemoryStatusRequest* request,
                                               pb::SharedMemoryStatusResponse* response) override;
  grpc::ServerUnaryReactor* UnregisterSharedMemory(
      grpc::CallbackServerContext* ctx, const pb::UnregisterSharedMemoryRequest* request,
      pb::UnregisterSharedMemoryResponse* response) override;
  // The shared-memory terms, as ListOps and SharedMemoryStatus report them.
  void DescribeSharedMemory(pb::SharedMemoryInfo* info) const;

  grpc::ServerUnaryReactor* ListOps(grpc::CallbackServerContext* ctx,
                                    const pb::ListOpsRequest* request,
                                    pb::ListOpsResponse* response) override;

  // Shared by unary and stream calls: runs one prepared request on the calling (worker) thread,
  // filling `response` and its queue/total timings, with the main result in `result` (sized
  // here). Returns CANCELLED / DEADLINE_EXCEEDED without running anything when the caller is
  // gone or out of time.
  struct Job;
  absl::Status RunJob(Job& job, pb::ProcessResponse* response, ResultBuffer* result,
                      bool cancelled);

  // Parses one request message; INVALID_ARGUMENT naming `what` ("the request", "message 3 of
  // this stream") for bytes that are not a ProcessRequest. Empties `bytes`.
  static absl::Status ParseRequest(grpc::ByteBuffer* bytes, const std::string& what,
                                   pb::ProcessRequest* request);

  // Bytes a prepared request holds while in flight: the request message plus every output
  // tensor it will produce. What Admission and the stream window account.
  static uint64_t InFlightBytes(const pb::ProcessRequest& request,
                                const handlers::PreparedRequest& prepared);

  // Requests of Process and ProcessStream (docs/reliability.md, "Request accounting"):
  // accepted = every unary call and every stream message read (valid or not, refused calls
  // included); each then ends in exactly one of answered (its response or error was handed to
  // gRPC for a caller still there: a unary call finished, a stream response written) or
  // cancelled (dropped: the caller cancelled, its deadline passed or it could no longer be
  // written to). Once the server is idle accepted == answered + cancelled; a difference after
  // shutdown is a lost request. The same counts are exported as
  // tensorprep_requests_{accepted,answered,cancelled}_total{rpc}.
  uint64_t accepted() const { return accepted_.load(); }
  uint64_t answered() const { return answered_.load(); }
  uint64_t cancelled() const { return cancelled_.load(); }

  const handlers::Processor& processor() const { return processor_; }
  WorkQueue& queue() { return queue_; }
  Metrics& metrics() { return metrics_; }
  Admission& admission() { return admission_; }
  const ServiceOptions& options() const { return options_; }

  // Internal, for the RPC handlers: count in the service's totals and in the metrics. Each
  // accepted request must be settled exactly once (answered or cancelled).
  void CountAccepted(Rpc rpc);
  void CountAnswered(Rpc rpc, uint64_t n = 1);
  void CountCancelled(Rpc rpc, uint64_t n = 1);
  // Where request messages are parsed and prepared (see ServiceOptions::prepare_threads).
  WorkQueue& prepare_queue() { return prepare_queue_; }

 private:
  const handlers::Processor& processor_;
  WorkQueue& queue_;
  Metrics& metrics_;
  ServiceOptions options_;
  Admission admission_;
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> answered_{0};
  std::atomic<uint64_t> cancelled_{0};
  // Last, so that it is destroyed first: its tasks use the members above.
  WorkQueue prepare_queue_;
};

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_SERVICE_H_
