#include "handlers/op_registry.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "handlers/tensor_codec.h"
#include "kernels/common/philox.h"
#include "kernels/common/status.h"
#include "kernels/elementwise/elementwise.h"

namespace tensorprep::handlers {

using kernels::Affine;
using kernels::DType;
using kernels::ElementwiseKind;
using kernels::ElementwiseOp;
using kernels::FlipFlags;
using kernels::WarpParams;

const char* KernelName(KernelKind kind) {
  switch (kind) {
    case KernelKind::kWarp:
      return "warp";
    case KernelKind::kFlip:
      return "flip";
    case KernelKind::kElementwise:
      return "elementwise";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// PlanBuilder

PlanBuilder::PlanBuilder(const BatchState& input, uint64_t seed, uint64_t sample_offset,
                         bool fuse)
    : state_(input), seed_(seed), sample_offset_(sample_offset), fuse_(fuse) {}

double PlanBuilder::Uniform(int op_index, int64_t i, uint32_t draw) const {
  return kernels::UniformDouble(seed_, sample_offset_ + static_cast<uint64_t>(i),
                                static_cast<uint32_t>(op_index), draw);
}

namespace {

template <typename T>
const T& At(const std::vector<T>& v, int64_t i) {
  return v.size() == 1 ? v[0] : v[static_cast<size_t>(i)];
}

// Number of per-sample entries a combination of two broadcastable vectors needs.
template <typename A, typename B>
int64_t Combined(const std::vector<A>& a, const std::vector<B>& b, int64_t n) {
  return a.size() == 1 && b.size() == 1 ? 1 : n;
}

bool SameSampling(const WarpParams& a, const WarpParams& b) {
  return a.interp == b.interp && a.border == b.border &&
         (a.border != kernels::Border::kConstant || a.fill == b.fill);
}

}  // namespace

void PlanBuilder::AddWarp(int op_index, std::vector<Affine> inverse, const WarpParams& p) {
  const int64_t n = batch();
  if (fuse_ && !steps_.empty() && steps_.back().geometric()) {
    Step& last = steps_.back();
    // The earlier op's inverse runs last: out(x) = earlier(src)(M_new(x)) = src(M_old(M_new(x))).
    if (last.kind == KernelKind::kFlip) {
      const int64_t m = Combined(last.flags, inverse, n);
      std::vector<Affine> composed(m);
      for (int64_t i = 0; i < m; ++i) {
        const FlipFlags& f = At(last.flags, i);
        composed[i] = kernels::FlipInverse(f.horizontal, f.vertical, state_.shape.h,
                                           state_.shape.w)
                          .Then(At(inverse, i));
      }
      last.kind = KernelKind::kWarp;
      last.flags.clear();
      last.inverse = std::move(composed);
      last.params = p;
      last.ops.push_back(op_index);
      return;
    }
    if (SameSampling(last.params, p)) {
      const int64_t m = Combined(last.inverse, inverse, n);
      std::vector<Affine> composed(m);
      for (int64_t i = 0; i < m; ++i) composed[i] = At(last.inverse, i).Then(At(inverse, i));
      last.inverse = std::move(composed);
      last.ops.push_back(op_index);
      return;
    }
  }
  Step s;
  s.kind = KernelKind::kWarp;
  s.ops = {op_index};
  s.inverse = std::move(inverse);
  s.params = p;
  steps_.push_back(std::move(s));
}

void PlanBuilder::AddFlip(int op_index, std::vector<FlipFlags> flags) {
  const int64_t n = batch();
  if (fuse_ && !steps_.empty() && steps_.back().geometric()) {
    Step& last = steps_.back();
    if (last.kind == KernelKind::kFlip) {
      // Mirrors compose by parity; a flip-only run stays a copy-speed flip, never a warp.
      const int64_t m = Combined(last.flags, flags, n);
      std::vector<FlipFlags> composed(m);
      for (int64_t i = 0; i < m; ++i) {
        composed[i].horizontal = At(last.flags, i).horizontal != At(flags, i).horizontal;
        composed[i].vertical = At(last.flags, i).vertical != At(flags, i).vertical;
      }
      last.flags = std::move(composed);
    } else {
      const int64_t m = Combined(last.inverse, flags, n);
      std::vector<Affine> composed(m);
      for (int64_t i = 0; i < m; ++i) {
        const FlipFlags& f = At(flags, i);
        composed[i] = At(last.inverse, i).Then(
            kernels::FlipInverse(f.horizontal, f.vertical, state_.shape.h, state_.shape.w));
      }
      last.inverse = std::move(composed);
    }
    last.ops.push_back(op_index);
    return;
  }
  Step s;
  s.kind = KernelKind::kFlip;
  s.ops = {op_index};
  s.flags = std::move(flags);
  steps_.push_back(std::move(s));
}

void PlanBuilder::AddElementwise(int op_index, ElementwiseOp op) {
  const DType next = kernels::ElementwiseOutputDType(state_.dtype, {&op, 1});
  state_.dtype = next;
  if (fuse_ && !steps_.empty() && steps_.back().kind == KernelKind::kElementwise) {
    steps_.back().chain.push_back(std::move(op));
    steps_.back().ops.push_back(op_index);
    return;
  }
  Step s;
  s.kind = KernelKind::kElementwise;
  s.ops = {op_index};
  s.chain.push_back(std::move(op));
  steps_.push_back(std::move(s));
}

Plan PlanBuilder::Finish(std::vector<AuxSampling> aux) && {
  Plan plan;
  plan.steps = std::move(steps_);
  plan.output_dtype = state_.dtype;
  plan.aux = std::move(aux);
  return plan;
}

// ---------------------------------------------------------------------------------------------
// Argument checks shared by the entries

namespace {

absl::Status Invalid(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status CheckFinite(double v, const std::string& path) {
  if (std::isfinite(v)) return absl::OkStatus();
  return Invalid(path, absl::StrCat("expected a finite number, got ", v));
}

absl::Status CheckInterpolation(int v, const std::string& path) {
  if (v >= pb::INTERPOLATION_UNSPECIFIED && v <= pb::INTERPOLATION_BILINEAR) {
    return absl::OkStatus();
  }
  return Invalid(path, absl::StrCat("expected INTERPOLATION_NEAREST or INTERPOLATION_BILINEAR, "
                                    "got unknown value ",
                                    v));
}

absl::Status CheckBorder(int v, const std::string& path) {
  if (v >= pb::BORDER_UNSPECIFIED && v <= pb::BORDER_WRAP) return absl::OkStatus();
  return Invalid(path, absl::StrCat("expected one of BORDER_CONSTANT, BORDER_EDGE, BORDER_REFLECT, "
                                    "BORDER_REFLECT_101, BORDER_WRAP, got unknown value ",
                                    v));
}

absl::Status CheckAxis(int v, const std::string& path) {
  if (v == pb::FLIP_AXIS_HORIZONTAL || v == pb::FLIP_AXIS_VERTICAL) return absl::OkStatus();
  return Invalid(path, absl::StrCat("expected FLIP_AXIS_HORIZONTAL or FLIP_AXIS_VERTICAL, got ",
                                    v == 0 ? std::string("FLIP_AXIS_UNSPECIFIED")
                                           : absl::StrCat("unknown value ", v)));
}

// A per-channel vector under the kernels' operand rules (kernels::CheckOperand, the one statement
// of them; kernels/common/checks.h says who checks what), worded for the client.
absl::Status CheckChannelVector(const google::protobuf::RepeatedField<double>& v,
                                const BatchState& state, const std::string& path,
                                bool nonzero) {
  const kernels::OperandProblem p = kernels::CheckOperand(
      absl::MakeConstSpan(v.data(), static_cast<size_t>(v.size())), state.shape.c, state.dtype,
      nonzero);
  const std::string item = absl::StrCat(path, "[", p.index, "]");
  switch (p.kind) {
    case kernels::OperandProblem::kNone:
      return absl::OkStatus();
    case kernels::OperandProblem::kLength:
      return Invalid(path, absl::StrCat("expected 1 value or ", state.shape.c,
                                        " (one per channel), got ", v.size()));
    case kernels::OperandProblem::kNotFinite:
      return CheckFinite(v[static_cast<int>(p.index)], item);
    case kernels::OperandProblem::kZero:
      return Invalid(item, "expected a non-zero value, got 0");
    case kernels::OperandProblem::kNotFiniteInFloat32:
      return Invalid(item, absl::StrCat("expected a value finite in float32 (the batch is ",
                                        kernels::DTypeName(state.dtype), "), got ",
                                        v[static_cast<int>(p.index)]));
    case kernels::OperandProblem::kZeroInFloat32:
      return Invalid(item, absl::StrCat("expected a value non-zero in float32 (the batch is ",
                                        kernels::DTypeName(state.dtype), "), got ",
                                        v[static_cast<int>(p.index)]));
  }
  return absl::InternalError("unknown operand problem");
}

kernels::Interp MainInterp(int v) {
  return v == pb::INTERPOLATION_NEAREST ? kernels::Interp::kNearest : kernels::Interp::kBilinear;
}

kernels::Border ToBorder(int v) {
  switch (v) {
    case pb::BORDER_EDGE:
      return kernels::Border::kEdge;
    case pb::BORDER_REFLECT:
      return kernels::Border::kReflect;
    case pb::BORDER_REFLECT_101:
      return kernels::Border::kReflect101;
    case pb::BORDER_WRAP:
      return kernels::Border::kWrap;
    default:
      return kernels::Border::kConstant;
  }
}

FlipFlags AxisFlags(int axis) {
  FlipFlags f;
  f.horizontal = axis == pb::FLIP_AXIS_HORIZONTAL;
  f.vertical = axis == pb::FLIP_AXIS_VERTICAL;
  return f;
}

std::vector<double> ToVector(const google::protobuf::RepeatedField<double>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// ---------------------------------------------------------------------------------------------
// rotate

absl::Status ValidateRotate(const pb::Op& op, const BatchState&, const std::string& path) {
  const pb::RotateOp& r = op.rotate();
  TP_RETURN_IF_ERROR(CheckFinite(r.angle_deg(), path + ".angle_deg"));
  TP_RETURN_IF_ERROR(CheckInterpolation(r.interpolation(), path + ".interpolation"));
  TP_RETURN_IF_ERROR(CheckBorder(r.border(), path + ".border"));
  return CheckFinite(r.fill(), path + ".fill");
}

void LowerRotate(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::RotateOp& r = op.rotate();
  const auto& s = b.state().shape;
  b.AddWarp(index, {kernels::RotationInverse(r.angle_deg(), s.h, s.w)},
            WarpParams{MainInterp(r.interpolation()), ToBorder(r.border()), r.fill()});
}

// random_rotate

absl::Status ValidateRandomRotate(const pb::Op& op, const BatchState&, const std::string& path) {
  const pb::RandomRotateOp& r = op.random_rotate();
  TP_RETURN_IF_ERROR(CheckFinite(r.min_deg(), path + ".min_deg"));
  TP_RETURN_IF_ERROR(CheckFinite(r.max_deg(), path + ".max_deg"));
  if (r.max_deg() < r.min_deg()) {
    return Invalid(path + ".max_deg",
                   absl::StrCat("expected >= min_deg (", r.min_deg(), "), got ", r.max_deg()));
  }
  TP_RETURN_IF_ERROR(CheckInterpolation(r.interpolation(), path + ".interpolation"));
  TP_RETURN_IF_ERROR(CheckBorder(r.border(), path + ".border"));
  return CheckFinite(r.fill(), path + ".fill");
}

void LowerRandomRotate(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::RandomRotateOp& r = op.random_rotate();
  const auto& s = b.state().shape;
  std::vector<Affine> inverse(static_cast<size_t>(b.batch()));
  for (int64_t i = 0; i < b.batch(); ++i) {
    const double angle = r.min_deg() + b.Uniform(index, i, 0) * (r.max_deg() - r.min_deg());
    inverse[i] = kernels::RotationInverse(angle, s.h, s.w);
  }
  b.AddWarp(index, std::move(inverse),
            WarpParams{MainInterp(r.interpolation()), ToBorder(r.border()), r.fill()});
}

// flip / random_flip

absl::Status ValidateFlip(const pb::Op& op, const BatchState&, const std::string& path) {
  return CheckAxis(op.flip().axis(), path + ".axis");
}

void LowerFlip(const pb::Op& op, int index, PlanBuilder& b) {
  b.AddFlip(index, {AxisFlags(op.flip().axis())});
}

absl::Status ValidateRandomFlip(const pb::Op& op, const BatchState&, const std::string& path) {
  const pb::RandomFlipOp& f = op.random_flip();
  TP_RETURN_IF_ERROR(CheckAxis(f.axis(), path + ".axis"));
  if (!(f.p() >= 0.0 && f.p() <= 1.0)) {
    return Invalid(path + ".p", absl::StrCat("expected a probability in [0, 1], got ", f.p()));
  }
  return absl::OkStatus();
}

void LowerRandomFlip(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::RandomFlipOp& f = op.random_flip();
  const FlipFlags on = AxisFlags(f.axis());
  std::vector<FlipFlags> flags(static_cast<size_t>(b.batch()));
  for (int64_t i = 0; i < b.batch(); ++i) {
    if (b.Uniform(index, i, 0) < f.p()) flags[i] = on;
  }
  b.AddFlip(index, std::move(flags));
}

// add / subtract / multiply / divide

const pb::ArithmeticOp& Arithmetic(const pb::Op& op) {
  switch (op.kind_case()) {
    case pb::Op::kAdd:
      return op.add();
    case pb::Op::kSubtract:
      return op.subtract();
    case pb::Op::kMultiply:
      return op.multiply();
    default:
      return op.divide();
  }
}

absl::Status ValidateArithmetic(const pb::Op& op, const BatchState& state,
                                const std::string& path) {
  return CheckChannelVector(Arithmetic(op).value(), state, path + ".value",
                            op.kind_case() == pb::Op::kDivide);
}

void LowerArithmetic(const pb::Op& op, int index, PlanBuilder& b) {
  ElementwiseOp e;
  switch (op.kind_case()) {
    case pb::Op::kAdd:
      e.kind = ElementwiseKind::kAdd;
      break;
    case pb::Op::kSubtract:
      e.kind = ElementwiseKind::kSubtract;
      break;
    case pb::Op::kMultiply:
      e.kind = ElementwiseKind::kMultiply;
      break;
    default:
      e.kind = ElementwiseKind::kDivide;
      break;
  }
  e.a = ToVector(Arithmetic(op).value());
  b.AddElementwise(index, std::move(e));
}

// normalize

absl::Status ValidateNormalize(const pb::Op& op, const BatchState& state,
                               const std::string& path) {
  if (!kernels::IsFloating(state.dtype)) {
    return Invalid(path, absl::StrCat("expected a float32 or float16 batch, got ",
                                      kernels::DTypeName(state.dtype),
                                      "; add a cast to DTYPE_FLOAT32 before normalize"));
  }
  TP_RETURN_IF_ERROR(CheckChannelVector(op.normalize().mean(), state, path + ".mean", false));
  return CheckChannelVector(op.normalize().std(), state, path + ".std", true);
}

void LowerNormalize(const pb::Op& op, int index, PlanBuilder& b) {
  ElementwiseOp e;
  e.kind = ElementwiseKind::kNormalize;
  e.a = ToVector(op.normalize().mean());
  e.b = ToVector(op.normalize().std());
  b.AddElementwise(index, std::move(e));
}

// clamp

absl::Status ValidateClamp(const pb::Op& op, const BatchState&, const std::string& path) {
  const pb::ClampOp& c = op.clamp();
  if (!c.has_min() && !c.has_max()) {
    return Invalid(path, "expected at least one of min, max; got neither");
  }
  if (c.has_min()) TP_RETURN_IF_ERROR(CheckFinite(c.min(), path + ".min"));
  if (c.has_max()) TP_RETURN_IF_ERROR(CheckFinite(c.max(), path + ".max"));
  if (c.has_min() && c.has_max() && c.min() > c.max()) {
    return Invalid(path + ".max", absl::StrCat("expected >= min (", c.min(), "), got ", c.max()));
  }
  return absl::OkStatus();
}

void LowerClamp(const pb::Op& op, int index, PlanBuilder& b) {
  ElementwiseOp e;
  e.kind = ElementwiseKind::kClamp;
  e.has_lo = op.clamp().has_min();
  e.has_hi = op.clamp().has_max();
  e.lo = op.clamp().min();
  e.hi = op.clamp().max();
  b.AddElementwise(index, std::move(e));
}

// cast

absl::Status ValidateCast(const pb::Op& op, const BatchState&, const std::string& path) {
  return DecodeDType(op.cast().dtype(), path + ".dtype").status();
}

void LowerCast(const pb::Op& op, int index, PlanBuilder& b) {
  ElementwiseOp e;
  e.kind = ElementwiseKind::kCast;
  e.to = *DecodeDType(op.cast().dtype(), "");
  b.AddElementwise(index, std::move(e));
}

std::vector<ArgSpec> SamplingArgs() {
  return {{"interpolation", "Interpolation", "INTERPOLATION_NEAREST or _BILINEAR (default)"},
          {"border", "Border",
           "BORDER_CONSTANT (default), _EDGE, _REFLECT, _REFLECT_101, _WRAP"},
          {"fill", "double", "value outside the image for BORDER_CONSTANT"}};
}

std::vector<ArgSpec> With(std::vector<ArgSpec> first, std::vector<ArgSpec> rest) {
  first.insert(first.end(), rest.begin(), rest.end());
  return first;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The registry

OpRegistry::OpRegistry() {
  const std::vector<ArgSpec> value = {
      {"value", "repeated double", "1 value (scalar) or one per channel"}};
  ops_ = {
      {"rotate", pb::Op::kRotate,
       "rotate by a fixed angle (degrees, counter-clockwise) about the centre; same-size output",
       true,
       With({{"angle_deg", "double", "finite; positive = counter-clockwise"}}, SamplingArgs()),
       ValidateRotate, LowerRotate, {KernelKind::kWarp}},
      {"flip", pb::Op::kFlip, "mirror left-right (horizontal) or up-down (vertical)", true,
       {{"axis", "FlipAxis", "FLIP_AXIS_HORIZONTAL or FLIP_AXIS_VERTICAL"}}, ValidateFlip,
       LowerFlip, {KernelKind::kFlip, KernelKind::kWarp}},
      {"add", pb::Op::kAdd, "x + value", false, value, ValidateArithmetic, LowerArithmetic,
       {KernelKind::kElementwise}},
      {"subtract", pb::Op::kSubtract, "x - value", false, value, ValidateArithmetic,
       LowerArithmetic, {KernelKind::kElementwise}},
      {"multiply", pb::Op::kMultiply, "x * value", false, value, ValidateArithmetic,
       LowerArithmetic, {KernelKind::kElementwise}},
      {"divide", pb::Op::kDivide, "x / value (non-zero)", false, value, ValidateArithmetic,
       LowerArithmetic, {KernelKind::kElementwise}},
      {"normalize", pb::Op::kNormalize, "(x - mean[c]) / std[c] on a floating batch", false,
       {{"mean", "repeated double", "1 value or one per channel"},
        {"std", "repeated double", "1 value or one per channel; non-zero"}},
       ValidateNormalize, LowerNormalize, {KernelKind::kElementwise}},
      {"clamp", pb::Op::kClamp, "limit values to [min, max]", false,
       {{"min", "optional double", "lower bound"}, {"max", "optional double", "upper bound"}},
       ValidateClamp, LowerClamp, {KernelKind::kElementwise}},
      {"cast", pb::Op::kCast, "convert dtype (rounding to nearest, saturating)", false,
       {{"dtype", "DType", "target dtype"}}, ValidateCast, LowerCast,
       {KernelKind::kElementwise}},
      {"random_flip", pb::Op::kRandomFlip, "flip each sample with probability p", true,
       {{"axis", "FlipAxis", "FLIP_AXIS_HORIZONTAL or FLIP_AXIS_VERTICAL"},
        {"p", "double", "probability in [0, 1]"}},
       ValidateRandomFlip, LowerRandomFlip, {KernelKind::kFlip, KernelKind::kWarp}},
      {"random_rotate", pb::Op::kRandomRotate,
       "rotate each sample by an angle drawn uniformly from [min_deg, max_deg]", true,
       With({{"min_deg", "double", "finite"}, {"max_deg", "double", "finite, >= min_deg"}},
            SamplingArgs()),
       ValidateRandomRotate, LowerRandomRotate, {KernelKind::kWarp}},
  };
}

const OpRegistry& OpRegistry::Default() {
  static const OpRegistry* registry = new OpRegistry();
  return *registry;
}

const OpSpec* OpRegistry::Find(pb::Op::KindCase kind) const {
  for (const OpSpec& s : ops_) {
    if (s.kind == kind) return &s;
  }
  return nullptr;
}

std::string OpRegistry::Names() const {
  std::string out;
  for (const OpSpec& s : ops_) absl::StrAppend(&out, out.empty() ? "" : ", ", s.name);
  return out;
}

absl::StatusOr<Plan> BuildPlan(const pb::Pipeline& pipeline, const BatchState& input,
                               uint64_t seed, uint64_t sample_offset,
                               std::vector<AuxSampling> aux, const PlanOptions& options) {
  const OpRegistry& registry = OpRegistry::Default();
  if (pipeline.ops_size() == 0) {
    return Invalid("pipeline.ops", "expected at least 1 op, got 0");
  }
  if (pipeline.ops_size() > options.max_ops) {
    return Invalid("pipeline.ops", absl::StrCat("expected at most ", options.max_ops,
                                                " ops, got ", pipeline.ops_size()));
  }
  PlanBuilder builder(input, seed, sample_offset, options.fuse);
  for (int i = 0; i < pipeline.ops_size(); ++i) {
    const pb::Op& op = pipeline.ops(i);
    const OpSpec* spec = registry.Find(op.kind_case());
    if (spec == nullptr) {
      return Invalid(absl::StrCat("pipeline.ops[", i, "]"),
                     absl::StrCat("expected one of ", registry.Names(),
                                  "; got no known op (unset, or a field this server does not "
                                  "know)"));
    }
    const std::string path = absl::StrCat("pipeline.ops[", i, "].", spec->name);
    TP_RETURN_IF_ERROR(spec->validate(op, builder.state(), path));
    spec->lower(op, i, builder);
  }
  return std::move(builder).Finish(std::move(aux));
}

}  // namespace tensorprep::handlers
