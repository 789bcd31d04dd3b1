// Antialiased, axis-aligned resampling of an NHWC batch: the separable triangle ("bilinear with
// antialias") filter of PIL's resize and of torchvision's resize(antialias=True) (PyTorch's
// _upsample_bilinear2d_aa), for resize and random resized crop where an axis shrinks. Rotations,
// shears and enlargements without a shrinking axis go through the warp (kernels/warp/warp.h).
//
// Semantics, per axis (x: columns, y: rows), for output index i with the axis map (scale, offset):
//   c       = scale * i + offset       the source position sampled, in pixel-centre coordinates
//                                      (source pixel j has its centre at j), in double;
//   s       = |scale|, support = max(s, 1): the triangle of radius 1 widened by s when shrinking;
//   taps    = the source indices j in [0, size) with |j - c| < support, and within the axis
//             map's tap window when it has one (taps outside are dropped: there are no border
//             modes, PyTorch's edge rule; at least one tap must remain);
//   weights = (1 - |j - c| / support), normalised by their sum, in double.
// This is PyTorch's antialias filter (aten/src/ATen/native/cpu/UpSampleKernel.cpp,
// _compute_indices_min_size_weights_aa with the linear aa_filter), whose centre is in pixel-edge
// coordinates: its centre is c + 0.5, and resizing a whole axis of `in` pixels onto `out` is
// scale = in / out, offset = (scale - 1) / 2 (AxisMapForWindow below). PyTorch also lists taps
// of weight 0 at the ends of a range; they are left out here, which changes no finite result.
// A negative scale composes a mirror (a flip after the resize): the taps and their weights are
// those of the position c whatever the sign, and every sum runs from the lowest source index up,
// so a mirrored map gives the unmirrored result flipped, bit for bit, whenever the two maps
// give the same centres (exactly so where their products are exact in double, e.g. a scale of
// 2; otherwise the centres may differ in the last bit of a double).
//
// Order and precision. Two separable passes, in PyTorch's order: horizontal first (each needed
// source row resampled along x into an intermediate), then vertical. uint8, float32 and float16
// compute in float: weights rounded from double to float once, the intermediate held in float,
// each sum accumulated tap by tap in the order above without fused multiply-adds; int32
// computes in double. The result is rounded once: uint8 and int32 to nearest, ties to even, and
// saturated; float16 to nearest even (overflow to infinity); float32 as computed. Non-finite
// source values propagate as IEEE arithmetic says. The same arguments give the same bits on the
// CPU at any thread count and on CUDA (kernels/cuda/cuda_api.h).
//
// Against torch 1.13 / torchvision 0.14, measured on random 3-channel images (2 per case):
// torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False) on
// float32 NCHW, and torchvision's tensor resize(antialias=True) of uint8 (it converts to float32,
// interpolates and rounds half to even). Cases: shrink by 1.5, 2, 3.7 and 8, per-axis factors
// (111x93 -> 30x25), one axis enlarged and the other shrunk (64x80 -> 40x120), one axis only,
// 256x256 -> 224x224, 500x375 -> 224x224, to 1x1, and a crop resized and flipped (resized_crop
// + hflip against a tap-windowed mirrored map).
//   float32, values in [0, 1], max |difference|: factor 1.5 3.0e-7, 2 1.2e-7, 3.7 6.0e-7,
//     8 8.9e-8, per-axis 3.6e-7, one axis only 1.1e-6, enlarged + shrunk 4.1e-6, 256 -> 224
//     1.7e-5, 500x375 -> 224 1.2e-5, to 1x1 8.9e-8, crop + flip 1.5e-6. torch computes its
//     centres and weights in float32 (spacing 1.5e-5 at 256); these results are within 1.7e-7
//     of torch's float64 interpolate on the same images.
//   uint8: max |difference| 1, on 0-0.7% of values (a sum within float rounding of k + 0.5;
//     most where torch's float32 centres are coarsest); crop + flip: identical.
// torch >= 2.1 / torchvision >= 0.16 resize uint8 natively with 16-bit fixed-point weights (not
// available here to measure); expect differences of 1 on more values there and compare uint8
// with a tolerance of 1.
#ifndef TENSORPREP_KERNELS_RESAMPLE_RESAMPLE_H_
#define TENSORPREP_KERNELS_RESAMPLE_RESAMPLE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/common/tensor.h"
#include "kernels/common/thread_pool.h"

namespace tensorprep::kernels {

// The source position of output index i along one axis: scale * i + offset, in pixel-centre
// coordinates. scale must be finite and not 0; a negative scale mirrors the axis.
struct AxisMap {
  double scale = 1;
  double offset = 0;
  // The taps are limited to source indices [tap_begin, tap_end) as well as to the image, so
  // that a crop resized in one pass clips its footprint at the crop's edges, as resizing the
  // cropped image does (torchvision's resized_crop). tap_end <= tap_begin: the whole axis.
  int64_t tap_begin = 0;
  int64_t tap_end = 0;
};

struct ResampleMap {
  AxisMap x;  // columns
  AxisMap y;  // rows
};

// The map of one axis that resamples the source window [begin, begin + length) (pixel-edge
// coordinates: the whole axis of `size` pixels is begin 0, length size) onto `out` output pixels,
// mirrored when `mirror` is set (output i then shows what unmirrored output out - 1 - i shows):
//   scale = length / out, offset = begin + (scale - 1) / 2  (mirrored: -scale and
//   offset + scale * (out - 1)), taps limited to [floor(begin), ceil(begin + length)).
// For an integer window this is torchvision's resized_crop (crop, then resize) of that axis.
// out >= 1 and length > 0 are the caller's to ensure.
AxisMap AxisMapForWindow(double begin, double length, int64_t out, bool mirror);

// dst[n] = src[n] resampled as maps[n] says (semantics above), for every sample n.
//
// `maps` has src.shape.n entries, or 1 used for every sample. dst has src's n, c and dtype and
// any h, w >= 1; src and dst do not overlap. Every output index of every axis must keep at
// least one tap inside the source (its footprint may not lie wholly outside the image). Heights,
// widths and channels are below 2^31. Spreads (sample, row band) tasks over `pool` (null:
// inline). Returns INTERNAL when a precondition is broken (kernels/common/checks.h); never
// throws. Allocates the weight tables and per-task intermediate rows. Thread-safe for distinct
// outputs.
absl::Status ResampleAaCpu(const ConstTensorView& src, const TensorView& dst,
                           absl::Span<const ResampleMap> maps, ThreadPool* pool);

// The preconditions every resample entry point (CPU, CUDA) checks on its source and maps, before
// its own checks of the destination: src shape and data, dimensions below 2^31, the `maps` count
// (1 or src.shape.n), every scale finite and not 0, every offset finite. INTERNAL
// "<function>: <what>" otherwise. Thread-safe.
absl::Status CheckResampleSource(absl::string_view function, const ConstTensorView& src,
                                 absl::Span<const ResampleMap> maps);

// The destination checks shared by the entry points: dtype, n and c equal to src's, h and w >= 1
// and below 2^31, data not null, no overlap with src. INTERNAL otherwise. Thread-safe.
absl::Status CheckResampleDestination(absl::string_view function, const ConstTensorView& src,
                                      const TensorView& dst);

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_RESAMPLE_RESAMPLE_H_
