// Device probing, streams, buffers and copies.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/common/checks.h"
#include "kernels/common/status.h"
#include "kernels/cuda/cuda_api.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/runtime_internal.h"

namespace tensorprep::kernels::cuda {
namespace detail {

absl::Status CudaStatus(const char* call, cudaError_t error) {
  if (error == cudaSuccess) return absl::OkStatus();
  // The runtime also records the error as this thread's "last error", which the next kernel
  // launch would report (launchers return cudaGetLastError()) as if that launch had failed.
  // Clearing it keeps a failed allocation from failing someone else's request; a sticky error
  // (a lost context) still comes back from every later call.
  (void)cudaGetLastError();
  return absl::InternalError(absl::StrCat("cuda: ", call, ": ", cudaGetErrorString(error), " (",
                                          cudaGetErrorName(error), ")"));
}

absl::Status RequireDevice() {
  const DeviceInfo info = Probe();
  if (info.usable) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("cuda: no usable device: ", info.detail));
}

absl::Status RequireStream(const Stream& stream, const char* function) {
  if (stream.valid()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("cuda: ", function, ": the stream is empty (not created or moved from)"));
}

absl::StatusOr<void*> UploadParams(Stream& stream, const void* host, size_t bytes) {
  TP_RETURN_IF_ERROR(RequireStream(stream, "UploadParams"));
  if (bytes == 0) return nullptr;
  Stream::Impl& s = *stream.impl();
  if (s.params_pending) {
    TP_RETURN_IF_ERROR(CudaStatus("cudaEventSynchronize", cudaEventSynchronize(s.params_copied)));
    s.params_pending = false;
  }
  constexpr size_t kMinCapacity = 16 << 10;
  if (s.host_capacity < bytes) {
    const size_t capacity = std::max({bytes, 2 * s.host_capacity, kMinCapacity});
    void* p = nullptr;
    TP_RETURN_IF_ERROR(
        CudaStatus("cudaHostAlloc", cudaHostAlloc(&p, capacity, cudaHostAllocDefault)));
    if (s.host_params != nullptr) cudaFreeHost(s.host_params);  // its last upload completed above
    s.host_params = p;
    s.host_capacity = capacity;
  }
  if (s.device_capacity < bytes) {
    const size_t capacity = std::max({bytes, 2 * s.device_capacity, kMinCapacity});
    // Kernels queued earlier on this stream may still read the old area.
    TP_RETURN_IF_ERROR(CudaStatus("cudaStreamSynchronize", cudaStreamSynchronize(s.stream)));
    void* p = nullptr;
    TP_RETURN_IF_ERROR(CudaStatus("cudaMalloc", cudaMalloc(&p, capacity)));
    if (s.device_params != nullptr) cudaFree(s.device_params);
    s.device_params = p;
    s.device_capacity = capacity;
  }
  std::memcpy(s.host_params, host, bytes);
  TP_RETURN_IF_ERROR(CudaStatus(
      "cudaMemcpyAsync",
      cudaMemcpyAsync(s.device_params, s.host_params, bytes, cudaMemcpyHostToDevice, s.stream)));
  TP_RETURN_IF_ERROR(CudaStatus("cudaEventRecord", cudaEventRecord(s.params_copied, s.stream)));
  s.params_pending = true;
  return s.device_params;
}

absl::Status RequireDevicePointer(const void* ptr, const char* what) {
  cudaPointerAttributes attributes;
  TP_RETURN_IF_ERROR(
      CudaStatus("cudaPointerGetAttributes", cudaPointerGetAttributes(&attributes, ptr)));
  if (attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged) {
    return absl::OkStatus();
  }
  return PreconditionError(what, "expected device memory, got a host or unknown pointer");
}

}  // namespace detail

namespace {

std::string ErrorText(cudaError_t error) {
  return absl::StrCat(cudaGetErrorString(error), " (", cudaGetErrorName(error), ")");
}

DeviceInfo ProbeOnce() {
  DeviceInfo info;
  int count = 0;
  cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();  // a failed probe must not look like a later call's error
    info.detail = absl::StrCat("cudaGetDeviceCount: ", ErrorText(error));
    return info;
  }
  info.count = count;
  if (count <= 0) {
    info.detail = "no CUDA device";
    return info;
  }
  cudaDeviceProp prop;
  error = cudaGetDeviceProperties(&prop, 0);
  if (error != cudaSuccess) {
    cudaGetLastError();
    info.detail = absl::StrCat("cudaGetDeviceProperties(0): ", ErrorText(error));
    return info;
  }
  const std::string capability = absl::StrCat(prop.major, ".", prop.minor);
  // cudaFree(nullptr) creates the context: a device in a prohibited compute mode fails here.
  error = cudaFree(nullptr);
  if (error != cudaSuccess) {
    cudaGetLastError();
    info.detail = absl::StrCat("creating a context on ", prop.name, ": ", ErrorText(error));
    return info;
  }
  error = detail::CheckKernelImage();
  if (error != cudaSuccess) {
    cudaGetLastError();
    info.detail = absl::StrCat("no kernel image for ", prop.name, " (compute capability ",
                               capability, "): ", ErrorText(error));
    return info;
  }
  info.usable = true;
  info.name = prop.name;
  info.total_memory = prop.totalGlobalMem;
  info.detail = absl::StrCat(prop.name, ", compute capability ", capability, ", ",
                             prop.multiProcessorCount, " SMs, ", prop.totalGlobalMem >> 20,
                             " MiB, ", count, " device(s), using device 0");
  return info;
}

}  // namespace

