#include "handlers/image_list.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tensorprep::handlers {

namespace {

using Clock = std::chrono::steady_clock;
using kernels::DecodeBox;

int64_t NanosSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
}

std::string SamplePath(const std::string& path, size_t i) {
  return absl::StrCat(path, ".samples[", i, "]");
}

// A raw sample: rank 2 (H, W) or 3 (H, W, C), its bytes in `data`.
absl::Status CheckRawSample(const pb::Tensor& t, const std::string& path,
                            const DecodeLimits& limits, RaggedSample* out, int* rank) {
  const int r = t.shape_size();
  if (r != 2 && r != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ".shape: expected rank 2 (H,W) or 3 (H,W,C), got rank ", r,
        r > 0 && r <= 8 ? absl::StrCat(" [", absl::StrJoin(t.shape(), ","), "]") : ""));
  }
  static constexpr const char* kDimNames[] = {"H", "W", "C"};
  constexpr int64_t kMaxDim = kMaxSide;
  for (int i = 0; i < r; ++i) {
    if (t.shape(i) < 1 || t.shape(i) > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".shape[", i, "] (", kDimNames[i],
                                                     "): expected 1 to ", kMaxDim, ", got ",
                                                     t.shape(i)));
    }
  }
  auto dtype = DecodeDType(t.dtype(), path + ".dtype");
  if (!dtype.ok()) return dtype.status();
  if (t.has_shm()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ".shm: samples of an image list travel in data; shared memory is taken for dense "
              "batches only"));
  }
  const int64_t c = r == 3 ? t.shape(2) : 1;
  // Each factor is below 2^31: the product of three fits in 128 bits, not 64; check in steps.
  const uint64_t elem = kernels::DTypeSize(*dtype);
  const uint64_t hw = static_cast<uint64_t>(t.shape(0)) * static_cast<uint64_t>(t.shape(1));
  if (hw > (uint64_t{1} << 62) / static_cast<uint64_t>(c) / elem ||
      hw * static_cast<uint64_t>(c) * elem > limits.max_tensor_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        path, ": ", absl::StrJoin(t.shape(), "x"), " ", kernels::DTypeName(*dtype),
        " is over the server's max tensor size of ", limits.max_tensor_bytes, " bytes"));
  }
  const uint64_t bytes = hw * static_cast<uint64_t>(c) * elem;
  if (t.data().size() != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ".data: expected ", bytes, " bytes (",
                                                   absl::StrJoin(t.shape(), "x"), " ",
                                                   kernels::DTypeName(*dtype), "), got ",
                                                   t.data().size()));
  }
  out->h = t.shape(0);
  out->w = t.shape(1);
  out->raw.dtype = *dtype;
  out->raw.shape = {1, out->h, out->w, c};
  const void* data = t.data().data();
  if (reinterpret_cast<uintptr_t>(data) % elem != 0) {
    out->copy = AlignedBuffer(bytes);
    std::memcpy(out->copy.data(), data, bytes);
    data = out->copy.data();
  }
  out->raw.data = data;
  *rank = r + 1;
  return absl::OkStatus();
}

