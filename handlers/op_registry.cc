#include "handlers/op_registry.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "google/protobuf/descriptor.h"
#include "handlers/tensor_codec.h"
#include "kernels/color/color.h"
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
    case KernelKind::kResample:
      return "resample";
    case KernelKind::kColor:
      return "color";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------------------------
// PlanBuilder

PlanBuilder::PlanBuilder(const BatchState& input, uint64_t seed, uint64_t sample_offset, bool fuse)
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

// The axis map whose output index i shows what `a`'s output out - 1 - i shows.
kernels::AxisMap MirrorAxis(kernels::AxisMap a, int64_t out) {
  a.offset += a.scale * static_cast<double>(out - 1);
  a.scale = -a.scale;
  return a;
}

bool SameSampling(const WarpParams& a, const WarpParams& b) {
  return a.interp == b.interp && a.border == b.border &&
         (a.border != kernels::Border::kConstant || a.fill == b.fill);
}

}  // namespace

void PlanBuilder::AddWarp(int op_index, std::vector<Affine> inverse, const WarpParams& p,
                          int64_t out_h, int64_t out_w) {
  const int64_t n = batch();
  const kernels::BatchShape in_shape = state_.shape;
  state_.shape.h = out_h;
  state_.shape.w = out_w;
  // A warp after an antialiased resample runs as its own step (the filter is not an affine map).
  if (fuse_ && !steps_.empty() && steps_.back().geometric() &&
      steps_.back().kind != KernelKind::kResample) {
    Step& last = steps_.back();
    // The earlier op's inverse runs last: out(x) = earlier(src)(M_new(x)) = src(M_old(M_new(x))).
    if (last.kind == KernelKind::kFlip) {
      const int64_t m = Combined(last.flags, inverse, n);
      std::vector<Affine> composed(m);
      for (int64_t i = 0; i < m; ++i) {
        const FlipFlags& f = At(last.flags, i);
        composed[i] = kernels::FlipInverse(f.horizontal, f.vertical, in_shape.h, in_shape.w)
                          .Then(At(inverse, i));
      }
      last.kind = KernelKind::kWarp;
      last.flags.clear();
      last.inverse = std::move(composed);
      last.params = p;
      last.ops.push_back(op_index);
      last.out = state_.shape;
      return;
    }
    if (SameSampling(last.params, p)) {
      const int64_t m = Combined(last.inverse, inverse, n);
      std::vector<Affine> composed(m);
      for (int64_t i = 0; i < m; ++i) composed[i] = At(last.inverse, i).Then(At(inverse, i));
      last.inverse = std::move(composed);
      last.ops.push_back(op_index);
      last.out = state_.shape;
      return;
    }
  }
  Step s;
  s.kind = KernelKind::kWarp;
  s.ops = {op_index};
  s.out = state_.shape;
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
    } else if (last.kind == KernelKind::kResample) {
      // A mirror of the output: each axis map reversed (resample.h), and the aux tensors' maps
      // composed with the flip as a warp's are.
      const int64_t m = Combined(last.maps, flags, n);
      std::vector<kernels::ResampleMap> maps(m);
      std::vector<Affine> inverse(m);
      for (int64_t i = 0; i < m; ++i) {
        const FlipFlags& f = At(flags, i);
        maps[i] = At(last.maps, i);
        if (f.horizontal) maps[i].x = MirrorAxis(maps[i].x, state_.shape.w);
        if (f.vertical) maps[i].y = MirrorAxis(maps[i].y, state_.shape.h);
        inverse[i] = At(last.inverse, i)
                         .Then(kernels::FlipInverse(f.horizontal, f.vertical, state_.shape.h,
                                                    state_.shape.w));
      }
      last.maps = std::move(maps);
      last.inverse = std::move(inverse);
    } else {
      const int64_t m = Combined(last.inverse, flags, n);
      std::vector<Affine> composed(m);
      for (int64_t i = 0; i < m; ++i) {
        const FlipFlags& f = At(flags, i);
        composed[i] = At(last.inverse, i)
                          .Then(kernels::FlipInverse(f.horizontal, f.vertical, state_.shape.h,
                                                     state_.shape.w));
      }
      last.inverse = std::move(composed);
    }
    last.ops.push_back(op_index);
    return;
  }
  Step s;
  s.kind = KernelKind::kFlip;
  s.ops = {op_index};
  s.out = state_.shape;
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
  s.out = state_.shape;
  s.chain.push_back(std::move(op));
  steps_.push_back(std::move(s));
}

void PlanBuilder::AddResize(int op_index, std::vector<Affine> maps, std::vector<ResampleBox> boxes,
                            kernels::Interp interp, bool antialias, int64_t out_h, int64_t out_w) {
  // PyTorch clamps source positions to the image: the edge border.
  const WarpParams params{interp, kernels::Border::kEdge, 0};
  bool shrinks = false;
  bool whole = true;
  for (const ResampleBox& b : boxes) {
    shrinks = shrinks || b.height > out_h || b.width > out_w;
    whole = whole && b.top == 0 && b.left == 0 && b.height == state_.shape.h &&
            b.width == state_.shape.w;
  }
  if (!antialias || interp != kernels::Interp::kBilinear || (!shrinks && whole)) {
    // Without a shrinking axis the antialias filter is the bilinear triangle: for the whole
    // image the warp computes the same weights (its edge is the image's), and composes with the
    // ops around it. A box inside the image goes to the resampler, whose taps stop at the box's
    // edges as torchvision's crop-then-resize does; the warp's would blend pixels outside it.
    AddWarp(op_index, std::move(maps), params, out_h, out_w);
    return;
  }
  state_.shape.h = out_h;
  state_.shape.w = out_w;
  Step s;
  s.kind = KernelKind::kResample;
  s.ops = {op_index};
  s.out = state_.shape;
  s.maps.resize(boxes.size());
  for (size_t i = 0; i < boxes.size(); ++i) {
    const ResampleBox& b = boxes[i];
    s.maps[i].x = kernels::AxisMapForWindow(static_cast<double>(b.left),
                                            static_cast<double>(b.width), out_w, false);
    s.maps[i].y = kernels::AxisMapForWindow(static_cast<double>(b.top),
                                            static_cast<double>(b.height), out_h, false);
  }
  s.inverse = std::move(maps);
  s.params = params;
  steps_.push_back(std::move(s));
}

