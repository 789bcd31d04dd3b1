// Ragged requests (ProcessRequest.image_list) through a Processor on the CPU backend: each
// sample's result equals that sample sent alone as a dense batch of one at its sample offset
// (raw samples, JPEG files decoded whole by OpenCV, masks stored as palette PNG); a JPEG sample
// whose first step reads a box decodes only that box and still gives the whole decode's result;
// and every bad input is named: sample, field, what was expected.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "handlers/backend.h"
#include "handlers/processor.h"
#include "handlers/tensor_codec.h"
#include "tests/codec/image_files.h"
#include "tests/handlers/request_util.h"

namespace tensorprep::handlers {
namespace {

namespace v1 = ::tensorprep::v1;
using tensorprep::testing::EncodeJpeg;
using tensorprep::testing::EncodePng;
using tensorprep::testing::OpenCvDecode;
using tensorprep::testing::Pixels;
using tensorprep::testing::PngOptions;
using tensorprep::testing::Subsampling;
using tensorprep::testing::SyntheticImage;
using testing::Process;
using testing::RunResult;

struct Server {
  explicit Server(uint64_t max_tensor_bytes = uint64_t{1} << 40,
                  uint64_t max_image_pixels = uint64_t{1} << 27) {
    options.limits.max_tensor_bytes = max_tensor_bytes;
    options.image_limits.max_image_pixels = max_image_pixels;
  }
  Processor processor() { return Processor(options, &cpu, nullptr, nullptr, &pool); }
  absl::StatusOr<RunResult> operator()(const v1::ProcessRequest& r) {
    Processor p = processor();
    return Process(p, r);
  }
  kernels::ThreadPool pool{2};
  CpuBackend cpu{&pool};
  ProcessorOptions options;
};

v1::Tensor RawSample(const Pixels& p) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_UINT8);
  t.add_shape(p.h);
  t.add_shape(p.w);
  if (p.c != 1) t.add_shape(p.c);
  t.set_data(p.data.data(), p.data.size());
  return t;
}

// The dense batch of one `p` makes, as a wire tensor (NHWC, or NHW for one channel when `nhw`).
v1::Tensor DenseOne(const Pixels& p, bool nhw = false) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_UINT8);
  for (int64_t d : {int64_t{1}, p.h, p.w}) t.add_shape(d);
  if (!nhw) t.add_shape(p.c);
  t.set_data(p.data.data(), p.data.size());
  return t;
}

void TrainTransform(v1::Pipeline* p, int64_t size) {
  auto* rrc = p->add_ops()->mutable_random_resized_crop();
  rrc->set_height(size);
  rrc->set_width(size);
  rrc->set_antialias(true);
  auto* flip = p->add_ops()->mutable_random_flip();
  flip->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  flip->set_p(0.5);
  p->add_ops()->mutable_cast()->set_dtype(v1::DTYPE_FLOAT32);
  auto* norm = p->add_ops()->mutable_normalize();
  for (double m : {123.7, 116.3, 103.5}) norm->add_mean(m);
  for (double s : {58.4, 57.1, 57.4}) norm->add_std(s);
  p->add_ops()->mutable_channels_first();
}

// Sample i of a dense result of `count` samples.
std::string SampleBytes(const std::string& all, size_t count, size_t i) {
  const size_t each = all.size() / count;
  return all.substr(i * each, each);
}

