// Client::Call, StreamCalls and Allocate: the tensor-level API of the C++ client, and the choice
// between shared memory and inline bytes behind it (see client.h and shm_pool.h).
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/cpp/client.h"

namespace tensorprep::client {

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
// Regions a client registers at most, whatever the server allows (each costs a registration and
// a mapping on both sides; a pool this size fits any sensible number of batches in flight).
constexpr uint32_t kMaxPoolRegions = 16;

// Why RegisterSharedMemory failed, by the server's code: the start of the reason recorded.
const char* RegisterRefusal(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kNotFound:
      return "the server cannot open this client's shared memory (it runs on another host or in "
             "another IPC namespace)";
    case absl::StatusCode::kFailedPrecondition:
      return "the server does not see this client's shared memory (another host or IPC "
             "namespace, or shared memory disabled)";
    case absl::StatusCode::kPermissionDenied:
      return "the server refused the shared-memory object's name";
    case absl::StatusCode::kUnimplemented:
      return "the server does not support shared memory";
    case absl::StatusCode::kResourceExhausted:
      return "the server has no room for this client's shared memory";
    case absl::StatusCode::kInvalidArgument:
      return "the server refused the shared-memory region";
    default:
      return nullptr;  // a transport failure: worth asking again later
  }
}

// Codes with which the server itself refused a request, having done no work that could still be
// writing into its output slots (so they can be reused at once); after any other failure the
// request may still run, and its slots are quarantined.
bool ServerRefused(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kOutOfRange:
      return true;
    default:
      return false;
  }
}

// product(shape) * size(dtype), checked. INVALID_ARGUMENT naming `what` for an unknown dtype, a
// negative dimension or an overflow.
absl::StatusOr<uint64_t> ShapeBytes(v1::DType dtype, const std::vector<int64_t>& shape,
                                    const std::string& what) {
  const uint64_t size = DTypeSize(dtype);
  if (size == 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype ", dtype));
  }
  uint64_t bytes = size;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": negative dimension ", d));
    }
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": the shape's size overflows"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  return bytes;
}

// ShapeBytes of each input (images first), and INVALID_ARGUMENT for a non-empty one without data.
absl::StatusOr<std::vector<uint64_t>> InputBytes(const CallRequest& request) {
  std::vector<const TensorInput*> inputs = {&request.images};
  for (const AuxInput& a : request.aux) inputs.push_back(&a.tensor);
  std::vector<uint64_t> sizes;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string what = i == 0 ? std::string("images") : absl::StrCat("aux[", i - 1, "]");
    auto bytes = ShapeBytes(inputs[i]->dtype, inputs[i]->shape, what);
    if (!bytes.ok()) return bytes.status();
    if (*bytes > 0 && inputs[i]->data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": data is null"));
    }
    sizes.push_back(*bytes);
  }
  return sizes;
}

// The dtype of the main result: only cast ops change it (aux tensors keep theirs).
v1::DType ResultDType(const v1::Pipeline& pipeline, v1::DType dtype) {
  for (const v1::Op& op : pipeline.ops()) {
    if (op.has_cast()) dtype = op.cast().dtype();
  }
  return dtype;
}

void SetTensor(const TensorInput& in, uint64_t bytes, const v1::SharedMemoryRef* ref,
               v1::Tensor* t) {
  t->set_dtype(in.dtype);
  for (int64_t d : in.shape) t->add_shape(d);
  if (ref != nullptr) {
    *t->mutable_shm() = *ref;
  } else {
    t->set_data(in.data, bytes);
  }
}

// A request on the shared-memory path: the slots it holds.
struct ShmPlan {
  std::vector<ShmSlot> copied;   // copies of inputs: free once the response came
  std::vector<ShmSlot> outputs;  // images first, then each aux tensor
  uint64_t copy_bytes = 0;
};

bool SameRef(const v1::SharedMemoryRef& a, const v1::SharedMemoryRef& b) {
  return a.region() == b.region() && a.offset() == b.offset() && a.byte_size() == b.byte_size();
}

