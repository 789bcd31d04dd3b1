// Element-wise ops (add, subtract, multiply, divide, normalize, clamp, cast), run as one fused pass:
// a chain of ops is applied tile by tile, so memory is read and written once whatever the chain's
// length, while every op keeps exactly the rounding it has when run alone.
#ifndef TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_H_
#define TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/common/thread_pool.h"

namespace tensorprep::kernels {

enum class ElementwiseKind : uint8_t { kAdd, kSubtract, kMultiply, kDivide, kNormalize, kClamp, kCast };

// One element-wise op. Per-channel vectors have 1 entry (broadcast) or C entries.
//
// Semantics, per element x of channel c, in the tensor's current dtype T:
// - kAdd/kSubtract/kMultiply/kDivide by a[c]:
//     float32: computed in float32 with a[c] first rounded to float32 (numpy's x + np.float32(v));
//     float16: x widened to float32, op in float32 with a[c] rounded to float32, rounded to half;
//     uint8/int32: computed in double, rounded to nearest (ties to even), saturated to T.
// - kNormalize: (x - a[c]) / b[c], floating T only (float32 math with a, b rounded to float32;
//     float16 widened then rounded back).
// - kClamp: x < lo ? lo : (x > hi ? hi : x), with lo/hi first converted to T as kCast would
//     (integers: rounded, saturated); `has_lo`/`has_hi` false means unbounded. NaN stays NaN.
// - kCast to `to`: floating -> integer rounds to nearest (ties to even) and saturates, NaN -> 0;
//     integer -> integer saturates; -> float16 rounds to nearest even and saturates finite values
//     at +-65504 (inf and NaN stay); -> float32 from int32 rounds to nearest.
struct ElementwiseOp {
  ElementwiseKind kind = ElementwiseKind::kAdd;
  std::vector<double> a;  // value (arithmetic) or mean (normalize)
  std::vector<double> b;  // std (normalize)
  bool has_lo = false;
  bool has_hi = false;
  double lo = 0;
  double hi = 0;
  DType to = DType::kFloat32;  // kCast only
};

// The dtype a chain produces from `in` (each kCast changes it).
DType ElementwiseOutputDType(DType in, absl::Span<const ElementwiseOp> ops);

// What, if anything, is wrong with one per-channel operand vector (an arithmetic op's value, a
// normalize op's mean or std) for a batch of `dtype` with `channels` channels. The rules, checked
// in this order: 1 entry (broadcast) or `channels` entries; each entry finite; non-zero when
// `nonzero` (divisors, stds); on a floating dtype, which computes with each entry rounded to
// float32, still finite and (when `nonzero`) still non-zero after that rounding.
//
// The one statement of these rules (kernels/common/checks.h): the op registry applies it to a
// request and words the client's INVALID_ARGUMENT; CheckElementwiseChain applies it as the
// kernels' precondition. Pure; thread-safe.
struct OperandProblem {
  enum Kind : uint8_t {
    kNone,                // the vector is fine
    kLength,              // neither 1 nor `channels` entries
    kNotFinite,           // entry `index` is NaN or infinite
    kZero,                // entry `index` is 0 where `nonzero`
    kNotFiniteInFloat32,  // entry `index` overflows float32 on a floating dtype
    kZeroInFloat32,       // entry `index` underflows to 0 in float32 where `nonzero`
  };
  Kind kind = kNone;
  size_t index = 0;  // the offending entry, for the kinds after kLength
  bool ok() const { return kind == kNone; }
};
OperandProblem CheckOperand(absl::Span<const double> values, int64_t channels, DType dtype,
                            bool nonzero);

// The preconditions of a chain for an input dtype and channel count (kernels/common/checks.h):
// valid dtypes and kinds, operand vectors as CheckOperand requires, normalize on a floating dtype.
// Clamp bounds are not checked here: any bounds give a defined result (the registry requires them
// finite and ordered). INTERNAL "<function>: ops[i] (<kind>): <what>" otherwise.
absl::Status CheckElementwiseChain(absl::string_view function, DType in, int64_t channels,
                                   absl::Span<const ElementwiseOp> ops);

// dst = ops applied in order to src. dst.dtype must equal ElementwiseOutputDType(src.dtype, ops)
// and dst.shape src.shape. dst may be the same memory as src when the dtypes have the same size
// (in-place); otherwise they must not overlap. An empty chain copies. Spreads tiles over `pool`
// (null: inline). INTERNAL when the chain or the views break these preconditions
// (kernels/common/checks.h); never throws.
//
// With `channels_first`, dst's memory is planar per sample (PyTorch's N, C, H, W): the value the
// NHWC result would hold for element (n, y, x, c) is stored at ((n * C + c) * H + y) * W + x.
// dst.shape still names the logical (n, h, w, c) batch and must equal src.shape; the values are
// bit for bit those of the NHWC result, only placed differently. src and dst must not overlap
// (no in-place use). An empty chain is a pure layout change. Same results at any thread count.
absl::Status ElementwiseCpu(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const ElementwiseOp> ops, ThreadPool* pool,
                            bool channels_first = false);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_H_