// Each sample of the list against that sample alone, as a dense batch of one at its offset.
void ExpectEachSampleAlone(Server& server, const v1::ProcessRequest& list_request,
                           const std::vector<Pixels>& decoded,
                           const std::vector<Pixels>& masks = {}) {
  auto got = server(list_request);
  ASSERT_TRUE(got.ok()) << got.status();
  const size_t n = decoded.size();
  ASSERT_EQ(got->images_shape.front(), static_cast<int64_t>(n));
  for (size_t i = 0; i < n; ++i) {
    SCOPED_TRACE(::testing::Message() << "sample " << i);
    v1::ProcessRequest alone;
    *alone.mutable_images() = DenseOne(decoded[i]);
    *alone.mutable_pipeline() = list_request.pipeline();
    alone.set_seed(list_request.seed());
    alone.set_sample_offset(list_request.sample_offset() + i);
    for (int j = 0; j < list_request.aux_size(); ++j) {
      v1::AuxTensor* a = alone.add_aux();
      a->set_name(list_request.aux(j).name());
      a->set_interpolation(list_request.aux(j).interpolation());
      a->set_fill(list_request.aux(j).fill());
      *a->mutable_tensor() = DenseOne(masks[i], /*nhw=*/true);
    }
    auto want = server(alone);
    ASSERT_TRUE(want.ok()) << want.status();
    std::vector<int64_t> shape = want->images_shape;
    shape[0] = static_cast<int64_t>(n);
    ASSERT_EQ(got->images_shape, shape);
    ASSERT_TRUE(SampleBytes(got->images, n, i) == want->images) << "images differ";
    for (size_t j = 0; j < want->aux.size(); ++j) {
      std::vector<int64_t> aux_shape = want->aux_shapes[j];
      aux_shape[0] = static_cast<int64_t>(n);
      ASSERT_EQ(got->aux_shapes[j], aux_shape);
      ASSERT_TRUE(SampleBytes(got->aux[j], n, i) == want->aux[j]) << "aux " << j << " differs";
    }
  }
}

TEST(ImageListTest, RawSamplesOfDifferentSizesMakeOneBatch) {
  const std::vector<Pixels> samples = {SyntheticImage(37, 53, 3, 1), SyntheticImage(20, 31, 3, 2),
                                       SyntheticImage(64, 48, 3, 3)};
  v1::ProcessRequest r;
  for (const Pixels& p : samples) *r.mutable_image_list()->add_samples()->mutable_tensor() = RawSample(p);
  TrainTransform(r.mutable_pipeline(), 24);
  r.set_seed(5);
  r.set_sample_offset(10);
  Server server;
  ExpectEachSampleAlone(server, r, samples);
  auto got = server(r);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->images_shape, (std::vector<int64_t>{3, 3, 24, 24}));
}

TEST(ImageListTest, JpegSamplesEqualTheirWholeDecodeSentDense) {
  std::vector<Pixels> decoded;
  v1::ProcessRequest r;
  int seed = 20;
  for (auto [h, w] : {std::pair<int64_t, int64_t>{120, 90}, {75, 133}, {64, 64}, {97, 41}}) {
    const std::string file = EncodeJpeg(SyntheticImage(h, w, 3, seed), 85,
                                        seed % 2 ? Subsampling::k420 : Subsampling::k444, false);
    ++seed;
    r.mutable_image_list()->add_samples()->set_encoded(file);
    decoded.push_back(OpenCvDecode(file, 3));
  }
  r.set_seed(9);
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE(::testing::Message() << "variant " << variant);
    r.mutable_pipeline()->Clear();
    switch (variant) {
      case 0:
        TrainTransform(r.mutable_pipeline(), 32);
        break;
      case 1: {  // no antialias: the warp route
        TrainTransform(r.mutable_pipeline(), 48);
        r.mutable_pipeline()->mutable_ops(0)->mutable_random_resized_crop()->set_antialias(false);
        break;
      }
      case 2: {
        auto* c = r.mutable_pipeline()->add_ops()->mutable_crop();
        c->set_top(5);
        c->set_left(7);
        c->set_height(30);
        c->set_width(33);
        break;
      }
      case 3: {
        auto* c = r.mutable_pipeline()->add_ops()->mutable_center_crop();
        c->set_height(40);
        c->set_width(40);
        break;
      }
    }
    Server server;
    ExpectEachSampleAlone(server, r, decoded);
  }
}

// The box a JPEG sample decodes: that of its first step, not the whole image.
TEST(ImageListTest, JpegSampleDecodesOnlyTheBoxItsFirstStepReads) {
  const std::string file = EncodeJpeg(SyntheticImage(200, 300, 3, 30), 90, Subsampling::k420,
                                      false);
  v1::ProcessRequest r;
  r.mutable_image_list()->add_samples()->set_encoded(file);
  auto* c = r.mutable_pipeline()->add_ops()->mutable_crop();
  c->set_top(50);
  c->set_left(100);
  c->set_height(20);
  c->set_width(30);
  Server server;
  Processor processor = server.processor();
  auto prepared = processor.Prepare(r);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  ASSERT_NE((*prepared)->ragged, nullptr);
  const kernels::DecodeBox& box = (*prepared)->ragged->boxes[0];
  EXPECT_LE(box.top, 50);
  EXPECT_LE(box.left, 100);
  EXPECT_GE(box.top + box.height, 70);
  EXPECT_GE(box.left + box.width, 130);
  EXPECT_LT(box.height * box.width, 40 * 40);
  ExpectEachSampleAlone(server, r, {OpenCvDecode(file, 3)});
}