// The box of `size_h` x `size_w` that `step` (the plan's first) reads, or the whole image when
// that is not known to be less. Bilinear reads floor(p) and floor(p) + 1, nearest round(p), and
// a border other than constant or edge reads anywhere: the box keeps 2 pixels to spare and must
// contain every sample position, unless it reaches the image's edge on that side.
DecodeBox ReadBox(const Step& step, int64_t size_h, int64_t size_w) {
  const DecodeBox whole{0, 0, size_h, size_w};
  double x0, x1, y0, y1;
  if (step.kind == KernelKind::kResample && step.maps.size() == 1) {
    const kernels::ResampleMap& m = step.maps[0];
    if (m.x.tap_end <= m.x.tap_begin || m.y.tap_end <= m.y.tap_begin) return whole;
    x0 = static_cast<double>(m.x.tap_begin);
    x1 = static_cast<double>(m.x.tap_end - 1);
    y0 = static_cast<double>(m.y.tap_begin);
    y1 = static_cast<double>(m.y.tap_end - 1);
  } else if (step.kind == KernelKind::kWarp && step.inverse.size() == 1) {
    if (step.params.border != kernels::Border::kConstant &&
        step.params.border != kernels::Border::kEdge) {
      return whole;
    }
    const kernels::Affine& a = step.inverse[0];
    const double xs[2] = {0, static_cast<double>(step.out.w - 1)};
    const double ys[2] = {0, static_cast<double>(step.out.h - 1)};
    x0 = y0 = HUGE_VAL;
    x1 = y1 = -HUGE_VAL;
    for (double x : xs) {
      for (double y : ys) {
        const double sx = a.m[0] * x + a.m[1] * y + a.m[2];
        const double sy = a.m[3] * x + a.m[4] * y + a.m[5];
        x0 = std::min(x0, sx);
        x1 = std::max(x1, sx);
        y0 = std::min(y0, sy);
        y1 = std::max(y1, sy);
      }
    }
  } else {
    return whole;
  }
  if (!std::isfinite(x0) || !std::isfinite(x1) || !std::isfinite(y0) || !std::isfinite(y1)) {
    return whole;
  }
  const auto lo = [](double v, int64_t size) {
    return std::clamp<int64_t>(static_cast<int64_t>(std::floor(v)) - 2, 0, size - 1);
  };
  const auto hi = [](double v, int64_t size) {
    return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(v)) + 2, 0, size - 1);
  };
  DecodeBox b;
  b.top = lo(y0, size_h);
  b.left = lo(x0, size_w);
  b.height = hi(y1, size_h) - b.top + 1;
  b.width = hi(x1, size_w) - b.left + 1;
  return b;
}

// Re-expresses `step` (the first of a plan) for an input that is `box` of the original.
void ShiftStep(const DecodeBox& box, Step* step) {
  const double dx = static_cast<double>(box.left);
  const double dy = static_cast<double>(box.top);
  for (kernels::Affine& a : step->inverse) {
    a.m[2] -= dx;
    a.m[5] -= dy;
  }
  for (kernels::ResampleMap& m : step->maps) {
    m.x.offset -= dx;
    m.x.tap_begin -= box.left;
    m.x.tap_end -= box.left;
    m.y.offset -= dy;
    m.y.tap_begin -= box.top;
    m.y.tap_end -= box.top;
  }
}

// Per-thread buffers for decoded samples (one slot per tensor of a request: the images, then
// each aux list), kept across samples and requests up to kKeepBytes each, so that a stream of
// requests decodes into memory that is already mapped and, sample after sample, in cache.
class DecodeBuffers {
 public:
  static constexpr size_t kKeepBytes = size_t{64} << 20;
  // This thread's buffer `slot`, of at least `bytes` (uninitialised).
  static void* Get(size_t slot, size_t bytes) {
    std::vector<AlignedBuffer>& slots = Slots();
    if (slots.size() <= slot) slots.resize(slot + 1);
    if (slots[slot].size() < bytes) slots[slot] = AlignedBuffer(bytes);
    return slots[slot].data();
  }
  // Frees this thread's buffers that are too large to keep (a big request's).
  static void Trim() {
    for (AlignedBuffer& b : Slots()) {
      if (b.size() > kKeepBytes) b = AlignedBuffer();
    }
  }

 private:
  static std::vector<AlignedBuffer>& Slots() {
    thread_local std::vector<AlignedBuffer> slots;
    return slots;
  }
};

// Tensor `t` of sample i, ready for the kernels: a view of its raw bytes, or of its decoded box
// in this thread's buffer `slot` (valid until the thread decodes into that slot again). The
// images' box comes from planning, which keeps what the kernels read 2 pixels inside its edges:
// its edge columns need not be exact (kernels::DecodeImage).
absl::Status DecodeSample(const RaggedTensor& t, size_t i, const DecodeBox& box, size_t slot,
                          kernels::ConstTensorView* view) {
  const RaggedSample& s = t.samples[i];
  if (s.encoded.empty()) {
    *view = s.raw;
    return absl::OkStatus();
  }
  const uint64_t row = static_cast<uint64_t>(box.width) * static_cast<uint64_t>(t.c);
  void* data = DecodeBuffers::Get(slot, row * static_cast<uint64_t>(box.height));
  view->dtype = kernels::DType::kUInt8;
  view->shape = {1, box.height, box.width, t.c};
  view->data = data;
  return kernels::DecodeImage(s.encoded, s.header, static_cast<int>(t.c), box,
                              static_cast<uint8_t*>(data), static_cast<int64_t>(row),
                              /*exact_edges=*/slot != 0);
}

