#include "handlers/tensor_codec.h"

#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tensorprep::handlers {

using kernels::DType;

AlignedBuffer::AlignedBuffer(size_t bytes) : size_(bytes) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  data_.reset(std::aligned_alloc(64, rounded == 0 ? 64 : rounded));
}

void AlignedBuffer::Free::operator()(void* p) const { std::free(p); }

absl::StatusOr<DType> DecodeDType(int wire_dtype, const std::string& path) {
  switch (wire_dtype) {
    case pb::DTYPE_UINT8:
      return DType::kUInt8;
    case pb::DTYPE_INT32:
      return DType::kInt32;
    case pb::DTYPE_FLOAT32:
      return DType::kFloat32;
    case pb::DTYPE_FLOAT16:
      return DType::kFloat16;
    case pb::DTYPE_UNSPECIFIED:
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": expected one of DTYPE_UINT8, DTYPE_INT32, DTYPE_FLOAT32, DTYPE_FLOAT16, got "
                "DTYPE_UNSPECIFIED"));
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": expected one of DTYPE_UINT8, DTYPE_INT32, DTYPE_FLOAT32, DTYPE_FLOAT16, got "
                "unknown value ",
          wire_dtype));
  }
}

pb::DType EncodeDType(DType dtype) {
  switch (dtype) {
    case DType::kUInt8:
      return pb::DTYPE_UINT8;
    case DType::kInt32:
      return pb::DTYPE_INT32;
    case DType::kFloat32:
      return pb::DTYPE_FLOAT32;
    case DType::kFloat16:
      return pb::DTYPE_FLOAT16;
  }
  return pb::DTYPE_UNSPECIFIED;
}

std::string DescribeShape(const kernels::BatchShape& s, int rank, DType dtype) {
  std::string dims = rank == 3 ? absl::StrCat(s.n, "x", s.h, "x", s.w)
                               : absl::StrCat(s.n, "x", s.h, "x", s.w, "x", s.c);
  return absl::StrCat(dims, " ", kernels::DTypeName(dtype));
}

absl::StatusOr<DecodedTensor> DecodeBatch(const pb::Tensor& t, const std::string& path,
                                          const DecodeLimits& limits,
                                          const SharedMemoryRegions* shm) {
  const int rank = t.shape_size();
  if (rank != 3 && rank != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ".shape: expected rank 3 (N,H,W) or 4 (N,H,W,C), got rank ", rank,
        rank > 0 && rank <= 8 ? absl::StrCat(" [", absl::StrJoin(t.shape(), ","), "]") : ""));
  }
  static constexpr const char* kDimNames[] = {"N", "H", "W", "C"};
  // Overflow-safe element count: every dimension >= 1 and the running product stays below 2^62.
  constexpr uint64_t kMaxElements = uint64_t{1} << 62;
  uint64_t elements = 1;
  for (int i = 0; i < rank; ++i) {
    const int64_t d = t.shape(i);
    if (d < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".shape[", i, "] (", kDimNames[i], "): expected >= 1, got ", d,
                       i == 0 && d == 0 ? " (empty batch)" : ""));
    }
    if (static_cast<uint64_t>(d) > kMaxElements / elements) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ".shape: element count overflows (product of [", absl::StrJoin(t.shape(), ","),
          "] exceeds 2^62)"));
    }
    elements *= static_cast<uint64_t>(d);
  }
  auto dtype = DecodeDType(t.dtype(), path + ".dtype");
  if (!dtype.ok()) return dtype.status();
  const uint64_t elem_size = kernels::DTypeSize(*dtype);
  if (elements > kMaxElements / elem_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".shape: byte size overflows (", elements, " elements of ",
                     kernels::DTypeName(*dtype), ")"));
  }
  kernels::BatchShape shape{t.shape(0), t.shape(1), t.shape(2), rank == 4 ? t.shape(3) : 1};
  const uint64_t expected_bytes = elements * elem_size;
  if (expected_bytes > limits.max_tensor_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat(path, ": ", DescribeShape(shape, rank, *dtype), " is ", expected_bytes,
                     " bytes, over the server's max tensor size of ", limits.max_tensor_bytes,
                     " bytes"));
  }
  if (t.has_shm()) {
    if (!t.data().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": expected the bytes either in data or in shm, got both (", t.data().size(),
          " bytes of data)"));
    }
    if (shm == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ".shm: shared memory is disabled on this server; send the bytes in data"));
    }
    auto span = shm->Resolve(t.shm(), path + ".shm", expected_bytes, 0, elem_size);
    if (!span.ok()) return span.status();
    DecodedTensor out;
    out.rank = rank;
    out.view.dtype = *dtype;
    out.view.shape = shape;
    out.view.data = span->data;
    out.shm = std::move(*span);
    return out;
  }
  if (t.data().size() != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ".data: expected ", expected_bytes, " bytes (", DescribeShape(shape, rank, *dtype),
        "), got ", t.data().size()));
  }
  DecodedTensor out;
  out.rank = rank;
  out.view.dtype = *dtype;
  out.view.shape = shape;
  const void* p = t.data().data();
  if (reinterpret_cast<uintptr_t>(p) % elem_size == 0) {
    out.view.data = p;
  } else {
    // Misaligned bytes (rare: small strings stored inline) are copied once; kernels need alignment.
    out.copy = AlignedBuffer(expected_bytes);
    std::memcpy(out.copy.data(), p, expected_bytes);
    out.view.data = out.copy.data();
  }
  return out;
}

namespace {

void SetHeader(pb::Tensor* t, DType dtype, const kernels::BatchShape& shape, int rank) {
  t->set_dtype(EncodeDType(dtype));
  t->clear_shape();
  t->add_shape(shape.n);
  t->add_shape(shape.h);
  t->add_shape(shape.w);
  if (rank == 4) t->add_shape(shape.c);
}

}  // namespace

kernels::TensorView PrepareOutput(pb::Tensor* t, DType dtype, const kernels::BatchShape& shape,
                                  int rank) {
  SetHeader(t, dtype, shape, rank);
  const size_t bytes = static_cast<size_t>(shape.elements()) * kernels::DTypeSize(dtype);
  std::string* data = t->mutable_data();
  data->resize(bytes);
  return kernels::TensorView{dtype, shape, data->data()};
}

kernels::TensorView PrepareOutput(pb::Tensor* t, DType dtype, const kernels::BatchShape& shape,
                                  int rank, void* data) {
  SetHeader(t, dtype, shape, rank);
  t->clear_data();
  return kernels::TensorView{dtype, shape, data};
}

}  // namespace tensorprep::handlers
