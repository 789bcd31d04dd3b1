// The CUDA backend: runs a Plan on device 0 through the kernels' CUDA API. Compiled only when the
// build has CUDA; without a usable device it reports usable() == false and is never routed to.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "handlers/backend.h"
#include "kernels/common/status.h"
#include "kernels/cuda/cuda_api.h"

namespace tensorprep::handlers {
namespace {

namespace cu = kernels::cuda;
using kernels::ConstTensorView;
using kernels::TensorView;

// Grows a device buffer to at least `bytes`, keeping it when it is already large enough.
absl::Status Ensure(cu::DeviceBuffer& b, size_t bytes) {
  if (b.size() >= bytes) return absl::OkStatus();
  b = cu::DeviceBuffer();  // free first: the old contents are not needed
  TP_ASSIGN_OR_RETURN(b, cu::DeviceBuffer::Allocate(bytes));
  return absl::OkStatus();
}

// One request's worth of device resources: a stream, device buffers and pinned staging memory,
// reused from request to request. Several lanes let requests in flight overlap their copies
// with each other's kernels. `stream` is declared last so that it is destroyed first: its
// destructor waits for the work queued on it, which may still use the memory.
struct Lane {
  cu::PinnedBuffer staging;
  std::vector<cu::DeviceBuffer> buffers;  // [0, 1]: main ping-pong; 2 + 2j, 3 + 2j: aux j
  cu::Stream stream;
};

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(cu::DeviceInfo info) : info_(std::move(info)) {}

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  bool usable() const override { return info_.usable && !lost_.load(); }
  std::string name() const override { return info_.usable ? info_.name : "cuda"; }
  std::string detail() const override {
    if (lost_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      return lost_detail_;
    }
    return info_.detail;
  }

  absl::Status Execute(const Plan& plan, const ExecInputs& in, const ExecOutputs& out,
                       std::vector<StepTiming>* timings) override {
    if (!usable()) {
      return absl::FailedPreconditionError(absl::StrCat("no usable CUDA device: ", detail()));
    }
    std::unique_ptr<Lane> lane;
    TP_RETURN_IF_ERROR(Acquire(&lane));
    LaneGuard guard(this, std::move(lane));
    absl::Status s = Run(*guard.lane, plan, in, out, timings);
    if (s.ok()) {
      guard.healthy = true;
    } else {
      CheckAfterFailure(s);
    }
    return s;
  }

 private:
  static constexpr size_t kMaxLanes = 4;

