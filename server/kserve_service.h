// inference.GRPCInferenceService: the KServe v2 / Triton gRPC protocol, served beside
// tensorprep.v1.Preprocessor on the same port, so that stock clients (tritonclient and the tools
// built on it) call a named pipeline unchanged (docs/kserve.md).
//
// It only translates: a ModelInferRequest becomes a tensorprep.v1.ProcessRequest for the model's
// pipeline, which the same handlers::Processor validates, plans and runs on the same WorkQueue
// under the same Admission budget and bearer token as tensorprep.v1; the result becomes a
// ModelInferResponse. Shared memory goes through the same handlers::SharedMemoryRegions (prefix,
// limits, fault guard); the protocol's caller-chosen region names are kept per client (the
// connection's peer and its token, as ShmClientOf says) and mapped to the registry's handles.
#ifndef TENSORPREP_SERVER_KSERVE_SERVICE_H_
#define TENSORPREP_SERVER_KSERVE_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "handlers/pipeline_models.h"
#include "inference/grpc_service.grpc.pb.h"
#include "server/service.h"

namespace tensorprep::server {

namespace kserve = ::inference;

// Thread-safe. `service` (processor, queues, admission, metrics, token, shared memory, stream
// window) is not owned and must outlive this service and every call it started: shut the
// grpc::Server down before destroying either.
class KServeService final : public kserve::GRPCInferenceService::CallbackService {
 public:
  // `models` are the pipelines of the pipeline file (already checked); the built-in model is
  // added. Registers the per-model metric series (call once per Metrics, before serving).
  KServeService(PreprocessorService& service, std::vector<handlers::PipelineModelSpec> models);
  ~KServeService() override;

  // ServerReady and ModelReady answer false once this is called with false (on SIGTERM).
  void SetReady(bool ready) { ready_.store(ready); }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* ctx,
                                       const kserve::ServerLiveRequest* request,
                                       kserve::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* ctx,
                                        const kserve::ServerReadyRequest* request,
                                        kserve::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* ctx,
                                       const kserve::ModelReadyRequest* request,
                                       kserve::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* ctx,
                                           const kserve::ServerMetadataRequest* request,
                                           kserve::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* ctx,
                                          const kserve::ModelMetadataRequest* request,
                                          kserve::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* ctx,
                                        const kserve::ModelConfigRequest* request,
                                        kserve::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* ctx,
                                            const kserve::ModelStatisticsRequest* request,
                                            kserve::ModelStatisticsResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* ctx,
                                            const kserve::RepositoryIndexRequest* request,
                                            kserve::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* ctx,
                                       const kserve::ModelInferRequest* request,
                                       kserve::ModelInferResponse* response) override;
  grpc::ServerBidiReactor<kserve::ModelInferRequest, kserve::ModelStreamInferResponse>*
  ModelStreamInfer(grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryStatus(
      grpc::CallbackServerContext* ctx, const kserve::SystemSharedMemoryStatusRequest* request,
      kserve::SystemSharedMemoryStatusResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryRegister(
      grpc::CallbackServerContext* ctx, const kserve::SystemSharedMemoryRegisterRequest* request,
      kserve::SystemSharedMemoryRegisterResponse* response) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryUnregister(
      grpc::CallbackServerContext* ctx, const kserve::SystemSharedMemoryUnregisterRequest* request,
      kserve::SystemSharedMemoryUnregisterResponse* response) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryStatus(
      grpc::CallbackServerContext* ctx, const kserve::CudaSharedMemoryStatusRequest* request,
      kserve::CudaSharedMemoryStatusResponse* response) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryUnregister(
      grpc::CallbackServerContext* ctx, const kserve::CudaSharedMemoryUnregisterRequest* request,
      kserve::CudaSharedMemoryUnregisterResponse* response) override;

  // Internal, shared by ModelInfer and the stream reactor (kserve_service.cc).
  struct Model;
  struct InferJob;
  // Translates, validates, plans and admits one request (on a prepare thread). Moves the raw
  // input bytes out of `request`. Errors: NOT_FOUND for an unknown model or version;
  // INVALID_ARGUMENT naming the input, output or parameter; the Processor's and Admission's
  // errors with the input or output they concern named first.
  absl::StatusOr<std::unique_ptr<InferJob>> PrepareInfer(const std::string& client,
                                                         kserve::ModelInferRequest* request);
  // Runs a prepared job (on a worker) and fills `response`.
  absl::Status RunInfer(InferJob& job, bool cancelled, kserve::ModelInferResponse* response);
  // Metrics and statistics of one finished request (`job` may be null when it never got one).
  void Settle(Rpc rpc, const InferJob* job, const absl::Status& s, double seconds, bool cancelled);
  PreprocessorService& service() { return service_; }
  // The model of this name, or null.
  const Model* FindModel(const std::string& name) const;

 private:
  absl::Status FindModel(const std::string& name, const std::string& version,
                         const Model** model) const;
  // The region handle for the caller's name, or INVALID_ARGUMENT naming `what`.
  absl::StatusOr<std::string> RegionHandle(const std::string& client, const std::string& name,
                                           const std::string& what) const;

  PreprocessorService& service_;
  std::vector<std::unique_ptr<Model>> models_;  // the file's in order, then the built-in one
  std::atomic<bool> ready_{true};

  struct Region {
    std::string handle;
    std::string key;
    uint64_t offset = 0;
    uint64_t byte_size = 0;
  };
  mutable std::mutex regions_mu_;
  // (client, caller's name) -> region. GUARDED_BY(regions_mu_)
  std::map<std::pair<std::string, std::string>, Region> regions_;
};

}  // namespace tensorprep::server

#endif  // TENSORPREP_SERVER_KSERVE_SERVICE_H_
