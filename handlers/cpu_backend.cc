// The CPU backend. Besides running each step with its kernel, it fuses a geometric step with the
// element-wise step that follows it: the batch is cut into (sample, row band) tasks, and each task
// resamples its band into a small per-thread buffer and runs the element-wise chain on that band
// while it is still in cache, writing the result straight into the output. Memory is then read
// once and written once for the pair, instead of a full intermediate batch being written and
// read back. Results are bit-identical to running the two steps one after the other: both kernels
// are run through their row-band entry points, and element-wise ops depend on nothing but the
// element and its channel (each band starts at channel 0).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "handlers/backend.h"
#include "handlers/tensor_codec.h"
#include "kernels/color/color.h"
#include "kernels/common/checks.h"
#include "kernels/common/status.h"
#include "kernels/elementwise/elementwise_program.h"
#include "kernels/flip/flip_rows.h"
#include "kernels/resample/resample.h"
#include "kernels/warp/warp_rows.h"

namespace tensorprep::handlers {

using kernels::ConstTensorView;
using kernels::TensorView;

const char* DeviceKindName(DeviceKind d) { return d == DeviceKind::kCuda ? "cuda" : "cpu"; }

std::string CpuBackend::name() const { return absl::StrCat("cpu (", pool_->size(), " threads)"); }

namespace {

using Clock = std::chrono::steady_clock;

// Band size for fused steps: the geometric stage's output for one task, small enough to stay in
// L2 between the two stages and large enough that a task is worth handing to another thread.
constexpr size_t kFusedBandBytes = 96 * 1024;

// Runs one step on one tensor. `aux` selects the aux sampling rules for warps (and makes a
// resample step a warp: aux tensors follow it with their own interpolation); `channels_first`
// writes an element-wise step's output (N, C, H, W).
absl::Status RunStep(const Step& step, const ConstTensorView& in, const TensorView& out,
                     const AuxSampling* aux, bool channels_first, kernels::ThreadPool* pool) {
  switch (step.kind) {
    case KernelKind::kResample:
      if (aux == nullptr) return kernels::ResampleAaCpu(in, out, step.maps, pool);
      [[fallthrough]];
    case KernelKind::kWarp: {
      kernels::WarpParams p = step.params;
      if (aux != nullptr) {
        p.interp = aux->interp;
        p.fill = aux->fill;
      }
      return kernels::WarpAffineCpu(in, out, step.inverse, p, pool);
    }
    case KernelKind::kFlip:
      return kernels::FlipCpu(in, out, step.flags, pool);
    case KernelKind::kElementwise:
      return kernels::ElementwiseCpu(in, out, step.chain, pool, channels_first);
    case KernelKind::kColor:
      return kernels::ColorCpu(in, out, step.color, pool);
  }
  return absl::InternalError("unknown step kind");
}

// Per-thread scratch that grows to the largest size asked of it (up to kKeepBytes) and is kept
// for later calls, so a steady stream of requests does not allocate (and page-fault) fresh
// memory for each one. Slots: the main batch's pair, the first aux tensor's pair, fused bands.
class ThreadScratch {
 public:
  static constexpr int kMainSlot = 0;
  static constexpr int kAuxSlot = 2;
  static constexpr int kBandSlot = 4;
  static constexpr int kSlots = 5;
  // Larger buffers are not kept: they would pin big requests' memory for the thread's life.
  static constexpr size_t kKeepBytes = size_t{64} << 20;

  // A buffer of at least `bytes` (<= kKeepBytes) for `slot` of the calling thread. Valid until
  // the same thread asks for the same slot again.
  static void* Get(int slot, size_t bytes) {
    thread_local ThreadScratch scratch;
    AlignedBuffer& b = scratch.slots_[slot];
    if (b.size() < bytes) {
      b = AlignedBuffer();  // free first: the old and new buffers need not coexist
      b = AlignedBuffer(bytes);
    }
    return b.data();
  }

 private:
  AlignedBuffer slots_[kSlots];
};

// Whole-batch intermediates of one tensor's chain of steps: two buffers used alternately.
class PingPong {
 public:
  // `first_slot`: the ThreadScratch pair [first_slot, first_slot + 1] of the calling thread, or
  // -1 for buffers owned here (and freed with this).
  explicit PingPong(int first_slot) : first_slot_(first_slot) {}