kernels::TensorView SampleSlice(const kernels::TensorView& dense, int64_t i) {
  kernels::TensorView v = dense;
  v.shape.n = 1;
  v.data = static_cast<char*>(dense.data) + static_cast<size_t>(i) * v.bytes();
  return v;
}

}  // namespace

absl::StatusOr<RaggedTensor> CheckImageList(const pb::ImageList& list, const std::string& path,
                                            int default_channels, const DecodeLimits& limits,
                                            const ImageLimits& image_limits) {
  RaggedTensor out;
  if (list.samples_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".samples: expected at least one sample, got none"));
  }
  if (list.channels() != 0 && list.channels() != 1 && list.channels() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ".channels: expected 1 (grey), 3 (RGB) or 0 (the default), got ", list.channels()));
  }
  const int channels = list.channels() != 0 ? static_cast<int>(list.channels()) : default_channels;
  out.samples.resize(static_cast<size_t>(list.samples_size()));
  for (int i = 0; i < list.samples_size(); ++i) {
    const pb::ImageSample& in = list.samples(i);
    RaggedSample& s = out.samples[static_cast<size_t>(i)];
    const std::string sp = SamplePath(path, static_cast<size_t>(i));
    kernels::DType dtype = kernels::DType::kUInt8;
    int64_t c = channels;
    int rank = channels == 1 && default_channels == 1 ? 3 : 4;
    switch (in.kind_case()) {
      case pb::ImageSample::kEncoded: {
        s.encoded = in.encoded();
        auto header = kernels::ReadImageHeader(s.encoded);
        if (!header.ok()) {
          return absl::Status(header.status().code(),
                              absl::StrCat(sp, ".encoded: ", header.status().message()));
        }
        s.header = *header;
        s.h = header->height;
        s.w = header->width;
        const uint64_t pixels = static_cast<uint64_t>(s.h) * static_cast<uint64_t>(s.w);
        if (pixels > image_limits.max_image_pixels) {
          return absl::ResourceExhaustedError(absl::StrCat(
              sp, ".encoded: the ", kernels::ImageFormatName(s.header.format), " declares ",
              s.h, "x", s.w, " = ", pixels, " pixels, over the server's limit of ",
              image_limits.max_image_pixels, " pixels per image; nothing was decoded"));
        }
        if (pixels * static_cast<uint64_t>(channels) > limits.max_tensor_bytes) {
          return absl::ResourceExhaustedError(absl::StrCat(
              sp, ".encoded: the ", kernels::ImageFormatName(s.header.format), " of ", s.h, "x",
              s.w, " decodes to ", pixels * static_cast<uint64_t>(channels),
              " bytes, over the server's max tensor size of ", limits.max_tensor_bytes,
              " bytes; nothing was decoded"));
        }
        out.encoded_bytes += s.encoded.size();
        break;
      }
      case pb::ImageSample::kTensor: {
        absl::Status st = CheckRawSample(in.tensor(), sp + ".tensor", limits, &s, &rank);
        if (!st.ok()) return st;
        dtype = s.raw.dtype;
        c = s.raw.shape.c;
        out.encoded_bytes += s.raw.bytes();
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat(sp, ": expected encoded bytes or a tensor, got neither"));
    }
    if (i == 0) {
      out.dtype = dtype;
      out.c = c;
      out.rank = rank;
    } else if (dtype != out.dtype || c != out.c) {
      return absl::InvalidArgumentError(absl::StrCat(
          sp, ": expected ", kernels::DTypeName(out.dtype), " with ", out.c,
          " channel(s) like samples[0], got ", kernels::DTypeName(dtype), " with ", c,
          in.kind_case() == pb::ImageSample::kEncoded ? " (a decoded file)" : ""));
    }
  }
  return out;
}