// Masks stored as palette PNGs give their indices and follow the geometry with nearest
// sampling, as the same masks sent dense do.
TEST(ImageListTest, PaletteMasksFollowTheImages) {
  std::vector<Pixels> images, masks;
  v1::ProcessRequest r;
  v1::AuxTensor* aux = r.add_aux();
  aux->set_name("mask");
  aux->set_fill(255);
  PngOptions palette;
  palette.colour_type = 3;
  for (int i = 0; i < 21; ++i) {
    for (int k = 0; k < 3; ++k) palette.palette.push_back(static_cast<uint8_t>(i * 12 + k));
  }
  int seed = 40;
  for (auto [h, w] : {std::pair<int64_t, int64_t>{50, 70}, {66, 40}}) {
    Pixels img = SyntheticImage(h, w, 3, seed++);
    Pixels mask = SyntheticImage(h, w, 1, seed++);
    for (auto& v : mask.data) v = static_cast<uint8_t>(v % 21);
    r.mutable_image_list()->add_samples()->set_encoded(EncodePng(img, {}));
    aux->mutable_list()->add_samples()->set_encoded(EncodePng(mask, palette));
    images.push_back(img);
    masks.push_back(mask);
  }
  TrainTransform(r.mutable_pipeline(), 28);
  r.set_seed(3);
  Server server;
  ExpectEachSampleAlone(server, r, images, masks);
  auto got = server(r);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->aux_shapes[0], (std::vector<int64_t>{2, 28, 28}));
  for (char v : got->aux[0]) {
    const auto u = static_cast<uint8_t>(v);
    ASSERT_TRUE(u < 21 || u == 255) << static_cast<int>(u);
  }
}

// ---- bad input ----------------------------------------------------------------------------

struct BadCase {
  std::string name;
  v1::ProcessRequest request;
  absl::StatusCode code;
  std::string message;
};

v1::ProcessRequest ListOf(const std::vector<std::string>& files, int64_t resize = 16) {
  v1::ProcessRequest r;
  for (const std::string& f : files) r.mutable_image_list()->add_samples()->set_encoded(f);
  if (resize > 0) {
    auto* op = r.mutable_pipeline()->add_ops()->mutable_resize();
    op->set_height(resize);
    op->set_width(resize);
  }
  return r;
}

