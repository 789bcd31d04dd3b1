#include "server/kserve_service.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "handlers/error_text.h"
#include "handlers/tensor_codec.h"
#include "server/security.h"
#include "server/status_util.h"

namespace tensorprep::server {

namespace {

using Clock = std::chrono::steady_clock;
using handlers::QuoteCallerString;
using ParamMap = google::protobuf::Map<std::string, kserve::InferParameter>;

constexpr char kVersion[] = "1";
constexpr size_t kMaxRegionNameBytes = 128;
constexpr char kRegionParam[] = "shared_memory_region";
constexpr char kOffsetParam[] = "shared_memory_offset";
constexpr char kByteSizeParam[] = "shared_memory_byte_size";

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int CodeOf(const absl::Status& s) { return static_cast<int>(ToGrpcStatus(s).error_code()); }

std::string Quote(const std::string& s) { return QuoteCallerString(s); }

// Ends a unary call with `s`.
grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& s) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(s));
  return reactor;
}

kserve::DataType ConfigType(const std::optional<kernels::DType>& dtype) {
  switch (dtype.value_or(kernels::DType::kFloat32)) {
    case kernels::DType::kUInt8:
      return kserve::TYPE_UINT8;
    case kernels::DType::kInt32:
      return kserve::TYPE_INT32;
    case kernels::DType::kFloat16:
      return kserve::TYPE_FP16;
    case kernels::DType::kFloat32:
      return kserve::TYPE_FP32;
  }
  return kserve::TYPE_INVALID;
}

// The datatype string of a result tensor.
const char* WireDatatype(int dtype) {
  auto d = handlers::DecodeDType(dtype, "");
  return d.ok() ? handlers::DatatypeName(*d) : "INVALID";
}

std::string ShapeText(const google::protobuf::RepeatedField<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}
std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// The shared-memory place named by a tensor's parameters, if any.
struct ShmParams {
  bool present = false;
  std::string region;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
};

absl::StatusOr<int64_t> IntParam(const kserve::InferParameter& p, const std::string& what) {
  if (p.parameter_choice_case() == kserve::InferParameter::kInt64Param) return p.int64_param();
  if (p.parameter_choice_case() == kserve::InferParameter::kUint64Param &&
      p.uint64_param() <= static_cast<uint64_t>(INT64_MAX)) {
    return static_cast<int64_t>(p.uint64_param());
  }
  return absl::InvalidArgumentError(absl::StrCat(what, ": expected an integer parameter"));
}

absl::StatusOr<ShmParams> ReadShmParams(const ParamMap& params, const std::string& what) {
  ShmParams out;
  auto region = params.find(kRegionParam);
  if (region == params.end()) {
    if (params.count(kByteSizeParam) != 0 || params.count(kOffsetParam) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what,
                       ": shared_memory_byte_size or shared_memory_offset without "
                       "shared_memory_region"));
    }
    return out;
  }
  out.present = true;
  if (region->second.parameter_choice_case() != kserve::InferParameter::kStringParam) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shared_memory_region: expected a string parameter"));
  }
  out.region = region->second.string_param();
  auto size = params.find(kByteSizeParam);
  if (size == params.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shared_memory_region without shared_memory_byte_size"));
  }
  auto n = IntParam(size->second, absl::StrCat(what, ": shared_memory_byte_size"));
  if (!n.ok()) return n.status();
  if (*n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": shared_memory_byte_size: expected >= 0, got ", *n));
  }
  out.byte_size = static_cast<uint64_t>(*n);
  auto offset = params.find(kOffsetParam);
  if (offset != params.end()) {
    auto o = IntParam(offset->second, absl::StrCat(what, ": shared_memory_offset"));
    if (!o.ok()) return o.status();
    if (*o < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": shared_memory_offset: expected >= 0, got ", *o));
    }
    out.offset = static_cast<uint64_t>(*o);
  }
  return out;
}

}  // namespace

// A model and its statistics.
struct KServeService::Model {
  handlers::PipelineModelSpec spec;
  int metric_index = -1;
  // Cumulative, for ModelStatistics; counted through const pointers (a model is otherwise
  // immutable).
  mutable std::atomic<uint64_t> success_count{0}, success_ns{0}, fail_count{0}, fail_ns{0};
  mutable std::atomic<uint64_t> queue_ns{0}, input_ns{0}, infer_ns{0}, output_ns{0};
  mutable std::atomic<uint64_t> inference_count{0}, execution_count{0}, last_inference_ms{0};
};

// One request between PrepareInfer and its response. `prepared` holds views into `request`, so
// it is declared after it (and destroyed before it).
struct KServeService::InferJob {
  const Model* model = nullptr;
  std::string id;
  pb::ProcessRequest request;
  std::unique_ptr<handlers::PreparedRequest> prepared;
  // Model input index of each request aux tensor.
  std::vector<int> aux_inputs;
  struct Output {
    int output = 0;  // model output index
    int aux = -1;    // request aux index, -1 for the main result
    ShmParams shm;   // where the caller asked for it
  };
  std::vector<Output> outputs;  // in response order
  Clock::time_point arrival;
  Clock::time_point enqueued;
  std::chrono::system_clock::time_point deadline = std::chrono::system_clock::time_point::max();
  AdmissionTicket ticket;
  int64_t queue_ns = 0;
  int64_t decode_ns = 0, kernel_ns = 0, encode_ns = 0;
  uint64_t samples = 0;
};

