// The tensorprep.v1.Preprocessor gRPC service on the callback API. It only translates: protobuf
// in, handlers::Processor does the work on the WorkQueue, protobuf and grpc::Status out.
#ifndef TENSORPREP_SERVER_SERVICE_H_
#define TENSORPREP_SERVER_SERVICE_H_

#include <cstdint>

#include "handlers/processor.h"
#include "server/metrics.h"
#include "server/work_queue.h"
#include "tensorprep/v1/tensorprep.grpc.pb.h"

namespace tensorprep::server {

namespace pb = ::tensorprep::v1;

struct ServiceOptions {
  // Requests of one stream being processed or waiting to be written; at the limit the stream
  // stops reading, so gRPC flow control slows the client instead of memory growing.
  int stream_max_inflight = 8;
};

// Thread-safe. `processor`, `queue` and `metrics` are not owned and must outlive the service
// and every call it started (shut the grpc::Server down before destroying them).
class PreprocessorService final : public pb::Preprocessor::CallbackService {
 public:
  PreprocessorService(const handlers::Processor& processor, WorkQueue& queue, Metrics& metrics,
                      ServiceOptions options);

  grpc::ServerUnaryReactor* Process(grpc::CallbackServerContext* ctx,
                                    const pb::ProcessRequest* request,
                                    pb::ProcessResponse* response) override;
  grpc::ServerBidiReactor<pb::ProcessRequest, pb::ProcessResponse>* ProcessStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* ListOps(grpc::CallbackServerContext* ctx,
                                    const pb::ListOpsRequest* request,
                                    pb::ListOpsResponse* response) override;

  // Shared by unary and stream calls: runs one prepared request on the calling (worker) thread,
  // filling `response` and its queue/total timings. `arrival` is when the request was read.
  struct Job;
  absl::Status RunJob(Job& job, pb::ProcessResponse* response, bool cancelled);

  const handlers::Processor& processor() const { return processor_; }
  WorkQueue& queue() { return queue_; }
  Metrics& metrics() { return metrics_; }
  const ServiceOptions& options() const { return options_; }

 private:
  const handlers::Processor& processor_;
  WorkQueue& queue_;
  Metrics& metrics_;
  ServiceOptions options_;
};

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_SERVICE_H_
