// Reading and writing NumPy .npy files (format versions 1.0-3.0, C order, little-endian) for the
// dtypes tensorprep speaks: uint8, int32, float32, float16.
#ifndef TENSORPREP_CLIENT_CPP_NPY_H_
#define TENSORPREP_CLIENT_CPP_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::client {

// Loads `path` into a wire tensor (dtype, shape, raw bytes). INVALID_ARGUMENT for Fortran order,
// big-endian or unsupported dtypes, truncated files; NOT_FOUND when the file cannot be opened.
absl::StatusOr<v1::Tensor> ReadNpy(const std::string& path);

// Parses .npy bytes already in memory.
absl::StatusOr<v1::Tensor> ParseNpy(const std::string& bytes, const std::string& what);

// Writes `t` as a version 1.0 .npy file. INVALID_ARGUMENT for an unknown dtype, INTERNAL when the
// file cannot be written.
absl::Status WriteNpy(const std::string& path, const v1::Tensor& t);

// Writes `bytes` bytes at `data` as a .npy file of `dtype` and `shape` (e.g. a result that lies in
// shared memory), without copying them into a Tensor first. Errors as for the overload above.
absl::Status WriteNpy(const std::string& path, v1::DType dtype, const std::vector<int64_t>& shape,
                      const void* data, size_t bytes);

// The .npy bytes for `t`.
absl::StatusOr<std::string> SerializeNpy(const v1::Tensor& t);

}  // namespace tensorprep::client

#endif  // TENSORPREP_CLIENT_CPP_NPY_H_