KServeService::KServeService(PreprocessorService& service,
                             std::vector<handlers::PipelineModelSpec> models)
    : service_(service) {
  models.push_back(handlers::BuiltinModel());
  std::vector<std::string> names;
  for (auto& spec : models) {
    auto m = std::make_unique<Model>();
    m->spec = std::move(spec);
    m->metric_index = static_cast<int>(names.size());
    names.push_back(m->spec.name);
    models_.push_back(std::move(m));
  }
  service_.metrics().AddModels(names);
}

KServeService::~KServeService() = default;

const KServeService::Model* KServeService::FindModel(const std::string& name) const {
  for (const auto& m : models_) {
    if (m->spec.name == name) return m.get();
  }
  return nullptr;
}

absl::Status KServeService::FindModel(const std::string& name, const std::string& version,
                                      const Model** model) const {
  *model = FindModel(name);
  if (*model == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        "model ", Quote(name), " is not known to this server (RepositoryIndex lists its models)"));
  }
  if (!version.empty() && version != kVersion) {
    return absl::NotFoundError(absl::StrCat("model ", Quote(name), " has no version ",
                                            Quote(version), "; its one version is \"1\""));
  }
  return absl::OkStatus();
}

// ---- health and metadata -------------------------------------------------------------------

grpc::ServerUnaryReactor* KServeService::ServerLive(grpc::CallbackServerContext* ctx,
                                                    const kserve::ServerLiveRequest*,
                                                    kserve::ServerLiveResponse* response) {
  response->set_live(true);
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ServerReady(grpc::CallbackServerContext* ctx,
                                                     const kserve::ServerReadyRequest*,
                                                     kserve::ServerReadyResponse* response) {
  response->set_ready(ready_.load());
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* KServeService::ModelReady(grpc::CallbackServerContext* ctx,
                                                    const kserve::ModelReadyRequest* request,
                                                    kserve::ModelReadyResponse* response) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  if (s.ok()) {
    const Model* model = nullptr;
    response->set_ready(ready_.load() &&
                        FindModel(request->name(), request->version(), &model).ok());
  }
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::ServerMetadata(grpc::CallbackServerContext* ctx,
                                                        const kserve::ServerMetadataRequest*,
                                                        kserve::ServerMetadataResponse* response) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  if (s.ok()) {
    response->set_name("tensorprep");
    response->set_version(TENSORPREP_VERSION);
    response->add_extensions("model_configuration");
    response->add_extensions("model_repository");
    response->add_extensions("statistics");
    response->add_extensions("parameters");
    const handlers::SharedMemoryRegions* shm = service_.options().shm;
    if (shm != nullptr && shm->enabled()) response->add_extensions("system_shared_memory");
  }
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::ModelMetadata(grpc::CallbackServerContext* ctx,
                                                       const kserve::ModelMetadataRequest* request,
                                                       kserve::ModelMetadataResponse* response) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  const Model* model = nullptr;
  if (s.ok()) s = FindModel(request->name(), request->version(), &model);
  if (s.ok()) {
    response->set_name(model->spec.name);
    response->add_versions(kVersion);
    response->set_platform("tensorprep");
    auto fill = [](const handlers::ModelTensor& t,
                   kserve::ModelMetadataResponse::TensorMetadata* out) {
      out->set_name(t.name);
      out->set_datatype(handlers::DatatypeName(t.dtype.value_or(kernels::DType::kFloat32)));
      for (int64_t d : t.shape) out->add_shape(d);
    };
    for (const auto& t : model->spec.inputs) fill(t, response->add_inputs());
    for (const auto& t : model->spec.outputs) fill(t, response->add_outputs());
  }
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::ModelConfig(grpc::CallbackServerContext* ctx,
                                                     const kserve::ModelConfigRequest* request,
                                                     kserve::ModelConfigResponse* response) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  const Model* model = nullptr;
  if (s.ok()) s = FindModel(request->name(), request->version(), &model);
  if (s.ok()) {
    const handlers::PipelineModelSpec& spec = model->spec;
    kserve::ModelConfig* c = response->mutable_config();
    c->set_name(spec.name);
    c->set_platform("tensorprep");
    c->set_backend("tensorprep");
    c->set_max_batch_size(spec.max_batch_size);
    // With a batch limit, dims leave the batch dimension out (Triton's convention).
    const size_t skip = spec.max_batch_size > 0 ? 1 : 0;
    for (const auto& t : spec.inputs) {
      kserve::ModelInput* in = c->add_input();
      in->set_name(t.name);
      in->set_data_type(ConfigType(t.dtype));
      for (size_t d = skip; d < t.shape.size(); ++d) in->add_dims(t.shape[d]);
      in->set_optional(t.optional);
    }
    for (const auto& t : spec.outputs) {
      kserve::ModelOutput* out = c->add_output();
      out->set_name(t.name);
      out->set_data_type(ConfigType(t.dtype));
      for (size_t d = skip; d < t.shape.size(); ++d) out->add_dims(t.shape[d]);
    }
  }
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::ModelStatistics(
    grpc::CallbackServerContext* ctx, const kserve::ModelStatisticsRequest* request,
    kserve::ModelStatisticsResponse* response) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  const Model* only = nullptr;
  if (s.ok() && !request->name().empty()) s = FindModel(request->name(), request->version(), &only);
  if (s.ok()) {
    for (const auto& m : models_) {
      if (only != nullptr && m.get() != only) continue;
      kserve::ModelStatistics* st = response->add_model_stats();
      st->set_name(m->spec.name);
      st->set_version(kVersion);
      st->set_last_inference(m->last_inference_ms.load());
      st->set_inference_count(m->inference_count.load());
      st->set_execution_count(m->execution_count.load());
      kserve::InferStatistics* is = st->mutable_inference_stats();
      auto set = [](kserve::StatisticDuration* d, uint64_t count, uint64_t ns) {
        d->set_count(count);
        d->set_ns(ns);
      };
      const uint64_t runs = m->execution_count.load();
      set(is->mutable_success(), m->success_count.load(), m->success_ns.load());
      set(is->mutable_fail(), m->fail_count.load(), m->fail_ns.load());
      set(is->mutable_queue(), runs, m->queue_ns.load());
      set(is->mutable_compute_input(), runs, m->input_ns.load());
      set(is->mutable_compute_infer(), runs, m->infer_ns.load());
      set(is->mutable_compute_output(), runs, m->output_ns.load());
    }
  }
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::RepositoryIndex(
    grpc::CallbackServerContext* ctx, const kserve::RepositoryIndexRequest*,
    kserve::RepositoryIndexResponse* response) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  if (s.ok()) {
    for (const auto& m : models_) {
      auto* entry = response->add_models();
      entry->set_name(m->spec.name);
      entry->set_version(kVersion);
      entry->set_state("READY");
    }
  }
  return Done(ctx, s);
}

// ---- shared memory -------------------------------------------------------------------------

namespace {

absl::Status AdmitShm(const ServiceOptions& options, grpc::CallbackServerContext* ctx) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), options.auth_token);
  if (s.ok() && (options.shm == nullptr || !options.shm->enabled())) {
    s = absl::FailedPreconditionError(
        "system shared memory is disabled on this server (the operator enables it with "
        "--shm-prefix)");
  }
  return s;
}

}  // namespace