// One response tensor as a TensorResult. `slot` is the output slot the request named (empty on
// the inline path); the result takes it when the server wrote there.
absl::StatusOr<TensorResult> TakeTensor(v1::Tensor* t, ShmSlot* slot, bool copy,
                                        const std::string& what) {
  TensorResult out;
  out.dtype = t->dtype();
  out.shape.assign(t->shape().begin(), t->shape().end());
  auto bytes = ShapeBytes(out.dtype, out.shape, what);
  if (!bytes.ok()) {
    return absl::InternalError(absl::StrCat("response ", bytes.status().message()));
  }
  if (t->has_shm()) {
    if (slot == nullptr || !*slot || !SameRef(t->shm(), slot->Ref()) || *bytes > slot->size()) {
      return absl::InternalError(
          absl::StrCat(what, ": the response names shared memory other than the request's output"));
    }
    out.bytes = Buffer::InSlot(std::move(*slot), *bytes);
    if (copy) out.bytes = out.bytes.Copy();  // the slot goes back to the pool here
    return out;
  }
  if (t->data().size() != *bytes) {
    return absl::InternalError(absl::StrCat(what, ": the response holds ", t->data().size(),
                                            " bytes for ", *bytes, " expected"));
  }
  // The server answered inline: take the bytes out of the message (no copy).
  out.bytes = Buffer::Owned(std::move(*t->mutable_data()));
  if (slot != nullptr) slot->Release();
  return out;
}

// The message for `request`: on the shared-memory path when `pool` is given (inputs located in
// the pool or copied into slots, outputs reserved; `plan` holds the slots), else inline. Errors
// (the pool is full, an empty tensor) leave `plan` empty.
absl::Status BuildMessage(const CallRequest& request, const std::vector<uint64_t>& sizes,
                          ShmPool* pool, std::optional<ShmPlan>* plan,
                          v1::ProcessRequest* message) {
  message->Clear();
  message->set_request_id(request.request_id);
  *message->mutable_pipeline() = request.pipeline;
  message->set_device(request.device);
  message->set_seed(request.seed);
  message->set_sample_offset(request.sample_offset);
  plan->reset();
  std::vector<std::optional<v1::SharedMemoryRef>> in_refs(sizes.size());
  if (pool != nullptr) {
    std::vector<const TensorInput*> inputs = {&request.images};
    for (const AuxInput& a : request.aux) inputs.push_back(&a.tensor);
    const v1::DType out_dtype = ResultDType(request.pipeline, request.images.dtype);
    std::vector<uint64_t> copy_sizes, out_sizes;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (sizes[i] == 0) {
        return absl::FailedPreconditionError("an empty tensor goes inline");
      }
      auto ref = pool->Locate(inputs[i]->data, sizes[i]);
      // Sent where it lies only when the server can use it there: aligned to the dtype's size.
      if (ref && ref->offset() % DTypeSize(inputs[i]->dtype) == 0) {
        in_refs[i] = std::move(*ref);
      } else {
        copy_sizes.push_back(sizes[i]);
      }
    }
    const uint64_t out_size = DTypeSize(out_dtype);
    if (out_size == 0) return absl::FailedPreconditionError("the result's dtype is unknown");
    out_sizes.push_back(sizes[0] / DTypeSize(request.images.dtype) * out_size);
    for (size_t i = 1; i < sizes.size(); ++i) out_sizes.push_back(sizes[i]);
    std::vector<uint64_t> all = copy_sizes;
    all.insert(all.end(), out_sizes.begin(), out_sizes.end());
    auto slots = pool->AllocMany(all);
    if (!slots.ok()) return slots.status();
    ShmPlan p;
    size_t next = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (in_refs[i]) continue;
      ShmSlot& slot = (*slots)[next++];
      std::memcpy(slot.data(), inputs[i]->data, sizes[i]);  // the one copy of this path
      p.copy_bytes += sizes[i];
      in_refs[i] = slot.Ref(sizes[i]);
      p.copied.push_back(std::move(slot));
    }
    for (; next < slots->size(); ++next) p.outputs.push_back(std::move((*slots)[next]));
    *plan = std::move(p);
  }
  const bool shm = plan->has_value();
  SetTensor(request.images, sizes[0], shm ? &*in_refs[0] : nullptr, message->mutable_images());
  if (shm) *message->mutable_images_output() = (*plan)->outputs[0].Ref();
  for (size_t i = 0; i < request.aux.size(); ++i) {
    const AuxInput& a = request.aux[i];
    v1::AuxTensor* aux = message->add_aux();
    aux->set_name(a.name);
    aux->set_interpolation(a.interpolation);
    aux->set_fill(a.fill);
    SetTensor(a.tensor, sizes[i + 1], shm ? &*in_refs[i + 1] : nullptr, aux->mutable_tensor());
    if (shm) *aux->mutable_output() = (*plan)->outputs[i + 1].Ref();
  }
  return absl::OkStatus();
}

