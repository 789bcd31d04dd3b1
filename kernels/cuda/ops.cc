// The kernel launchers: validate as the CPU backend does, pack the per-launch parameters into one
// upload, and launch one grid for the whole batch.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/common/status.h"
#include "kernels/cuda/cuda_api.h"
#include "kernels/cuda/kernel_math.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/op_table.h"
#include "kernels/cuda/runtime_internal.h"

namespace tensorprep::kernels::cuda {
namespace {

using detail::ChainTable;
using detail::ParamBlob;

std::string ShapeText(const BatchShape& s) {
  return absl::StrCat("(", s.n, ", ", s.h, ", ", s.w, ", ", s.c, ")");
}

absl::Status CheckView(const char* function, const char* what, const BatchShape& shape,
                       const void* data) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (shape.n < 1 || shape.h < 1 || shape.w < 1 || shape.c < 1) {
    return absl::InvalidArgumentError(absl::StrCat(function, ": ", what, " shape ",
                                                   ShapeText(shape),
                                                   " must have every dimension >= 1"));
  }
  if (shape.h > kMax || shape.w > kMax || shape.c > kMax) {
    return absl::InvalidArgumentError(absl::StrCat(function, ": ", what, " shape ",
                                                   ShapeText(shape),
                                                   ": height, width and channels must be < 2^31"));
  }
  if (data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(function, ": ", what, " data is null"));
  }
  return absl::OkStatus();
}

// Shapes equal, both views well formed, and the byte ranges either disjoint or (when
// `allow_same` and the element sizes match) identical.
absl::Status CheckPair(const char* function, const ConstTensorView& src, const TensorView& dst,
                       bool allow_same) {
  TP_RETURN_IF_ERROR(CheckView(function, "src", src.shape, src.data));
  TP_RETURN_IF_ERROR(CheckView(function, "dst", dst.shape, dst.data));
  if (!(src.shape == dst.shape)) {
    return absl::InvalidArgumentError(absl::StrCat(function, ": dst shape ", ShapeText(dst.shape),
                                                   " differs from src shape ",
                                                   ShapeText(src.shape)));
  }
  const auto s = reinterpret_cast<uintptr_t>(src.data);
  const auto d = reinterpret_cast<uintptr_t>(dst.data);
  const bool overlap = s < d + dst.bytes() && d < s + src.bytes();
  const bool same = s == d && DTypeSize(src.dtype) == DTypeSize(dst.dtype);
  if (overlap && !(allow_same && same)) {
    return absl::InvalidArgumentError(absl::StrCat(
        function, allow_same ? ": src and dst overlap (only an exact in-place use with dtypes "
                               "of the same size is allowed)"
                             : ": src and dst overlap"));
  }
  return absl::OkStatus();
}

absl::Status CheckPerSample(const char* function, const char* what, size_t entries, int64_t n) {
  if (entries == 1 || static_cast<int64_t>(entries) == n) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(function, ": ", what, " has ", entries,
                                                 " entries; expected 1 or the batch size ", n));
}

absl::Status CheckDeviceViews(const ConstTensorView& src, const TensorView& dst) {
  TP_RETURN_IF_ERROR(detail::RequireDevicePointer(src.data, "src"));
  return detail::RequireDevicePointer(dst.data, "dst");
}

template <typename T>
const T* At(void* base, size_t offset) {
  return reinterpret_cast<const T*>(static_cast<unsigned char*>(base) + offset);
}

}  // namespace

absl::Status WarpElementwiseCuda(const ConstTensorView& src, const TensorView& dst,
                                 absl::Span<const Affine> inverse, const WarpParams& params,
                                 absl::Span<const ElementwiseOp> post_ops, Stream& stream) {
  constexpr char kFn[] = "WarpAffineCuda";
  TP_RETURN_IF_ERROR(CheckPair(kFn, src, dst, /*allow_same=*/false));
  TP_RETURN_IF_ERROR(CheckPerSample(kFn, "inverse", inverse.size(), src.shape.n));
  if (params.interp != Interp::kNearest && params.interp != Interp::kBilinear) {
    return absl::InvalidArgumentError(absl::StrCat(kFn, ": unknown interpolation"));
  }
  if (static_cast<uint8_t>(params.border) > static_cast<uint8_t>(Border::kWrap)) {
    return absl::InvalidArgumentError(absl::StrCat(kFn, ": unknown border"));
  }
  TP_ASSIGN_OR_RETURN(ChainTable table,
                      detail::BuildChainTable(src.dtype, src.shape.c, post_ops));
  if (dst.dtype != table.out) {
    return absl::InvalidArgumentError(absl::StrCat(kFn, ": dst dtype is ", DTypeName(dst.dtype),
                                                   "; expected ", DTypeName(table.out)));
  }
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, kFn));
  TP_RETURN_IF_ERROR(CheckDeviceViews(src, dst));

  std::vector<double> matrices;
  matrices.reserve(inverse.size() * 6);
  for (const Affine& a : inverse) matrices.insert(matrices.end(), a.m, a.m + 6);
  ParamBlob blob;
  const size_t matrices_at = blob.Append(matrices.data(), matrices.size());
  const size_t ops_at = blob.Append(table.ops.data(), table.ops.size());
  const size_t values_at = blob.Append(table.values.data(), table.values.size());
  TP_ASSIGN_OR_RETURN(void* base, detail::UploadParams(stream, blob.data(), blob.size()));

  detail::WarpArgs args;
  args.src = src.data;
  args.dst = dst.data;
  args.n = src.shape.n;
  args.h = static_cast<int32_t>(src.shape.h);
  args.w = static_cast<int32_t>(src.shape.w);
  args.c = static_cast<int32_t>(src.shape.c);
  args.affines = At<double>(base, matrices_at);
  args.affine_stride = inverse.size() == 1 ? 0 : 1;
  args.interp = params.interp;
  args.border = params.border;
  args.fill = detail::CastDouble(params.fill, src.dtype);
  args.chain.ops = At<detail::DeviceOp>(base, ops_at);
  args.chain.values = At<double>(base, values_at);
  args.chain.count = static_cast<int32_t>(table.ops.size());
  return detail::CudaStatus("launching the warp kernel",
                            detail::LaunchWarp(args, src.dtype, dst.dtype,
                                               stream.impl()->stream));
}