absl::StatusOr<std::string> KServeService::RegionHandle(const std::string& client,
                                                        const std::string& name,
                                                        const std::string& what) const {
  std::lock_guard<std::mutex> lock(regions_mu_);
  auto it = regions_.find({client, name});
  if (it == regions_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": shared memory region ", Quote(name),
        " is not registered by this client (SystemSharedMemoryRegister on this connection)"));
  }
  return it->second.handle;
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryRegister(
    grpc::CallbackServerContext* ctx, const kserve::SystemSharedMemoryRegisterRequest* request,
    kserve::SystemSharedMemoryRegisterResponse*) {
  absl::Status s = AdmitShm(service_.options(), ctx);
  if (s.ok() && (request->name().empty() || request->name().size() > kMaxRegionNameBytes)) {
    s = absl::InvalidArgumentError(absl::StrCat("name: expected 1 to ", kMaxRegionNameBytes,
                                                " bytes, got ", request->name().size()));
  }
  if (!s.ok()) return Done(ctx, s);
  const std::string client = ShmClientOf(ctx);
  handlers::SharedMemoryRegions* shm = service_.options().shm;
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    if (regions_.count({client, request->name()}) != 0) {
      s = absl::AlreadyExistsError(
          absl::StrCat("shared memory region ", Quote(request->name()),
                       " is already registered by this client; unregister it first"));
    } else {
      pb::RegisterSharedMemoryRequest r;
      r.set_key(request->key());
      r.set_offset(request->offset());
      r.set_byte_size(request->byte_size());
      r.set_name(request->name());
      auto handle = shm->Register(r, client);
      if (handle.ok()) {
        regions_[{client, request->name()}] =
            Region{*handle, request->key(), request->offset(), request->byte_size()};
      } else {
        s = absl::Status(handle.status().code(),
                         absl::StrCat("shared memory region ", Quote(request->name()), ": ",
                                      handle.status().message()));
      }
    }
  }
  service_.metrics().SetSharedMemory(shm->regions(), shm->mapped_bytes());
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryStatus(
    grpc::CallbackServerContext* ctx, const kserve::SystemSharedMemoryStatusRequest* request,
    kserve::SystemSharedMemoryStatusResponse* response) {
  absl::Status s = AdmitShm(service_.options(), ctx);
  if (!s.ok()) return Done(ctx, s);
  const std::string client = ShmClientOf(ctx);
  std::lock_guard<std::mutex> lock(regions_mu_);
  for (auto it = regions_.lower_bound({client, ""});
       it != regions_.end() && it->first.first == client; ++it) {
    const std::string& name = it->first.second;
    if (!request->name().empty() && name != request->name()) continue;
    auto& out = (*response->mutable_regions())[name];
    out.set_name(name);
    out.set_key(it->second.key);
    out.set_offset(it->second.offset);
    out.set_byte_size(it->second.byte_size);
  }
  if (!request->name().empty() && response->regions().empty()) {
    s = absl::NotFoundError(absl::StrCat("shared memory region ", Quote(request->name()),
                                         " is not registered by this client"));
  }
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::SystemSharedMemoryUnregister(
    grpc::CallbackServerContext* ctx, const kserve::SystemSharedMemoryUnregisterRequest* request,
    kserve::SystemSharedMemoryUnregisterResponse*) {
  absl::Status s = AdmitShm(service_.options(), ctx);
  if (!s.ok()) return Done(ctx, s);
  const std::string client = ShmClientOf(ctx);
  handlers::SharedMemoryRegions* shm = service_.options().shm;
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    // Unregistering a name that is not registered succeeds: there is nothing left to release.
    for (auto it = regions_.lower_bound({client, ""});
         it != regions_.end() && it->first.first == client;) {
      if (!request->name().empty() && it->first.second != request->name()) {
        ++it;
        continue;
      }
      shm->Unregister(it->second.handle).IgnoreError();  // requests using it keep it mapped
      it = regions_.erase(it);
    }
  }
  service_.metrics().SetSharedMemory(shm->regions(), shm->mapped_bytes());
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::CudaSharedMemoryStatus(
    grpc::CallbackServerContext* ctx, const kserve::CudaSharedMemoryStatusRequest* request,
    kserve::CudaSharedMemoryStatusResponse*) {
  absl::Status s = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  if (s.ok() && !request->name().empty()) {
    s = absl::NotFoundError(absl::StrCat("CUDA shared memory region ", Quote(request->name()),
                                         " is not registered (this server takes none)"));
  }
  return Done(ctx, s);
}

grpc::ServerUnaryReactor* KServeService::CudaSharedMemoryUnregister(
    grpc::CallbackServerContext* ctx, const kserve::CudaSharedMemoryUnregisterRequest*,
    kserve::CudaSharedMemoryUnregisterResponse*) {
  return Done(ctx, CheckBearerToken(ctx->client_metadata(), service_.options().auth_token));
}

// ---- inference -----------------------------------------------------------------------------

namespace {

// Puts the input or output a Processor error concerns in front of its message: the Processor
// names request fields ("images.data", "aux[1].tensor.shape", "images_output"), the caller knows
// only its tensors' names.
absl::Status NameTensor(const absl::Status& s, const handlers::PipelineModelSpec& spec,
                        const std::vector<int>& aux_inputs,
                        const std::vector<std::pair<int, int>>& output_of_slot) {
  if (s.ok()) return s;
  const std::string msg(s.message());
  auto output_name = [&](int slot) -> std::string {
    for (const auto& [sl, out] : output_of_slot) {
      if (sl == slot) return spec.outputs[out].name;
    }
    return "?";
  };
  std::string who;
  if (absl::StartsWith(msg, "images_output")) {
    who = absl::StrCat("output '", output_name(-1), "'");
  } else if (absl::StartsWith(msg, "images")) {
    who = absl::StrCat("input '", spec.inputs[0].name, "'");
  } else if (absl::StartsWith(msg, "aux[")) {
    const size_t close = msg.find(']');
    int j = -1;
    if (close != std::string::npos) j = std::atoi(msg.substr(4, close - 4).c_str());
    if (j >= 0 && j < static_cast<int>(aux_inputs.size())) {
      who = absl::StartsWith(msg.substr(close + 1), ".output")
                ? absl::StrCat("output '", output_name(j), "'")
                : absl::StrCat("input '", spec.inputs[aux_inputs[j]].name, "'");
    }
  } else if (absl::StartsWith(msg, "pipeline")) {
    who = spec.builtin ? "parameters.pipeline" : absl::StrCat("model '", spec.name, "'");
  }
  if (who.empty()) return s;
  return absl::Status(s.code(), absl::StrCat(who, ": ", msg));
}

}  // namespace

absl::StatusOr<std::unique_ptr<KServeService::InferJob>> KServeService::PrepareInfer(
    const std::string& client, kserve::ModelInferRequest* request) {
  auto job = std::make_unique<InferJob>();
  job->id = request->id();
  const Model* model = nullptr;
  absl::Status s = FindModel(request->model_name(), request->model_version(), &model);
  if (!s.ok()) return s;
  job->model = model;
  const handlers::PipelineModelSpec& spec = model->spec;
  pb::ProcessRequest& pr = job->request;
  pr.set_device(pb::DEVICE_AUTO);

  // Request parameters: the seed, and the built-in model's pipeline.
  const ParamMap& params = request->parameters();
  if (auto it = params.find("seed"); it != params.end()) {
    const kserve::InferParameter& p = it->second;
    if (p.parameter_choice_case() == kserve::InferParameter::kUint64Param) {
      pr.set_seed(p.uint64_param());
    } else if (p.parameter_choice_case() == kserve::InferParameter::kInt64Param) {
      pr.set_seed(static_cast<uint64_t>(p.int64_param()));
    } else {
      return absl::InvalidArgumentError("parameters.seed: expected an integer parameter");
    }
  }
  auto pipeline_param = params.find("pipeline");
  if (spec.builtin) {
    if (pipeline_param == params.end() ||
        pipeline_param->second.parameter_choice_case() != kserve::InferParameter::kStringParam) {
      return absl::InvalidArgumentError(absl::StrCat(
          "parameters.pipeline: model '", spec.name,
          "' takes its pipeline from this string parameter (tensorprep.v1.Pipeline JSON, or a "
          "JSON list of ops), got none"));
    }
    auto pipeline =
        handlers::ParsePipelineJson(pipeline_param->second.string_param(), "parameters.pipeline");
    if (!pipeline.ok()) return pipeline.status();
    *pr.mutable_pipeline() = std::move(*pipeline);
  } else {
    if (pipeline_param != params.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameters.pipeline: model ", Quote(spec.name),
                       " has its pipeline from the pipeline file; only the built-in model '",
                       handlers::kBuiltinModelName, "' takes one per request"));
    }
    *pr.mutable_pipeline() = spec.pipeline;
  }

  // Inputs, in the request's order; raw contents belong, in order, to the inputs that are not in
  // shared memory.
  std::vector<int> seen(spec.inputs.size(), -1);  // model input -> request input index
  int raw_index = 0;
  std::vector<std::pair<int, const kserve::ModelInferRequest::InferInputTensor*>> order;
  for (int i = 0; i < request->inputs_size(); ++i) {
    const auto& in = request->inputs(i);
    const int m = spec.FindInput(in.name());
    if (m < 0) {
      std::vector<std::string> names;
      for (const auto& t : spec.inputs) names.push_back(t.name);
      return absl::InvalidArgumentError(
          absl::StrCat("input ", Quote(in.name()), ": model ", Quote(spec.name),
                       " has no input of this name (", absl::StrJoin(names, ", "), ")"));
    }
    if (seen[m] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("input ", Quote(in.name()), ": given twice in one request"));
    }
    seen[m] = i;
  }
  for (size_t m = 0; m < spec.inputs.size(); ++m) {
    if (seen[m] < 0 && !spec.inputs[m].optional) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input '", spec.inputs[m].name, "': missing; model ", Quote(spec.name), " requires it"));
    }
  }
  int non_shm = 0;
  std::vector<ShmParams> in_shm(request->inputs_size());
  for (int i = 0; i < request->inputs_size(); ++i) {
    const std::string what = absl::StrCat("input ", Quote(request->inputs(i).name()));
    auto p = ReadShmParams(request->inputs(i).parameters(), what);
    if (!p.ok()) return p.status();
    in_shm[i] = *p;
    if (!p->present) ++non_shm;
  }
  if (request->raw_input_contents_size() != non_shm) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raw_input_contents: expected ", non_shm,
        " entries (one per input not in shared memory, in the order of inputs), got ",
        request->raw_input_contents_size(),
        request->raw_input_contents_size() == 0 ? " (typed contents are not supported)" : ""));
  }
  // Raw contents are assigned to inputs in request order.
  std::vector<int> raw_of(request->inputs_size(), -1);
  for (int i = 0; i < request->inputs_size(); ++i) {
    if (!in_shm[i].present) raw_of[i] = raw_index++;
  }
  for (size_t m = 0; m < spec.inputs.size(); ++m) {
    const int i = seen[m];
    if (i < 0) continue;
    const auto& in = request->inputs(i);
    const handlers::ModelTensor& decl = spec.inputs[m];
    const std::string what = absl::StrCat("input '", decl.name, "'");
    if (in.has_contents()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": typed contents are not supported; send raw_input_contents or shared memory"));
    }
    auto dtype = handlers::ParseDatatype(in.datatype());
    if (!dtype) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": datatype ", Quote(in.datatype()),
                                                     " is not supported (UINT8, INT32, FP16, "
                                                     "FP32)"));
    }
    if (decl.dtype && *decl.dtype != *dtype) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": expected datatype ",
                                                     handlers::DatatypeName(*decl.dtype), ", got ",
                                                     in.datatype()));
    }
    if (!spec.any_rank) {
      bool match = in.shape_size() == static_cast<int>(decl.shape.size());
      for (int d = 0; match && d < in.shape_size(); ++d) {
        match = decl.shape[d] == -1 || decl.shape[d] == in.shape(d);
      }
      if (!match) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": expected shape ", ShapeText(decl.shape), ", got ", ShapeText(in.shape())));
      }
    }
    if (spec.max_batch_size > 0 && in.shape_size() > 0 && in.shape(0) > spec.max_batch_size) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": batch of ", in.shape(0),
                                                     ", over the model's max_batch_size ",
                                                     spec.max_batch_size));
    }
    pb::Tensor* t;
    if (m == 0) {
      t = pr.mutable_images();
    } else {
      pb::AuxTensor* a = pr.add_aux();
      a->set_name(decl.name);
      a->set_interpolation(decl.interpolation);
      a->set_fill(decl.fill);
      job->aux_inputs.push_back(static_cast<int>(m));
      t = a->mutable_tensor();
    }
    t->set_dtype(handlers::EncodeDType(*dtype));
    for (int64_t d : in.shape()) t->add_shape(d);
    if (in_shm[i].present) {
      auto handle = RegionHandle(client, in_shm[i].region, what);
      if (!handle.ok()) return handle.status();
      pb::SharedMemoryRef* ref = t->mutable_shm();
      ref->set_region(*handle);
      ref->set_offset(in_shm[i].offset);
      ref->set_byte_size(in_shm[i].byte_size);
    } else {
      // The bytes move, not copy, from the request into the tensor.
      t->mutable_data()->swap(*request->mutable_raw_input_contents(raw_of[i]));
    }
  }

  // Outputs: those requested, in their order, or every output whose input came.
  std::vector<std::pair<int, int>> output_of_slot;  // (aux index or -1, model output)
  auto slot_of = [&](int output) -> int {           // -2 when its input is absent
    const int source = spec.outputs[output].source;
    if (source == 0) return -1;
    for (size_t j = 0; j < job->aux_inputs.size(); ++j) {
      if (job->aux_inputs[j] == source) return static_cast<int>(j);
    }
    return -2;
  };
  if (request->outputs_size() == 0) {
    for (size_t o = 0; o < spec.outputs.size(); ++o) {
      const int slot = slot_of(static_cast<int>(o));
      if (slot == -2) continue;
      job->outputs.push_back({static_cast<int>(o), slot, {}});
    }
  } else {
    std::set<int> requested;
    for (int k = 0; k < request->outputs_size(); ++k) {
      const auto& want = request->outputs(k);
      const std::string what = absl::StrCat("output ", Quote(want.name()));
      const int o = spec.FindOutput(want.name());
      if (o < 0) {
        std::vector<std::string> names;
        for (const auto& t : spec.outputs) names.push_back(t.name);
        return absl::InvalidArgumentError(absl::StrCat(what, ": model ", Quote(spec.name),
                                                       " has no output of this name (",
                                                       absl::StrJoin(names, ", "), ")"));
      }
      if (!requested.insert(o).second) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": requested twice"));
      }
      const int slot = slot_of(o);
      if (slot == -2) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": its input '",
                                                       spec.inputs[spec.outputs[o].source].name,
                                                       "' is not in the request"));
      }
      auto p = ReadShmParams(want.parameters(), what);
      if (!p.ok()) return p.status();
      if (p->present) {
        auto handle = RegionHandle(client, p->region, what);
        if (!handle.ok()) return handle.status();
        pb::SharedMemoryRef* ref =
            slot < 0 ? pr.mutable_images_output() : pr.mutable_aux(slot)->mutable_output();
        ref->set_region(*handle);
        ref->set_offset(p->offset);
        ref->set_byte_size(p->byte_size);
      }
      job->outputs.push_back({o, slot, *p});
    }
  }
  for (const auto& out : job->outputs) output_of_slot.emplace_back(out.aux, out.output);

  auto prepared = service_.processor().Prepare(pr);
  if (!prepared.ok()) {
    return NameTensor(prepared.status(), spec, job->aux_inputs, output_of_slot);
  }
  job->prepared = std::move(*prepared);
  auto ticket =
      service_.admission().Acquire(PreprocessorService::InFlightBytes(pr, *job->prepared));
  if (!ticket.ok()) return ticket.status();
  job->ticket = std::move(*ticket);
  job->decode_ns = job->prepared->decode_ns;
  return job;
}