absl::StatusOr<Plan> PlanImageList(const pb::Pipeline& pipeline, uint64_t seed,
                                   uint64_t sample_offset, const std::vector<AuxSampling>& aux,
                                   const PlanOptions& options, RaggedBatch* batch) {
  const RaggedTensor& main = batch->main;
  const size_t n = main.samples.size();
  for (size_t j = 0; j < batch->aux.size(); ++j) {
    const RaggedTensor& a = batch->aux[j];
    if (a.samples.size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat("aux[", j, "].list.samples: expected ", n,
                       " samples (one per image), got ", a.samples.size()));
    }
    for (size_t i = 0; i < n; ++i) {
      const RaggedSample& s = a.samples[i];
      const RaggedSample& m = main.samples[i];
      if (s.h != m.h || s.w != m.w) {
        return absl::InvalidArgumentError(absl::StrCat(
            "aux[", j, "].list.samples[", i, "]: expected ", m.h, "x", m.w,
            " (the size of image_list.samples[", i, "]), got ", s.h, "x", s.w));
      }
    }
  }
  batch->plans.clear();
  batch->plans.reserve(n);
  batch->boxes.clear();
  batch->boxes.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const RaggedSample& s = main.samples[i];
    const BatchState in{{1, s.h, s.w, main.c}, main.dtype};
    auto plan = BuildPlan(pipeline, in, seed, sample_offset + i, aux, options);
    if (!plan.ok()) {
      return absl::Status(plan.status().code(),
                          absl::StrCat(SamplePath("image_list", i), " (", s.h, "x", s.w,
                                       "): ", plan.status().message()));
    }
    if (i == 0) {
      // Planning sample 0's pipeline for a second, larger size tells whether the output size
      // follows the input's, whatever the sizes that came.
      const BatchState other{{1, s.h * 2 + 3, s.w * 2 + 5, main.c}, main.dtype};
      auto probe = BuildPlan(pipeline, other, seed, sample_offset, aux, options);
      if (probe.ok() && (probe->output_shape.h != plan->output_shape.h ||
                         probe->output_shape.w != plan->output_shape.w)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pipeline: the output size follows the input size (", s.h, "x", s.w, " gives ",
            plan->output_shape.h, "x", plan->output_shape.w,
            "), so an image_list's samples cannot make one dense batch; add an op that gives a "
            "fixed size: resize with both height and width, crop, center_crop or "
            "random_resized_crop"));
      }
    } else {
      const Plan& first = batch->plans.front();
      if (!(plan->output_shape == first.output_shape) ||
          plan->output_dtype != first.output_dtype) {
        return absl::InvalidArgumentError(absl::StrCat(
            SamplePath("image_list", i), " (", s.h, "x", s.w, "): the pipeline gives ",
            plan->output_shape.h, "x", plan->output_shape.w, "x", plan->output_shape.c,
            " where samples[0] gave ", first.output_shape.h, "x", first.output_shape.w, "x",
            first.output_shape.c));
      }
    }
    DecodeBox box{0, 0, s.h, s.w};
    if (!s.encoded.empty() && s.header.format == kernels::ImageFormat::kJpeg &&
        batch->aux.empty() && !plan->steps.empty()) {
      box = ReadBox(plan->steps.front(), s.h, s.w);
      if (box.height != s.h || box.width != s.w) {
        // From the column of blocks it starts in, so that it decodes without a copy.
        const int64_t skew = box.left % s.header.block_width;
        box.left -= skew;
        box.width += skew;
        ShiftStep(box, &plan->steps.front());
      }
    }
    uint64_t scratch = s.encoded.empty() ? 0
                                         : static_cast<uint64_t>(box.height) *
                                               static_cast<uint64_t>(box.width) *
                                               static_cast<uint64_t>(main.c);
    for (const RaggedTensor& a : batch->aux) {
      if (!a.samples[i].encoded.empty()) {
        scratch += static_cast<uint64_t>(s.h) * static_cast<uint64_t>(s.w) *
                   static_cast<uint64_t>(a.c);
      }
    }
    batch->scratch_bytes = std::max(batch->scratch_bytes, scratch);
    batch->boxes.push_back(box);
    batch->plans.push_back(std::move(*plan));
  }
  Plan dense = batch->plans.front();
  dense.output_shape.n = static_cast<int64_t>(n);
  for (Step& step : dense.steps) step.out.n = static_cast<int64_t>(n);
  return dense;
}

