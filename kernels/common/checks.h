// Who checks what, and the view checks every kernel entry point shares.
//
// A request is validated once, by the op registry (handlers/op_registry.cc). It owns every
// user-facing INVALID_ARGUMENT: the message names the request field, what was expected and what
// came. Where a rule concerns values the kernels compute with (the per-channel operand vectors of
// the element-wise ops), the rule itself lives in kernels (CheckOperand, elementwise.h) and the
// registry applies it, so that the two levels cannot drift apart.
//
// Kernels (the CPU kernels, the CUDA launchers, the CPU backend's fused path) do not validate a
// request again. Each entry point checks its preconditions once per call, never per element, with
// the functions below and the per-op ones built on them (CheckWarpSource in warp.h,
// CheckFlipSource in flip.h, CheckElementwiseChain in elementwise.h): the ones whose violation
// would read or write out of bounds, race, or reach undefined behaviour (views of the wrong shape,
// dtype or size; overlapping memory; per-sample argument counts; enum values; operand vector
// lengths; operands that would put a NaN into an integer conversion). A violation is INTERNAL
// "<function>: <what>": it means the caller (the planner, a backend, a test) broke an invariant,
// never that a client sent a bad request, which the registry has already refused. The CUDA
// launchers add the checks only the device needs (kernels/cuda/prepare.cc).
//
// Functions here are pure and thread-safe; they never dereference a view's data.
#ifndef TENSORPREP_KERNELS_COMMON_CHECKS_H_
#define TENSORPREP_KERNELS_COMMON_CHECKS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernels/common/tensor.h"

namespace tensorprep::kernels {

// INTERNAL "<function>: <what>".
absl::Status PreconditionError(absl::string_view function, absl::string_view what);

// "(n, h, w, c)".
std::string ShapeString(const BatchShape& shape);

// The source view: every dimension >= 1 and data not null.
absl::Status CheckSourceView(absl::string_view function, const ConstTensorView& src);

enum class Aliasing {
  kDistinct,     // dst must not overlap src
  kSameAllowed,  // dst may also be exactly src's memory when the element sizes are equal
};

// The destination view of a kernel that writes one element per source element: dst.shape equals
// src.shape, dst.dtype equals `dtype`, data not null, memory as `aliasing` allows. src is assumed
// to have passed CheckSourceView.
absl::Status CheckDestinationView(absl::string_view function, const ConstTensorView& src,
                                  const TensorView& dst, DType dtype, Aliasing aliasing);

// A per-sample argument: 1 entry (for every sample) or one per sample (`samples`). `what` names
// the entries in the message ("affine maps", "flag sets").
absl::Status CheckPerSampleCount(absl::string_view function, absl::string_view what,
                                 size_t entries, int64_t samples);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_COMMON_CHECKS_H_
