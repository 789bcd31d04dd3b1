// Element-wise ops (add, subtract, multiply, divide, normalize, clamp, cast), run as one fused pass:
// a chain of ops is applied tile by tile, so memory is read and written once whatever the chain's
// length, while every op keeps exactly the rounding it has when run alone.
#ifndef TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_H_
#define TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_H_

#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
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

// Checks a chain against an input dtype and channel count: vector lengths 1 or C, normalize on a
// floating dtype, non-zero divisors and stds, finite values. INVALID_ARGUMENT naming the op index
// (`ops[i]`) and what was expected otherwise.
absl::Status ValidateElementwise(DType in, int64_t channels, absl::Span<const ElementwiseOp> ops);

// dst = ops applied in order to src. dst.dtype must equal ElementwiseOutputDType(src.dtype, ops)
// and dst.shape src.shape. dst may be the same memory as src when the dtypes have the same size
// (in-place); otherwise they must not overlap. An empty chain copies. Spreads tiles over `pool`
// (null: inline). INVALID_ARGUMENT on a bad chain or mismatched views; never throws.
absl::Status ElementwiseCpu(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const ElementwiseOp> ops, ThreadPool* pool);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_ELEMENTWISE_ELEMENTWISE_H_