// BuildMessage on the route's path, falling back to inline bytes (with the reason) when the
// shared-memory path fails and `mode` allows it.
absl::Status Plan(const CallRequest& request, ShmPool* pool, const std::string& route_reason,
                  ShmMode mode, std::optional<ShmPlan>* plan, std::string* reason,
                  v1::ProcessRequest* message) {
  auto sizes = InputBytes(request);
  if (!sizes.ok()) return sizes.status();
  *reason = route_reason;
  if (pool != nullptr) {
    absl::Status s = BuildMessage(request, *sizes, pool, plan, message);
    if (s.ok()) return s;
    if (mode == ShmMode::kOn) return s;
    *reason = std::string(s.message());  // e.g. the pool is full: this request goes inline
  }
  return BuildMessage(request, *sizes, nullptr, plan, message);
}

// The result of a successful response; takes the plan's output slots (the inputs' go back).
absl::StatusOr<CallResult> TakeResult(v1::ProcessResponse& response, std::optional<ShmPlan> plan,
                                      bool copy, const std::string& reason) {
  CallResult out;
  out.request_id = response.request_id();
  out.device = response.device();
  out.timings = response.timings();
  out.transfer = response.transfer();
  out.transport = plan ? Transport::kShm : Transport::kInline;
  out.transport_reason = plan ? "" : reason;
  out.client_copy_bytes = plan ? plan->copy_bytes : 0;
  if (plan) plan->copied.clear();  // the server is done with the inputs
  const size_t aux_count =
      plan ? plan->outputs.size() - 1 : static_cast<size_t>(response.aux_size());
  if (static_cast<size_t>(response.aux_size()) != aux_count) {
    return absl::InternalError(absl::StrCat("the response has ", response.aux_size(),
                                            " aux tensors, the request ", aux_count));
  }
  auto images =
      TakeTensor(response.mutable_images(), plan ? &plan->outputs[0] : nullptr, copy, "images");
  if (!images.ok()) return images.status();
  out.images = std::move(*images);
  for (int i = 0; i < response.aux_size(); ++i) {
    v1::AuxTensor* aux = response.mutable_aux(i);
    auto t = TakeTensor(aux->mutable_tensor(), plan ? &plan->outputs[i + 1] : nullptr, copy,
                        absl::StrCat("aux[", i, "]"));
    if (!t.ok()) return t.status();
    out.aux.push_back(AuxResult{aux->name(), std::move(*t)});
  }
  return out;
}

}  // namespace

const char* TransportName(Transport t) { return t == Transport::kShm ? "shm" : "inline"; }

const char* ShmModeName(ShmMode m) {
  switch (m) {
    case ShmMode::kAuto:
      return "auto";
    case ShmMode::kOn:
      return "on";
    default:
      return "off";
  }
}

absl::StatusOr<ShmMode> ParseShmMode(absl::string_view s) {
  if (s == "auto") return ShmMode::kAuto;
  if (s == "on" || s == "true" || s == "1") return ShmMode::kOn;
  if (s == "off" || s == "false" || s == "0") return ShmMode::kOff;
  return absl::InvalidArgumentError(
      absl::StrCat("shm: expected auto, on or off, got '", s.substr(0, 64), "'"));
}