  absl::Status Acquire(std::unique_ptr<Lane>* lane) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !idle_.empty() || created_ < kMaxLanes; });
    if (!idle_.empty()) {
      *lane = std::move(idle_.back());
      idle_.pop_back();
      return absl::OkStatus();
    }
    ++created_;
    lock.unlock();
    auto stream = cu::Stream::Create();
    if (!stream.ok()) {
      std::lock_guard<std::mutex> relock(mu_);
      --created_;
      cv_.notify_one();
      return stream.status();
    }
    *lane = std::make_unique<Lane>();
    (*lane)->stream = std::move(*stream);
    return absl::OkStatus();
  }

  // Gives a lane back when the request is done, also when Run throws (std::bad_alloc); a lane
  // whose work failed is dropped (its stream may hold an error), after its stream has drained.
  struct LaneGuard {
    LaneGuard(CudaBackend* b, std::unique_ptr<Lane> l) : backend(b), lane(std::move(l)) {}
    ~LaneGuard() { backend->Release(std::move(lane), healthy); }
    CudaBackend* backend;
    std::unique_ptr<Lane> lane;
    bool healthy = false;
  };

  void Release(std::unique_ptr<Lane> lane, bool healthy) {
    if (!healthy) lane.reset();  // outside the lock: waits for the stream, then frees
    std::lock_guard<std::mutex> lock(mu_);
    if (healthy) {
      idle_.push_back(std::move(lane));
    } else {
      --created_;
    }
    cv_.notify_one();
  }

  // After a failed request: when the device's context is lost (a sticky error, which fails every
  // later CUDA call of this process), stop routing to the device, so that DEVICE_AUTO requests go
  // to the CPU directly and DEVICE_CUDA ones get FAILED_PRECONDITION saying why, instead of each
  // failing on the device first. Only a restart of the process recovers.
  void CheckAfterFailure(const absl::Status& failure) {
    const absl::Status context = cu::CheckContext();
    if (context.ok()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (lost_.load()) return;
    lost_detail_ = absl::StrCat("the CUDA context was lost (", context.message(),
                                ") after a request failed with: ", failure.message(),
                                "; restart the server to use the GPU again");
    lost_.store(true);
  }

  // Uploads one tensor through the lane's pinned staging memory at `offset`.
  static absl::Status Upload(Lane& lane, const ConstTensorView& host, cu::DeviceBuffer& device,
                             size_t offset) {
    TP_RETURN_IF_ERROR(Ensure(device, host.bytes()));
    char* stage = static_cast<char*>(lane.staging.data()) + offset;
    std::memcpy(stage, host.data, host.bytes());
    return cu::CopyToDevice(stage, device, host.bytes(), lane.stream);
  }

  absl::Status Run(Lane& lane, const Plan& plan, const ExecInputs& in, const ExecOutputs& out,
                   std::vector<StepTiming>* timings) {
    const size_t n_aux = in.aux.size();
    lane.buffers.resize(2 + 2 * n_aux);
    // Staging holds every input, then every output, back to back.
    size_t in_bytes = in.main.bytes(), out_bytes = out.main.bytes();
    for (size_t j = 0; j < n_aux; ++j) {
      in_bytes += in.aux[j].bytes();
      out_bytes += out.aux[j].bytes();
    }
    TP_RETURN_IF_ERROR(lane.staging.Reserve(std::max(in_bytes, out_bytes)));

    // Device buffers per tensor: [cur, next]; outputs are at most as large as the largest
    // intermediate, which Ensure() grows to on demand.
    size_t offset = 0;
    TP_RETURN_IF_ERROR(Upload(lane, in.main, lane.buffers[0], offset));
    offset += in.main.bytes();
    for (size_t j = 0; j < n_aux; ++j) {
      TP_RETURN_IF_ERROR(Upload(lane, in.aux[j], lane.buffers[2 + 2 * j], offset));
      offset += in.aux[j].bytes();
    }
    ConstTensorView main{in.main.dtype, in.main.shape, lane.buffers[0].data()};
    int main_cur = 0;
    std::vector<ConstTensorView> aux(n_aux);
    std::vector<int> aux_cur(n_aux, 0);
    for (size_t j = 0; j < n_aux; ++j) {
      aux[j] = ConstTensorView{in.aux[j].dtype, in.aux[j].shape, lane.buffers[2 + 2 * j].data()};
    }

    for (size_t k = 0; k < plan.steps.size(); ++k) {
      const Step& step = plan.steps[k];
      const auto start = std::chrono::steady_clock::now();
      // A warp followed by element-wise ops runs as one fused kernel, but for a last
      // element-wise step that writes channels-first (the fused kernel writes NHWC).
      const Step* post = nullptr;
      if (step.kind == KernelKind::kWarp && k + 1 < plan.steps.size() &&
          plan.steps[k + 1].kind == KernelKind::kElementwise &&
          !(plan.channels_first && k + 2 == plan.steps.size())) {
        post = &plan.steps[k + 1];
      }
      const bool channels_first = plan.channels_first && k + 1 == plan.steps.size();
      const kernels::DType dtype =
          step.kind == KernelKind::kElementwise
              ? kernels::ElementwiseOutputDType(main.dtype, step.chain)
              : (post != nullptr ? kernels::ElementwiseOutputDType(main.dtype, post->chain)
                                 : main.dtype);
      cu::DeviceBuffer& next = lane.buffers[main_cur ^ 1];
      TP_RETURN_IF_ERROR(
          Ensure(next, static_cast<size_t>(step.out.elements()) * kernels::DTypeSize(dtype)));
      const TensorView dst{dtype, step.out, next.data()};
      switch (step.kind) {
        case KernelKind::kWarp:
          TP_RETURN_IF_ERROR(
              post != nullptr
                  ? cu::WarpElementwiseCuda(main, dst, step.inverse, step.params, post->chain,
                                            lane.stream)
                  : cu::WarpAffineCuda(main, dst, step.inverse, step.params, lane.stream));
          break;
        case KernelKind::kFlip:
          TP_RETURN_IF_ERROR(cu::FlipCuda(main, dst, step.flags, lane.stream));
          break;
        case KernelKind::kElementwise:
          TP_RETURN_IF_ERROR(
              cu::ElementwiseCuda(main, dst, step.chain, lane.stream, channels_first));
          break;
        case KernelKind::kResample:
          TP_RETURN_IF_ERROR(cu::ResampleAaCuda(main, dst, step.maps, lane.stream));
          break;
        case KernelKind::kColor:
          TP_RETURN_IF_ERROR(cu::ColorCuda(main, dst, step.color, lane.stream));
          break;
      }
      main = dst.as_const();
      main_cur ^= 1;
      if (step.geometric()) {
        for (size_t j = 0; j < n_aux; ++j) {
          cu::DeviceBuffer& an = lane.buffers[2 + 2 * j + (aux_cur[j] ^ 1)];
          kernels::BatchShape aux_shape = aux[j].shape;
          aux_shape.h = step.out.h;
          aux_shape.w = step.out.w;
          TP_RETURN_IF_ERROR(Ensure(
              an, static_cast<size_t>(aux_shape.elements()) * kernels::DTypeSize(aux[j].dtype)));
          const TensorView adst{aux[j].dtype, aux_shape, an.data()};
          if (step.kind == KernelKind::kWarp || step.kind == KernelKind::kResample) {
            // Aux tensors follow a resample step through the warp, with their own sampling.
            kernels::WarpParams p = step.params;
            p.interp = plan.aux[j].interp;
            p.fill = plan.aux[j].fill;
            TP_RETURN_IF_ERROR(cu::WarpAffineCuda(aux[j], adst, step.inverse, p, lane.stream));
          } else {
            TP_RETURN_IF_ERROR(cu::FlipCuda(aux[j], adst, step.flags, lane.stream));
          }
          aux[j] = adst.as_const();
          aux_cur[j] ^= 1;
        }
      }
      // Per-step timings need the step to have finished; the synchronisation costs one launch
      // latency per step, while requests on other lanes keep the device busy meanwhile.
      TP_RETURN_IF_ERROR(cu::Synchronize(lane.stream));
      if (timings != nullptr) {
        timings->push_back(
            {step.kind,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
      }
      if (post != nullptr) ++k;  // the element-wise step ran inside the warp
    }

    // Download through staging, then copy into the response buffers.
    offset = 0;
    TP_RETURN_IF_ERROR(
        cu::CopyToHost(lane.buffers[main_cur], lane.staging.data(), out.main.bytes(), lane.stream));
    offset += out.main.bytes();
    for (size_t j = 0; j < n_aux; ++j) {
      TP_RETURN_IF_ERROR(cu::CopyToHost(lane.buffers[2 + 2 * j + aux_cur[j]],
                                        static_cast<char*>(lane.staging.data()) + offset,
                                        out.aux[j].bytes(), lane.stream));
      offset += out.aux[j].bytes();
    }
    TP_RETURN_IF_ERROR(cu::Synchronize(lane.stream));
    std::memcpy(out.main.data, lane.staging.data(), out.main.bytes());
    offset = out.main.bytes();
    for (size_t j = 0; j < n_aux; ++j) {
      std::memcpy(out.aux[j].data, static_cast<char*>(lane.staging.data()) + offset,
                  out.aux[j].bytes());
      offset += out.aux[j].bytes();
    }
    return absl::OkStatus();
  }

  const cu::DeviceInfo info_;
  std::atomic<bool> lost_{false};
  mutable std::mutex mu_;
  std::string lost_detail_;  // GUARDED_BY(mu_)
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Lane>> idle_;  // GUARDED_BY(mu_)
  size_t created_ = 0;                       // GUARDED_BY(mu_)
};

}  // namespace

std::unique_ptr<Backend> MakeCudaBackend() { return std::make_unique<CudaBackend>(cu::Probe()); }

}  // namespace tensorprep::handlers
