// The op registry: one schema per pipeline op. What a client sees of an op — its name, its
// arguments with their types and descriptions, its summary, whether it is geometric (follows aux
// tensors) and whether it draws per sample — is read from the wire API's descriptor (the Op
// oneof and its (op)/(arg) options in tensorprep.proto), never typed here. What the server does
// with it — the input dtypes it takes, the output shape and dtype it infers (its validation),
// the kernel steps it lowers to with its per-sample draws, and the kernels those need — is one
// entry in op_registry.cc. ListOps, the Python builders and the docs' op table read the same
// descriptor. Adding an op = its message and Op field in the proto + one entry here + kernels
// for any new KernelKind.
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

// The main batch as an op sees it: geometric ops change H and W, grayscale C, casts the dtype.
struct BatchState {
  kernels::BatchShape shape;  // logical NHWC
  kernels::DType dtype = kernels::DType::kUInt8;
  bool channels_first = false;  // set by channels_first, the last op
};

// Accumulates steps while a pipeline is lowered, fusing where allowed (see BuildPlan).
class PlanBuilder {
 public:
  PlanBuilder(const BatchState& input, uint64_t seed, uint64_t sample_offset, bool fuse);

  const BatchState& state() const { return state_; }
  int64_t batch() const { return state_.shape.n; }
  // Uniform [0, 1) draw for sample `i` of this batch (0-based) of op `op_index`.
  double Uniform(int op_index, int64_t i, uint32_t draw) const;

  // `inverse` / `flags` have 1 entry (all samples) or batch() entries. A warp's output is
  // out_h x out_w; the maps take an output pixel to the source position it samples.
  void AddWarp(int op_index, std::vector<kernels::Affine> inverse, const kernels::WarpParams& p,
               int64_t out_h, int64_t out_w);
  void AddWarp(int op_index, std::vector<kernels::Affine> inverse, const kernels::WarpParams& p) {
    AddWarp(op_index, std::move(inverse), p, state_.shape.h, state_.shape.w);
  }
  // torchvision's resize of a box of the input (resize: the whole image; random resized crop:
  // a box per sample) to out_h x out_w; `maps` (as ResizeMap makes them) and `boxes` have the
  // same count. Antialiased bilinear with an axis that shrinks is a kResample step (the warp
  // takes `maps` for aux tensors); anything else is a warp with the edge border.
  void AddResize(int op_index, std::vector<kernels::Affine> maps, std::vector<ResampleBox> boxes,
                 kernels::Interp interp, bool antialias, int64_t out_h, int64_t out_w);
  void AddFlip(int op_index, std::vector<kernels::FlipFlags> flags);
  // Colour chains (1, or one per sample) on the main batch, which then has `out_c` channels.
  void AddColor(int op_index, std::vector<std::vector<kernels::ColorAdjust>> chains, int64_t out_c);
  void AddElementwise(int op_index, kernels::ElementwiseOp op);
  // The main batch is written channels-first by the last step.
  void SetChannelsFirst();

  Plan Finish(std::vector<AuxSampling> aux) &&;

 private:
  BatchState state_;
  uint64_t seed_;
  uint64_t sample_offset_;
  bool fuse_;
  std::vector<Step> steps_;
};

struct OpSpec {
  // From the descriptor: the Op oneof field's name, its (op) option, its message's fields.
  std::string name;
  pb::Op::KindCase kind;
  std::string summary;
  bool geometric = false;
  bool random = false;
  std::vector<ArgSpec> args;
  // From the entry: the input dtypes it takes (others: INVALID_ARGUMENT naming the op).
  std::vector<kernels::DType> dtypes;
  // Checks the op's arguments for a batch in `in` and infers the batch it makes (`out`, a copy
  // of `in` on entry); INVALID_ARGUMENT names the field under `path` (e.g.
  // "pipeline.ops[2].rotate.angle_deg"), what was expected and what came. This is the one
  // validation of a request: the kernels only check their own invariants and answer INTERNAL
  // when one is broken (kernels/common/checks.h), so every rule a client must follow is enforced
  // here, with rules on kernel operands taken from kernels (kernels::CheckOperand).
  absl::Status (*infer)(const pb::Op& op, const BatchState& in, const std::string& path,
                        BatchState* out);
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
  // The largest batch any op may make (its result and every intermediate), in bytes.
  uint64_t max_tensor_bytes = uint64_t{1} << 40;
};

// The largest height or width an op may make (the kernels index rows and columns in 32 bits).
inline constexpr int64_t kMaxSide = (int64_t{1} << 31) - 1;

// Validates `pipeline` for `input` and lowers it. INVALID_ARGUMENT for an empty or too-long
// pipeline, an unknown op or bad arguments, naming the field; RESOURCE_EXHAUSTED when an op
// would make a batch over options.max_tensor_bytes, before anything is allocated. Thread-safe.
absl::StatusOr<Plan> BuildPlan(const pb::Pipeline& pipeline, const BatchState& input, uint64_t seed,
                               uint64_t sample_offset, std::vector<AuxSampling> aux,
                               const PlanOptions& options);

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_OP_REGISTRY_H_
