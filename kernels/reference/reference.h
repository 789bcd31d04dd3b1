// The one test oracle: plain double-precision implementations of every kernel, written for
// clarity, not speed. It shares the scalar numerics of kernels/common/numerics.h, half.h and
// kernels/warp/sampling.h with the kernels (each tested on its own against independent
// expectations) and spells out everything else per element. Every backend's tests (CPU, CUDA) compare against these functions, and only
// these. Linked into tests and benchmarks, never into the server.
#ifndef TENSORPREP_KERNELS_REFERENCE_REFERENCE_H_
#define TENSORPREP_KERNELS_REFERENCE_REFERENCE_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/flip/flip.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels::reference {

// Every element of `t` as a double (float16 widened exactly), in memory order.
std::vector<double> ToDoubles(const ConstTensorView& t);

// Converts `v` (in memory order, v.size() == t.shape.elements()) into `t`'s dtype with kCast's
// rules (CastDouble, kernels/common/numerics.h) and writes it.
void FromDoubles(const std::vector<double>& v, const TensorView& t);

// Expected output of WarpAffineCpu for the same arguments, as doubles in memory order (already
// rounded and saturated to src.dtype).
std::vector<double> WarpAffine(const ConstTensorView& src, absl::Span<const Affine> inverse,
                               const WarpParams& params);

// The same for an output of out_h x out_w pixels per sample (WarpAffineCpu with a dst of shape
// (src.shape.n, out_h, out_w, src.shape.c)): src.shape.n * out_h * out_w * src.shape.c values.
std::vector<double> WarpAffine(const ConstTensorView& src, absl::Span<const Affine> inverse,
                               const WarpParams& params, int64_t out_h, int64_t out_w);

// Expected output of FlipCpu.
std::vector<double> Flip(const ConstTensorView& src, absl::Span<const FlipFlags> flags);

// Expected output of ElementwiseCpu; the values are in ElementwiseOutputDType(src.dtype, ops).
std::vector<double> Elementwise(const ConstTensorView& src, absl::Span<const ElementwiseOp> ops);

}  // namespace tensorprep::kernels::reference

#endif  // TENSORPREP_KERNELS_REFERENCE_REFERENCE_H_