// What the transport decision left: the pool on the shared-memory path, else why not.
struct Client::ShmState {
  ShmState(const ClientOptions& options, std::shared_ptr<grpc::Channel> channel)
      : options(options), stub(v1::Preprocessor::NewStub(channel)) {}
  // The pool may outlive the client (results hold its slots): unregister now, while the stub
  // is still here; the memory is unmapped when the last slot goes.
  ~ShmState() {
    if (pool != nullptr) pool->Close();
  }

  // Control calls (register, status, unregister) carry the client's token and a deadline.
  void Prepare(grpc::ClientContext* ctx, std::chrono::milliseconds limit) const {
    auto timeout = options.timeout.count() > 0 ? std::min(options.timeout, limit) : limit;
    ctx->set_deadline(std::chrono::system_clock::now() + timeout);
    if (!options.auth_token.empty()) {
      ctx->AddMetadata("authorization", absl::StrCat("Bearer ", options.auth_token));
    }
  }

  ShmServerCalls Calls() {
    ShmServerCalls calls;
    // `this` outlives every use: ~ShmState closes the pool, which drops these calls.
    calls.register_region = [this](const std::string& key, uint64_t bytes,
                                   const std::string& nonce) -> absl::StatusOr<std::string> {
      v1::RegisterSharedMemoryRequest req;
      req.set_key(key);
      req.set_offset(0);
      req.set_byte_size(bytes);
      req.set_expect_prefix(nonce);
      req.set_name(absl::StrCat("c++ pid ", getpid()));
      v1::RegisterSharedMemoryResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx, std::chrono::seconds(30));
      grpc::Status s = stub->RegisterSharedMemory(&ctx, req, &resp);
      if (!s.ok()) return FromGrpc(s);
      return resp.region();
    };
    calls.unregister_region = [this](const std::string& handle) {
      v1::UnregisterSharedMemoryRequest req;
      req.set_region(handle);
      v1::UnregisterSharedMemoryResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx, std::chrono::seconds(5));  // at close: bounded
      return FromGrpc(stub->UnregisterSharedMemory(&ctx, req, &resp));
    };
    calls.requests_in_use = [this](const std::vector<std::string>& handles)
        -> absl::StatusOr<std::map<std::string, uint32_t>> {
      v1::SharedMemoryStatusRequest req;
      for (const std::string& h : handles) req.add_regions(h);
      v1::SharedMemoryStatusResponse resp;
      grpc::ClientContext ctx;
      Prepare(&ctx, std::chrono::seconds(30));
      grpc::Status s = stub->SharedMemoryStatus(&ctx, req, &resp);
      if (!s.ok()) return FromGrpc(s);
      std::map<std::string, uint32_t> in_use;
      for (const auto& r : resp.regions()) in_use[r.region()] = r.requests_in_use();
      return in_use;
    };
    return calls;
  }

  const ClientOptions options;
  std::unique_ptr<v1::Preprocessor::Stub> stub;
  std::mutex mu;                  // one decision at a time
  bool decided = false;           // GUARDED_BY(mu)
  std::string reason;             // GUARDED_BY(mu): why inline, once decided
  std::string undecided_reason;   // GUARDED_BY(mu): why not decided yet
  std::shared_ptr<ShmPool> pool;  // GUARDED_BY(mu): set once, on the shm path
};

std::shared_ptr<Client::ShmState> Client::MakeShmState(const ClientOptions& options,
                                                       std::shared_ptr<grpc::Channel> channel) {
  return std::make_shared<ShmState>(options, std::move(channel));
}

