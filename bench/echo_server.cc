// tensorprep-echo-server: the transport ceiling for benchmarks. It serves the same
// tensorprep.v1.Preprocessor service and answers every request with its own tensors, unchanged,
// so that `tensorprep bench --address <echo>` measures gRPC alone with the very client code that
// measures the real server.
//
// Two modes:
//   raw   (default) a generic service that sends each request's bytes back as the response
//         message: no parsing, no copy (the response shares the received slices). ProcessRequest
//         and ProcessResponse share fields 1-3 (request_id, images, aux) with the same types, so
//         the client decodes the very tensors it sent; the request's other fields (pipeline,
//         device, seed, ...) have other wire types in ProcessResponse and land in its unknown
//         fields, which the client ignores. This is the bound no protobuf server can pass.
//   typed the generated callback service: each request is parsed, its tensors moved (stream) or
//         copied (unary: gRPC hands the request over as const) into a ProcessResponse, which is
//         serialised. This is the bound for any server that speaks these messages through
//         protobuf, before it does any work.
// Benchmark-only: no TLS, no auth, no metrics. Listens where it is told (use 127.0.0.1).
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "tensorprep/v1/tensorprep.grpc.pb.h"

namespace tensorprep::bench {
namespace {

namespace pb = ::tensorprep::v1;

constexpr char kUsage[] =
    "Usage: tensorprep-echo-server [--host 127.0.0.1] [--port 0] [--mode raw|typed]\n"
    "                              [--max-message-mb 256] [--stream-inflight 8]\n"
    "Prints 'tensorprep-echo-server ready on HOST:PORT (mode=...)' once listening; SIGINT or\n"
    "SIGTERM stops it.\n";

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string mode = "raw";
  int max_message_mb = 256;
  int stream_inflight = 8;  // requests read ahead of their echo, as the real server's default
};

// One call. Unary Process: reads one message, writes it back, finishes. Streams: echoes each
// message in arrival order with one write outstanding, reading ahead while fewer than
// `max_inflight` are waiting, which gives the client the same backpressure as the real server.
// In/Out are grpc::ByteBuffer (raw) or the protobuf messages (typed); a subclass says how an echo
// is built.
template <typename In, typename Out>
class EchoReactor : public grpc::ServerBidiReactor<In, Out> {
 public:
  EchoReactor(bool unary, int max_inflight) : unary_(unary), max_inflight_(max_inflight) {}

  void Start() { this->StartRead(&incoming_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool finish;
      {
        std::lock_guard<std::mutex> lock(mu_);
        reads_done_ = true;
        finish = ShouldFinishLocked();
      }
      if (finish) this->Finish(grpc::Status::OK);
      return;
    }
    if (unary_) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        pending_.emplace_back();
        Echo(incoming_, &pending_.back());
        finished_ = true;
      }
      this->StartWriteAndFinish(&pending_.back(), grpc::WriteOptions(), grpc::Status::OK);
      return;
    }
    const Out* to_write = nullptr;
    bool read_more;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.emplace_back();  // deque: earlier elements keep their addresses
      Echo(incoming_, &pending_.back());
      if (!writing_) {
        writing_ = true;
        to_write = &pending_.front();
      }
      read_more = static_cast<int>(pending_.size()) < max_inflight_;
      read_paused_ = !read_more;
    }
    if (to_write != nullptr) this->StartWrite(to_write);
    if (read_more) this->StartRead(&incoming_);
  }

  void OnWriteDone(bool ok) override {
    const Out* next = nullptr;
    bool resume = false;
    bool finish = false;
    bool failed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.pop_front();
      if (!ok) {
        pending_.clear();
        write_failed_ = true;
      }
      if (!pending_.empty()) {
        next = &pending_.front();
      } else {
        writing_ = false;
      }
      if (read_paused_ && !write_failed_ && static_cast<int>(pending_.size()) < max_inflight_) {
        read_paused_ = false;
        resume = true;
      }
      finish = ShouldFinishLocked();
      failed = write_failed_;
    }
    if (next != nullptr) this->StartWrite(next);
    if (resume) this->StartRead(&incoming_);
    if (finish) this->Finish(failed ? grpc::Status::CANCELLED : grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 protected:
  // Builds the echo of `in` in `out`, taking `in`'s contents (it is read into again next).
  virtual void Echo(In& in, Out* out) = 0;

 private:
  bool ShouldFinishLocked() {
    if (finished_ || writing_ || !pending_.empty()) return false;
    if (!reads_done_ && !write_failed_) return false;
    finished_ = true;
    return true;
  }

  const bool unary_;
  const int max_inflight_;
  In incoming_;  // the one outstanding read's buffer
  std::mutex mu_;
  std::deque<Out> pending_;   // GUARDED_BY(mu_): echoes not yet written; front is being written
  bool writing_ = false;      // GUARDED_BY(mu_)
  bool read_paused_ = false;  // GUARDED_BY(mu_)
  bool reads_done_ = false;   // GUARDED_BY(mu_)
  bool write_failed_ = false; // GUARDED_BY(mu_)
  bool finished_ = false;     // GUARDED_BY(mu_)
};

// raw: the received slices go straight back (ByteBuffer::Swap moves references, not bytes).
class RawEcho final : public EchoReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  using EchoReactor::EchoReactor;

 protected:
  void Echo(grpc::ByteBuffer& in, grpc::ByteBuffer* out) override { out->Swap(&in); }
};

