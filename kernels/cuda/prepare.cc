#include "kernels/cuda/prepare.h"

#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/numerics.h"
#include "kernels/common/status.h"

namespace tensorprep::kernels::cuda::detail {
namespace {

// The destination checks shared with the CPU kernels, then the device's own on both views. `src`
// has passed its op's source check (CheckWarpSource, CheckFlipSource or CheckSourceView).
absl::Status CheckViews(const char* function, const ConstTensorView& src, const TensorView& dst,
                        DType dst_dtype, Aliasing aliasing) {
  TP_RETURN_IF_ERROR(CheckDestinationView(function, src, dst, dst_dtype, aliasing));
  TP_RETURN_IF_ERROR(CheckDeviceView(function, "src", src.shape, src.dtype, src.data));
  return CheckDeviceView(function, "dst", dst.shape, dst.dtype, dst.data);
}

template <typename T>
const T* At(const void* base, size_t offset) {
  return reinterpret_cast<const T*>(static_cast<const unsigned char*>(base) + offset);
}

void SetGeometry(const BatchShape& s, int64_t* n, int32_t* h, int32_t* w, int32_t* c) {
  *n = s.n;
  *h = static_cast<int32_t>(s.h);
  *w = static_cast<int32_t>(s.w);
  *c = static_cast<int32_t>(s.c);
}

}  // namespace

// What only the device needs on top of the shared view checks (kernels/common/checks.h): the
// kernels index rows, columns and channels with 32-bit integers, and a misaligned access is a
// sticky error on the device that would lose the context.
absl::Status CheckDeviceView(const char* function, const char* what, const BatchShape& shape,
                             DType dtype, const void* data) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (shape.h > kMax || shape.w > kMax || shape.c > kMax) {
    return PreconditionError(function,
                             absl::StrCat(what, " shape ", ShapeString(shape),
                                          "; expected height, width and channels below 2^31"));
  }
  if (reinterpret_cast<uintptr_t>(data) % DTypeSize(dtype) != 0) {
    return PreconditionError(function, absl::StrCat(what, " data is not aligned to ",
                                                    DTypeSize(dtype), " bytes (its element size)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ChainTable> BuildChainTable(const char* function, DType in, int64_t channels,
                                           absl::Span<const ElementwiseOp> ops) {
  TP_RETURN_IF_ERROR(CheckElementwiseChain(function, in, channels, ops));
  ChainTable table;
  DType current = in;
  for (const ElementwiseOp& op : ops) {
    if (table.values.size() + op.a.size() + op.b.size() >
        static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return PreconditionError(function, "element-wise chain: too many per-channel values");
    }
    DeviceOp d;
    d.kind = op.kind;
    d.in = current;
    d.to = op.to;
    d.a_offset = static_cast<int32_t>(table.values.size());
    d.a_count = static_cast<int32_t>(op.a.size());
    table.values.insert(table.values.end(), op.a.begin(), op.a.end());
    d.b_offset = static_cast<int32_t>(table.values.size());
    d.b_count = static_cast<int32_t>(op.b.size());
    table.values.insert(table.values.end(), op.b.begin(), op.b.end());
    d.has_lo = op.has_lo ? 1 : 0;
    d.has_hi = op.has_hi ? 1 : 0;
    d.lo = op.has_lo ? CastDouble(op.lo, current) : 0.0;
    d.hi = op.has_hi ? CastDouble(op.hi, current) : 0.0;
    if (op.kind == ElementwiseKind::kCast) current = op.to;
    table.ops.push_back(d);
  }
  table.out = current;
  return table;
}

absl::StatusOr<WarpLaunch> PrepareWarp(const char* function, const ConstTensorView& src,
                                       const TensorView& dst, absl::Span<const Affine> inverse,
                                       const WarpParams& params,
                                       absl::Span<const ElementwiseOp> post_ops) {
  TP_RETURN_IF_ERROR(CheckWarpSource(function, src, inverse, params));
  TP_ASSIGN_OR_RETURN(ChainTable table,
                      BuildChainTable(function, src.dtype, src.shape.c, post_ops));
  // The output's height and width may differ from the source's (CheckWarpDestination).
  TP_RETURN_IF_ERROR(CheckWarpDestination(function, src, dst, table.out));
  TP_RETURN_IF_ERROR(CheckDeviceView(function, "src", src.shape, src.dtype, src.data));
  TP_RETURN_IF_ERROR(CheckDeviceView(function, "dst", dst.shape, dst.dtype, dst.data));

  WarpLaunch launch;
  launch.in = src.dtype;
  launch.out = dst.dtype;
  std::vector<double> matrices;
  matrices.reserve(inverse.size() * 6);
  for (const Affine& a : inverse) matrices.insert(matrices.end(), a.m, a.m + 6);
  launch.matrices_at = launch.blob.Append(matrices.data(), matrices.size());
  launch.ops_at = launch.blob.Append(table.ops.data(), table.ops.size());
  launch.values_at = launch.blob.Append(table.values.data(), table.values.size());
  WarpArgs& args = launch.args;
  args.src = src.data;
  args.dst = dst.data;
  SetGeometry(src.shape, &args.n, &args.h, &args.w, &args.c);
  args.out_h = static_cast<int32_t>(dst.shape.h);
  args.out_w = static_cast<int32_t>(dst.shape.w);
  args.affine_stride = inverse.size() == 1 ? 0 : 1;
  args.interp = params.interp;
  args.border = params.border;
  args.fill = CastDouble(params.fill, src.dtype);
  args.chain.count = static_cast<int32_t>(table.ops.size());
  return launch;
}

void WarpLaunch::Bind(const void* base) {
  args.affines = At<double>(base, matrices_at);
  args.chain.ops = At<DeviceOp>(base, ops_at);
  args.chain.values = At<double>(base, values_at);
}

absl::StatusOr<FlipLaunch> PrepareFlip(const ConstTensorView& src, const TensorView& dst,
                                       absl::Span<const FlipFlags> flags) {
  constexpr char kFn[] = "FlipCuda";
  TP_RETURN_IF_ERROR(CheckFlipSource(kFn, src, flags));
  TP_RETURN_IF_ERROR(CheckViews(kFn, src, dst, src.dtype, Aliasing::kDistinct));
  FlipLaunch launch;
  std::vector<uint8_t> packed;
  packed.reserve(flags.size() * 2);
  for (const FlipFlags& f : flags) {
    packed.push_back(f.horizontal ? 1 : 0);
    packed.push_back(f.vertical ? 1 : 0);
  }
  launch.blob.Append(packed.data(), packed.size());  // at offset 0
  launch.element_size = DTypeSize(src.dtype);
  FlipArgs& args = launch.args;
  args.src = src.data;
  args.dst = dst.data;
  SetGeometry(src.shape, &args.n, &args.h, &args.w, &args.c);
  args.flag_stride = flags.size() == 1 ? 0 : 1;
  return launch;
}

void FlipLaunch::Bind(const void* base) { args.flags = At<uint8_t>(base, 0); }

absl::StatusOr<ElementwiseLaunch> PrepareElementwise(const ConstTensorView& src,
                                                     const TensorView& dst,
                                                     absl::Span<const ElementwiseOp> ops,
                                                     bool channels_first) {
  constexpr char kFn[] = "ElementwiseCuda";
  TP_RETURN_IF_ERROR(CheckSourceView(kFn, src));
  TP_ASSIGN_OR_RETURN(ChainTable table, BuildChainTable(kFn, src.dtype, src.shape.c, ops));
  TP_RETURN_IF_ERROR(CheckViews(kFn, src, dst, table.out,
                                channels_first ? Aliasing::kDistinct : Aliasing::kSameAllowed));
  ElementwiseLaunch launch;
  launch.in = src.dtype;
  launch.out = dst.dtype;
  launch.ops_at = launch.blob.Append(table.ops.data(), table.ops.size());
  launch.values_at = launch.blob.Append(table.values.data(), table.values.size());
  ElementwiseArgs& args = launch.args;
  args.src = src.data;
  args.dst = dst.data;
  args.total = src.shape.elements();
  args.channels = static_cast<int32_t>(src.shape.c);
  args.chain.count = static_cast<int32_t>(table.ops.size());
  if (channels_first) {
    args.plane = src.shape.h * src.shape.w;
    args.samples = src.shape.n;
  }
  return launch;
}

void ElementwiseLaunch::Bind(const void* base) {
  if (base == nullptr) return;  // empty chain: nothing was uploaded and nothing is read
  args.chain.ops = At<DeviceOp>(base, ops_at);
  args.chain.values = At<double>(base, values_at);
}

}  // namespace tensorprep::kernels::cuda::detail
