// Helpers shared by the kernel tests: owning buffers behind tensor views, seeded random content
// (written through the reference's conversion, so every dtype gets exactly representable values),
// and readable names for parameterised cases.
#ifndef TENSORPREP_TESTS_KERNELS_TEST_UTIL_H_
#define TENSORPREP_TESTS_KERNELS_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels::testing {

// An NHWC batch that owns its bytes.
class Buffer {
 public:
  Buffer(DType dtype, BatchShape shape);

  DType dtype() const { return dtype_; }
  const BatchShape& shape() const { return shape_; }
  ConstTensorView view() const { return {dtype_, shape_, bytes_.data()}; }
  TensorView mutable_view() { return {dtype_, shape_, bytes_.data()}; }
  const std::vector<unsigned char>& bytes() const { return bytes_; }

 private:
  DType dtype_;
  BatchShape shape_;
  std::vector<unsigned char> bytes_;
};

// Uniform values in [lo, hi], converted to `dtype` with kCast's rules; deterministic for a seed.
Buffer RandomBuffer(DType dtype, BatchShape shape, uint64_t seed, double lo, double hi);

// A buffer holding `values` (memory order) converted to `dtype`.
Buffer FromValues(DType dtype, BatchShape shape, const std::vector<double>& values);

// Value range that fits every test of a dtype: uint8 0..255, int32 +-1e6, floats +-1.
void DefaultRange(DType dtype, double* lo, double* hi);

// Distance between consecutive binary16 values at |v| (the spacing just above |v|).
double HalfSpacing(double v);

std::string ShapeName(const BatchShape& s);  // "2x17x13x4"

// "constant", "edge", "reflect", "reflect101", "wrap": names for parameterised cases.
const char* BorderName(Border b);

// Element-wise ops for test chains.
ElementwiseOp Normalize(std::vector<double> mean, std::vector<double> stddev);
ElementwiseOp Clamp(bool has_lo, double lo, bool has_hi, double hi);
ElementwiseOp Cast(DType to);

}  // namespace tensorprep::kernels::testing

#endif  // TENSORPREP_TESTS_KERNELS_TEST_UTIL_H_