absl::Status KServeService::RunInfer(InferJob& job, bool cancelled,
                                     kserve::ModelInferResponse* response) {
  const auto started = Clock::now();
  job.queue_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(started - job.enqueued).count();
  if (cancelled) return absl::CancelledError("the client cancelled the call before it ran");
  if (std::chrono::system_clock::now() > job.deadline) {
    return absl::DeadlineExceededError(absl::StrCat("the deadline passed while the request waited ",
                                                    job.queue_ns / 1000, " us in the queue"));
  }
  pb::ProcessResponse result;
  auto stats = service_.processor().Run(job.request, *job.prepared, &result);
  if (!stats.ok()) return stats.status();
  const MetricDevice device =
      stats->device == handlers::DeviceKind::kCuda ? MetricDevice::kCuda : MetricDevice::kCpu;
  Metrics& metrics = service_.metrics();
  metrics.ObserveStage(Stage::kDecode, device, job.decode_ns * 1e-9);
  metrics.ObserveStage(Stage::kQueue, device, job.queue_ns * 1e-9);
  metrics.ObserveStage(Stage::kKernel, device, stats->kernel_ns * 1e-9);
  metrics.ObserveStage(Stage::kEncode, device, stats->encode_ns * 1e-9);
  for (const handlers::StepTiming& st : stats->steps) {
    metrics.ObserveKernel(static_cast<int>(st.kind), device, st.seconds);
  }
  metrics.AddSamples(device, static_cast<uint64_t>(stats->samples));
  metrics.AddBytes(job.prepared->bytes_in, stats->bytes_out);
  const pb::Transfer& transfer = result.transfer();
  metrics.AddTransfer(transfer.inline_bytes_in(), transfer.inline_bytes_out(),
                      transfer.shm_bytes_in(), transfer.shm_bytes_out());
  job.kernel_ns = stats->kernel_ns;
  job.encode_ns = stats->encode_ns;
  job.samples = static_cast<uint64_t>(stats->samples);

  const handlers::PipelineModelSpec& spec = job.model->spec;
  response->set_model_name(spec.name);
  response->set_model_version(kVersion);
  response->set_id(job.id);
  for (const auto& out : job.outputs) {
    pb::Tensor* t =
        out.aux < 0 ? result.mutable_images() : result.mutable_aux(out.aux)->mutable_tensor();
    auto* o = response->add_outputs();
    o->set_name(spec.outputs[out.output].name);
    o->set_datatype(WireDatatype(t->dtype()));
    for (int64_t d : t->shape()) o->add_shape(d);
    std::string* raw = response->add_raw_output_contents();
    if (out.shm.present) {
      // The result is in the caller's memory; its place in raw_output_contents stays empty.
      (*o->mutable_parameters())[kRegionParam].set_string_param(out.shm.region);
      (*o->mutable_parameters())[kByteSizeParam].set_int64_param(
          static_cast<int64_t>(out.shm.byte_size));
      if (out.shm.offset != 0) {
        (*o->mutable_parameters())[kOffsetParam].set_int64_param(
            static_cast<int64_t>(out.shm.offset));
      }
    } else {
      raw->swap(*t->mutable_data());
    }
  }
  return absl::OkStatus();
}

