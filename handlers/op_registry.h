// The op registry: one entry per pipeline op, holding everything the service knows about it —
// its name and arguments (for ListOps), how to validate it, and how to lower it into kernel steps.
// Adding an op = one entry here + its message in the proto + kernels for any new KernelKind.
#ifndef TENSORPREP_HANDLERS_OP_REGISTRY_H_
#define TENSORPREP_HANDLERS_OP_REGISTRY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "handlers/plan.h"
#include "kernels/common/tensor.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::handlers {

namespace pb = ::tensorprep::v1;

struct ArgSpec {
  std::string name;
  std::string type;
  std::string description;
};

// The main batch as an op sees it (cast ops change the dtype along the pipeline).
struct BatchState {
  kernels::BatchShape shape;
  kernels::DType dtype = kernels::DType::kUInt8;
};

// Accumulates steps while a pipeline is lowered, fusing where allowed (see BuildPlan).
class PlanBuilder {
 public:
  PlanBuilder(const BatchState& input, uint64_t seed, uint64_t sample_offset, bool fuse);

  const BatchState& state() const { return state_; }
  int64_t batch() const { return state_.shape.n; }
  // Uniform [0, 1) draw for sample `i` of this batch (0-based) of op `op_index`.
  double Uniform(int op_index, int64_t i, uint32_t draw) const;

  // `inverse` / `flags` have 1 entry (all samples) or batch() entries.
  void AddWarp(int op_index, std::vector<kernels::Affine> inverse, const kernels::WarpParams& p);
  void AddFlip(int op_index, std::vector<kernels::FlipFlags> flags);
  void AddElementwise(int op_index, kernels::ElementwiseOp op);

  Plan Finish(std::vector<AuxSampling> aux) &&;

 private:
  BatchState state_;
  uint64_t seed_;
  uint64_t sample_offset_;
  bool fuse_;
  std::vector<Step> steps_;
};

struct OpSpec {
  std::string name;  // the Op oneof field name
  pb::Op::KindCase kind;
  std::string summary;
  bool geometric = false;
  std::vector<ArgSpec> args;
  // Checks the op's arguments for a batch in `state`; INVALID_ARGUMENT names the field under
  // `path` (e.g. "pipeline.ops[2].rotate.angle_deg"), what was expected and what came. This is
  // the one validation of a request: the kernels only check their own invariants and answer
  // INTERNAL when one is broken (kernels/common/checks.h), so every rule a client must follow is
  // enforced here, with rules on kernel operands taken from kernels (kernels::CheckOperand).
  absl::Status (*validate)(const pb::Op& op, const BatchState& state, const std::string& path);
  // Appends the op's kernel work; per-sample random parameters are drawn here.
  void (*lower)(const pb::Op& op, int op_index, PlanBuilder& builder);
  // Kernels the op lowers to: a backend offers the op when it implements them all.
  std::vector<KernelKind> kernels;
};

// Immutable after construction; thread-safe.
class OpRegistry {
 public:
  static const OpRegistry& Default();

  const OpSpec* Find(pb::Op::KindCase kind) const;
  const std::vector<OpSpec>& ops() const { return ops_; }
  // "rotate, flip, add, ..." for error messages.
  std::string Names() const;

 private:
  OpRegistry();
  std::vector<OpSpec> ops_;
};

struct PlanOptions {
  // Compose consecutive geometric ops into one resampling per sample and run consecutive
  // element-wise ops as one pass. Off runs each op as its own kernel (tests compare the two).
  bool fuse = true;
  int max_ops = 256;
};

// Validates `pipeline` for `input` and lowers it. INVALID_ARGUMENT for an empty or too-long
// pipeline, an unknown op or bad arguments, naming the field. Thread-safe.
absl::StatusOr<Plan> BuildPlan(const pb::Pipeline& pipeline, const BatchState& input,
                               uint64_t seed, uint64_t sample_offset,
                               std::vector<AuxSampling> aux, const PlanOptions& options);

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_OP_REGISTRY_H_
