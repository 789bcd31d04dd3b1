// C++ client library for tensorprep.v1.Preprocessor.
#ifndef TENSORPREP_CLIENT_CPP_CLIENT_H_
#define TENSORPREP_CLIENT_CPP_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tensorprep/v1/tensorprep.grpc.pb.h"

namespace tensorprep::client {

struct ClientOptions {
  // A gRPC target: "host:port", "dns:///name:port", or several "host:port" joined by commas
  // (spread with the round_robin policy).
  std::string target = "127.0.0.1:50051";
  int max_message_mb = 256;
  // Per-call deadline; zero means none.
  std::chrono::milliseconds timeout{0};

  // TLS when `tls` is set. PEM contents, not file names (see LoadPemFile).
  bool tls = false;
  std::string tls_root_certs;   // CA that signed the server's certificate; empty = system roots
  std::string tls_cert_chain;   // client certificate, for mutual TLS (with tls_private_key)
  std::string tls_private_key;
  std::string tls_server_name;  // name to check the server's certificate against, if not the
                                // target's host
  // Sent on every call as "authorization: Bearer <auth_token>" when non-empty. Send it over TLS
  // only: on a plaintext channel anyone on the path can read it.
  std::string auth_token;
};

// Reads a PEM (or token) file; NOT_FOUND naming `what` when it cannot be read.
absl::StatusOr<std::string> LoadPemFile(const std::string& path, const std::string& what);

// One channel to the service. Thread-safe: calls may run concurrently from many threads.
class Client {
 public:
  explicit Client(const ClientOptions& options);

  // Unary Process. Returns the server's status as an absl::Status with the same code and message.
  absl::StatusOr<v1::ProcessResponse> Process(const v1::ProcessRequest& request) const;
  absl::StatusOr<v1::ListOpsResponse> ListOps() const;
  // grpc.health.v1 Check for `service` ("" = the whole server): "SERVING", "NOT_SERVING", ...
  absl::StatusOr<std::string> Health(const std::string& service = "") const;

  // Hands out request i of a stream (i = 0, 1, ... in order, from Stream's writer thread). The
  // caller keeps ownership; the request must stay valid and unchanged until the source is called
  // for i + 1 (or Stream returns): Stream has finished writing request i by then, so a source may
  // hand out a few buffers in turn, rewriting each one's request_id before it goes out again.
  using RequestSource = std::function<const v1::ProcessRequest&(size_t i)>;

  // Sends `count` requests from `next` on one ProcessStream keeping at most `inflight`
  // unanswered, calling `on_response` (from this thread) for each response as it arrives, in
  // arrival order. Returns the stream's final status, or DATA_LOSS when it ended early.
  // Per-request errors come as responses with `error` set. `on_send(i)`, when given, is called
  // (from the writer thread) just before request i is written. Stream copies no request and
  // reuses one response object, so its memory does not grow with `count` (gRPC buffers up to
  // about `inflight` serialised requests and responses besides).
  absl::Status Stream(size_t count, const RequestSource& next, int inflight,
                      const std::function<void(v1::ProcessResponse&)>& on_response,
                      const std::function<void(size_t)>& on_send = nullptr) const;
  // The same for requests the caller holds all at once (none may be null).
  absl::Status Stream(const std::vector<const v1::ProcessRequest*>& requests, int inflight,
                      const std::function<void(v1::ProcessResponse&)>& on_response,
                      const std::function<void(size_t)>& on_send = nullptr) const;

 private:
  void Prepare(grpc::ClientContext* ctx) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Preprocessor::Stub> stub_;
};

// grpc::Status -> absl::Status with the same code and message.
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace tensorprep::client

#endif  // TENSORPREP_CLIENT_CPP_CLIENT_H_
