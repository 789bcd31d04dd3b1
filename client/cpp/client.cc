#include "client/cpp/client.h"

#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace tensorprep::client {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

namespace {

std::string ChannelTarget(const std::string& target) {
  // Several addresses: one ipv4/ipv6 target that round_robin spreads over.
  if (absl::StrContains(target, ",") && !absl::StrContains(target, "://") &&
      !absl::StartsWith(target, "ipv4:") && !absl::StartsWith(target, "ipv6:")) {
    return absl::StrCat("ipv4:", target);
  }
  return target;
}

constexpr char kServiceConfig[] = R"json({
  "loadBalancingConfig": [{"round_robin": {}}],
  "healthCheckConfig": {"serviceName": "tensorprep.v1.Preprocessor"},
  "methodConfig": [{
    "name": [{"service": "tensorprep.v1.Preprocessor", "method": "Process"},
             {"service": "tensorprep.v1.Preprocessor", "method": "ListOps"},
             {"service": "grpc.health.v1.Health", "method": "Check"}],
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}
  }]
})json";

}  // namespace

absl::StatusOr<std::string> LoadPemFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(what, ": cannot read '", path, "'"));
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

Client::Client(const ClientOptions& options) : options_(options) {
  grpc::ChannelArguments args;
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs;
    ssl.pem_cert_chain = options.tls_cert_chain;
    ssl.pem_private_key = options.tls_private_key;
    creds = grpc::SslCredentials(ssl);
    if (!options.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(options.tls_server_name);
    }
  }
  args.SetMaxReceiveMessageSize(options.max_message_mb * 1024 * 1024);
  args.SetMaxSendMessageSize(options.max_message_mb * 1024 * 1024);
  args.SetLoadBalancingPolicyName("round_robin");
  // Process and ListOps are idempotent (a request carries its own seed), so a replica that goes
  // away (UNAVAILABLE), or cancels calls that reach it after it began draining (CANCELLED), costs
  // a retry on another one, not a failed call; a cancellation by this client is never retried.
  // Only replicas whose health Watch says SERVING are picked. The retry buffer must hold a whole
  // request, else large requests are never retried.
  args.SetServiceConfigJSON(kServiceConfig);
  args.SetInt(GRPC_ARG_PER_RPC_RETRY_BUFFER_SIZE, options.max_message_mb * 1024 * 1024);
  channel_ = grpc::CreateCustomChannel(ChannelTarget(options.target), creds, args);
  stub_ = v1::Preprocessor::NewStub(channel_);
  shm_ = MakeShmState(options_, channel_);
}

void Client::Prepare(grpc::ClientContext* ctx) const {
  if (options_.timeout.count() > 0) {
    ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  }
  // Plain metadata rather than call credentials: gRPC refuses call credentials on a plaintext
  // channel, and a token on loopback without TLS is a supported (if unwise elsewhere) set-up.
  if (!options_.auth_token.empty()) {
    ctx->AddMetadata("authorization", absl::StrCat("Bearer ", options_.auth_token));
  }
}

absl::StatusOr<v1::ProcessResponse> Client::Process(const v1::ProcessRequest& request) const {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::ProcessResponse response;
  grpc::Status s = stub_->Process(&ctx, request, &response);
  if (!s.ok()) return FromGrpc(s);
  return response;
}

absl::StatusOr<v1::ListOpsResponse> Client::ListOps() const {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  v1::ListOpsResponse response;
  grpc::Status s = stub_->ListOps(&ctx, v1::ListOpsRequest(), &response);
  if (!s.ok()) return FromGrpc(s);
  return response;
}

absl::StatusOr<std::string> Client::Health(const std::string& service) const {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext ctx;
  Prepare(&ctx);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = stub->Check(&ctx, request, &response);
  if (!s.ok()) return FromGrpc(s);
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
}

absl::Status Client::Stream(const std::vector<const v1::ProcessRequest*>& requests, int inflight,
                            const std::function<void(v1::ProcessResponse&)>& on_response,
                            const std::function<void(size_t)>& on_send) const {
  return Stream(
      requests.size(), [&](size_t i) -> const v1::ProcessRequest& { return *requests[i]; },
      inflight, on_response, on_send);
}

absl::Status Client::Stream(size_t count, const RequestSource& next, int inflight,
                            const std::function<void(v1::ProcessResponse&)>& on_response,
                            const std::function<void(size_t)>& on_send) const {
  return StreamUntil(
      count, [&](size_t i) -> const v1::ProcessRequest* { return &next(i); }, inflight,
      on_response, on_send);
}

absl::Status Client::StreamUntil(size_t count,
                                 const std::function<const v1::ProcessRequest*(size_t)>& next,
                                 int inflight,
                                 const std::function<void(v1::ProcessResponse&)>& on_response,
                                 const std::function<void(size_t)>& on_send) const {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  auto stream = stub_->ProcessStream(&ctx);
  if (inflight < 1) inflight = 1;
  // A writer thread keeps the window full; this thread reads. The window is a counting
  // semaphore of unanswered requests.
  std::mutex mu;
  std::condition_variable cv;
  int outstanding = 0;
  bool reader_done = false;
  std::thread writer([&] {
    for (size_t i = 0; i < count; ++i) {
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return outstanding < inflight || reader_done; });
        if (reader_done) break;
        ++outstanding;
      }
      // The synchronous Write returns only once gRPC no longer needs the message, which is what
      // lets the source reuse a request's buffer as soon as it is asked for the next one.
      const v1::ProcessRequest* r = next(i);
      if (r == nullptr) break;  // the source stops the stream: the reader sees it end early
      if (on_send) on_send(i);
      if (!stream->Write(*r)) break;
    }
    stream->WritesDone();
  });
  v1::ProcessResponse response;
  size_t received = 0;
  while (received < count && stream->Read(&response)) {
    ++received;
    {
      std::lock_guard<std::mutex> lock(mu);
      --outstanding;
    }
    cv.notify_one();
    on_response(response);
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    reader_done = true;
  }
  cv.notify_one();
  writer.join();
  grpc::Status s = stream->Finish();
  if (!s.ok()) return FromGrpc(s);
  if (received != count) {
    return absl::DataLossError(
        absl::StrCat("stream ended after ", received, " of ", count, " responses"));
  }
  return absl::OkStatus();
}

}  // namespace tensorprep::client
