#include "kernels/common/checks.h"

#include "absl/strings/str_cat.h"

namespace tensorprep::kernels {

absl::Status PreconditionError(absl::string_view function, absl::string_view what) {
  return absl::InternalError(absl::StrCat(function, ": ", what));
}

std::string ShapeString(const BatchShape& s) {
  return absl::StrCat("(", s.n, ", ", s.h, ", ", s.w, ", ", s.c, ")");
}

absl::Status CheckSourceView(absl::string_view function, const ConstTensorView& src) {
  const BatchShape& s = src.shape;
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.c < 1) {
    return PreconditionError(
        function, absl::StrCat("src shape ", ShapeString(s), "; expected every dimension >= 1"));
  }
  if (src.data == nullptr) return PreconditionError(function, "src data is null");
  return absl::OkStatus();
}

absl::Status CheckDestinationView(absl::string_view function, const ConstTensorView& src,
                                  const TensorView& dst, DType dtype, Aliasing aliasing) {
  if (!(dst.shape == src.shape)) {
    return PreconditionError(function, absl::StrCat("dst shape ", ShapeString(dst.shape),
                                                    "; expected src shape ",
                                                    ShapeString(src.shape)));
  }
  if (dst.dtype != dtype) {
    return PreconditionError(
        function, absl::StrCat("dst dtype ", DTypeName(dst.dtype), "; expected ", DTypeName(dtype)));
  }
  if (dst.data == nullptr) return PreconditionError(function, "dst data is null");
  const auto s = reinterpret_cast<uintptr_t>(src.data);
  const auto d = reinterpret_cast<uintptr_t>(dst.data);
  const bool overlap = s < d + dst.bytes() && d < s + src.bytes();
  const bool same = s == d && DTypeSize(src.dtype) == DTypeSize(dst.dtype);
  if (aliasing == Aliasing::kSameAllowed) {
    if (overlap && !same) {
      return PreconditionError(function,
                               "src and dst overlap; expected distinct memory or an exact in-place "
                               "use with dtypes of the same size");
    }
  } else if (overlap) {
    return PreconditionError(function, "src and dst overlap; expected distinct memory");
  }
  return absl::OkStatus();
}

absl::Status CheckPerSampleCount(absl::string_view function, absl::string_view what,
                                 size_t entries, int64_t samples) {
  if (entries == 1 || static_cast<int64_t>(entries) == samples) return absl::OkStatus();
  return PreconditionError(function, absl::StrCat(entries, " ", what, "; expected 1 or ", samples,
                                                  " (one per sample)"));
}

}  // namespace tensorprep::kernels
