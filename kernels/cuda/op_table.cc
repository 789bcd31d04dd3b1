#include "kernels/cuda/op_table.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/common/status.h"

namespace tensorprep::kernels::cuda::detail {

absl::StatusOr<ChainTable> BuildChainTable(DType in, int64_t channels,
                                           absl::Span<const ElementwiseOp> ops) {
  TP_RETURN_IF_ERROR(ValidateElementwise(in, channels, ops));
  ChainTable table;
  DType current = in;
  for (const ElementwiseOp& op : ops) {
    if (table.values.size() + op.a.size() + op.b.size() >
        static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
      return absl::InvalidArgumentError("element-wise chain: too many per-channel values");
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

}  // namespace tensorprep::kernels::cuda::detail
