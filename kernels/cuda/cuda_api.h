// Host-side API of the CUDA backend: device probing, streams, buffers, copies and the kernel
// launchers. No CUDA header is included here, so code compiled by a plain C++ compiler (handlers/,
// server/) can use the backend; CUDA types stay behind opaque handles.
//
// Device: everything runs on device 0 of the calling process.
//
// Errors: no function here throws, aborts or exits. A failed CUDA call becomes
// INTERNAL "cuda: <call>: <cudaGetErrorString>"; a call made where no usable device exists becomes
// FAILED_PRECONDITION carrying Probe().detail; a buffer copy of a size that does not fit becomes
// INVALID_ARGUMENT; a launcher whose views or arguments break its preconditions returns INTERNAL
// (kernels/common/checks.h: the op registry validates requests, kernels only check invariants). After a kernel fault (an illegal address, say) the CUDA context is unusable and
// every later call fails with INTERNAL: the caller fails that request (or falls back to the CPU
// backend).
//
// Asynchrony: launchers and copies are queued on a Stream and may return before the work is done.
// Memory they read or write must stay valid until Synchronize() on that stream has returned OK.
// An error raised by queued work may surface from a later call on the stream, at the latest from
// Synchronize().
#ifndef TENSORPREP_KERNELS_CUDA_CUDA_API_H_
#define TENSORPREP_KERNELS_CUDA_CUDA_API_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/color/color.h"
#include "kernels/common/tensor.h"
#include "kernels/elementwise/elementwise.h"
#include "kernels/flip/flip.h"
#include "kernels/resample/resample.h"
#include "kernels/warp/warp.h"

namespace tensorprep::kernels::cuda {

struct DeviceInfo {
  bool usable = false;      // device 0 exists, a context can be created and our kernels load on it
  int count = 0;            // devices visible to the process (0 when the query itself failed)
  std::string name;         // device 0's name, empty when not usable
  std::string detail;       // why not usable, or a one-line summary (compute capability, SMs)
  size_t total_memory = 0;  // device 0's global memory in bytes
};

// Probes the CUDA runtime once per process and caches the answer; later calls return the cached
// value. Never throws or aborts; any error (no driver, no device, no kernel image for the device)
// gives usable == false with the reason in `detail`. Thread-safe.
DeviceInfo Probe();

// A non-blocking CUDA stream (it does not synchronize with the legacy default stream), with a small
// reusable area for the per-launch parameters (matrices, flags, op tables) of the launchers.
// Move-only. A default-constructed or moved-from Stream is empty: calls on it return
// FAILED_PRECONDITION. Not thread-safe: one thread uses a Stream at a time; distinct Streams may be
// used from distinct threads. Destruction waits for the stream's queued work.
class Stream {
 public:
  static absl::StatusOr<Stream> Create();

  Stream();
  ~Stream();
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  bool valid() const { return impl_ != nullptr; }
  // The cudaStream_t, as an opaque pointer, for interop (e.g. CUDA events in a benchmark).
  void* native_handle() const;

  struct Impl;  // defined in the backend's sources only
  Impl* impl() const { return impl_.get(); }