absl::Status WarpAffineCuda(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const Affine> inverse, const WarpParams& params,
                            Stream& stream) {
  return WarpElementwiseCuda(src, dst, inverse, params, {}, stream);
}

absl::Status FlipCuda(const ConstTensorView& src, const TensorView& dst,
                      absl::Span<const FlipFlags> flags, Stream& stream) {
  constexpr char kFn[] = "FlipCuda";
  TP_RETURN_IF_ERROR(CheckPair(kFn, src, dst, /*allow_same=*/false));
  if (src.dtype != dst.dtype) {
    return absl::InvalidArgumentError(absl::StrCat(kFn, ": dst dtype is ", DTypeName(dst.dtype),
                                                   "; expected ", DTypeName(src.dtype)));
  }
  TP_RETURN_IF_ERROR(CheckPerSample(kFn, "flags", flags.size(), src.shape.n));
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, kFn));
  TP_RETURN_IF_ERROR(CheckDeviceViews(src, dst));

  std::vector<uint8_t> packed;
  packed.reserve(flags.size() * 2);
  for (const FlipFlags& f : flags) {
    packed.push_back(f.horizontal ? 1 : 0);
    packed.push_back(f.vertical ? 1 : 0);
  }
  TP_ASSIGN_OR_RETURN(void* base, detail::UploadParams(stream, packed.data(), packed.size()));

  detail::FlipArgs args;
  args.src = src.data;
  args.dst = dst.data;
  args.n = src.shape.n;
  args.h = static_cast<int32_t>(src.shape.h);
  args.w = static_cast<int32_t>(src.shape.w);
  args.c = static_cast<int32_t>(src.shape.c);
  args.flags = At<uint8_t>(base, 0);
  args.flag_stride = flags.size() == 1 ? 0 : 1;
  return detail::CudaStatus(
      "launching the flip kernel",
      detail::LaunchFlip(args, DTypeSize(src.dtype), stream.impl()->stream));
}

absl::Status ElementwiseCuda(const ConstTensorView& src, const TensorView& dst,
                             absl::Span<const ElementwiseOp> ops, Stream& stream) {
  constexpr char kFn[] = "ElementwiseCuda";
  TP_RETURN_IF_ERROR(CheckPair(kFn, src, dst, /*allow_same=*/true));
  TP_ASSIGN_OR_RETURN(ChainTable table, detail::BuildChainTable(src.dtype, src.shape.c, ops));
  if (dst.dtype != table.out) {
    return absl::InvalidArgumentError(absl::StrCat(kFn, ": dst dtype is ", DTypeName(dst.dtype),
                                                   "; expected ", DTypeName(table.out)));
  }
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, kFn));
  TP_RETURN_IF_ERROR(CheckDeviceViews(src, dst));

  ParamBlob blob;
  const size_t ops_at = blob.Append(table.ops.data(), table.ops.size());
  const size_t values_at = blob.Append(table.values.data(), table.values.size());
  TP_ASSIGN_OR_RETURN(void* base, detail::UploadParams(stream, blob.data(), blob.size()));

  detail::ElementwiseArgs args;
  args.src = src.data;
  args.dst = dst.data;
  args.total = src.shape.elements();
  args.channels = static_cast<int32_t>(src.shape.c);
  args.chain.count = static_cast<int32_t>(table.ops.size());
  if (base != nullptr) {
    args.chain.ops = At<detail::DeviceOp>(base, ops_at);
    args.chain.values = At<double>(base, values_at);
  }
  return detail::CudaStatus("launching the element-wise kernel",
                            detail::LaunchElementwise(args, src.dtype, dst.dtype,
                                                      stream.impl()->stream));
}

}  // namespace tensorprep::kernels::cuda
