#include "kernels/common/tensor.h"

namespace tensorprep::kernels {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kUInt8:
      return "uint8";
    case DType::kInt32:
      return "int32";
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
  }
  return "unknown";
}

}  // namespace tensorprep::kernels