void PlanBuilder::AddColor(int op_index, std::vector<std::vector<kernels::ColorAdjust>> chains,
                           int64_t out_c) {
  const int64_t n = batch();
  state_.shape.c = out_c;
  if (fuse_ && !steps_.empty() && steps_.back().kind == KernelKind::kColor) {
    Step& last = steps_.back();
    const int64_t m = Combined(last.color, chains, n);
    std::vector<std::vector<kernels::ColorAdjust>> joined(m);
    for (int64_t i = 0; i < m; ++i) {
      joined[i] = At(last.color, i);
      const auto& more = At(chains, i);
      joined[i].insert(joined[i].end(), more.begin(), more.end());
    }
    last.color = std::move(joined);
    last.ops.push_back(op_index);
    last.out = state_.shape;
    return;
  }
  Step s;
  s.kind = KernelKind::kColor;
  s.ops = {op_index};
  s.out = state_.shape;
  s.color = std::move(chains);
  steps_.push_back(std::move(s));
}

void PlanBuilder::SetChannelsFirst() {
  state_.channels_first = true;
  // The last step writes the layout; an element-wise step can (the warps and flips write NHWC),
  // so after anything else an empty element-wise step (a copy) does it.
  if (steps_.empty() || steps_.back().kind != KernelKind::kElementwise) {
    Step s;
    s.kind = KernelKind::kElementwise;
    s.out = state_.shape;
    steps_.push_back(std::move(s));
  }
}