absl::StatusOr<Client::ShmRoute> Client::DecideTransport() const {
  ShmState& st = *shm_;
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.decided) {
    std::optional<std::string> reason;  // set when decided for inline bytes
    if (options_.shm == ShmMode::kOff) {
      reason = "shared memory is turned off (shm=off)";
    } else if (absl::StrContains(options_.target, ",")) {
      reason = "the target names several servers, and a region is registered with one only";
    } else if (auto ops = ListOps(); !ops.ok()) {
      st.undecided_reason = absl::StrCat("could not ask the server about shared memory (",
                                         ops.status().message(), ")");
    } else if (!ops->shared_memory().enabled()) {
      reason = "the server has shared memory disabled";
    } else {
      const v1::SharedMemoryInfo& info = ops->shared_memory();
      ShmPoolOptions po;
      po.key_prefix = info.key_prefix();
      po.max_bytes = std::max<uint64_t>(options_.shm_max_mb, 1) * kMiB;
      if (info.max_mapped_bytes() > 0)
        po.max_bytes = std::min(po.max_bytes, info.max_mapped_bytes());
      po.initial_bytes = std::min(std::max<uint64_t>(options_.shm_pool_mb, 1) * kMiB, po.max_bytes);
      po.max_regions = kMaxPoolRegions;
      if (info.max_regions_per_client() > 0) {
        po.max_regions = std::min(po.max_regions, info.max_regions_per_client());
      }
      ShmSetupFailure failure;
      auto pool = ShmPool::Create(po, st.Calls(), &failure);
      if (pool.ok()) {
        st.pool = std::move(*pool);
        st.decided = true;
      } else if (failure == ShmSetupFailure::kLocal) {
        reason = std::string(pool.status().message());
      } else if (const char* refused = RegisterRefusal(pool.status().code())) {
        reason = absl::StrCat(refused, ": ", pool.status().message());
      } else {
        st.undecided_reason =
            absl::StrCat("could not register shared memory (", pool.status().message(), ")");
      }
    }
    if (reason) {
      st.decided = true;
      st.reason = std::move(*reason);
    }
  }
  if (!st.decided) {
    if (options_.shm == ShmMode::kOn) return absl::UnavailableError(st.undecided_reason);
    return ShmRoute{nullptr, st.undecided_reason, false};
  }
  if (st.pool == nullptr && options_.shm == ShmMode::kOn) {
    return absl::FailedPreconditionError(
        absl::StrCat("shared memory was required (shm=on) but ", st.reason));
  }
  return ShmRoute{st.pool, st.reason, true};
}

absl::Status Client::Connect() const {
  auto route = DecideTransport();
  if (!route.ok()) return route.status();
  if (!route->decided) return absl::UnavailableError(route->reason);
  return absl::OkStatus();
}

Transport Client::transport() const {
  std::lock_guard<std::mutex> lock(shm_->mu);
  return shm_->pool != nullptr ? Transport::kShm : Transport::kInline;
}

std::string Client::shm_reason() const {
  std::lock_guard<std::mutex> lock(shm_->mu);
  return shm_->decided ? shm_->reason : shm_->undecided_reason;
}

std::optional<ShmPoolStats> Client::shm_stats() const {
  std::shared_ptr<ShmPool> pool;
  {
    std::lock_guard<std::mutex> lock(shm_->mu);
    pool = shm_->pool;
  }
  if (pool == nullptr) return std::nullopt;
  return pool->stats();
}

absl::StatusOr<Buffer> Client::Allocate(size_t bytes) const {
  auto route = DecideTransport();
  if (!route.ok()) return route.status();
  if (route->pool != nullptr) {
    auto slot = route->pool->Alloc(bytes);
    if (slot.ok()) return Buffer::InSlot(std::move(*slot), bytes);
    if (options_.shm == ShmMode::kOn) return slot.status();
  }
  return Buffer::Owned(std::string(bytes, '\0'));
}

void Client::ForgetShm(const std::shared_ptr<ShmPool>& pool) const {
  if (pool == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(shm_->mu);
    if (shm_->pool != pool) return;  // another thread retired it already
    shm_->pool.reset();
    shm_->decided = false;
    shm_->reason.clear();
    shm_->undecided_reason.clear();
  }
  // Calls on other threads may still finish into its slots: Close keeps the memory mapped.
  pool->Close();
}