DeviceInfo Probe() {
  static const DeviceInfo* const info = new DeviceInfo(ProbeOnce());  // thread-safe init
  return *info;
}

// ---- Stream -----------------------------------------------------------------------------------

Stream::Impl::~Impl() {
  // Errors cannot be reported from a destructor; a failed synchronize means the context is
  // already broken, and freeing is still the right thing to try.
  if (stream != nullptr) cudaStreamSynchronize(stream);
  if (device_params != nullptr) cudaFree(device_params);
  if (host_params != nullptr) cudaFreeHost(host_params);
  if (params_copied != nullptr) cudaEventDestroy(params_copied);
  if (stream != nullptr) cudaStreamDestroy(stream);
}

Stream::Stream() = default;
Stream::~Stream() = default;
Stream::Stream(Stream&&) noexcept = default;
Stream& Stream::operator=(Stream&&) noexcept = default;

absl::StatusOr<Stream> Stream::Create() {
  TP_RETURN_IF_ERROR(detail::RequireDevice());
  auto impl = std::make_unique<Impl>();
  TP_RETURN_IF_ERROR(
      detail::CudaStatus("cudaStreamCreateWithFlags",
                         cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking)));
  TP_RETURN_IF_ERROR(
      detail::CudaStatus("cudaEventCreateWithFlags",
                         cudaEventCreateWithFlags(&impl->params_copied, cudaEventDisableTiming)));
  Stream stream;
  stream.impl_ = std::move(impl);
  return stream;
}

void* Stream::native_handle() const {
  return impl_ == nullptr ? nullptr : static_cast<void*>(impl_->stream);
}

// ---- DeviceBuffer -----------------------------------------------------------------------------

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  TP_RETURN_IF_ERROR(detail::RequireDevice());
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  TP_RETURN_IF_ERROR(detail::CudaStatus("cudaMalloc", cudaMalloc(&buffer.data_, bytes)));
  buffer.size_ = bytes;
  return buffer;
}

DeviceBuffer::~DeviceBuffer() { Release(); }

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void DeviceBuffer::Release() {
  if (data_ != nullptr) cudaFree(data_);
  data_ = nullptr;
  size_ = 0;
}

// ---- PinnedBuffer -----------------------------------------------------------------------------

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes) {
  TP_RETURN_IF_ERROR(detail::RequireDevice());
  PinnedBuffer buffer;
  TP_RETURN_IF_ERROR(buffer.Reserve(bytes));
  return buffer;
}

absl::Status PinnedBuffer::Reserve(size_t bytes) {
  if (bytes <= size_) return absl::OkStatus();
  TP_RETURN_IF_ERROR(detail::RequireDevice());
  void* p = nullptr;
  TP_RETURN_IF_ERROR(
      detail::CudaStatus("cudaHostAlloc", cudaHostAlloc(&p, bytes, cudaHostAllocDefault)));
  Release();
  data_ = p;
  size_ = bytes;
  return absl::OkStatus();
}

PinnedBuffer::~PinnedBuffer() { Release(); }

PinnedBuffer::PinnedBuffer(PinnedBuffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    Release();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void PinnedBuffer::Release() {
  if (data_ != nullptr) cudaFreeHost(data_);
  data_ = nullptr;
  size_ = 0;
}

// ---- Copies -----------------------------------------------------------------------------------

namespace {

absl::Status CheckCopy(const void* host, const DeviceBuffer& device, size_t bytes,
                       const Stream& stream, const char* function) {
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, function));
  if (bytes > device.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        function, ": ", bytes, " bytes do not fit the device buffer of ", device.size(), " bytes"));
  }
  if (bytes > 0 && host == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(function, ": null host pointer"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CopyToDevice(const void* host, DeviceBuffer& device, size_t bytes, Stream& stream) {
  TP_RETURN_IF_ERROR(CheckCopy(host, device, bytes, stream, "CopyToDevice"));
  if (bytes == 0) return absl::OkStatus();
  return detail::CudaStatus(
      "cudaMemcpyAsync",
      cudaMemcpyAsync(device.data(), host, bytes, cudaMemcpyHostToDevice, stream.impl()->stream));
}

absl::Status CopyToHost(const DeviceBuffer& device, void* host, size_t bytes, Stream& stream) {
  TP_RETURN_IF_ERROR(CheckCopy(host, device, bytes, stream, "CopyToHost"));
  if (bytes == 0) return absl::OkStatus();
  return detail::CudaStatus(
      "cudaMemcpyAsync",
      cudaMemcpyAsync(host, device.data(), bytes, cudaMemcpyDeviceToHost, stream.impl()->stream));
}

absl::Status Synchronize(Stream& stream) {
  TP_RETURN_IF_ERROR(detail::RequireStream(stream, "Synchronize"));
  return detail::CudaStatus("cudaStreamSynchronize", cudaStreamSynchronize(stream.impl()->stream));
}

absl::Status CheckContext() {
  TP_RETURN_IF_ERROR(detail::RequireDevice());
  return detail::CudaStatus("cudaDeviceSynchronize", cudaDeviceSynchronize());
}

}  // namespace tensorprep::kernels::cuda
