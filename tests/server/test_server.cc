#include "tests/server/test_server.h"

#include <chrono>
#include <thread>

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

Blocker::Blocker(server::WorkQueue& queue) : state_(std::make_shared<State>()) {
  queue.Submit([state = state_] {
    std::unique_lock<std::mutex> lock(state->mu);
    state->running = true;
    state->cv.notify_all();
    state->cv.wait(lock, [&] { return state->released; });
  });
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock, [this] { return state_->running; });
}

void Blocker::Release() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->released = true;
  state_->cv.notify_all();
}

bool Eventually(const std::function<bool()>& cond) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}

}  // namespace tensorprep::testing