TEST(ImageListTest, BadInputIsNamed) {
  const std::string a = EncodePng(SyntheticImage(20, 31, 3, 1), {});
  const std::string b = EncodeJpeg(SyntheticImage(24, 24, 3, 2), 90, Subsampling::k420, false);
  std::string bomb = EncodePng(SyntheticImage(2, 2, 3, 3), {});
  for (int off : {16, 20}) {  // IHDR: 100000 x 100000
    bomb[off] = 0;
    bomb[off + 1] = 0x01;
    bomb[off + 2] = static_cast<char>(0x86);
    bomb[off + 3] = static_cast<char>(0xA0);
  }
  std::vector<BadCase> cases;
  {
    v1::ProcessRequest r = ListOf({a, b}, 0);
    r.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    cases.push_back({"no fixed size", r, absl::StatusCode::kInvalidArgument,
                     "pipeline: the output size follows the input size (20x31 gives 20x31), so an "
                     "image_list's samples cannot make one dense batch; add an op that gives a "
                     "fixed size"});
  }
  {
    v1::ProcessRequest r = ListOf({a});
    r.mutable_images()->set_dtype(v1::DTYPE_UINT8);
    cases.push_back({"both", r, absl::StatusCode::kInvalidArgument,
                     "images, image_list: expected one of them, got both"});
  }
  cases.push_back({"empty", ListOf({}), absl::StatusCode::kInvalidArgument, ""});
  cases.back().request.mutable_image_list();
  cases.back().message = "image_list.samples: expected at least one sample, got none";
  {
    v1::ProcessRequest r = ListOf({a});
    r.mutable_image_list()->set_channels(2);
    cases.push_back({"channels", r, absl::StatusCode::kInvalidArgument,
                     "image_list.channels: expected 1 (grey), 3 (RGB) or 0 (the default), got 2"});
  }
  cases.push_back({"gif", ListOf({a, "GIF89a\x01\x00\x01\x00"}),
                   absl::StatusCode::kInvalidArgument,
                   "image_list.samples[1].encoded: unsupported image format: expected a JPEG or "
                   "PNG file, got a GIF file"});
  cases.push_back({"bomb", ListOf({a, bomb}), absl::StatusCode::kResourceExhausted,
                   "image_list.samples[1].encoded: the PNG declares 100000x100000 = 10000000000 "
                   "pixels, over the server's limit of 134217728 pixels per image; nothing was "
                   "decoded"});
  {
    v1::ProcessRequest r = ListOf({a});
    r.mutable_image_list()->add_samples();
    cases.push_back({"neither", r, absl::StatusCode::kInvalidArgument,
                     "image_list.samples[1]: expected encoded bytes or a tensor, got neither"});
  }
  {
    v1::ProcessRequest r = ListOf({a});
    Pixels grey = SyntheticImage(5, 5, 1, 4);
    *r.mutable_image_list()->add_samples()->mutable_tensor() = RawSample(grey);
    cases.push_back({"channels differ", r, absl::StatusCode::kInvalidArgument,
                     "image_list.samples[1]: expected uint8 with 3 channel(s) like samples[0], "
                     "got uint8 with 1"});
  }
  {
    v1::ProcessRequest r = ListOf({});
    v1::Tensor t = RawSample(SyntheticImage(4, 5, 3, 5));
    t.mutable_data()->pop_back();
    *r.mutable_image_list()->add_samples()->mutable_tensor() = t;
    cases.push_back({"raw bytes", r, absl::StatusCode::kInvalidArgument,
                     "image_list.samples[0].tensor.data: expected 60 bytes (4x5x3 uint8), got 59"});
  }
  {
    v1::ProcessRequest r = ListOf({a, b}, 0);
    auto* c = r.mutable_pipeline()->add_ops()->mutable_crop();
    c->set_height(22);
    c->set_width(22);
    cases.push_back({"crop beyond a sample", r, absl::StatusCode::kInvalidArgument,
                     "image_list.samples[0] (20x31): pipeline.ops[0].crop"});
  }
  {
    v1::ProcessRequest r = ListOf({a, b});
    v1::AuxTensor* m = r.add_aux();
    m->mutable_list()->add_samples()->set_encoded(EncodePng(SyntheticImage(20, 31, 1, 6), [] {
      PngOptions o;
      o.colour_type = 0;
      return o;
    }()));
    m->mutable_list()->add_samples()->set_encoded(EncodePng(SyntheticImage(12, 24, 1, 7), [] {
      PngOptions o;
      o.colour_type = 0;
      return o;
    }()));
    cases.push_back({"mask size", r, absl::StatusCode::kInvalidArgument,
                     "aux[0].list.samples[1]: expected 24x24 (the size of image_list.samples[1]), "
                     "got 12x24"});
    v1::ProcessRequest fewer = r;
    fewer.mutable_aux(0)->mutable_list()->mutable_samples()->RemoveLast();
    cases.push_back({"mask count", fewer, absl::StatusCode::kInvalidArgument,
                     "aux[0].list.samples: expected 2 samples (one per image), got 1"});
    v1::ProcessRequest dense = ListOf({a});
    dense.add_aux()->mutable_tensor()->set_dtype(v1::DTYPE_UINT8);
    cases.push_back({"dense aux", dense, absl::StatusCode::kInvalidArgument,
                     "aux[0].list: expected a list of samples (one per image) with image_list, got "
                     "a batch tensor"});
  }
  {
    v1::ProcessRequest r = ListOf({a});
    r.set_device(v1::DEVICE_CUDA);
    cases.push_back({"cuda", r, absl::StatusCode::kFailedPrecondition,
                     "device: DEVICE_CUDA requested, but an image_list is decoded and run on the "
                     "CPU"});
  }
  Server server;
  Processor processor = server.processor();
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    auto prepared = processor.Prepare(c.request);
    ASSERT_FALSE(prepared.ok());
    EXPECT_EQ(prepared.status().code(), c.code) << prepared.status();
    EXPECT_NE(prepared.status().message().find(c.message), std::string::npos)
        << prepared.status().message();
  }
}

