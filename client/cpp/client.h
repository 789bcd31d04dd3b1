// C++ client library for tensorprep.v1.Preprocessor.
#ifndef TENSORPREP_CLIENT_CPP_CLIENT_H_
#define TENSORPREP_CLIENT_CPP_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/cpp/shm_pool.h"
#include "tensorprep/v1/tensorprep.grpc.pb.h"

namespace tensorprep::client {

// Whether tensors of Call / StreamCalls travel through shared memory (see shm_pool.h).
enum class ShmMode {
  // Inline bytes only. The library's default: nothing is asked of the server or created in
  // /dev/shm unless the caller opts in, and results are ordinary memory.
  kOff,
  // Shared memory when the server allows it and sees this client's memory (same host, same IPC
  // namespace), else inline bytes; the choice and its reason are reported.
  kAuto,
  // Shared memory or an error that says why not.
  kOn,
};
const char* ShmModeName(ShmMode mode);  // "off", "auto", "on"
// "auto", "on" (or "true", "1"), "off" (or "false", "0"); INVALID_ARGUMENT otherwise.
absl::StatusOr<ShmMode> ParseShmMode(absl::string_view text);

// The way a result's tensors travelled.
enum class Transport { kInline, kShm };
const char* TransportName(Transport transport);  // "inline", "shm"

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

  // Shared memory for Call, StreamCalls and Allocate (Process and Stream always send what they
  // are given). Decided once, at Connect or the first of those calls.
  ShmMode shm = ShmMode::kOff;
  uint64_t shm_pool_mb = 64;   // the first region; more are registered as needed
  uint64_t shm_max_mb = 1024;  // all regions together (the server's limit may be lower)
};

// Reads a PEM (or token) file; NOT_FOUND naming `what` when it cannot be read.
absl::StatusOr<std::string> LoadPemFile(const std::string& path, const std::string& what);

// A tensor handed to Call: its bytes are borrowed for the call (for StreamCalls, until the
// request's result arrives). Memory from Client::Allocate is sent where it lies, without a copy.
struct TensorInput {
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // product(shape) * size(dtype) bytes, little-endian, row-major
};

struct AuxInput {
  std::string name;
  TensorInput tensor;
  v1::Interpolation interpolation = v1::INTERPOLATION_UNSPECIFIED;  // nearest
  double fill = 0;
};

// One batch and what to do with it (the fields of a ProcessRequest, with borrowed tensors).
struct CallRequest {
  std::string request_id;
  TensorInput images;
  std::vector<AuxInput> aux;
  v1::Pipeline pipeline;
  v1::Device device = v1::DEVICE_AUTO;
  uint64_t seed = 0;
  uint64_t sample_offset = 0;
};

struct TensorResult {
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  std::vector<int64_t> shape;
  // On the shared-memory path a view of the output slot that the server wrote, returned to the
  // pool when this Buffer goes; inline (or with copy), memory of its own.
  Buffer bytes;
};

struct AuxResult {
  std::string name;
  TensorResult tensor;
};