 private:
  std::unique_ptr<Impl> impl_;
};

// Device memory from cudaMalloc, owned. Move-only. A size-0 buffer holds no allocation (data() is
// null). The destructor frees the memory (cudaFree waits for the device); the caller must not free
// a buffer that queued work still reads or writes without synchronizing first. Not thread-safe.
class DeviceBuffer {
 public:
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);

  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void Release();
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Page-locked host memory from cudaHostAlloc, owned, so copies to and from it are truly
// asynchronous. Move-only and reusable: Reserve() grows the capacity and never shrinks it. Not
// thread-safe.
class PinnedBuffer {
 public:
  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes);

  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& o) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  // Ensures size() >= bytes. When it must grow, the old memory is freed and its contents are NOT
  // kept; no queued copy may still use it. On error the buffer is unchanged.
  absl::Status Reserve(size_t bytes);

  void* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void Release();
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Queues a copy of `bytes` from host memory to the start of `device` (bytes <= device.size(),
// else INVALID_ARGUMENT). Asynchronous when `host` is pinned; from pageable memory CUDA stages the
// data before returning. `host` must stay valid and unchanged until Synchronize(stream).
absl::Status CopyToDevice(const void* host, DeviceBuffer& device, size_t bytes, Stream& stream);

// Queues a copy of `bytes` from the start of `device` to host memory (bytes <= device.size()).
// Asynchronous when `host` is pinned: read `host` only after Synchronize(stream).
absl::Status CopyToHost(const DeviceBuffer& device, void* host, size_t bytes, Stream& stream);

// Waits for all work queued on `stream`; returns the first error that work raised.
absl::Status Synchronize(Stream& stream);

// Whether the device's context still works after a failure: waits for all work on the device
// and returns INTERNAL with the error when the context is lost (a sticky error such as an illegal
// address, which fails every later call until the process exits); OK after an ordinary error
// such as an allocation that did not fit.
absl::Status CheckContext();

// ---- Kernel launchers -------------------------------------------------------------------------
// Each mirrors its CPU counterpart exactly (same arguments, same semantics, same validation, same
// results; see warp.h, flip.h, elementwise.h) with views whose `data` are DEVICE pointers
// (cudaMalloc'd or managed memory; anything else is INTERNAL, checked on the first byte of each
// view). The per-sample arguments are copied to the device as part of the call, so the spans
// may be freed when it returns. One kernel launch covers the whole batch. Height, width and
// channels must each be below 2^31.

// WarpAffineCpu on the device: dst has src's n, c and dtype, and any height and width >= 1 (a
// resize, crop or pad writes an output of another size).
absl::Status WarpAffineCuda(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const Affine> inverse, const WarpParams& params,
                            Stream& stream);

// FlipCpu on the device.
absl::Status FlipCuda(const ConstTensorView& src, const TensorView& dst,
                      absl::Span<const FlipFlags> flags, Stream& stream);

// ResampleAaCpu on the device (kernels/resample/resample.h): the same tap tables, built on the
// host and uploaded with the call, and the same arithmetic, so the same bits. One thread per
// output pixel; no intermediate buffer (each pixel sums its own horizontal taps per row).
absl::Status ResampleAaCuda(const ConstTensorView& src, const TensorView& dst,
                            absl::Span<const ResampleMap> maps, Stream& stream);

// ColorCpu on the device (kernels/color/color.h): the same arithmetic (color_math.h), so the same
// bits, for every dtype, chain and batch. Runs in phases (a chain is cut before each contrast,
// whose mean grey is summed on the device in color.h's order); allocates its scratch (the row
// sums, and a work image when dst has 1 channel) and synchronizes `stream` before returning, so
// the scratch can be freed. dst may be exactly src's memory (3 channels), as on the CPU.
absl::Status ColorCuda(const ConstTensorView& src, const TensorView& dst,
                       absl::Span<const std::vector<ColorAdjust>> chains, Stream& stream);

// ElementwiseCpu on the device (in place allowed when the dtypes have the same size), with the
// same `channels_first` option: dst's memory planar per sample, (N, C, H, W), dst.shape the
// logical (n, h, w, c), src and dst distinct; the same values as the NHWC result, permuted.
absl::Status ElementwiseCuda(const ConstTensorView& src, const TensorView& dst,
                             absl::Span<const ElementwiseOp> ops, Stream& stream,
                             bool channels_first = false);

// The warp followed by the element-wise chain `post_ops` in one pass: each warped value (already
// rounded to src.dtype, exactly as WarpAffineCuda stores it) goes through the chain before it is
// stored, so the result equals WarpAffineCuda then ElementwiseCuda, with one read and one write of
// memory. dst.dtype must be ElementwiseOutputDType(src.dtype, post_ops); dst.shape has src's n
// and c and any height and width >= 1, as for WarpAffineCuda; src and dst must not overlap. An
// empty chain is WarpAffineCuda.
absl::Status WarpElementwiseCuda(const ConstTensorView& src, const TensorView& dst,
                                 absl::Span<const Affine> inverse, const WarpParams& params,
                                 absl::Span<const ElementwiseOp> post_ops, Stream& stream);

}  // namespace tensorprep::kernels::cuda

#endif  // TENSORPREP_KERNELS_CUDA_CUDA_API_H_