  TensorView Next(kernels::DType dtype, const kernels::BatchShape& shape) {
    const size_t bytes = static_cast<size_t>(shape.elements()) * kernels::DTypeSize(dtype);
    const int turn = turn_;
    turn_ ^= 1;
    if (first_slot_ >= 0 && bytes <= ThreadScratch::kKeepBytes) {
      return TensorView{dtype, shape, ThreadScratch::Get(first_slot_ + turn, bytes)};
    }
    AlignedBuffer& b = owned_[turn];
    if (b.size() < bytes) b = AlignedBuffer(bytes);
    return TensorView{dtype, shape, b.data()};
  }

 private:
  int first_slot_;
  int turn_ = 0;
  AlignedBuffer owned_[2];
};

// Geometric step `geo` then element-wise step `ew` on the main batch, fused band by band.
// Appends two timings (the wall time split in proportion to the time spent in each stage).
absl::Status RunFused(const Step& geo, const Step& ew, const ConstTensorView& in,
                      const TensorView& out, bool channels_first, kernels::ThreadPool* pool,
                      std::vector<StepTiming>* timings) {
  const auto start = Clock::now();
  // The kernels' own precondition checks (kernels/common/checks.h), as their entry points make
  // them: the row-band entry points below check nothing.
  constexpr char kFn[] = "fused step";
  if (geo.kind == KernelKind::kWarp) {
    TP_RETURN_IF_ERROR(kernels::CheckWarpSource(kFn, in, geo.inverse, geo.params));
  } else {
    TP_RETURN_IF_ERROR(kernels::CheckFlipSource(kFn, in, geo.flags));
  }
  TP_ASSIGN_OR_RETURN(const kernels::ElementwiseProgram program,
                      kernels::ElementwiseProgram::Make(kFn, in.dtype, in.shape.c, ew.chain));
  if (geo.kind == KernelKind::kWarp) {
    TP_RETURN_IF_ERROR(kernels::CheckWarpDestination(kFn, in, out, program.output_dtype()));
  } else {
    TP_RETURN_IF_ERROR(kernels::CheckDestinationView(kFn, in, out, program.output_dtype(),
                                                     kernels::Aliasing::kDistinct));
  }
  // The output's shape: a warp's may differ from the source's in height and width.
  const kernels::BatchShape& s = out.shape;
  const size_t row_elems = static_cast<size_t>(s.w * s.c);
  const int64_t plane = s.h * s.w;
  const size_t in_row_bytes = row_elems * kernels::DTypeSize(in.dtype);
  const size_t out_row_bytes = row_elems * kernels::DTypeSize(out.dtype);
  const int64_t band_rows =
      std::clamp<int64_t>(static_cast<int64_t>(kFusedBandBytes / in_row_bytes), 1, s.h);
  const int64_t bands = (s.h + band_rows - 1) / band_rows;
  auto* dst = static_cast<unsigned char*>(out.data);
  std::atomic<int64_t> geo_ns{0};
  std::atomic<int64_t> ew_ns{0};
  const bool timed = timings != nullptr;
  kernels::ParallelFor(pool, s.n * bands, [&](int64_t task) {
    const int64_t n = task / bands;
    const int64_t y_begin = (task % bands) * band_rows;
    const int64_t y_end = std::min(s.h, y_begin + band_rows);
    void* band = ThreadScratch::Get(ThreadScratch::kBandSlot, band_rows * in_row_bytes);
    const auto t0 = timed ? Clock::now() : Clock::time_point();
    if (geo.kind == KernelKind::kWarp) {
      kernels::WarpAffineRowsCpu(in, n, y_begin, y_end, s.w,
                                 geo.inverse.size() == 1 ? geo.inverse[0] : geo.inverse[n],
                                 geo.params, band);
    } else {
      kernels::FlipRowsCpu(in, n, y_begin, y_end,
                           geo.flags.size() == 1 ? geo.flags[0] : geo.flags[n], band);
    }
    const auto t1 = timed ? Clock::now() : Clock::time_point();
    if (channels_first) {
      program.RunChannelsFirst(band, dst + n * s.h * out_row_bytes, plane, y_begin * s.w,
                               (y_end - y_begin) * s.w);
    } else {
      program.Run(band, dst + (n * s.h + y_begin) * out_row_bytes,
                  (y_end - y_begin) * static_cast<int64_t>(row_elems));
    }
    if (timed) {
      const auto t2 = Clock::now();
      geo_ns.fetch_add((t1 - t0).count(), std::memory_order_relaxed);
      ew_ns.fetch_add((t2 - t1).count(), std::memory_order_relaxed);
    }
  });
  if (timed) {
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const double busy = static_cast<double>(geo_ns.load() + ew_ns.load());
    const double geo_share = busy > 0 ? static_cast<double>(geo_ns.load()) / busy : 1.0;
    timings->push_back({geo.kind, wall * geo_share});
    timings->push_back({ew.kind, wall * (1.0 - geo_share)});
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CpuBackend::Execute(const Plan& plan, const ExecInputs& in, const ExecOutputs& out,
                                 std::vector<StepTiming>* timings) {
  if (in.aux.size() != out.aux.size() || in.aux.size() != plan.aux.size()) {
    return absl::InternalError("aux tensor count differs between plan, inputs and outputs");
  }
  int last_geometric = -1;
  for (size_t k = 0; k < plan.steps.size(); ++k) {
    if (plan.steps[k].geometric()) last_geometric = static_cast<int>(k);
  }
  PingPong main_scratch(ThreadScratch::kMainSlot);
  std::vector<PingPong> aux_scratch;
  aux_scratch.reserve(in.aux.size());
  for (size_t j = 0; j < in.aux.size(); ++j) {
    aux_scratch.emplace_back(j == 0 ? ThreadScratch::kAuxSlot : -1);
  }
  ConstTensorView main = in.main;
  std::vector<ConstTensorView> aux = in.aux;
  for (size_t k = 0; k < plan.steps.size(); ++k) {
    const Step& step = plan.steps[k];
    const auto start = Clock::now();
    // Warps and flips have row-band entry points; a flip keeps the size.
    const bool fuse = (step.kind == KernelKind::kWarp || step.kind == KernelKind::kFlip) &&
                      k + 1 < plan.steps.size() &&
                      plan.steps[k + 1].kind == KernelKind::kElementwise;
    const Step& producer = fuse ? plan.steps[k + 1] : step;  // the step whose output `main` is
    const bool last = (fuse ? k + 1 : k) + 1 == plan.steps.size();
    // The plan's layout is written by its last step, element-wise by construction (plan.h).
    const bool channels_first = last && plan.channels_first;
    const kernels::DType dtype = producer.kind == KernelKind::kElementwise
                                     ? kernels::ElementwiseOutputDType(main.dtype, producer.chain)
                                     : main.dtype;
    TensorView dst = last ? out.main : main_scratch.Next(dtype, producer.out);
    if (fuse) {
      TP_RETURN_IF_ERROR(RunFused(step, producer, main, dst, channels_first, pool_, timings));
    } else {
      TP_RETURN_IF_ERROR(RunStep(step, main, dst, nullptr, channels_first, pool_));
    }
    main = dst.as_const();
    const auto main_done = Clock::now();
    if (step.geometric()) {
      for (size_t j = 0; j < aux.size(); ++j) {
        kernels::BatchShape aux_shape = aux[j].shape;
        aux_shape.h = step.out.h;
        aux_shape.w = step.out.w;
        TensorView aux_dst = static_cast<int>(k) == last_geometric
                                 ? out.aux[j]
                                 : aux_scratch[j].Next(aux[j].dtype, aux_shape);
        TP_RETURN_IF_ERROR(RunStep(step, aux[j], aux_dst, &plan.aux[j], false, pool_));
        aux[j] = aux_dst.as_const();
      }
    }
    if (timings != nullptr) {
      const auto now = Clock::now();
      if (fuse) {
        // Aux tensors went through the geometric step alone.
        (*timings)[timings->size() - 2].seconds +=
            std::chrono::duration<double>(now - main_done).count();
      } else {
        timings->push_back({step.kind, std::chrono::duration<double>(now - start).count()});
      }
    }
    if (fuse) ++k;
  }
  if (plan.steps.empty()) std::memcpy(out.main.data, in.main.data, in.main.bytes());
  if (last_geometric < 0) {
    // Aux tensors untouched by the pipeline still come back, unchanged.
    for (size_t j = 0; j < aux.size(); ++j) {
      std::memcpy(out.aux[j].data, in.aux[j].data, in.aux[j].bytes());
    }
  }
  return absl::OkStatus();
}

#ifndef TENSORPREP_HAVE_CUDA
std::unique_ptr<Backend> MakeCudaBackend() { return nullptr; }
#endif

}  // namespace tensorprep::handlers