Plan PlanBuilder::Finish(std::vector<AuxSampling> aux) && {
  Plan plan;
  plan.steps = std::move(steps_);
  plan.output_dtype = state_.dtype;
  plan.output_shape = state_.shape;
  plan.channels_first = state_.channels_first;
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
                                const BatchState& state, const std::string& path, bool nonzero) {
  const kernels::OperandProblem p =
      kernels::CheckOperand(absl::MakeConstSpan(v.data(), static_cast<size_t>(v.size())),
                            state.shape.c, state.dtype, nonzero);
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

absl::Status ValidateNormalize(const pb::Op& op, const BatchState& state, const std::string& path) {
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

// ---------------------------------------------------------------------------------------------
// Sizes, boxes and the new geometric ops

// An output side an op asks for: INVALID_ARGUMENT naming the field unless in [1, kMaxSide].
absl::Status CheckSide(int64_t v, const std::string& path) {
  if (v >= 1 && v <= kMaxSide) return absl::OkStatus();
  return Invalid(path, absl::StrCat("expected a size in [1, ", kMaxSide, "], got ", v));
}

absl::Status CheckRange(double lo, double hi, const std::string& lo_path,
                        const std::string& hi_path) {
  TP_RETURN_IF_ERROR(CheckFinite(lo, lo_path));
  TP_RETURN_IF_ERROR(CheckFinite(hi, hi_path));
  if (hi < lo) {
    return Invalid(hi_path, absl::StrCat("expected >= ", lo_path.substr(lo_path.rfind('.') + 1),
                                         " (", lo, "), got ", hi));
  }
  return absl::OkStatus();
}

// A map that samples the box with top-left (top, left) of an output of the same scale.
Affine Translation(double left, double top) {
  Affine a;
  a.m[2] = left;
  a.m[5] = top;
  return a;
}

// torchvision's resize of an in_h x in_w box at (top, left) to out_h x out_w: half-pixel centres
// (align_corners=False) for bilinear, PyTorch's `nearest` (floor(x * in / out)) for nearest.
Affine ResizeMap(double top, double left, double in_h, double in_w, int64_t out_h, int64_t out_w,
                 kernels::Interp interp) {
  const double sx = in_w / static_cast<double>(out_w);
  const double sy = in_h / static_cast<double>(out_h);
  Affine a;
  a.m[0] = sx;
  a.m[4] = sy;
  if (interp == kernels::Interp::kNearest) {
    // The warp's nearest takes floor(s + 0.5): s = x * scale - 0.5 gives floor(x * scale).
    a.m[2] = left - 0.5;
    a.m[5] = top - 0.5;
  } else {
    a.m[2] = left + 0.5 * sx - 0.5;
    a.m[5] = top + 0.5 * sy - 0.5;
  }
  return a;
}

// resize: the whole image; an axis that grows or shrinks is clamped at the edge (PyTorch clamps
// source positions to the image).
absl::Status InferResize(const pb::Op& op, const BatchState& in, const std::string& path,
                         BatchState* out) {
  const pb::ResizeOp& r = op.resize();
  TP_RETURN_IF_ERROR(CheckSide(r.height(), path + ".height"));
  TP_RETURN_IF_ERROR(CheckSide(r.width(), path + ".width"));
  TP_RETURN_IF_ERROR(CheckInterpolation(r.interpolation(), path + ".interpolation"));
  out->shape.h = r.height();
  out->shape.w = r.width();
  return absl::OkStatus();
}

void LowerResize(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::ResizeOp& r = op.resize();
  const auto& s = b.state().shape;
  const kernels::Interp interp = MainInterp(r.interpolation());
  b.AddResize(index,
              {ResizeMap(0, 0, static_cast<double>(s.h), static_cast<double>(s.w), r.height(),
                         r.width(), interp)},
              {ResampleBox{0, 0, s.h, s.w}}, interp, r.antialias(), r.height(), r.width());
}

// crop: a box inside the image, copied exactly.
absl::Status InferCrop(const pb::Op& op, const BatchState& in, const std::string& path,
                       BatchState* out) {
  const pb::CropOp& c = op.crop();
  TP_RETURN_IF_ERROR(CheckSide(c.height(), path + ".height"));
  TP_RETURN_IF_ERROR(CheckSide(c.width(), path + ".width"));
  if (c.top() < 0 || c.top() > in.shape.h - c.height()) {
    return Invalid(path + ".top",
                   absl::StrCat("expected the box inside the image: 0 <= top <= H - height = ",
                                in.shape.h - c.height(), " (H = ", in.shape.h,
                                ", height = ", c.height(), "), got ", c.top()));
  }
  if (c.left() < 0 || c.left() > in.shape.w - c.width()) {
    return Invalid(path + ".left",
                   absl::StrCat("expected the box inside the image: 0 <= left <= W - width = ",
                                in.shape.w - c.width(), " (W = ", in.shape.w,
                                ", width = ", c.width(), "), got ", c.left()));
  }
  out->shape.h = c.height();
  out->shape.w = c.width();
  return absl::OkStatus();
}

// A whole-pixel move copies exactly with nearest sampling (bilinear would blend a weight-0 tap
// too, so a NaN next to the box would leak in).
const WarpParams kCopy{kernels::Interp::kNearest, kernels::Border::kConstant, 0};

void LowerCrop(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::CropOp& c = op.crop();
  b.AddWarp(index, {Translation(static_cast<double>(c.left()), static_cast<double>(c.top()))},
            kCopy, c.height(), c.width());
}

// center_crop: torchvision's offsets, round((S - size) / 2) with Python's ties-to-even; a size
// larger than the image pads it (fill) by (size - S) // 2 before.
absl::Status InferCenterCrop(const pb::Op& op, const BatchState& in, const std::string& path,
                             BatchState* out) {
  const pb::CenterCropOp& c = op.center_crop();
  TP_RETURN_IF_ERROR(CheckSide(c.height(), path + ".height"));
  TP_RETURN_IF_ERROR(CheckSide(c.width(), path + ".width"));
  TP_RETURN_IF_ERROR(CheckFinite(c.fill(), path + ".fill"));
  out->shape.h = c.height();
  out->shape.w = c.width();
  return absl::OkStatus();
}

double CenterOffset(int64_t image, int64_t size) {
  if (size > image) return -static_cast<double>((size - image) / 2);
  return std::nearbyint(static_cast<double>(image - size) / 2.0);
}

void LowerCenterCrop(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::CenterCropOp& c = op.center_crop();
  const auto& s = b.state().shape;
  WarpParams p = kCopy;
  p.fill = c.fill();
  b.AddWarp(index, {Translation(CenterOffset(s.w, c.width()), CenterOffset(s.h, c.height()))}, p,
            c.height(), c.width());
}

// pad
absl::Status InferPad(const pb::Op& op, const BatchState& in, const std::string& path,
                      BatchState* out) {
  const pb::PadOp& p = op.pad();
  const std::pair<int64_t, const char*> sides[] = {
      {p.top(), "top"}, {p.bottom(), "bottom"}, {p.left(), "left"}, {p.right(), "right"}};
  for (const auto& [v, name] : sides) {
    if (v < 0 || v > kMaxSide) {
      return Invalid(absl::StrCat(path, ".", name),
                     absl::StrCat("expected a padding in [0, ", kMaxSide, "], got ", v));
    }
  }
  TP_RETURN_IF_ERROR(CheckBorder(p.border(), path + ".border"));
  TP_RETURN_IF_ERROR(CheckFinite(p.fill(), path + ".fill"));
  const int64_t h = in.shape.h + p.top() + p.bottom();
  const int64_t w = in.shape.w + p.left() + p.right();
  if (h > kMaxSide) {
    return Invalid(path + ".bottom",
                   absl::StrCat("expected H + top + bottom <= ", kMaxSide, ", got ", h));
  }
  if (w > kMaxSide) {
    return Invalid(path + ".right",
                   absl::StrCat("expected W + left + right <= ", kMaxSide, ", got ", w));
  }
  out->shape.h = h;
  out->shape.w = w;
  return absl::OkStatus();
}

void LowerPad(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::PadOp& p = op.pad();
  const auto& s = b.state().shape;
  WarpParams params = kCopy;
  params.border = ToBorder(p.border());
  params.fill = p.fill();
  b.AddWarp(index, {Translation(-static_cast<double>(p.left()), -static_cast<double>(p.top()))},
            params, s.h + p.top() + p.bottom(), s.w + p.left() + p.right());
}

// random_resized_crop: torchvision's RandomResizedCrop.get_params, per sample.
struct RrcRanges {
  double scale_min, scale_max, ratio_min, ratio_max;
};

RrcRanges Ranges(const pb::RandomResizedCropOp& r) {
  RrcRanges g{r.scale_min(), r.scale_max(), r.ratio_min(), r.ratio_max()};
  if (g.scale_min == 0 && g.scale_max == 0) {
    g.scale_min = 0.08;
    g.scale_max = 1.0;
  }
  if (g.ratio_min == 0 && g.ratio_max == 0) {
    g.ratio_min = 3.0 / 4.0;
    g.ratio_max = 4.0 / 3.0;
  }
  return g;
}

absl::Status InferRandomResizedCrop(const pb::Op& op, const BatchState& in, const std::string& path,
                                    BatchState* out) {
  const pb::RandomResizedCropOp& r = op.random_resized_crop();
  TP_RETURN_IF_ERROR(CheckSide(r.height(), path + ".height"));
  TP_RETURN_IF_ERROR(CheckSide(r.width(), path + ".width"));
  const RrcRanges g = Ranges(r);
  TP_RETURN_IF_ERROR(
      CheckRange(g.scale_min, g.scale_max, path + ".scale_min", path + ".scale_max"));
  TP_RETURN_IF_ERROR(
      CheckRange(g.ratio_min, g.ratio_max, path + ".ratio_min", path + ".ratio_max"));
  if (!(g.scale_min > 0)) {
    return Invalid(path + ".scale_min", absl::StrCat("expected > 0, got ", g.scale_min));
  }
  if (!(g.ratio_min > 0)) {
    return Invalid(path + ".ratio_min", absl::StrCat("expected > 0, got ", g.ratio_min));
  }
  TP_RETURN_IF_ERROR(CheckInterpolation(r.interpolation(), path + ".interpolation"));
  out->shape.h = r.height();
  out->shape.w = r.width();
  return absl::OkStatus();
}

// The box (top, left, height, width) torchvision draws for an h x w image: up to 10 tries of an
// area scale and a log-uniform ratio, the box placed uniformly; else the central crop of the
// ratio clamped to the range. Draws 4k..4k+3 of sample i are try k's.
ResampleBox DrawBox(const PlanBuilder& b, int index, int64_t i, int64_t h, int64_t w,
                    const RrcRanges& g) {
  const double area = static_cast<double>(h) * static_cast<double>(w);
  const double log_lo = std::log(g.ratio_min);
  const double log_hi = std::log(g.ratio_max);
  for (uint32_t k = 0; k < 10; ++k) {
    const double target =
        area * (g.scale_min + b.Uniform(index, i, 4 * k) * (g.scale_max - g.scale_min));
    const double ratio = std::exp(log_lo + b.Uniform(index, i, 4 * k + 1) * (log_hi - log_lo));
    const auto bw = static_cast<int64_t>(std::nearbyint(std::sqrt(target * ratio)));
    const auto bh = static_cast<int64_t>(std::nearbyint(std::sqrt(target / ratio)));
    if (bw > 0 && bw <= w && bh > 0 && bh <= h) {
      const auto top =
          static_cast<int64_t>(b.Uniform(index, i, 4 * k + 2) * static_cast<double>(h - bh + 1));
      const auto left =
          static_cast<int64_t>(b.Uniform(index, i, 4 * k + 3) * static_cast<double>(w - bw + 1));
      return {std::min(top, h - bh), std::min(left, w - bw), bh, bw};
    }
  }
  const double in_ratio = static_cast<double>(w) / static_cast<double>(h);
  int64_t bw = w, bh = h;
  if (in_ratio < g.ratio_min) {
    bh = static_cast<int64_t>(std::nearbyint(static_cast<double>(w) / g.ratio_min));
  } else if (in_ratio > g.ratio_max) {
    bw = static_cast<int64_t>(std::nearbyint(static_cast<double>(h) * g.ratio_max));
  }
  bh = std::clamp<int64_t>(bh, 1, h);
  bw = std::clamp<int64_t>(bw, 1, w);
  return {(h - bh) / 2, (w - bw) / 2, bh, bw};
}

void LowerRandomResizedCrop(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::RandomResizedCropOp& r = op.random_resized_crop();
  const auto& s = b.state().shape;
  const RrcRanges g = Ranges(r);
  const kernels::Interp interp = MainInterp(r.interpolation());
  std::vector<Affine> maps(static_cast<size_t>(b.batch()));
  std::vector<ResampleBox> boxes(static_cast<size_t>(b.batch()));
  for (int64_t i = 0; i < b.batch(); ++i) {
    const ResampleBox box = DrawBox(b, index, i, s.h, s.w, g);
    boxes[i] = box;
    maps[i] = ResizeMap(static_cast<double>(box.top), static_cast<double>(box.left),
                        static_cast<double>(box.height), static_cast<double>(box.width), r.height(),
                        r.width(), interp);
  }
  b.AddResize(index, std::move(maps), std::move(boxes), interp, r.antialias(), r.height(),
              r.width());
}

// affine / random_affine: torchvision's inverse affine matrix about the image centre.
struct AffineArgs {
  double angle_deg = 0;  // counter-clockwise
  double tx = 0, ty = 0, scale = 1, shear_x_deg = 0, shear_y_deg = 0;
};

Affine AffineInverse(const AffineArgs& a, int64_t h, int64_t w) {
  constexpr double kRad = 3.14159265358979323846 / 180.0;
  // torchvision's angle is clockwise on screen: ours negated.
  const double rot = -a.angle_deg * kRad;
  const double shx = a.shear_x_deg * kRad;
  const double shy = a.shear_y_deg * kRad;
  const double ca = std::cos(rot - shy) / std::cos(shy);
  const double cb = -std::cos(rot - shy) * std::tan(shx) / std::cos(shy) - std::sin(rot);
  const double cc = std::sin(rot - shy) / std::cos(shy);
  const double cd = -std::sin(rot - shy) * std::tan(shx) / std::cos(shy) + std::cos(rot);
  // Output (x', y') about the centre -> source about the centre, torchvision's order.
  double m[6] = {cd / a.scale, -cb / a.scale, 0, -cc / a.scale, ca / a.scale, 0};
  m[2] += m[0] * (-a.tx) + m[1] * (-a.ty);
  m[5] += m[3] * (-a.tx) + m[4] * (-a.ty);
  const double cx = (static_cast<double>(w) - 1) * 0.5;
  const double cy = (static_cast<double>(h) - 1) * 0.5;
  Affine r;
  r.m[0] = m[0];
  r.m[1] = m[1];
  r.m[2] = m[2] - m[0] * cx - m[1] * cy + cx;
  r.m[3] = m[3];
  r.m[4] = m[4];
  r.m[5] = m[5] - m[3] * cx - m[4] * cy + cy;
  return r;
}

absl::Status CheckShear(double v, const std::string& path) {
  TP_RETURN_IF_ERROR(CheckFinite(v, path));
  if (v > -90 && v < 90) return absl::OkStatus();
  return Invalid(path, absl::StrCat("expected degrees in (-90, 90), got ", v));
}

absl::Status InferAffine(const pb::Op& op, const BatchState&, const std::string& path,
                         BatchState*) {
  const pb::AffineOp& a = op.affine();
  TP_RETURN_IF_ERROR(CheckFinite(a.angle_deg(), path + ".angle_deg"));
  TP_RETURN_IF_ERROR(CheckFinite(a.translate_x(), path + ".translate_x"));
  TP_RETURN_IF_ERROR(CheckFinite(a.translate_y(), path + ".translate_y"));
  TP_RETURN_IF_ERROR(CheckFinite(a.scale(), path + ".scale"));
  if (a.scale() < 0) {
    return Invalid(path + ".scale", absl::StrCat("expected > 0 (0: 1), got ", a.scale()));
  }
  TP_RETURN_IF_ERROR(CheckShear(a.shear_x_deg(), path + ".shear_x_deg"));
  TP_RETURN_IF_ERROR(CheckShear(a.shear_y_deg(), path + ".shear_y_deg"));
  TP_RETURN_IF_ERROR(CheckInterpolation(a.interpolation(), path + ".interpolation"));
  TP_RETURN_IF_ERROR(CheckBorder(a.border(), path + ".border"));
  return CheckFinite(a.fill(), path + ".fill");
}

void LowerAffine(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::AffineOp& a = op.affine();
  const auto& s = b.state().shape;
  const AffineArgs args{a.angle_deg(),   a.translate_x(),
                        a.translate_y(), a.scale() == 0 ? 1.0 : a.scale(),
                        a.shear_x_deg(), a.shear_y_deg()};
  b.AddWarp(index, {AffineInverse(args, s.h, s.w)},
            WarpParams{MainInterp(a.interpolation()), ToBorder(a.border()), a.fill()});
}

absl::Status InferRandomAffine(const pb::Op& op, const BatchState&, const std::string& path,
                               BatchState*) {
  const pb::RandomAffineOp& a = op.random_affine();
  TP_RETURN_IF_ERROR(CheckRange(a.angle_min_deg(), a.angle_max_deg(), path + ".angle_min_deg",
                                path + ".angle_max_deg"));
  for (const auto& [v, name] :
       {std::pair<double, const char*>{a.max_translate_x(), "max_translate_x"},
        {a.max_translate_y(), "max_translate_y"}}) {
    if (!(v >= 0 && v <= 1)) {
      return Invalid(absl::StrCat(path, ".", name),
                     absl::StrCat("expected a fraction of the size in [0, 1], got ", v));
    }
  }
  TP_RETURN_IF_ERROR(
      CheckRange(a.scale_min(), a.scale_max(), path + ".scale_min", path + ".scale_max"));
  if (!(a.scale_min() == 0 && a.scale_max() == 0) && !(a.scale_min() > 0)) {
    return Invalid(path + ".scale_min",
                   absl::StrCat("expected > 0 (0 and 0: no scaling), got ", a.scale_min()));
  }
  TP_RETURN_IF_ERROR(CheckShear(a.shear_x_min_deg(), path + ".shear_x_min_deg"));
  TP_RETURN_IF_ERROR(CheckShear(a.shear_x_max_deg(), path + ".shear_x_max_deg"));
  TP_RETURN_IF_ERROR(CheckShear(a.shear_y_min_deg(), path + ".shear_y_min_deg"));
  TP_RETURN_IF_ERROR(CheckShear(a.shear_y_max_deg(), path + ".shear_y_max_deg"));
  TP_RETURN_IF_ERROR(CheckRange(a.shear_x_min_deg(), a.shear_x_max_deg(), path + ".shear_x_min_deg",
                                path + ".shear_x_max_deg"));
  TP_RETURN_IF_ERROR(CheckRange(a.shear_y_min_deg(), a.shear_y_max_deg(), path + ".shear_y_min_deg",
                                path + ".shear_y_max_deg"));
  TP_RETURN_IF_ERROR(CheckInterpolation(a.interpolation(), path + ".interpolation"));
  TP_RETURN_IF_ERROR(CheckBorder(a.border(), path + ".border"));
  return CheckFinite(a.fill(), path + ".fill");
}

// Draws of sample i: 0 angle, 1 and 2 translation, 3 scale, 4 and 5 shears.
void LowerRandomAffine(const pb::Op& op, int index, PlanBuilder& b) {
  const pb::RandomAffineOp& a = op.random_affine();
  const auto& s = b.state().shape;
  auto between = [&](int64_t i, uint32_t draw, double lo, double hi) {
    return lo + b.Uniform(index, i, draw) * (hi - lo);
  };
  const double max_dx = a.max_translate_x() * static_cast<double>(s.w);
  const double max_dy = a.max_translate_y() * static_cast<double>(s.h);
  const bool scaled = !(a.scale_min() == 0 && a.scale_max() == 0);
  std::vector<Affine> inverse(static_cast<size_t>(b.batch()));
  for (int64_t i = 0; i < b.batch(); ++i) {
    AffineArgs args;
    args.angle_deg = between(i, 0, a.angle_min_deg(), a.angle_max_deg());
    args.tx = std::nearbyint(between(i, 1, -max_dx, max_dx));
    args.ty = std::nearbyint(between(i, 2, -max_dy, max_dy));
    args.scale = scaled ? between(i, 3, a.scale_min(), a.scale_max()) : 1.0;
    args.shear_x_deg = between(i, 4, a.shear_x_min_deg(), a.shear_x_max_deg());
    args.shear_y_deg = between(i, 5, a.shear_y_min_deg(), a.shear_y_max_deg());
    inverse[i] = AffineInverse(args, s.h, s.w);
  }
  b.AddWarp(index, std::move(inverse),
            WarpParams{MainInterp(a.interpolation()), ToBorder(a.border()), a.fill()});
}

// ---------------------------------------------------------------------------------------------
// Colour: brightness, contrast, saturation, hue, grayscale, color_jitter (kernels/color/color.h)

// Colour ops take RGB: C == 3.
absl::Status CheckRgb(const BatchState& in, const std::string& path) {
  if (in.shape.c == 3) return absl::OkStatus();
  return Invalid(path, absl::StrCat("expected an RGB batch (C = 3), got C = ", in.shape.c));
}

kernels::ColorKind ColorKindOf(pb::Op::KindCase kind) {
  switch (kind) {
    case pb::Op::kContrast:
      return kernels::ColorKind::kContrast;
    case pb::Op::kSaturation:
      return kernels::ColorKind::kSaturation;
    case pb::Op::kHue:
      return kernels::ColorKind::kHue;
    default:
      return kernels::ColorKind::kBrightness;
  }
}

const pb::ColorFactorOp& ColorFactor(const pb::Op& op) {
  switch (op.kind_case()) {
    case pb::Op::kContrast:
      return op.contrast();
    case pb::Op::kSaturation:
      return op.saturation();
    case pb::Op::kHue:
      return op.hue();
    default:
      return op.brightness();
  }
}

// A factor under the kernels' rule (kernels::ColorFactorLimits, the one statement of it).
absl::Status CheckColorFactor(kernels::ColorKind kind, double v, const std::string& path) {
  if (kernels::ColorFactorValid(kind, v)) return absl::OkStatus();
  const kernels::ColorFactorRange r = kernels::ColorFactorLimits(kind);
  return Invalid(path, absl::StrCat("expected a ", kernels::ColorKindName(kind), " factor in [",
                                    r.lo, ", ", r.hi, "], got ", v));
}

absl::Status ValidateColorFactor(const pb::Op& op, const BatchState& in, const std::string& path) {
  TP_RETURN_IF_ERROR(CheckRgb(in, path));
  return CheckColorFactor(ColorKindOf(op.kind_case()), ColorFactor(op).factor(), path + ".factor");
}

void LowerColorFactor(const pb::Op& op, int index, PlanBuilder& b) {
  b.AddColor(index, {{kernels::ColorAdjust{ColorKindOf(op.kind_case()), ColorFactor(op).factor()}}},
             3);
}

int64_t GrayChannels(const pb::GrayscaleOp& g) {
  return g.num_output_channels() == 0 ? 1 : g.num_output_channels();
}

absl::Status InferGrayscale(const pb::Op& op, const BatchState& in, const std::string& path,
                            BatchState* out) {
  TP_RETURN_IF_ERROR(CheckRgb(in, path));
  const int32_t c = op.grayscale().num_output_channels();
  if (c != 0 && c != 1 && c != 3) {
    return Invalid(path + ".num_output_channels", absl::StrCat("expected 1 or 3, got ", c));
  }
  out->shape.c = GrayChannels(op.grayscale());
  return absl::OkStatus();
}

void LowerGrayscale(const pb::Op& op, int index, PlanBuilder& b) {
  b.AddColor(index, {{kernels::ColorAdjust{kernels::ColorKind::kGrayscale, 0}}},
             GrayChannels(op.grayscale()));
}

// color_jitter: the four ranges in torchvision's order (brightness, contrast, saturation, hue).
struct JitterRange {
  kernels::ColorKind kind;
  double lo, hi;
  const char* lo_name;
  const char* hi_name;
};

std::array<JitterRange, 4> JitterRanges(const pb::ColorJitterOp& j) {
  return {{{kernels::ColorKind::kBrightness, j.brightness_min(), j.brightness_max(),
            "brightness_min", "brightness_max"},
           {kernels::ColorKind::kContrast, j.contrast_min(), j.contrast_max(), "contrast_min",
            "contrast_max"},
           {kernels::ColorKind::kSaturation, j.saturation_min(), j.saturation_max(),
            "saturation_min", "saturation_max"},
           {kernels::ColorKind::kHue, j.hue_min(), j.hue_max(), "hue_min", "hue_max"}}};
}

bool LeftOut(const JitterRange& r) { return r.lo == 0 && r.hi == 0; }

absl::Status ValidateColorJitter(const pb::Op& op, const BatchState& in, const std::string& path) {
  TP_RETURN_IF_ERROR(CheckRgb(in, path));
  for (const JitterRange& r : JitterRanges(op.color_jitter())) {
    if (LeftOut(r)) continue;
    const std::string lo = absl::StrCat(path, ".", r.lo_name);
    const std::string hi = absl::StrCat(path, ".", r.hi_name);
    TP_RETURN_IF_ERROR(CheckColorFactor(r.kind, r.lo, lo));
    TP_RETURN_IF_ERROR(CheckColorFactor(r.kind, r.hi, hi));
    TP_RETURN_IF_ERROR(CheckRange(r.lo, r.hi, lo, hi));
  }
  return absl::OkStatus();
}

// Draws of sample i: 0-3 the factors (brightness, contrast, saturation, hue), 4-6 the order (a
// Fisher-Yates shuffle of the four, as torchvision's randperm(4) draws a uniform permutation).
void LowerColorJitter(const pb::Op& op, int index, PlanBuilder& b) {
  const std::array<JitterRange, 4> ranges = JitterRanges(op.color_jitter());
  std::vector<std::vector<kernels::ColorAdjust>> chains(static_cast<size_t>(b.batch()));
  for (int64_t i = 0; i < b.batch(); ++i) {
    std::array<int, 4> order = {0, 1, 2, 3};
    for (int k = 3; k > 0; --k) {
      const double u = b.Uniform(index, i, static_cast<uint32_t>(7 - k));
      const int j = std::min(k, static_cast<int>(u * (k + 1)));
      std::swap(order[k], order[j]);
    }
    for (const int k : order) {
      const JitterRange& r = ranges[static_cast<size_t>(k)];
      if (LeftOut(r)) continue;
      const double factor = r.lo + b.Uniform(index, i, static_cast<uint32_t>(k)) * (r.hi - r.lo);
      chains[i].push_back({r.kind, factor});
    }
  }
  b.AddColor(index, std::move(chains), 3);
}

// channels_first
absl::Status InferChannelsFirst(const pb::Op&, const BatchState&, const std::string&,
                                BatchState* out) {
  out->channels_first = true;
  return absl::OkStatus();
}

void LowerChannelsFirst(const pb::Op&, int, PlanBuilder& b) { b.SetChannelsFirst(); }

// The entries' inference for ops that keep the batch's shape and dtype.
template <absl::Status (*kValidate)(const pb::Op&, const BatchState&, const std::string&)>
absl::Status SameBatch(const pb::Op& op, const BatchState& in, const std::string& path,
                       BatchState*) {
  return kValidate(op, in, path);
}

absl::Status InferCast(const pb::Op& op, const BatchState& in, const std::string& path,
                       BatchState* out) {
  TP_ASSIGN_OR_RETURN(out->dtype, DecodeDType(op.cast().dtype(), path + ".dtype"));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// The wire half of the schema, from the descriptor

std::string TypeName(const google::protobuf::FieldDescriptor* f) {
  std::string t;
  if (f->is_repeated()) {
    t = "repeated ";
  } else if (f->has_presence() && f->containing_oneof() == nullptr &&
             f->message_type() == nullptr) {
    t = "optional ";
  }
  if (f->enum_type() != nullptr) return t + std::string(f->enum_type()->name());
  if (f->message_type() != nullptr) return t + std::string(f->message_type()->name());
  return t + std::string(f->type_name());
}

std::vector<ArgSpec> ArgsOf(const google::protobuf::Descriptor* m) {
  std::vector<ArgSpec> args;
  for (int k = 0; k < m->field_count(); ++k) {
    const google::protobuf::FieldDescriptor* f = m->field(k);
    args.push_back({std::string(f->name()), TypeName(f), f->options().GetExtension(pb::arg)});
  }
  return args;
}

// What the server does with an op; the rest of its OpSpec comes from the descriptor.
struct Entry {
  pb::Op::KindCase kind;
  std::vector<kernels::DType> dtypes;
  decltype(OpSpec::infer) infer;
  decltype(OpSpec::lower) lower;
  std::vector<KernelKind> kernels;
};

const std::vector<kernels::DType> kAll = {DType::kUInt8, DType::kInt32, DType::kFloat32,
                                          DType::kFloat16};
const std::vector<kernels::DType> kFloating = {DType::kFloat32, DType::kFloat16};
// The colour kernels' dtypes (kernels/color/color.h): uint8 in [0, 255], floating in [0, 1].
const std::vector<kernels::DType> kColorDTypes = {DType::kUInt8, DType::kFloat32, DType::kFloat16};

}  // namespace

// ---------------------------------------------------------------------------------------------
// The registry

OpRegistry::OpRegistry() {
  const std::vector<Entry> entries = {
      {pb::Op::kRotate, kAll, SameBatch<ValidateRotate>, LowerRotate, {KernelKind::kWarp}},
      {pb::Op::kFlip,
       kAll,
       SameBatch<ValidateFlip>,
       LowerFlip,
       {KernelKind::kFlip, KernelKind::kWarp}},
      {pb::Op::kAdd,
       kAll,
       SameBatch<ValidateArithmetic>,
       LowerArithmetic,
       {KernelKind::kElementwise}},
      {pb::Op::kSubtract,
       kAll,
       SameBatch<ValidateArithmetic>,
       LowerArithmetic,
       {KernelKind::kElementwise}},
      {pb::Op::kMultiply,
       kAll,
       SameBatch<ValidateArithmetic>,
       LowerArithmetic,
       {KernelKind::kElementwise}},
      {pb::Op::kDivide,
       kAll,
       SameBatch<ValidateArithmetic>,
       LowerArithmetic,
       {KernelKind::kElementwise}},
      {pb::Op::kNormalize,
       kFloating,
       SameBatch<ValidateNormalize>,
       LowerNormalize,
       {KernelKind::kElementwise}},
      {pb::Op::kClamp, kAll, SameBatch<ValidateClamp>, LowerClamp, {KernelKind::kElementwise}},
      {pb::Op::kCast, kAll, InferCast, LowerCast, {KernelKind::kElementwise}},
      {pb::Op::kRandomFlip,
       kAll,
       SameBatch<ValidateRandomFlip>,
       LowerRandomFlip,
       {KernelKind::kFlip, KernelKind::kWarp}},
      {pb::Op::kRandomRotate,
       kAll,
       SameBatch<ValidateRandomRotate>,
       LowerRandomRotate,
       {KernelKind::kWarp}},
      {pb::Op::kResize, kAll, InferResize, LowerResize, {KernelKind::kWarp, KernelKind::kResample}},
      {pb::Op::kCrop, kAll, InferCrop, LowerCrop, {KernelKind::kWarp}},
      {pb::Op::kCenterCrop, kAll, InferCenterCrop, LowerCenterCrop, {KernelKind::kWarp}},
      {pb::Op::kPad, kAll, InferPad, LowerPad, {KernelKind::kWarp}},
      {pb::Op::kRandomResizedCrop,
       kAll,
       InferRandomResizedCrop,
       LowerRandomResizedCrop,
       {KernelKind::kWarp, KernelKind::kResample}},
      {pb::Op::kAffine, kAll, InferAffine, LowerAffine, {KernelKind::kWarp}},
      {pb::Op::kRandomAffine, kAll, InferRandomAffine, LowerRandomAffine, {KernelKind::kWarp}},
      {pb::Op::kBrightness,
       kColorDTypes,
       SameBatch<ValidateColorFactor>,
       LowerColorFactor,
       {KernelKind::kColor}},
      {pb::Op::kContrast,
       kColorDTypes,
       SameBatch<ValidateColorFactor>,
       LowerColorFactor,
       {KernelKind::kColor}},
      {pb::Op::kSaturation,
       kColorDTypes,
       SameBatch<ValidateColorFactor>,
       LowerColorFactor,
       {KernelKind::kColor}},
      {pb::Op::kHue,
       kColorDTypes,
       SameBatch<ValidateColorFactor>,
       LowerColorFactor,
       {KernelKind::kColor}},
      {pb::Op::kGrayscale, kColorDTypes, InferGrayscale, LowerGrayscale, {KernelKind::kColor}},
      {pb::Op::kColorJitter,
       kColorDTypes,
       SameBatch<ValidateColorJitter>,
       LowerColorJitter,
       {KernelKind::kColor}},
      {pb::Op::kChannelsFirst,
       kAll,
       InferChannelsFirst,
       LowerChannelsFirst,
       {KernelKind::kElementwise}},
  };
  const google::protobuf::OneofDescriptor* oneof = pb::Op::descriptor()->FindOneofByName("kind");
  for (const Entry& e : entries) {
    const google::protobuf::FieldDescriptor* f = pb::Op::descriptor()->FindFieldByNumber(e.kind);
    if (f == nullptr || f->containing_oneof() != oneof) continue;
    const pb::OpOptions& o = f->options().GetExtension(pb::op);
    OpSpec spec{std::string(f->name()),    e.kind,   o.summary(), o.geometric(), o.random(),
                ArgsOf(f->message_type()), e.dtypes, e.infer,     e.lower,       e.kernels};
    ops_.push_back(std::move(spec));
  }
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

absl::StatusOr<Plan> BuildPlan(const pb::Pipeline& pipeline, const BatchState& input, uint64_t seed,
                               uint64_t sample_offset, std::vector<AuxSampling> aux,
                               const PlanOptions& options) {
  const OpRegistry& registry = OpRegistry::Default();
  if (pipeline.ops_size() == 0) {
    return Invalid("pipeline.ops", "expected at least 1 op, got 0");
  }
  if (pipeline.ops_size() > options.max_ops) {
    return Invalid("pipeline.ops", absl::StrCat("expected at most ", options.max_ops, " ops, got ",
                                                pipeline.ops_size()));
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
    const BatchState& in = builder.state();
    if (in.channels_first) {
      return Invalid(
          absl::StrCat("pipeline.ops[", i - 1, "].channels_first"),
          absl::StrCat("expected channels_first as the last op, got ", spec->name, " after it"));
    }
    if (std::find(spec->dtypes.begin(), spec->dtypes.end(), in.dtype) == spec->dtypes.end()) {
      std::string names;
      for (DType d : spec->dtypes)
        absl::StrAppend(&names, names.empty() ? "" : " or ", kernels::DTypeName(d));
      return Invalid(
          path, absl::StrCat("expected a ", names, " batch, got ", kernels::DTypeName(in.dtype),
                             spec->kind == pb::Op::kNormalize
                                 ? "; add a cast to DTYPE_FLOAT32 before normalize"
                                 : ""));
    }
    BatchState out = in;
    TP_RETURN_IF_ERROR(spec->infer(op, in, path, &out));
    const double bytes = static_cast<double>(out.shape.n) * static_cast<double>(out.shape.h) *
                         static_cast<double>(out.shape.w) * static_cast<double>(out.shape.c) *
                         static_cast<double>(kernels::DTypeSize(out.dtype));
    if (bytes > static_cast<double>(options.max_tensor_bytes)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          path, ": the batch it makes, ", DescribeShape(out.shape, 4, out.dtype), ", is ",
          static_cast<uint64_t>(bytes), " bytes, over the server's max tensor size of ",
          options.max_tensor_bytes, " bytes"));
    }
    spec->lower(op, i, builder);
  }
  return std::move(builder).Finish(std::move(aux));
}

}  // namespace tensorprep::handlers
