#include "tests/server/test_server.h"

#include "absl/strings/str_cat.h"

namespace tensorprep::testing {

namespace {
std::vector<std::string> KernelLabels() {
  std::vector<std::string> out;
  for (int k = 0; k < handlers::kKernelKindCount; ++k) {
    out.push_back(handlers::KernelName(static_cast<handlers::KernelKind>(k)));
  }
  return out;
}
server::ServiceOptions MakeServiceOptions(const TestServerOptions& o,
                                          handlers::SharedMemoryRegions* shm) {
  server::ServiceOptions s = o.service;
  s.stream_max_inflight = o.stream_inflight;
  s.shm = shm;
  return s;
}
}  // namespace

TestServer::TestServer(const TestServerOptions& options)
    : pool_(options.threads),
      cpu_(&pool_),
      shm_(options.shm),
      processor_(options.processor, &cpu_, nullptr, &shm_),
      registry_(std::make_shared<prometheus::Registry>()),
      metrics_(*registry_, KernelLabels(), "test"),
      queue_(options.threads),
      service_(processor_, queue_, metrics_, MakeServiceOptions(options, &shm_)) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", server::MakeServerCredentials(options.tls), &port);
  builder.RegisterService(&service_);
  builder.SetMaxReceiveMessageSize(options.max_message_mb << 20);
  builder.SetMaxSendMessageSize(options.max_message_mb << 20);
  server_ = builder.BuildAndStart();
  server_->GetHealthCheckService()->SetServingStatus("tensorprep.v1.Preprocessor", true);
  address_ = absl::StrCat("127.0.0.1:", port);
}

TestServer::~TestServer() { server_->Shutdown(); }

client::Client TestServer::MakeClient() const {
  client::ClientOptions o;
  o.timeout = std::chrono::milliseconds(60000);
  return MakeClient(o);
}

client::Client TestServer::MakeClient(client::ClientOptions options) const {
  options.target = address_;
  return client::Client(options);
}

}  // namespace tensorprep::testing
