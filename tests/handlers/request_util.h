// Request builders shared by the handler tests: wire tensors from test buffers, the op builders
// the tests use most, random pipelines, and one call through a Processor.
#ifndef TENSORPREP_TESTS_HANDLERS_REQUEST_UTIL_H_
#define TENSORPREP_TESTS_HANDLERS_REQUEST_UTIL_H_

#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "handlers/processor.h"
#include "tensorprep/v1/tensorprep.pb.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::handlers::testing {

// `b` as a wire tensor of `dtype` (NHWC; NHW without the channel dimension when `nhw`).
::tensorprep::v1::Tensor Wire(const kernels::testing::Buffer& b, ::tensorprep::v1::DType dtype,
                              bool nhw);

void AddFlip(::tensorprep::v1::Pipeline& p, ::tensorprep::v1::FlipAxis axis);
void AddRotate(::tensorprep::v1::Pipeline& p, double angle,
               ::tensorprep::v1::Interpolation interp = ::tensorprep::v1::INTERPOLATION_BILINEAR,
               ::tensorprep::v1::Border border = ::tensorprep::v1::BORDER_EDGE);

// A random pipeline of 1 to 7 ops: flips, random flips, at most one rotation (nearest or
// bilinear, any border; one so that fused and unfused runs sample the source once each) and
// element-wise ops (add with one or `channels` values, multiply, clamp, normalize) in random order.
::tensorprep::v1::Pipeline RandomPipeline(std::mt19937& rng, bool nearest, int channels);

// What a Process call returned: the result bytes, each aux tensor's bytes, the device that ran.
struct RunResult {
  std::string images;
  std::vector<int64_t> images_shape;  // as the response's header says
  std::vector<std::string> aux;
  std::vector<std::vector<int64_t>> aux_shapes;
  ::tensorprep::v1::Device device = ::tensorprep::v1::DEVICE_AUTO;
};

// Prepare + Run through `processor`; the first failing status otherwise.
absl::StatusOr<RunResult> Process(const Processor& processor,
                                  const ::tensorprep::v1::ProcessRequest& request);

}  // namespace tensorprep::handlers::testing

#endif  // TENSORPREP_TESTS_HANDLERS_REQUEST_UTIL_H_
