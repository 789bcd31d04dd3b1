// The shared-memory RPCs of tensorprep.v1.Preprocessor: they translate protobuf to
// handlers::SharedMemoryRegions and back, and keep its gauges current.
#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "server/security.h"
#include "server/service.h"
#include "server/status_util.h"

namespace tensorprep::server {

namespace {

using Clock = std::chrono::steady_clock;

// Handles a caller names are bounded before they go near a map: a real one is 32 characters.
constexpr size_t kMaxHandleBytes = 64;
constexpr int kMaxStatusHandles = 256;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// What every shared-memory RPC checks first: the token, then that shared memory is on.
absl::Status Admit(const ServiceOptions& options, grpc::CallbackServerContext* ctx) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), options.auth_token);
  if (s.ok() && (options.shm == nullptr || !options.shm->enabled())) {
    s = absl::FailedPreconditionError(
        "shared memory is disabled on this server (the operator enables it with --shm-prefix)");
  }
  return s;
}

}  // namespace

std::string ShmClientOf(grpc::CallbackServerContext* ctx) {
  std::string client = ctx->peer();
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) absl::StrAppend(&client, "|", std::string(it->second.data(), it->second.size()));
  return client;
}

void PreprocessorService::DescribeSharedMemory(pb::SharedMemoryInfo* info) const {
  const handlers::SharedMemoryRegions* shm = options_.shm;
  if (shm == nullptr || !shm->enabled()) {
    info->set_enabled(false);
    return;
  }
  info->set_enabled(true);
  info->set_key_prefix(shm->options().key_prefix);
  info->set_max_regions_per_client(shm->options().max_regions_per_client);
  info->set_max_mapped_bytes(shm->options().max_mapped_bytes);
}

grpc::ServerUnaryReactor* PreprocessorService::RegisterSharedMemory(
    grpc::CallbackServerContext* ctx, const pb::RegisterSharedMemoryRequest* request,
    pb::RegisterSharedMemoryResponse* response) {
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kRegisterSharedMemory);
  absl::Status s = Admit(options_, ctx);
  if (s.ok()) {
    auto handle = options_.shm->Register(*request, ShmClientOf(ctx));
    if (handle.ok()) {
      response->set_region(*handle);
      response->set_byte_size(request->byte_size());
    } else {
      s = handle.status();
    }
    metrics_.SetSharedMemory(options_.shm->regions(), options_.shm->mapped_bytes());
  }
  metrics_.RequestFinished(Rpc::kRegisterSharedMemory, static_cast<int>(ToGrpcStatus(s).error_code()),
                           SecondsSince(arrival));
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

grpc::ServerUnaryReactor* PreprocessorService::SharedMemoryStatus(
    grpc::CallbackServerContext* ctx, const pb::SharedMemoryStatusRequest* request,
    pb::SharedMemoryStatusResponse* response) {
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kSharedMemoryStatus);
  absl::Status s = Admit(options_, ctx);
  if (s.ok() && request->regions_size() > kMaxStatusHandles) {
    s = absl::InvalidArgumentError(absl::StrCat("regions: expected at most ", kMaxStatusHandles,
                                                " handles, got ", request->regions_size()));
  }
  for (int i = 0; s.ok() && i < request->regions_size(); ++i) {
    const std::string& handle = request->regions(i);
    auto status = handle.size() > kMaxHandleBytes
                      ? absl::StatusOr<handlers::ShmRegionStatus>(absl::NotFoundError(""))
                      : options_.shm->Status(handle);
    if (!status.ok()) {
      // Never the handle itself: its index says which.
      s = absl::Status(status.status().code(),
                       absl::StrCat("regions[", i, "]: no registered shared-memory region has "
                                                   "this handle"));
      break;
    }
    pb::SharedMemoryRegionStatus* r = response->add_regions();
    r->set_region(status->handle);
    r->set_name(status->name);
    r->set_byte_size(status->byte_size);
    r->set_requests_in_use(status->in_use);
    r->set_broken(status->broken);
  }
  if (s.ok()) {
    response->set_client_regions(options_.shm->ClientRegions(ShmClientOf(ctx)));
    response->set_mapped_bytes(options_.shm->mapped_bytes());
    DescribeSharedMemory(response->mutable_limits());
  } else {
    response->Clear();
  }
  metrics_.RequestFinished(Rpc::kSharedMemoryStatus, static_cast<int>(ToGrpcStatus(s).error_code()),
                           SecondsSince(arrival));
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

grpc::ServerUnaryReactor* PreprocessorService::UnregisterSharedMemory(
    grpc::CallbackServerContext* ctx, const pb::UnregisterSharedMemoryRequest* request,
    pb::UnregisterSharedMemoryResponse*) {
  const Clock::time_point arrival = Clock::now();
  metrics_.RequestStarted(Rpc::kUnregisterSharedMemory);
  absl::Status s = Admit(options_, ctx);
  if (s.ok()) {
    s = request->region().size() > kMaxHandleBytes
            ? absl::NotFoundError("region: no registered shared-memory region has this handle")
            : options_.shm->Unregister(request->region());
    metrics_.SetSharedMemory(options_.shm->regions(), options_.shm->mapped_bytes());
  }
  metrics_.RequestFinished(Rpc::kUnregisterSharedMemory,
                           static_cast<int>(ToGrpcStatus(s).error_code()), SecondsSince(arrival));
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

}  // namespace tensorprep::server