absl::Status RunImageList(const RaggedBatch& batch, Backend* cpu, kernels::ThreadPool* pool,
                          const ExecOutputs& out, std::vector<StepTiming>* timings,
                          int64_t* decode_ns) {
  const size_t n = batch.main.samples.size();
  const size_t tensors = 1 + batch.aux.size();
  // One task per sample: decode its files, then run its plan while they are in cache. A file
  // that fails to decode stops the samples not yet started; the lowest failing sample is named.
  std::vector<std::string> decode_errors(n);
  std::vector<absl::Status> failed(n);
  std::vector<std::vector<StepTiming>> per_sample(n);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> decoding{0}, running{0};
  const auto start = Clock::now();
  kernels::ParallelFor(pool, static_cast<int64_t>(n), [&](int64_t k) {
    if (stop.load(std::memory_order_relaxed)) return;
    const size_t i = static_cast<size_t>(k);
    const auto t0 = Clock::now();
    ExecInputs in;
    for (size_t t = 0; t < tensors; ++t) {
      const RaggedTensor& rt = t == 0 ? batch.main : batch.aux[t - 1];
      const RaggedSample& s = rt.samples[i];
      const DecodeBox box = t == 0 ? batch.boxes[i] : DecodeBox{0, 0, s.h, s.w};
      kernels::ConstTensorView view;
      absl::Status st = DecodeSample(rt, i, box, t, &view);
      if (!st.ok()) {
        const std::string field = t == 0
                                      ? SamplePath("image_list", i)
                                      : SamplePath(absl::StrCat("aux[", t - 1, "].list"), i);
        decode_errors[i] = absl::StrCat(field, ".encoded: ", st.message());
        stop.store(true, std::memory_order_relaxed);
        DecodeBuffers::Trim();
        return;
      }
      if (t == 0) {
        in.main = view;
      } else {
        in.aux.push_back(view);
      }
    }
    const auto t1 = Clock::now();
    ExecOutputs o;
    o.main = SampleSlice(out.main, k);
    for (size_t j = 0; j < batch.aux.size(); ++j) o.aux.push_back(SampleSlice(out.aux[j], k));
    failed[i] = cpu->Execute(batch.plans[i], in, o, timings ? &per_sample[i] : nullptr);
    const auto t2 = Clock::now();
    DecodeBuffers::Trim();
    decoding.fetch_add((t1 - t0).count(), std::memory_order_relaxed);
    running.fetch_add((t2 - t1).count(), std::memory_order_relaxed);
  });
  // The stage's wall time, split between decoding and the kernels in proportion to the time
  // the tasks spent in each (they overlap across threads).
  const int64_t wall = NanosSince(start);
  const double spent = static_cast<double>(decoding.load() + running.load());
  *decode_ns = spent > 0 ? static_cast<int64_t>(static_cast<double>(wall) *
                                                static_cast<double>(decoding.load()) / spent)
                         : 0;
  for (const std::string& e : decode_errors) {
    if (!e.empty()) return absl::InvalidArgumentError(e);
  }
  for (const absl::Status& s : failed) {
    if (!s.ok()) return s;
  }
  if (timings != nullptr) {
    std::vector<double> seconds(kKernelKindCount, 0.0);
    std::vector<bool> seen(kKernelKindCount, false);
    for (const auto& steps : per_sample) {
      for (const StepTiming& st : steps) {
        seconds[static_cast<int>(st.kind)] += st.seconds;
        seen[static_cast<int>(st.kind)] = true;
      }
    }
    for (int k = 0; k < kKernelKindCount; ++k) {
      if (seen[k]) timings->push_back({static_cast<KernelKind>(k), seconds[k]});
    }
  }
  return absl::OkStatus();
}

}  // namespace tensorprep::handlers
