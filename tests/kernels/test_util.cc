#include "tests/kernels/test_util.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "kernels/reference/reference.h"

namespace tensorprep::kernels::testing {

Buffer::Buffer(DType dtype, BatchShape shape)
    : dtype_(dtype),
      shape_(shape),
      // Over-allocated by 4 bytes so that empty or odd-sized views still have aligned storage.
      bytes_(static_cast<size_t>(shape.elements()) * DTypeSize(dtype) + 4) {}

Buffer RandomBuffer(DType dtype, BatchShape shape, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(shape.elements()));
  for (double& x : v) x = dist(rng);
  return FromValues(dtype, shape, v);
}

Buffer FromValues(DType dtype, BatchShape shape, const std::vector<double>& values) {
  Buffer b(dtype, shape);
  reference::FromDoubles(values, b.mutable_view());
  return b;
}

void DefaultRange(DType dtype, double* lo, double* hi) {
  switch (dtype) {
    case DType::kUInt8:
      *lo = 0, *hi = 255;
      return;
    case DType::kInt32:
      *lo = -1e6, *hi = 1e6;
      return;
    default:
      *lo = -1, *hi = 1;
  }
}

double HalfSpacing(double v) {
  const double a = std::fabs(v);
  if (a < std::ldexp(1.0, -14)) return std::ldexp(1.0, -24);
  int e;
  std::frexp(a, &e);
  return std::ldexp(1.0, e - 11);
}

std::string ShapeName(const BatchShape& s) {
  return absl::StrCat(s.n, "x", s.h, "x", s.w, "x", s.c);
}

const char* BorderName(Border b) {
  switch (b) {
    case Border::kConstant:
      return "constant";
    case Border::kEdge:
      return "edge";
    case Border::kReflect:
      return "reflect";
    case Border::kReflect101:
      return "reflect101";
    case Border::kWrap:
      return "wrap";
  }
  return "unknown";
}

ElementwiseOp Normalize(std::vector<double> mean, std::vector<double> stddev) {
  ElementwiseOp op;
  op.kind = ElementwiseKind::kNormalize;
  op.a = std::move(mean);
  op.b = std::move(stddev);
  return op;
}

ElementwiseOp Clamp(bool has_lo, double lo, bool has_hi, double hi) {
  ElementwiseOp op;
  op.kind = ElementwiseKind::kClamp;
  op.has_lo = has_lo;
  op.lo = lo;
  op.has_hi = has_hi;
  op.hi = hi;
  return op;
}

ElementwiseOp Cast(DType to) {
  ElementwiseOp op;
  op.kind = ElementwiseKind::kCast;
  op.to = to;
  return op;
}

}  // namespace tensorprep::kernels::testing