absl::StatusOr<CallResult> Client::Call(const CallRequest& request, bool copy) const {
  for (int attempt = 0;; ++attempt) {
    auto route = DecideTransport();
    if (!route.ok()) return route.status();
    std::optional<ShmPlan> plan;
    std::string reason;
    v1::ProcessRequest message;
    if (absl::Status s =
            Plan(request, route->pool.get(), route->reason, options_.shm, &plan, &reason, &message);
        !s.ok()) {
      return s;
    }
    auto response = Process(message);
    if (response.ok()) return TakeResult(*response, std::move(plan), copy, reason);
    if (!plan) return response.status();
    if (!ServerRefused(response.status().code())) {
      // No answer: the server may still be writing into the outputs.
      std::vector<ShmSlot> held = std::move(plan->copied);
      for (ShmSlot& s : plan->outputs) held.push_back(std::move(s));
      route->pool->Quarantine(std::move(held));
      return response.status();
    }
    plan.reset();  // refused: the slots go back now
    if (response.status().code() != absl::StatusCode::kNotFound) return response.status();
    ForgetShm(route->pool);
    if (attempt > 0) return response.status();
  }
}

absl::Status Client::StreamCalls(
    size_t count, const CallSource& next, int inflight,
    const std::function<void(size_t, absl::StatusOr<CallResult>)>& on_result, bool copy,
    const std::function<void(size_t)>& on_send) const {
  auto route = DecideTransport();
  if (!route.ok()) return route.status();
  struct Pending {
    std::optional<ShmPlan> plan;
    std::string request_id;  // the caller's
    std::string reason;
  };
  std::mutex mu;
  std::map<size_t, Pending> pending;  // GUARDED_BY(mu): sent, not answered
  absl::Status stop;                  // written by the writer thread only, read after the stream
  v1::ProcessRequest message;         // the request being written
  // Runs on Stream's writer thread; requests go out with their index as request_id, so that
  // the caller's ids need not be unique.
  auto source = [&](size_t i) -> const v1::ProcessRequest* {
    const CallRequest& request = next(i);
    Pending p;
    p.request_id = request.request_id;
    stop =
        Plan(request, route->pool.get(), route->reason, options_.shm, &p.plan, &p.reason, &message);
    if (!stop.ok()) return nullptr;
    message.set_request_id(std::to_string(i));
    std::lock_guard<std::mutex> lock(mu);
    pending.emplace(i, std::move(p));
    return &message;
  };
  absl::Status unexpected;
  auto on_response = [&](v1::ProcessResponse& response) {
    size_t i;
    std::optional<Pending> p;
    if (absl::SimpleAtoi(response.request_id(), &i)) {
      std::lock_guard<std::mutex> lock(mu);
      if (auto it = pending.find(i); it != pending.end()) {
        p = std::move(it->second);
        pending.erase(it);
      }
    }
    if (!p) {
      unexpected = absl::InternalError("the stream answered a request it was not sent");
      return;
    }
    if (response.has_error()) {
      // The server answered: it is done with the slots, which go back with `p`.
      const auto code = static_cast<absl::StatusCode>(response.error().code());
      if (p->plan && code == absl::StatusCode::kNotFound) {
        ForgetShm(route->pool);  // later calls decide afresh
      }
      on_result(i, absl::Status(code, response.error().message()));
      return;
    }
    auto result = TakeResult(response, std::move(p->plan), copy, p->reason);
    if (result.ok()) result->request_id = p->request_id;
    on_result(i, std::move(result));
  };
  absl::Status s = StreamUntil(count, source, inflight, on_response, on_send);
  // Requests sent but never answered may still run on the server.
  std::vector<ShmSlot> held;
  for (auto& [i, p] : pending) {
    if (!p.plan) continue;
    for (ShmSlot& slot : p.plan->copied) held.push_back(std::move(slot));
    for (ShmSlot& slot : p.plan->outputs) held.push_back(std::move(slot));
  }
  if (!held.empty()) route->pool->Quarantine(std::move(held));
  if (!stop.ok()) return stop;
  if (!s.ok()) return s;
  return unexpected;
}

}  // namespace tensorprep::client
