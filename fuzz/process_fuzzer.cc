// libFuzzer target: arbitrary bytes -> ProcessRequest decoding -> validation and planning ->
// execution on the CPU backend for what passes (tensors are capped at 64 KiB so each input runs
// in microseconds). Beyond the sanitizers' checks it asserts the contract: a refusal carries one
// of the documented codes and a message, and an accepted request produces outputs of exactly
// the size its shape and dtype promise. See docs/reliability.md for how to run it.
//
// Image lists (encoded JPEG/PNG and raw samples of their own sizes) go through the same path:
// header parsing, the size limits, per-sample planning, and the decoders on whatever bytes the
// fuzzer makes of the seeds' small files; a corrupt file may fail the run, with
// INVALID_ARGUMENT only.
//
// Shared memory is in play too: the environment registers one 1 MiB region, and every reference
// whose region is "fuzz" is pointed at its real handle before validation (handles are random,
// so the fuzzer could never guess one), so offsets, sizes, alignment and overlaps of inputs and
// outputs in shared memory are fuzzed like any other field.
#include <fcntl.h>
#include <google/protobuf/stubs/logging.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "handlers/backend.h"
#include "handlers/processor.h"
#include "handlers/shm_regions.h"
#include "kernels/common/tensor.h"
#include "kernels/common/thread_pool.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace {

namespace pb = ::tensorprep::v1;
using tensorprep::handlers::CpuBackend;
using tensorprep::handlers::Processor;
using tensorprep::handlers::ProcessorOptions;

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "contract violated: %s: %s\n", what, detail.c_str());
  std::abort();
}

constexpr uint64_t kRegionBytes = 1 << 20;

struct Env {
  Env()
      : pool(2), cpu(&pool), shm(ShmOptions()), processor(Options(), &cpu, nullptr, &shm, &pool) {
    // Invalid UTF-8 in string fields is logged by protobuf on every such input; not a finding.
    google::protobuf::SetLogHandler(nullptr);
    const std::string key = "/tensorprep-fuzz-" + std::to_string(getpid());
    const int fd = shm_open(key.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, kRegionBytes) != 0) Fail("fuzz set-up", "shm object");
    close(fd);
    pb::RegisterSharedMemoryRequest r;
    r.set_key(key);
    r.set_byte_size(kRegionBytes);
    auto h = shm.Register(r, "fuzzer");
    shm_unlink(key.c_str());  // the registry keeps its mapping
    if (!h.ok()) Fail("fuzz set-up", h.status().ToString());
    handle = *h;
  }
  static tensorprep::handlers::ShmOptions ShmOptions() {
    tensorprep::handlers::ShmOptions o;
    o.key_prefix = "/tensorprep-fuzz-";
    return o;
  }
  static ProcessorOptions Options() {
    ProcessorOptions o;
    o.limits.max_tensor_bytes = 64 << 10;
    o.image_limits.max_image_pixels = 16 << 10;
    return o;
  }
  tensorprep::kernels::ThreadPool pool;
  CpuBackend cpu;
  tensorprep::handlers::SharedMemoryRegions shm;
  Processor processor;
  std::string handle;
};

void PointAtRegion(pb::SharedMemoryRef* ref, const std::string& handle) {
  if (ref->region() == "fuzz") ref->set_region(handle);
}

uint64_t ExpectedBytes(const pb::Tensor& t) {
  uint64_t n = 1;
  for (int64_t d : t.shape()) n *= static_cast<uint64_t>(d);
  switch (t.dtype()) {
    case pb::DTYPE_UINT8:
      return n;
    case pb::DTYPE_FLOAT16:
      return n * 2;
    case pb::DTYPE_INT32:
    case pb::DTYPE_FLOAT32:
      return n * 4;
    default:
      Fail("output dtype", pb::DType_Name(t.dtype()));
  }
}

