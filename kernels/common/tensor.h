// Typed, non-owning views of dense NHWC batches: the only data type kernels see.
//
// Kernels never see protobuf or gRPC types. A view may point into a received message, a buffer of
// the server's, shared memory or a device allocation; the caller owns the memory and keeps it alive
// for the duration of the kernel call.
#ifndef TENSORPREP_KERNELS_COMMON_TENSOR_H_
#define TENSORPREP_KERNELS_COMMON_TENSOR_H_

#include <cstddef>
#include <cstdint>

namespace tensorprep::kernels {

enum class DType : uint8_t { kUInt8, kInt32, kFloat32, kFloat16 };

// Bytes per element.
constexpr size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kUInt8:
      return 1;
    case DType::kInt32:
      return 4;
    case DType::kFloat32:
      return 4;
    case DType::kFloat16:
      return 2;
  }
  return 0;
}

// "uint8", "int32", "float32", "float16".
const char* DTypeName(DType t);

constexpr bool IsFloating(DType t) { return t == DType::kFloat32 || t == DType::kFloat16; }

// Shape of an NHWC batch. An NHW batch is viewed with c == 1. All dimensions >= 1 for a valid
// view; callers validate before building one (no overflow checks happen here).
struct BatchShape {
  int64_t n = 0;
  int64_t h = 0;
  int64_t w = 0;
  int64_t c = 0;

  int64_t sample_elements() const { return h * w * c; }
  int64_t elements() const { return n * h * w * c; }
  bool operator==(const BatchShape& o) const {
    return n == o.n && h == o.h && w == o.w && c == o.c;
  }
};

// Read-only view. `data` is aligned to DTypeSize(dtype).
struct ConstTensorView {
  DType dtype = DType::kUInt8;
  BatchShape shape;
  const void* data = nullptr;

  size_t bytes() const { return static_cast<size_t>(shape.elements()) * DTypeSize(dtype); }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

// Writable view. `data` is aligned to DTypeSize(dtype).
struct TensorView {
  DType dtype = DType::kUInt8;
  BatchShape shape;
  void* data = nullptr;

  size_t bytes() const { return static_cast<size_t>(shape.elements()) * DTypeSize(dtype); }
  ConstTensorView as_const() const { return {dtype, shape, data}; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_COMMON_TENSOR_H_
