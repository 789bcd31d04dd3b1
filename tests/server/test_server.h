// An in-process tensorprep server on 127.0.0.1 (a free port), built from the same parts as
// tensorprep-server's main, for integration tests over real gRPC on loopback.
#ifndef TENSORPREP_TESTS_SERVER_TEST_SERVER_H_
#define TENSORPREP_TESTS_SERVER_TEST_SERVER_H_

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "client/cpp/client.h"
#include "handlers/backend.h"
#include "handlers/processor.h"
#include "kernels/common/thread_pool.h"
#include "prometheus/registry.h"
#include "server/metrics.h"
#include "server/security.h"
#include "server/service.h"
#include "server/work_queue.h"

namespace tensorprep::testing {

struct TestServerOptions {
  int threads = 2;
  int stream_inflight = 8;
  handlers::ProcessorOptions processor;
  // Limits, token and window beyond `stream_inflight` (which overrides
  // service.stream_max_inflight).
  server::ServiceOptions service;
  server::TlsPem tls;  // empty: plaintext
  int max_message_mb = 256;
  // Shared memory: off unless key_prefix is set (service.shm is filled in by the server).
  handlers::ShmOptions shm;
};

class TestServer {
 public:
  explicit TestServer(const TestServerOptions& options = {});
  ~TestServer();  // shuts down, waiting for in-flight calls

  std::string address() const { return address_; }
  // A plaintext client with a 60 s deadline; `options` variant keeps the caller's security
  // fields and fills in the target.
  client::Client MakeClient() const;
  client::Client MakeClient(client::ClientOptions options) const;
  prometheus::Registry& registry() { return *registry_; }
  server::PreprocessorService& service() { return service_; }
  server::WorkQueue& queue() { return queue_; }
  grpc::Server& grpc_server() { return *server_; }
  handlers::SharedMemoryRegions& shm() { return shm_; }

 private:
  kernels::ThreadPool pool_;
  handlers::CpuBackend cpu_;
  handlers::SharedMemoryRegions shm_;
  handlers::Processor processor_;
  std::shared_ptr<prometheus::Registry> registry_;
  server::Metrics metrics_;
  server::WorkQueue queue_;
  server::PreprocessorService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

// Occupies one worker of `queue` from construction until Release() or destruction, so that
// requests submitted meanwhile wait in the queue. The state is shared with the task: the worker
// may still be waking from its wait after the Blocker is gone.
class Blocker {
 public:
  explicit Blocker(server::WorkQueue& queue);
  ~Blocker() { Release(); }
  void Release();

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    bool running = false;
    bool released = false;
  };
  std::shared_ptr<State> state_;
};

// Polls `cond` every 5 ms for at most 20 s (a bound on waiting for the server, not a timing
// assertion); its last value.
bool Eventually(const std::function<bool()>& cond);

}  // namespace tensorprep::testing

#endif  // TENSORPREP_TESTS_SERVER_TEST_SERVER_H_