// Bytes of an output tensor: in data, or in shared memory (then its reference must hold them).
uint64_t OutputBytes(const pb::Tensor& t) {
  if (!t.has_shm()) return t.data().size();
  if (!t.data().empty() || t.shm().byte_size() < ExpectedBytes(t)) Fail("shm output", "size");
  return ExpectedBytes(t);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Env* env = new Env();  // lives for the whole run
  pb::ProcessRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (request.images().has_shm())
    PointAtRegion(request.mutable_images()->mutable_shm(), env->handle);
  if (request.has_images_output()) PointAtRegion(request.mutable_images_output(), env->handle);
  for (pb::AuxTensor& a : *request.mutable_aux()) {
    if (a.tensor().has_shm()) PointAtRegion(a.mutable_tensor()->mutable_shm(), env->handle);
    if (a.has_output()) PointAtRegion(a.mutable_output(), env->handle);
  }
  auto prepared = env->processor.Prepare(request);
  if (!prepared.ok()) {
    const absl::StatusCode c = prepared.status().code();
    if (c != absl::StatusCode::kInvalidArgument && c != absl::StatusCode::kResourceExhausted &&
        c != absl::StatusCode::kFailedPrecondition && c != absl::StatusCode::kNotFound) {
      Fail("refusal code", prepared.status().ToString());
    }
    if (prepared.status().message().empty()) Fail("refusal message", "empty");
    return 0;
  }
  pb::ProcessResponse response;
  auto stats = env->processor.Run(request, **prepared, &response);
  const bool listed = request.has_image_list();
  if (!stats.ok()) {
    // Only a file's data (past its header) can fail a validated request: corrupt or truncated.
    if (listed && stats.status().code() == absl::StatusCode::kInvalidArgument &&
        stats.status().message().find(".encoded: corrupt ") != std::string::npos) {
      return 0;
    }
    Fail("run of a validated request", stats.status().ToString());
  }
  if (listed) {
    // A dense batch of one sample per list entry, aux lists likewise.
    const pb::Tensor& main = response.images();
    if (main.shape_size() < 3 || main.shape(0) != request.image_list().samples_size() ||
        OutputBytes(main) != ExpectedBytes(main)) {
      Fail("image_list output", main.DebugString().substr(0, 200));
    }
    if (response.aux_size() != request.aux_size()) Fail("aux count", "");
    for (int j = 0; j < response.aux_size(); ++j) {
      const pb::Tensor& out = response.aux(j).tensor();
      if (out.shape_size() < 3 || out.shape(0) != main.shape(0) ||
          OutputBytes(out) != ExpectedBytes(out)) {
        Fail("image_list aux output", response.aux(j).name());
      }
    }
    return 0;
  }
  // The main batch keeps its N and rank (4, (N, C, H, W), when written channels-first); ops
  // may change H, W and C. Aux tensors keep N, C, rank and dtype and take the main batch's H and
  // W. Every output holds exactly the bytes its header promises.
  const pb::Tensor& main = response.images();
  const bool channels_first = main.shape_size() == 4 && request.images().shape_size() == 3;
  if (main.shape_size() != request.images().shape_size() && !channels_first) {
    Fail("output rank", main.DebugString().substr(0, 200));
  }
  if (main.shape(0) != request.images().shape(0)) Fail("output shape", "N");
  for (int64_t d : main.shape()) {
    if (d < 1) Fail("output shape", "a dimension < 1");
  }
  if (OutputBytes(main) != ExpectedBytes(main)) {
    Fail("output bytes", std::to_string(main.data().size()));
  }
  if (response.aux_size() != request.aux_size()) Fail("aux count", "");
  for (int j = 0; j < response.aux_size(); ++j) {
    const pb::Tensor& out = response.aux(j).tensor();
    const pb::Tensor& in = request.aux(j).tensor();
    if (out.dtype() != in.dtype() || out.shape_size() != in.shape_size() ||
        out.shape(0) != in.shape(0) || (in.shape_size() == 4 && out.shape(3) != in.shape(3)) ||
        OutputBytes(out) != ExpectedBytes(out)) {
      Fail("aux output", response.aux(j).name());
    }
  }
  return 0;
}
