// libFuzzer target: arbitrary bytes -> ProcessRequest decoding -> validation and planning ->
// execution on the CPU backend for what passes (tensors are capped at 64 KiB so each input runs
// in microseconds). Beyond the sanitizers' checks it asserts the contract: a refusal carries one
// of the documented codes and a message, and an accepted request produces outputs of exactly
// the size its shape and dtype promise. See docs/reliability.md for how to run it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <google/protobuf/stubs/logging.h>

#include "handlers/backend.h"
#include "handlers/processor.h"
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

struct Env {
  Env() : pool(2), cpu(&pool), processor(Options(), &cpu, nullptr) {
    // Invalid UTF-8 in string fields is logged by protobuf on every such input; not a finding.
    google::protobuf::SetLogHandler(nullptr);
  }
  static ProcessorOptions Options() {
    ProcessorOptions o;
    o.limits.max_tensor_bytes = 64 << 10;
    return o;
  }
  tensorprep::kernels::ThreadPool pool;
  CpuBackend cpu;
  Processor processor;
};

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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Env* env = new Env();  // lives for the whole run
  pb::ProcessRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto prepared = env->processor.Prepare(request);
  if (!prepared.ok()) {
    const absl::StatusCode c = prepared.status().code();
    if (c != absl::StatusCode::kInvalidArgument && c != absl::StatusCode::kResourceExhausted &&
        c != absl::StatusCode::kFailedPrecondition) {
      Fail("refusal code", prepared.status().ToString());
    }
    if (prepared.status().message().empty()) Fail("refusal message", "empty");
    return 0;
  }
  pb::ProcessResponse response;
  auto stats = env->processor.Run(request, **prepared, &response);
  if (!stats.ok()) Fail("run of a validated request", stats.status().ToString());
  if (response.images().shape_size() != request.images().shape_size()) {
    Fail("output rank", response.images().DebugString().substr(0, 200));
  }
  for (int i = 0; i < 3; ++i) {
    if (response.images().shape(i) != request.images().shape(i)) Fail("output shape", "N/H/W");
  }
  if (response.images().data().size() != ExpectedBytes(response.images())) {
    Fail("output bytes", std::to_string(response.images().data().size()));
  }
  if (response.aux_size() != request.aux_size()) Fail("aux count", "");
  for (int j = 0; j < response.aux_size(); ++j) {
    const pb::Tensor& out = response.aux(j).tensor();
    if (out.dtype() != request.aux(j).tensor().dtype() ||
        out.data().size() != request.aux(j).tensor().data().size()) {
      Fail("aux output", response.aux(j).name());
    }
  }
  return 0;
}
