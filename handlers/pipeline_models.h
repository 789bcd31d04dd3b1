// Named pipelines offered as models of the KServe v2 / Triton protocol: loading and checking the
// pipeline file (tensorprep.v1.PipelineFile in protobuf's JSON mapping, docs/kserve.md), and the
// built-in model that takes its pipeline from each request. No gRPC types here.
#ifndef TENSORPREP_HANDLERS_PIPELINE_MODELS_H_
#define TENSORPREP_HANDLERS_PIPELINE_MODELS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/common/tensor.h"
#include "tensorprep/v1/pipelines.pb.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::handlers {

namespace pb = ::tensorprep::v1;

// The name of the built-in model (its pipeline comes from each request's "pipeline" parameter).
inline constexpr char kBuiltinModelName[] = "tensorprep";

// One input or output of a model, checked.
struct ModelTensor {
  std::string name;
  // Inputs: the datatype a request must send, unset for the built-in model (which takes any).
  // Outputs: the datatype produced, unset when it depends on the request (built-in model).
  std::optional<kernels::DType> dtype;
  // Batch dimension first; -1 free. Outputs: their source input's shape.
  std::vector<int64_t> shape;
  // Inputs after the first (aux): sampling and fill, and whether a request may leave it out.
  pb::Interpolation interpolation = pb::INTERPOLATION_UNSPECIFIED;
  double fill = 0;
  bool optional = false;
  // Outputs: index of the input this is the result of (0: the main batch).
  int source = -1;
};

struct PipelineModelSpec {
  std::string name;
  std::string file;  // where it was declared ("" for the built-in model)
  std::string description;
  int32_t max_batch_size = 0;
  std::vector<ModelTensor> inputs;   // [0] is the main batch
  std::vector<ModelTensor> outputs;  // at most one per input
  pb::Pipeline pipeline;             // empty for the built-in model
  bool builtin = false;
  // The built-in model also takes rank-3 and rank-4 batches alike.
  bool any_rank = false;

  int FindInput(const std::string& name) const;   // index or -1
  int FindOutput(const std::string& name) const;  // index or -1
};

// "UINT8", "INT32", "FP16", "FP32" <-> dtypes; nullopt for any other string.
std::optional<kernels::DType> ParseDatatype(const std::string& datatype);
const char* DatatypeName(kernels::DType dtype);

// Loads `path`: one JSON file, or every regular file ending in ".json" in a directory (in name
// order; a directory without one is an error). Checks every model: names (unique across files,
// not the built-in's), inputs, outputs, shapes, datatypes, and the pipeline itself (lowered for
// a batch of the declared shape, free dimensions taken as 1 for N and 16 for H and W, and 3 for
// a free C). INVALID_ARGUMENT naming the file, the pipeline and the field, e.g.
// "pipelines.json: pipelines[1] 'rotate30': inputs[0].datatype: expected one of UINT8, INT32,
// FP16, FP32, got 'FP64'". Thread-safe (no shared state).
absl::StatusOr<std::vector<PipelineModelSpec>> LoadPipelineModels(const std::string& path);

// Checks and lowers the models of one parsed file; `file` names it in errors. For tests and
// LoadPipelineModels.
absl::StatusOr<std::vector<PipelineModelSpec>> CheckPipelineFile(const pb::PipelineFile& parsed,
                                                                 const std::string& file);

// The built-in model: input IMAGES (any supported datatype, rank 3 or 4), optional inputs LABELS
// and MASKS (nearest, fill 0); outputs of the same names.
PipelineModelSpec BuiltinModel();

// A pipeline in protobuf's JSON mapping ({"ops": [...]}) or a bare JSON list of ops.
// INVALID_ARGUMENT with `what` ("parameters.pipeline") and the parser's complaint.
absl::StatusOr<pb::Pipeline> ParsePipelineJson(const std::string& json, const std::string& what);

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_PIPELINE_MODELS_H_
