// Ragged batches: a request's images as an ImageList (encoded JPEG/PNG files, or raw samples of
// their own sizes) and its aux tensors as lists of the same length. Each sample is planned on its
// own (its size, and sample_offset + its index for the draws) and the per-sample results are
// written into one dense batch, so the pipeline must give one output size whatever the input
// size. Decoding runs on the CPU, in parallel over the samples, as its own stage; where a JPEG
// sample's first step is a crop or resize of part of it (random_resized_crop, crop, center_crop),
// only that part is decoded.
#ifndef TENSORPREP_HANDLERS_IMAGE_LIST_H_
#define TENSORPREP_HANDLERS_IMAGE_LIST_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "handlers/backend.h"
#include "handlers/op_registry.h"
#include "handlers/plan.h"
#include "handlers/tensor_codec.h"
#include "kernels/codec/image_decode.h"
#include "kernels/common/thread_pool.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::handlers {

// One checked sample: an encoded file and its header, or a raw (1, H, W, C) view.
struct RaggedSample {
  std::string_view encoded;  // empty for a raw sample
  kernels::ImageHeader header;
  kernels::ConstTensorView raw;  // raw samples: over the message's bytes, or over `copy`
  AlignedBuffer copy;            // raw bytes that were misaligned for their dtype
  int64_t h = 0;
  int64_t w = 0;
};

// A checked ImageList: its samples share the dtype and C of the dense result.
struct RaggedTensor {
  std::vector<RaggedSample> samples;
  kernels::DType dtype = kernels::DType::kUInt8;
  int64_t c = 0;
  int rank = 4;                // of the dense result: 3 (N, H, W) or 4 (N, H, W, C)
  uint64_t encoded_bytes = 0;  // bytes of the list in the request
};

// A request whose images came as an ImageList, prepared: the checked lists and one plan per
// sample. The processor's Plan for such a request is sample 0's with the batch's N, which gives
// the dense output's shape and dtype.
struct RaggedBatch {
  RaggedTensor main;
  std::vector<RaggedTensor> aux;  // one per request aux, in order
  std::vector<Plan> plans;        // one per sample
  // Per sample, the part of the main image its plan reads (the whole image unless the first step
  // reads only a box of it and the request has no aux); plans[i] is expressed relative to it.
  std::vector<kernels::DecodeBox> boxes;
  // The decoded bytes of the largest sample (its tensors together): each worker thread holds
  // one sample's at a time while the request runs.
  uint64_t scratch_bytes = 0;
};

// Limits on encoded samples, besides DecodeLimits' per-tensor bytes (which bound each decoded
// sample).
struct ImageLimits {
  // Declared pixels (height x width) of one encoded image; more is refused from its header,
  // before anything is decoded (a decompression bomb declares a huge size in a few bytes).
  uint64_t max_image_pixels = uint64_t{1} << 27;
};

// Checks `list` (at `path`, e.g. "image_list"): at least one sample; each one encoded (its header
// read, its size within `image_limits` and, decoded, within limits.max_tensor_bytes) or raw ((H, W)
// or (H, W, C), data of the right size); all of one dtype and C. `default_channels` applies when list.channels is 0. INVALID_ARGUMENT names
// the sample and field ("image_list.samples[3].encoded: corrupt JPEG file: ..."),
// RESOURCE_EXHAUSTED a size over a limit. Views point into `list`, which must outlive the result.
absl::StatusOr<RaggedTensor> CheckImageList(const pb::ImageList& list, const std::string& path,
                                            int default_channels, const DecodeLimits& limits,
                                            const ImageLimits& image_limits);

// Plans every sample of `batch` (whose main and aux are checked; aux sample sizes must equal the
// main samples': INVALID_ARGUMENT naming both otherwise) and checks that they make one dense
// batch. INVALID_ARGUMENT, saying so, when the pipeline's output size follows its input size; a
// sample's planning error is prefixed with the sample ("image_list.samples[2] (31x40): ...").
// On success fills batch->plans, batch->boxes and batch->scratch_bytes and returns the dense plan.
absl::StatusOr<Plan> PlanImageList(const pb::Pipeline& pipeline, uint64_t seed,
                                   uint64_t sample_offset, const std::vector<AuxSampling>& aux,
                                   const PlanOptions& options, RaggedBatch* batch);

// Decodes every sample of `batch` and runs its plan on `cpu` right after, while its pixels are in
// cache (one task per sample, in parallel over `pool`, which may be null), writing sample i of
// `out` (whose main and aux have the dense shapes). INVALID_ARGUMENT naming the sample for a file
// that turns out corrupt or truncated (the samples not yet started are skipped); INTERNAL for a
// kernel error. `decode_ns` gets decoding's share of the wall time (split from the kernels' in
// proportion to the time the tasks spent in each); `timings` (may be null) one entry per kernel
// kind, summed over the samples. Thread-safe.
absl::Status RunImageList(const RaggedBatch& batch, Backend* cpu, kernels::ThreadPool* pool,
                          const ExecOutputs& out, std::vector<StepTiming>* timings,
                          int64_t* decode_ns);

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_IMAGE_LIST_H_