void KServeService::Settle(Rpc rpc, const InferJob* job, const absl::Status& s, double seconds,
                           bool cancelled) {
  Metrics& metrics = service_.metrics();
  const int code = CodeOf(s);
  metrics.RequestFinished(rpc, code, seconds);
  if (cancelled) {
    metrics.CountCancelled(rpc);
  } else {
    metrics.CountAnswered(rpc);
  }
  if (job == nullptr || job->model == nullptr) return;
  const Model* model = job->model;
  metrics.ObserveModelRequest(Protocol::kKServeV2, model->metric_index, code, seconds,
                              s.ok() ? job->samples : 0);
  const uint64_t ns = static_cast<uint64_t>(std::max(0.0, seconds) * 1e9);
  if (s.ok()) {
    model->success_count.fetch_add(1);
    model->success_ns.fetch_add(ns);
    model->execution_count.fetch_add(1);
    model->inference_count.fetch_add(job->samples);
    model->queue_ns.fetch_add(static_cast<uint64_t>(job->queue_ns));
    model->input_ns.fetch_add(static_cast<uint64_t>(job->decode_ns));
    model->infer_ns.fetch_add(static_cast<uint64_t>(job->kernel_ns));
    model->output_ns.fetch_add(static_cast<uint64_t>(job->encode_ns));
    model->last_inference_ms.store(
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count()));
  } else {
    model->fail_count.fetch_add(1);
    model->fail_ns.fetch_add(ns);
  }
}