// ListOps (and anything it does not know) on the raw service: an empty ListOpsResponse, which is
// zero bytes, or UNIMPLEMENTED.
class FixedAnswer final : public grpc::ServerGenericBidiReactor {
 public:
  explicit FixedAnswer(grpc::Status status) : status_(std::move(status)) {
    if (status_.ok()) {
      StartRead(&incoming_);
    } else {
      Finish(status_);
    }
  }
  void OnReadDone(bool) override { StartWriteAndFinish(&empty_, grpc::WriteOptions(), status_); }
  void OnDone() override { delete this; }

 private:
  grpc::Status status_;
  grpc::ByteBuffer incoming_;
  grpc::ByteBuffer empty_;
};

class RawService final : public grpc::CallbackGenericService {
 public:
  explicit RawService(int stream_inflight) : stream_inflight_(stream_inflight) {}

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    const std::string& m = ctx->method();
    if (m == "/tensorprep.v1.Preprocessor/Process" ||
        m == "/tensorprep.v1.Preprocessor/ProcessStream") {
      auto* r = new RawEcho(m == "/tensorprep.v1.Preprocessor/Process", stream_inflight_);
      r->Start();
      return r;
    }
    if (m == "/tensorprep.v1.Preprocessor/ListOps") return new FixedAnswer(grpc::Status::OK);
    return new FixedAnswer(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, m));
  }

 private:
  const int stream_inflight_;
};

// typed: the generated service.
void MoveTensors(pb::ProcessRequest& in, pb::ProcessResponse* out) {
  out->set_request_id(std::move(*in.mutable_request_id()));
  out->mutable_images()->Swap(in.mutable_images());
  out->mutable_aux()->Swap(in.mutable_aux());
}

class TypedStreamEcho final : public EchoReactor<pb::ProcessRequest, pb::ProcessResponse> {
 public:
  using EchoReactor::EchoReactor;

 protected:
  void Echo(pb::ProcessRequest& in, pb::ProcessResponse* out) override {
    MoveTensors(in, out);
    in.Clear();
  }
};

class TypedService final : public pb::Preprocessor::CallbackService {
 public:
  explicit TypedService(int stream_inflight) : stream_inflight_(stream_inflight) {}

  grpc::ServerUnaryReactor* Process(grpc::CallbackServerContext* ctx,
                                    const pb::ProcessRequest* request,
                                    pb::ProcessResponse* response) override {
    // gRPC owns the request and gives it as const: its bytes are copied, once.
    response->set_request_id(request->request_id());
    *response->mutable_images() = request->images();
    *response->mutable_aux() = request->aux();
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerBidiReactor<pb::ProcessRequest, pb::ProcessResponse>* ProcessStream(
      grpc::CallbackServerContext*) override {
    auto* r = new TypedStreamEcho(false, stream_inflight_);
    r->Start();
    return r;
  }

  grpc::ServerUnaryReactor* ListOps(grpc::CallbackServerContext* ctx, const pb::ListOpsRequest*,
                                    pb::ListOpsResponse*) override {
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

 private:
  const int stream_inflight_;
};

bool ParseInt(const char* flag, const std::string& v, int lo, int hi, int* out) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo || x > hi) {
    std::cerr << "tensorprep-echo-server: " << flag << ": expected an integer in [" << lo << ", "
              << hi << "], got '" << v << "'\n";
    return false;
  }
  *out = static_cast<int>(x);
  return true;
}

int Run(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      return 0;
    }
    if (i + 1 >= argc) {
      std::cerr << "tensorprep-echo-server: " << flag << " needs a value\n" << kUsage;
      return 2;
    }
    const std::string value = argv[++i];
    bool ok = true;
    if (flag == "--host") {
      o.host = value;
    } else if (flag == "--port") {
      ok = ParseInt("--port", value, 0, 65535, &o.port);
    } else if (flag == "--mode") {
      o.mode = value;
      ok = value == "raw" || value == "typed";
      if (!ok) std::cerr << "tensorprep-echo-server: --mode: expected raw or typed\n";
    } else if (flag == "--max-message-mb") {
      ok = ParseInt("--max-message-mb", value, 1, 2047, &o.max_message_mb);
    } else if (flag == "--stream-inflight") {
      ok = ParseInt("--stream-inflight", value, 1, 1024, &o.stream_inflight);
    } else {
      std::cerr << "tensorprep-echo-server: unknown flag " << flag << "\n" << kUsage;
      ok = false;
    }
    if (!ok) return 2;
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  RawService raw(o.stream_inflight);
  TypedService typed(o.stream_inflight);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string address =
      (o.host.find(':') != std::string::npos ? "[" + o.host + "]" : o.host) + ":" +
      std::to_string(o.port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  if (o.mode == "raw") {
    builder.RegisterCallbackGenericService(&raw);
  } else {
    builder.RegisterService(&typed);
  }
  builder.SetMaxReceiveMessageSize(o.max_message_mb * 1024 * 1024);
  builder.SetMaxSendMessageSize(o.max_message_mb * 1024 * 1024);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::cerr << "tensorprep-echo-server: cannot listen on " << address << "\n";
    return 2;
  }
  server->GetHealthCheckService()->SetServingStatus("tensorprep.v1.Preprocessor", true);
  std::printf("tensorprep-echo-server ready on %s:%d (mode=%s, stream_inflight=%d)\n",
              o.host.c_str(), port, o.mode.c_str(), o.stream_inflight);
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->Wait();
  return 0;
}

}  // namespace
}  // namespace tensorprep::bench

int main(int argc, char** argv) { return tensorprep::bench::Run(argc, argv); }