// Each decoded sample is a tensor of its own (the batch of them is never made): the tensor
// limit applies to each, from its header, before anything is decoded.
TEST(ImageListTest, DecodedSizeOverTheTensorLimitIsRefusedBeforeDecoding) {
  const std::string small = EncodePng(SyntheticImage(40, 40, 3, 1), {});
  const std::string large = EncodePng(SyntheticImage(40, 41, 3, 2), {});
  Server server(/*max_tensor_bytes=*/40 * 40 * 3);
  auto many = server.processor().Prepare(ListOf({small, small, small}));
  EXPECT_TRUE(many.ok()) << many.status();
  auto prepared = server.processor().Prepare(ListOf({small, large}));
  ASSERT_FALSE(prepared.ok());
  EXPECT_EQ(prepared.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(prepared.status().message().find(
                "image_list.samples[1].encoded: the PNG of 40x41 decodes to 4920 bytes, over the "
                "server's max tensor size of 4800 bytes; nothing was decoded"),
            std::string::npos)
      << prepared.status();
  Server small_images(uint64_t{1} << 40, /*max_image_pixels=*/40 * 40 - 1);
  auto refused = small_images.processor().Prepare(ListOf({small}));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
}

// While a request runs each worker thread holds one sample's decoded pixels: that, not the whole
// list, is what the admission budget counts besides the result.
TEST(ImageListTest, AdmissionCountsOneDecodedSamplePerThread) {
  const std::string a = EncodePng(SyntheticImage(40, 50, 3, 1), {});
  const std::string b = EncodePng(SyntheticImage(60, 30, 3, 2), {});
  Server server;
  auto prepared = server.processor().Prepare(ListOf({a, b, a, a}));
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  // 4 results of 16x16x3, and 2 threads holding up to the largest sample, 40x50x3.
  EXPECT_EQ(Processor::InlineOutputBytes(**prepared), 4u * 16 * 16 * 3 + 2u * 40 * 50 * 3);
}

// A file whose header is fine but whose data is cut short fails when it is decoded, naming it;
// the other samples' results are not returned.
TEST(ImageListTest, CorruptDataFailsTheRequestNamingTheSample) {
  const std::string good = EncodeJpeg(SyntheticImage(48, 48, 3, 1), 90, Subsampling::k420, false);
  const std::string cut = good.substr(0, good.size() * 2 / 3);
  Server server;
  auto got = server(ListOf({good, good, cut}));
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(got.status().message().find(
                "image_list.samples[2].encoded: corrupt JPEG file: Premature end of JPEG file"),
            std::string::npos)
      << got.status();
}

TEST(ImageListTest, ResponseCountsTheEncodedBytesAndTheDecodingTime) {
  const std::string a = EncodePng(SyntheticImage(40, 50, 3, 1), {});
  const std::string b = EncodeJpeg(SyntheticImage(30, 20, 3, 2), 90, Subsampling::k420, false);
  Server server;
  Processor processor = server.processor();
  v1::ProcessRequest r = ListOf({a, b});
  auto prepared = processor.Prepare(r);
  ASSERT_TRUE(prepared.ok()) << prepared.status();
  v1::ProcessResponse response;
  auto stats = processor.Run(r, **prepared, &response);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(response.transfer().inline_bytes_in(), a.size() + b.size());
  EXPECT_EQ(response.transfer().inline_bytes_out(), 2u * 16 * 16 * 3);
  EXPECT_GT(response.timings().image_decode_ns(), 0);
  EXPECT_EQ(response.images().data().size(), 2u * 16 * 16 * 3);
  EXPECT_EQ(response.device(), v1::DEVICE_CPU);
}

}  // namespace
}  // namespace tensorprep::handlers