grpc::ServerUnaryReactor* KServeService::ModelInfer(grpc::CallbackServerContext* ctx,
                                                    const kserve::ModelInferRequest* request,
                                                    kserve::ModelInferResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const Clock::time_point arrival = Clock::now();
  Metrics& metrics = service_.metrics();
  metrics.RequestStarted(Rpc::kModelInfer);
  metrics.CountAccepted(Rpc::kModelInfer);
  absl::Status auth = CheckBearerToken(ctx->client_metadata(), service_.options().auth_token);
  if (!auth.ok()) {
    Settle(Rpc::kModelInfer, nullptr, auth, SecondsSince(arrival), false);
    reactor->Finish(ToGrpcStatus(auth));
    return reactor;
  }
  std::string client = ShmClientOf(ctx);
  // Translation and validation grow with the message: not on this reaction thread. gRPC
  // allocated the request non-const and keeps it until Finish; its raw bytes move into the job.
  service_.prepare_queue().Submit([this, ctx, reactor, request, response, arrival,
                                   client = std::move(client)] {
    auto finish = [this, ctx, reactor, arrival](const InferJob* job, const absl::Status& s) {
      const bool dropped = s.code() == absl::StatusCode::kCancelled ||
                           s.code() == absl::StatusCode::kDeadlineExceeded || ctx->IsCancelled();
      Settle(Rpc::kModelInfer, job, s, SecondsSince(arrival), dropped);
      reactor->Finish(ToGrpcStatus(s));
    };
    auto job = PrepareInfer(client, const_cast<kserve::ModelInferRequest*>(request));
    if (!job.ok()) {
      // The model, when known, still counts the failure.
      InferJob failed;
      failed.model = FindModel(request->model_name());
      return finish(&failed, job.status());
    }
    (*job)->arrival = arrival;
    (*job)->enqueued = Clock::now();
    (*job)->deadline = ctx->deadline();
    service_.metrics().AddQueued(1);
    service_.queue().Submit([this, ctx, response, finish, job = std::move(*job)]() mutable {
      service_.metrics().AddQueued(-1);
      absl::Status s = RunInfer(*job, ctx->IsCancelled(), response);
      if (!s.ok()) response->Clear();
      job->prepared.reset();
      job->ticket.Release();
      finish(job.get(), s);
    });
  });
  return reactor;
}