struct CallResult {
  std::string request_id;  // the caller's
  TensorResult images;
  std::vector<AuxResult> aux;  // in request order
  v1::Device device = v1::DEVICE_AUTO;
  v1::ServerTimings timings;
  v1::Transfer transfer;  // tensor bytes moved, inline and through shared memory
  Transport transport = Transport::kInline;
  std::string transport_reason;  // on kInline: why not shared memory
  uint64_t client_copy_bytes = 0;  // input bytes this client copied into shared memory
};

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

  // ---- tensors, through shared memory where the options allow --------------------------------
  // The shared-memory path: the client asks ListOps whether the server takes shared memory,
  // creates a pool (shm_pool.h) under the server's key prefix and registers it; the nonce the
  // server must read back is how it knows the server sees its memory. Inputs are copied into
  // slots (none when they already lie in the pool: see Allocate), outputs get slots of their
  // own, and requests carry only references. On the inline path the same calls send bytes.

  // Decides the transport now rather than at the first Call, StreamCalls or Allocate. With
  // kAuto, UNAVAILABLE when the server cannot be asked (the next call asks again); with kOn,
  // also FAILED_PRECONDITION naming why shared memory is not possible.
  absl::Status Connect() const;
  // kShm once the shared-memory path was chosen; kInline before the decision and otherwise.
  Transport transport() const;
  // Why inline ("" on the shared-memory path or before the decision was tried).
  std::string shm_reason() const;
  // The pool's figures, or nullopt without a pool.
  std::optional<ShmPoolStats> shm_stats() const;

  // `bytes` of uninitialised memory for an input: a slot of the pool on the shared-memory path
  // (a request naming it sends no copy), else ordinary memory (zeroed). With kOn a full pool is
  // RESOURCE_EXHAUSTED; the transport decision's errors as for Connect.
  absl::StatusOr<Buffer> Allocate(size_t bytes) const;

  // Runs one batch with a unary call. `copy`: results in ordinary memory (a shared-memory slot
  // goes back to the pool at once). Errors: INVALID_ARGUMENT for an input the client can reject
  // itself (unknown dtype, negative dimension, null data); with kOn, FAILED_PRECONDITION when
  // shared memory is not possible and RESOURCE_EXHAUSTED when the pool is full (kAuto sends
  // that request inline and says so in transport_reason); the server's status; INTERNAL when a
  // response does not match its request. Slots of a call that ends without an answer
  // (deadline, cancellation, connection lost) are quarantined until the server is done. A
  // shared-memory call answered NOT_FOUND (the server forgot the regions: a restart) retires the
  // pool and is sent once more after deciding afresh.
  absl::StatusOr<CallResult> Call(const CallRequest& request, bool copy = false) const;

  // Hands out request i of StreamCalls (from its writer thread, i = 0, 1, ... in order). The
  // request must stay valid until the source is called for i + 1; its tensors' bytes until its
  // result arrives (copied inputs are free at once, but memory from Allocate is read where it
  // lies).
  using CallSource = std::function<const CallRequest&(size_t i)>;
  // Like Stream, for CallRequests: `on_result(i, result)` is called from this thread for each
  // request as it is answered, with a per-request error as a status; request ids need not be
  // unique. Returns the stream's status, or the first error of preparing a request (then the
  // requests after it are not sent).
  absl::Status StreamCalls(size_t count, const CallSource& next, int inflight,
                           const std::function<void(size_t, absl::StatusOr<CallResult>)>& on_result,
                           bool copy = false,
                           const std::function<void(size_t)>& on_send = nullptr) const;

 private:
  struct ShmState;  // call.cc
  struct ShmRoute {
    std::shared_ptr<ShmPool> pool;  // null: inline
    std::string reason;             // why inline
    bool decided = false;
  };
  static std::shared_ptr<ShmState> MakeShmState(const ClientOptions& options,
                                                std::shared_ptr<grpc::Channel> channel);
  absl::StatusOr<ShmRoute> DecideTransport() const;
  // The server does not know `pool`'s regions (NOT_FOUND: it restarted, or the connection now
  // reaches another server): retire the pool, so that the next call decides afresh.
  void ForgetShm(const std::shared_ptr<ShmPool>& pool) const;
  // Stream, with a source that may stop the stream early by returning null.
  absl::Status StreamUntil(size_t count,
                           const std::function<const v1::ProcessRequest*(size_t)>& next,
                           int inflight,
                           const std::function<void(v1::ProcessResponse&)>& on_response,
                           const std::function<void(size_t)>& on_send) const;

  void Prepare(grpc::ClientContext* ctx) const;

  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Preprocessor::Stub> stub_;
  std::shared_ptr<ShmState> shm_;  // shared with nothing; a pointer so that Client stays movable
};

// grpc::Status -> absl::Status with the same code and message.
absl::Status FromGrpc(const grpc::Status& s);

}  // namespace tensorprep::client

#endif  // TENSORPREP_CLIENT_CPP_CLIENT_H_
