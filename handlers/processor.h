// Turns a decoded ProcessRequest into work: validation (shape of the message, then meaning),
// planning, device routing, execution, and the response. No gRPC server types here; the server
// layer only moves messages and converts statuses.
#ifndef TENSORPREP_HANDLERS_PROCESSOR_H_
#define TENSORPREP_HANDLERS_PROCESSOR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "handlers/backend.h"
#include "handlers/image_list.h"
#include "handlers/op_registry.h"
#include "handlers/plan.h"
#include "handlers/shm_regions.h"
#include "handlers/tensor_codec.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::handlers {

struct ProcessorOptions {
  PlanOptions plan;
  DecodeLimits limits;
  ImageLimits image_limits;
  // With DEVICE_AUTO, batches of at least this many input bytes go to a usable CUDA device.
  uint64_t auto_cuda_min_bytes = uint64_t{1} << 20;
  // Which device DEVICE_AUTO may pick: kCpu pins everything to the CPU (--device cpu).
  bool allow_cuda = true;
  // Retry a request on the CPU when its CUDA execution fails (else it fails with INTERNAL).
  bool cuda_fallback_to_cpu = true;
};

// A request that passed validation and has a plan and a device; holds views into the request,
// which must outlive it.
struct PreparedRequest {
  Plan plan;
  DeviceKind device = DeviceKind::kCpu;
  DecodedTensor main;
  std::vector<DecodedTensor> aux;
  // Where results go when the request placed them in shared memory (`data` null otherwise):
  // the main result, and one per aux tensor.
  ShmSpan main_out;
  std::vector<ShmSpan> aux_out;
  // Set when the images came as an image_list (main and aux then hold only the dense batch's
  // dtype, C and rank, with no data): the samples and their plans; `plan` gives the dense shape.
  std::unique_ptr<RaggedBatch> ragged;
  uint64_t ragged_threads = 0;  // threads that decode its samples at once
  int64_t decode_ns = 0;
  uint64_t bytes_in = 0;
  // Input bytes that came inside the message; the rest (bytes_in - inline_bytes_in) were read
  // from shared memory.
  uint64_t inline_bytes_in = 0;
};

struct RunStats {
  DeviceKind device = DeviceKind::kCpu;
  std::vector<StepTiming> steps;
  int64_t kernel_ns = 0;
  int64_t image_decode_ns = 0;  // decoding an image_list's files (not in kernel_ns)
  int64_t encode_ns = 0;
  uint64_t bytes_out = 0;
  int64_t samples = 0;
  // Result bytes returned inside the message (the rest of bytes_out went to shared memory).
  uint64_t inline_bytes_out = 0;
};

// Thread-safe: Prepare and Run may be called from many threads at once.
class Processor {
 public:
  // `cpu` must be non-null; `cuda` and `shm` may be null (no CUDA; shared memory disabled);
  // `pool` spreads the samples of an image_list (null: one at a time). None is owned; all
  // outlive the processor.
  Processor(ProcessorOptions options, Backend* cpu, Backend* cuda,
            const SharedMemoryRegions* shm = nullptr, kernels::ThreadPool* pool = nullptr);

  // Validates and plans. INVALID_ARGUMENT naming the field (prefixed with the request id when
  // set), RESOURCE_EXHAUSTED over a size limit, FAILED_PRECONDITION for DEVICE_CUDA without a
  // usable device. Shared-memory references are resolved here (the prepared request pins their
  // regions): the errors of SharedMemoryRegions::Resolve, and INVALID_ARGUMENT for an output
  // that overlaps an input or another output.
  absl::StatusOr<std::unique_ptr<PreparedRequest>> Prepare(const pb::ProcessRequest& request) const;

  // Runs a prepared request and fills `response` (results, aux, device, decode/kernel/encode
  // timings; queue and total are the caller's). INTERNAL if a kernel fails and no fallback ran;
  // FAILED_PRECONDITION if a shared-memory region it used broke (shrank) while it ran.
  // With `main_data`, the main result is written there instead of into images.data, which stays
  // empty (dtype and shape are set): for a caller that puts those bytes on the wire itself.
  // `main_data` must hold MainOutputBytes(prepared) bytes, aligned to 16.
  absl::StatusOr<RunStats> Run(const pb::ProcessRequest& request, PreparedRequest& prepared,
                               pb::ProcessResponse* response, void* main_data = nullptr) const;

  // Bytes of a prepared request's main result.
  static uint64_t MainOutputBytes(const PreparedRequest& prepared);
  // Shape and bytes of aux tensor j's result: the input's N and C at the result's H and W.
  static kernels::BatchShape AuxOutputShape(const PreparedRequest& prepared, size_t j);
  static uint64_t AuxOutputBytes(const PreparedRequest& prepared, size_t j);
  // Result bytes the server holds in memory for a prepared request until they are sent (those
  // written to shared memory excluded), and the decoded samples of an image_list while it runs.
  static uint64_t InlineOutputBytes(const PreparedRequest& prepared);

  // Devices for ListOps: CPU first, then CUDA when built.
  std::vector<const Backend*> backends() const;
  const ProcessorOptions& options() const { return options_; }

 private:
  ProcessorOptions options_;
  Backend* cpu_;
  Backend* cuda_;
  const SharedMemoryRegions* shm_;
  kernels::ThreadPool* pool_;
};

// Fills a ListOps response from the registry and the backends.
void DescribeOps(const std::vector<const Backend*>& backends, pb::ListOpsResponse* response);

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_PROCESSOR_H_