// ---- streaming -----------------------------------------------------------------------------

namespace {

using StreamReactorBase =
    grpc::ServerBidiReactor<kserve::ModelInferRequest, kserve::ModelStreamInferResponse>;

// One ModelStreamInfer stream. Each message is prepared on the prepare threads and run on the
// WorkQueue like a unary call; responses are written in completion order, one write at a time.
// At most `window` messages are unanswered: past it the next read waits, so that gRPC flow
// control slows a client that does not read its responses. A failed request is answered with
// error_message (and its id) and the stream stays open. The stream finishes OK once the client
// has half-closed and every message is answered, or when it is cancelled.
//
// Lifetime: OnDone deletes this; Finish is called only when nothing is in flight and no write
// is outstanding, and every task that refers to `this` holds a message counted in flight.
class InferStream final : public StreamReactorBase {
 public:
  InferStream(KServeService* owner, grpc::CallbackServerContext* ctx)
      : owner_(owner),
        ctx_(ctx),
        client_(ShmClientOf(ctx)),
        window_(std::max(1, owner->service().options().stream_max_inflight)) {
    owner_->service().metrics().AddOpenStreams(1);
    absl::Status auth =
        CheckBearerToken(ctx->client_metadata(), owner->service().options().auth_token);
    if (!auth.ok()) {
      finished_ = true;
      Finish(ToGrpcStatus(auth));
      return;
    }
    reading_ = true;
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool finish;
      {
        std::lock_guard<std::mutex> lock(mu_);
        reading_ = false;
        reads_done_ = true;
        finish = ShouldFinishLocked();
      }
      if (finish) Finish(grpc::Status::OK);
      return;
    }
    auto request = std::make_unique<kserve::ModelInferRequest>();
    request->Swap(&incoming_);
    const Clock::time_point arrival = Clock::now();
    owner_->service().metrics().RequestStarted(Rpc::kModelStreamInfer);
    owner_->service().metrics().CountAccepted(Rpc::kModelStreamInfer);
    bool read_next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++in_flight_;
      read_next = in_flight_ < window_ && !cancelled_;
      reading_ = read_next;
    }
    owner_->service().prepare_queue().Submit(
        [this, request = std::move(request), arrival]() mutable {
          Prepare(std::move(request), arrival);
        });
    if (read_next) StartRead(&incoming_);
  }

  void OnWriteDone(bool ok) override {
    bool read_next = false, finish = false;
    kserve::ModelStreamInferResponse* next = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      outgoing_.pop_front();
      --in_flight_;
      if (!ok) cancelled_ = true;
      if (!outgoing_.empty() && !cancelled_) {
        next = outgoing_.front().get();
      } else {
        // Responses queued behind a failed write are dropped with it.
        while (!outgoing_.empty()) {
          outgoing_.pop_front();
          --in_flight_;
        }
        writing_ = false;
      }
      read_next = !reading_ && !reads_done_ && !cancelled_ && in_flight_ < window_;
      if (read_next) reading_ = true;
      finish = ShouldFinishLocked();
    }
    if (read_next) StartRead(&incoming_);
    if (next != nullptr) StartWrite(next);
    if (finish) Finish(grpc::Status::OK);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }

  void OnDone() override {
    owner_->service().metrics().AddOpenStreams(-1);
    delete this;
  }

 private:
  void Prepare(std::unique_ptr<kserve::ModelInferRequest> request, Clock::time_point arrival) {
    auto job = owner_->PrepareInfer(client_, request.get());
    if (!job.ok()) {
      Complete(*request, nullptr, job.status(), arrival, nullptr);
      return;
    }
    (*job)->arrival = arrival;
    (*job)->enqueued = Clock::now();
    owner_->service().metrics().AddQueued(1);
    owner_->service().queue().Submit(
        [this, request = std::move(request), arrival, job = std::move(*job)]() mutable {
          owner_->service().metrics().AddQueued(-1);
          auto response = std::make_unique<kserve::ModelStreamInferResponse>();
          bool cancelled;
          {
            std::lock_guard<std::mutex> lock(mu_);
            cancelled = cancelled_;
          }
          absl::Status s = owner_->RunInfer(*job, cancelled, response->mutable_infer_response());
          job->prepared.reset();
          job->ticket.Release();
          Complete(*request, std::move(response), s, arrival, job.get());
        });
  }

  // Settles one message and queues its response (or drops it when the stream is gone).
  void Complete(const kserve::ModelInferRequest& request,
                std::unique_ptr<kserve::ModelStreamInferResponse> response, absl::Status s,
                Clock::time_point arrival, const KServeService::InferJob* job) {
    if (!s.ok()) {
      response = std::make_unique<kserve::ModelStreamInferResponse>();
      response->set_error_message(ToGrpcStatus(s).error_message());
      response->mutable_infer_response()->set_id(request.id());
      response->mutable_infer_response()->set_model_name(request.model_name());
    }
    bool finish = false, dropped = false;
    kserve::ModelStreamInferResponse* write = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cancelled_) {
        dropped = true;
        --in_flight_;
        finish = ShouldFinishLocked();
      } else {
        outgoing_.push_back(std::move(response));
        if (!writing_) {
          writing_ = true;
          write = outgoing_.front().get();
        }
      }
    }
    // A request that failed before it had a job still counts for its model, when known.
    KServeService::InferJob named;
    if (job == nullptr) {
      named.model = owner_->FindModel(request.model_name());
      job = &named;
    }
    owner_->Settle(Rpc::kModelStreamInfer, job, s, SecondsSince(arrival), dropped);
    if (write != nullptr) StartWrite(write);
    if (finish) Finish(grpc::Status::OK);
  }

  // Under mu_. True once, when the stream can finish; marks it finished.
  bool ShouldFinishLocked() {
    if (finished_ || in_flight_ != 0 || writing_ || reading_) return false;
    if (!reads_done_ && !cancelled_) return false;
    finished_ = true;
    return true;
  }

  KServeService* const owner_;
  grpc::CallbackServerContext* const ctx_;
  const std::string client_;
  const int window_;
  kserve::ModelInferRequest incoming_;  // the one outstanding read's message
  std::mutex mu_;
  int in_flight_ = 0;        // GUARDED_BY(mu_): read and not yet written or dropped
  bool reading_ = false;     // GUARDED_BY(mu_): a read is outstanding
  bool reads_done_ = false;  // GUARDED_BY(mu_)
  bool writing_ = false;     // GUARDED_BY(mu_): a write is outstanding
  bool cancelled_ = false;   // GUARDED_BY(mu_)
  bool finished_ = false;    // GUARDED_BY(mu_)
  std::deque<std::unique_ptr<kserve::ModelStreamInferResponse>> outgoing_;  // GUARDED_BY(mu_)
};

}  // namespace

StreamReactorBase* KServeService::ModelStreamInfer(grpc::CallbackServerContext* ctx) {
  return new InferStream(this, ctx);
}

}  // namespace tensorprep::server
