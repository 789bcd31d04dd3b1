// The bad-input table: malformed and hostile requests over real gRPC on loopback. Each must get
// the right status code and a message naming the field, through both Process and ProcessStream,
// and the server must stay up and answer the next good request correctly (checked against the
// kernel reference, not the server's own kernels).
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/reference/reference.h"
#include "kernels/warp/warp.h"
#include "tests/kernels/test_util.h"
#include "tests/server/test_server.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;
using kernels::BatchShape;
using kernels::DType;
using kernels::testing::Buffer;
using kernels::testing::RandomBuffer;
using Code = absl::StatusCode;

constexpr int kMaxMessageMb = 8;
constexpr uint64_t kMaxTensorBytes = uint64_t{1} << 30;

v1::Tensor FloatTensor(const Buffer& b) {
  v1::Tensor t;
  t.set_dtype(v1::DTYPE_FLOAT32);
  for (int64_t d : {b.shape().n, b.shape().h, b.shape().w, b.shape().c}) t.add_shape(d);
  t.set_data(std::string(reinterpret_cast<const char*>(b.bytes().data()), b.view().bytes()));
  return t;
}

// An int32 NHW aux tensor of the given shape, with the right byte length.
void AddLabel(v1::ProcessRequest& r, const std::string& name, int64_t n, int64_t h, int64_t w) {
  auto* a = r.add_aux();
  a->set_name(name);
  auto* t = a->mutable_tensor();
  t->set_dtype(v1::DTYPE_INT32);
  for (int64_t d : {n, h, w}) t->add_shape(d);
  t->mutable_data()->resize(static_cast<size_t>(n * h * w * 4));
}

v1::Op* AddOp(v1::ProcessRequest& r) { return r.mutable_pipeline()->add_ops(); }

struct BadCase {
  std::string name;
  std::function<void(v1::ProcessRequest&)> mutate;
  Code code;
  std::string message;  // a substring the error must contain (after the request id prefix)
};

// The good request every case starts from: 2x6x5x3 float32, rotate 15 degrees, id "r1".
class BadInputTest : public ::testing::Test {
 protected:
  static TestServerOptions Options() {
    TestServerOptions o;
    o.max_message_mb = kMaxMessageMb;
    o.processor.limits.max_tensor_bytes = kMaxTensorBytes;
    return o;
  }

  v1::ProcessRequest Good() const {
    v1::ProcessRequest r;
    r.set_request_id("r1");
    *r.mutable_images() = FloatTensor(images_);
    auto* rot = AddOp(r)->mutable_rotate();
    rot->set_angle_deg(15);
    rot->set_interpolation(v1::INTERPOLATION_BILINEAR);
    rot->set_border(v1::BORDER_EDGE);
    return r;
  }

  // The server still answers a good request, with the reference's result.
  void ExpectStillServing() {
    auto ok = client_.Process(Good());
    ASSERT_TRUE(ok.ok()) << ok.status();
    ASSERT_EQ(ok->images().data().size(), images_.view().bytes());
    const auto got = kernels::reference::ToDoubles(
        {DType::kFloat32, images_.shape(), ok->images().data().data()});
    ASSERT_EQ(got.size(), want_.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want_[i], 1e-5) << i;
  }

  // Sends raw bytes as a Process request; returns the call's status.
  grpc::Status RawProcess(const std::string& bytes) {
    grpc::GenericStub stub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::CompletionQueue cq;
    auto call = stub.PrepareUnaryCall(&ctx, "/tensorprep.v1.Preprocessor/Process", request, &cq);
    call->StartCall();
    grpc::Status status;
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
    return status;
  }

  TestServer server_{Options()};
  client::Client client_ = server_.MakeClient();
  std::shared_ptr<grpc::Channel> channel_ = [this] {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(64 << 20);
    args.SetMaxReceiveMessageSize(64 << 20);
    return grpc::CreateCustomChannel(server_.address(), grpc::InsecureChannelCredentials(), args);
  }();
  const Buffer images_ = RandomBuffer(DType::kFloat32, {2, 6, 5, 3}, 10, 0, 1);
  const std::vector<double> want_ = [this] {
    const kernels::Affine inv = kernels::RotationInverse(15, 6, 5);
    return kernels::reference::WarpAffine(
        images_.view(), {&inv, 1},
        kernels::WarpParams{kernels::Interp::kBilinear, kernels::Border::kEdge, 0});
  }();
};

std::vector<BadCase> Table() {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  constexpr int64_t kMax64 = std::numeric_limits<int64_t>::max();
  auto shape = [](std::vector<int64_t> dims) {
    return [dims](v1::ProcessRequest& r) {
      r.mutable_images()->clear_shape();
      for (int64_t d : dims) r.mutable_images()->add_shape(d);
    };
  };
  auto rotate = [](v1::ProcessRequest& r) {
    return r.mutable_pipeline()->mutable_ops(0)->mutable_rotate();
  };
  return {
      // ---- the main tensor: byte length vs shape x dtype
      {"one byte short", [](auto& r) { r.mutable_images()->mutable_data()->pop_back(); },
       Code::kInvalidArgument, "images.data: expected 720 bytes (2x6x5x3 float32), got 719"},
      {"one byte long", [](auto& r) { r.mutable_images()->mutable_data()->push_back('x'); },
       Code::kInvalidArgument, "images.data: expected 720 bytes (2x6x5x3 float32), got 721"},
      {"uint8-sized data for float32", [](auto& r) { r.mutable_images()->mutable_data()->resize(180); },
       Code::kInvalidArgument, "images.data: expected 720 bytes (2x6x5x3 float32), got 180"},
      {"float32 bytes declared uint8",
       [](auto& r) { r.mutable_images()->set_dtype(v1::DTYPE_UINT8); }, Code::kInvalidArgument,
       "images.data: expected 180 bytes (2x6x5x3 uint8), got 720"},
      {"float32 bytes declared float16",
       [](auto& r) { r.mutable_images()->set_dtype(v1::DTYPE_FLOAT16); }, Code::kInvalidArgument,
       "images.data: expected 360 bytes (2x6x5x3 float16), got 720"},
      {"empty data", [](auto& r) { r.mutable_images()->clear_data(); }, Code::kInvalidArgument,
       "images.data: expected 720 bytes (2x6x5x3 float32), got 0"},
      // ---- dimensions
      {"negative H", [](auto& r) { r.mutable_images()->set_shape(1, -6); },
       Code::kInvalidArgument, "images.shape[1] (H): expected >= 1, got -6"},
      {"negative N", [](auto& r) { r.mutable_images()->set_shape(0, -1); },
       Code::kInvalidArgument, "images.shape[0] (N): expected >= 1, got -1"},
      {"most negative C", [](auto& r) { r.mutable_images()->set_shape(3, INT64_MIN); },
       Code::kInvalidArgument, "images.shape[3] (C): expected >= 1, got -9223372036854775808"},
      {"zero N (empty batch)", [](auto& r) { r.mutable_images()->set_shape(0, 0); },
       Code::kInvalidArgument, "images.shape[0] (N): expected >= 1, got 0 (empty batch)"},
      {"zero W", [](auto& r) { r.mutable_images()->set_shape(2, 0); }, Code::kInvalidArgument,
       "images.shape[2] (W): expected >= 1, got 0"},
      {"zero C", [](auto& r) { r.mutable_images()->set_shape(3, 0); }, Code::kInvalidArgument,
       "images.shape[3] (C): expected >= 1, got 0"},
      {"every dim 2^40", shape({1LL << 40, 1LL << 40, 1LL << 40, 1LL << 40}),
       Code::kInvalidArgument, "images.shape: element count overflows"},
      {"product just past 2^63", shape({3037000500, 3037000500, 1, 1}), Code::kInvalidArgument,
       "images.shape: element count overflows"},
      {"int64 max dim", shape({kMax64, 1, 1, 1}), Code::kInvalidArgument,
       "images.shape: element count overflows"},
      {"byte size past 2^62", shape({1LL << 31, 1LL << 30, 1, 1}), Code::kInvalidArgument,
       "images.shape: byte size overflows (2305843009213693952 elements of float32)"},
      {"10000 dimensions", shape(std::vector<int64_t>(10000, 1)), Code::kInvalidArgument,
       "images.shape: expected rank 3 (N,H,W) or 4 (N,H,W,C), got rank 10000"},
      {"rank 0", shape({}), Code::kInvalidArgument,
       "images.shape: expected rank 3 (N,H,W) or 4 (N,H,W,C), got rank 0"},
      {"rank 2", shape({2, 90}), Code::kInvalidArgument,
       "images.shape: expected rank 3 (N,H,W) or 4 (N,H,W,C), got rank 2 [2,90]"},
      {"rank 5", shape({2, 6, 5, 3, 1}), Code::kInvalidArgument,
       "images.shape: expected rank 3 (N,H,W) or 4 (N,H,W,C), got rank 5"},
      {"huge declared shape, no data (over the tensor limit)", shape({1, 100000, 100000, 3}),
       Code::kResourceExhausted,
       "images: 1x100000x100000x3 float32 is 120000000000 bytes, over the server's max tensor "
       "size of 1073741824 bytes"},
      {"large declared shape, no data (under the tensor limit)", shape({1, 10000, 1000, 3}),
       Code::kInvalidArgument, "images.data: expected 120000000 bytes (1x10000x1000x3 float32), got 720"},
      // ---- dtypes
      {"unknown dtype", [](auto& r) { r.mutable_images()->set_dtype(static_cast<v1::DType>(42)); },
       Code::kInvalidArgument,
       "images.dtype: expected one of DTYPE_UINT8, DTYPE_INT32, DTYPE_FLOAT32, DTYPE_FLOAT16, "
       "got unknown value 42"},
      {"negative dtype", [](auto& r) { r.mutable_images()->set_dtype(static_cast<v1::DType>(-3)); },
       Code::kInvalidArgument, "images.dtype: expected one of"},
      {"unspecified dtype", [](auto& r) { r.mutable_images()->set_dtype(v1::DTYPE_UNSPECIFIED); },
       Code::kInvalidArgument, "images.dtype: expected one of DTYPE_UINT8, DTYPE_INT32, "
                               "DTYPE_FLOAT32, DTYPE_FLOAT16, got DTYPE_UNSPECIFIED"},
      {"missing images", [](auto& r) { r.clear_images(); }, Code::kInvalidArgument,
       "images: expected a batch tensor (or an image_list), got none"},
      // ---- ops and their arguments
      {"NaN angle", [&](auto& r) { rotate(r)->set_angle_deg(kNaN); }, Code::kInvalidArgument,
       "pipeline.ops[0].rotate.angle_deg: expected a finite number, got nan"},
      {"infinite angle", [&](auto& r) { rotate(r)->set_angle_deg(kInf); },
       Code::kInvalidArgument, "pipeline.ops[0].rotate.angle_deg: expected a finite number, got inf"},
      {"-infinite angle", [&](auto& r) { rotate(r)->set_angle_deg(-kInf); },
       Code::kInvalidArgument, "pipeline.ops[0].rotate.angle_deg: expected a finite number, got -inf"},
      {"NaN fill", [&](auto& r) { rotate(r)->set_fill(kNaN); }, Code::kInvalidArgument,
       "pipeline.ops[0].rotate.fill: expected a finite number, got nan"},
      {"unknown interpolation",
       [&](auto& r) { rotate(r)->set_interpolation(static_cast<v1::Interpolation>(9)); },
       Code::kInvalidArgument,
       "pipeline.ops[0].rotate.interpolation: expected INTERPOLATION_NEAREST or "
       "INTERPOLATION_BILINEAR, got unknown value 9"},
      {"unknown border", [&](auto& r) { rotate(r)->set_border(static_cast<v1::Border>(17)); },
       Code::kInvalidArgument, "pipeline.ops[0].rotate.border: expected one of BORDER_CONSTANT"},
      {"unknown op (empty oneof)", [](auto& r) { r.mutable_pipeline()->add_ops(); },
       Code::kInvalidArgument, "pipeline.ops[1]: expected one of rotate, flip"},
      {"empty pipeline", [](auto& r) { r.mutable_pipeline()->clear_ops(); },
       Code::kInvalidArgument, "pipeline.ops: expected at least 1 op, got 0"},
      {"no pipeline at all", [](auto& r) { r.clear_pipeline(); }, Code::kInvalidArgument,
       "pipeline.ops: expected at least 1 op, got 0"},
      {"257 ops",
       [](auto& r) {
         for (int i = 0; i < 256; ++i) AddOp(r)->mutable_add()->add_value(1);
       },
       Code::kInvalidArgument, "pipeline.ops: expected at most 256"},
      {"normalize mean NaN",
       [&](auto& r) {
         auto* n = AddOp(r)->mutable_normalize();
         n->add_mean(kNaN);
         n->add_std(1);
       },
       Code::kInvalidArgument, "pipeline.ops[1].normalize.mean[0]: expected a finite number, got nan"},
      {"normalize mean infinite per channel",
       [&](auto& r) {
         auto* n = AddOp(r)->mutable_normalize();
         for (double m : {0.0, kInf, 0.0}) n->add_mean(m);
         n->add_std(1);
       },
       Code::kInvalidArgument, "pipeline.ops[1].normalize.mean[1]: expected a finite number, got inf"},
      {"std of zero",
       [](auto& r) {
         auto* n = AddOp(r)->mutable_normalize();
         n->add_mean(0.5);
         n->add_std(0);
       },
       Code::kInvalidArgument, "pipeline.ops[1].normalize.std[0]: expected a non-zero value, got 0"},
      {"std NaN",
       [&](auto& r) {
         auto* n = AddOp(r)->mutable_normalize();
         n->add_mean(0.5);
         n->add_std(kNaN);
       },
       Code::kInvalidArgument, "pipeline.ops[1].normalize.std[0]: expected a finite number, got nan"},
      {"normalize without std",
       [](auto& r) { AddOp(r)->mutable_normalize()->add_mean(0.5); }, Code::kInvalidArgument,
       "pipeline.ops[1].normalize.std: expected 1 value or 3 (one per channel), got 0"},
      {"normalize on integers",
       [](auto& r) {
         AddOp(r)->mutable_cast()->set_dtype(v1::DTYPE_UINT8);
         auto* m = AddOp(r)->mutable_normalize();
         m->add_mean(0);
         m->add_std(1);
       },
       Code::kInvalidArgument,
       "pipeline.ops[2].normalize: expected a float32 or float16 batch, got uint8"},
      {"add with no value", [](auto& r) { AddOp(r)->mutable_add(); }, Code::kInvalidArgument,
       "pipeline.ops[1].add.value: expected 1 value or 3 (one per channel), got 0"},
      {"per-channel length",
       [](auto& r) {
         auto* a = AddOp(r)->mutable_subtract();
         a->add_value(1);
         a->add_value(2);
       },
       Code::kInvalidArgument,
       "pipeline.ops[1].subtract.value: expected 1 value or 3 (one per channel), got 2"},
      {"multiply by NaN", [&](auto& r) { AddOp(r)->mutable_multiply()->add_value(kNaN); },
       Code::kInvalidArgument, "pipeline.ops[1].multiply.value[0]: expected a finite number, got nan"},
      {"add past float32 range", [](auto& r) { AddOp(r)->mutable_add()->add_value(1e39); },
       Code::kInvalidArgument,
       "pipeline.ops[1].add.value[0]: expected a value finite in float32 (the batch is float32), "
       "got 1e+39"},
      {"normalize mean past float32 range",
       [](auto& r) {
         auto* n = AddOp(r)->mutable_normalize();
         n->add_mean(-2.35e77);
         n->add_std(1);
       },
       Code::kInvalidArgument, "pipeline.ops[1].normalize.mean[0]: expected a value finite in float32"},
      {"divide by a value that is 0 in float32",
       [](auto& r) { AddOp(r)->mutable_divide()->add_value(1e-50); }, Code::kInvalidArgument,
       "pipeline.ops[1].divide.value[0]: expected a value non-zero in float32 (the batch is "
       "float32), got 1e-50"},
      {"divide by zero", [](auto& r) { AddOp(r)->mutable_divide()->add_value(0); },
       Code::kInvalidArgument, "pipeline.ops[1].divide.value[0]: expected a non-zero value, got 0"},
      {"flip without axis", [](auto& r) { AddOp(r)->mutable_flip(); }, Code::kInvalidArgument,
       "pipeline.ops[1].flip.axis: expected FLIP_AXIS_HORIZONTAL or FLIP_AXIS_VERTICAL, got "
       "FLIP_AXIS_UNSPECIFIED"},
      {"flip unknown axis",
       [](auto& r) { AddOp(r)->mutable_flip()->set_axis(static_cast<v1::FlipAxis>(5)); },
       Code::kInvalidArgument,
       "pipeline.ops[1].flip.axis: expected FLIP_AXIS_HORIZONTAL or FLIP_AXIS_VERTICAL, got "
       "unknown value 5"},
      {"probability > 1",
       [](auto& r) {
         auto* f = AddOp(r)->mutable_random_flip();
         f->set_axis(v1::FLIP_AXIS_VERTICAL);
         f->set_p(1.5);
       },
       Code::kInvalidArgument, "pipeline.ops[1].random_flip.p: expected a probability in [0, 1], got 1.5"},
      {"probability NaN",
       [&](auto& r) {
         auto* f = AddOp(r)->mutable_random_flip();
         f->set_axis(v1::FLIP_AXIS_VERTICAL);
         f->set_p(kNaN);
       },
       Code::kInvalidArgument, "pipeline.ops[1].random_flip.p: expected a probability in [0, 1], got nan"},
      {"probability negative",
       [](auto& r) {
         auto* f = AddOp(r)->mutable_random_flip();
         f->set_axis(v1::FLIP_AXIS_HORIZONTAL);
         f->set_p(-0.1);
       },
       Code::kInvalidArgument, "random_flip.p: expected a probability in [0, 1], got -0.1"},
      {"inverted angle range",
       [](auto& r) {
         auto* rr = AddOp(r)->mutable_random_rotate();
         rr->set_min_deg(10);
         rr->set_max_deg(-10);
       },
       Code::kInvalidArgument, "pipeline.ops[1].random_rotate.max_deg: expected >= min_deg (10), got -10"},
      {"random angle range NaN",
       [&](auto& r) {
         auto* rr = AddOp(r)->mutable_random_rotate();
         rr->set_min_deg(kNaN);
         rr->set_max_deg(10);
       },
       Code::kInvalidArgument, "pipeline.ops[1].random_rotate.min_deg: expected a finite number, got nan"},
      {"random angle range infinite",
       [&](auto& r) {
         auto* rr = AddOp(r)->mutable_random_rotate();
         rr->set_min_deg(0);
         rr->set_max_deg(kInf);
       },
       Code::kInvalidArgument, "pipeline.ops[1].random_rotate.max_deg: expected a finite number, got inf"},
      {"clamp min > max",
       [](auto& r) {
         auto* c = AddOp(r)->mutable_clamp();
         c->set_min(2);
         c->set_max(1);
       },
       Code::kInvalidArgument, "pipeline.ops[1].clamp.max: expected >= min (2), got 1"},
      {"clamp without bounds", [](auto& r) { AddOp(r)->mutable_clamp(); },
       Code::kInvalidArgument, "pipeline.ops[1].clamp: expected at least one of min, max"},
      {"clamp NaN min", [&](auto& r) { AddOp(r)->mutable_clamp()->set_min(kNaN); },
       Code::kInvalidArgument, "pipeline.ops[1].clamp.min: expected a finite number, got nan"},
      {"cast to unspecified", [](auto& r) { AddOp(r)->mutable_cast(); }, Code::kInvalidArgument,
       "pipeline.ops[1].cast.dtype: expected one of DTYPE_UINT8, DTYPE_INT32, DTYPE_FLOAT32, "
       "DTYPE_FLOAT16, got DTYPE_UNSPECIFIED"},
      {"cast to unknown dtype",
       [](auto& r) { AddOp(r)->mutable_cast()->set_dtype(static_cast<v1::DType>(99)); },
       Code::kInvalidArgument, "pipeline.ops[1].cast.dtype: expected one of"},
      // ---- auxiliary tensors
      {"aux of another size", [](auto& r) { AddLabel(r, "label", 2, 6, 4); },
       Code::kInvalidArgument,
       "aux[0].tensor.shape: expected N,H,W = 2,6,5 (the images' batch and size), got 2,6,4"},
      {"aux of another batch", [](auto& r) { AddLabel(r, "label", 3, 6, 5); },
       Code::kInvalidArgument, "aux[0].tensor.shape: expected N,H,W = 2,6,5"},
      {"aux without tensor", [](auto& r) { r.add_aux()->set_name("mask"); },
       Code::kInvalidArgument, "aux[0].tensor: expected a tensor, got none"},
      {"aux wrong byte length",
       [](auto& r) {
         AddLabel(r, "label", 2, 6, 5);
         r.mutable_aux(0)->mutable_tensor()->mutable_data()->resize(3);
       },
       Code::kInvalidArgument, "aux[0].tensor.data: expected 240 bytes (2x6x5 int32), got 3"},
      {"aux negative dim",
       [](auto& r) {
         AddLabel(r, "label", 2, 6, 5);
         r.mutable_aux(0)->mutable_tensor()->set_shape(2, -5);
       },
       Code::kInvalidArgument, "aux[0].tensor.shape[2] (W): expected >= 1, got -5"},
      {"aux unknown dtype",
       [](auto& r) {
         AddLabel(r, "label", 2, 6, 5);
         r.mutable_aux(0)->mutable_tensor()->set_dtype(static_cast<v1::DType>(7));
       },
       Code::kInvalidArgument, "aux[0].tensor.dtype: expected one of"},
      {"aux unknown interpolation",
       [](auto& r) {
         AddLabel(r, "label", 2, 6, 5);
         r.mutable_aux(0)->set_interpolation(static_cast<v1::Interpolation>(3));
       },
       Code::kInvalidArgument,
       "aux[0].interpolation: expected INTERPOLATION_NEAREST or INTERPOLATION_BILINEAR, got "
       "unknown value 3"},
      {"aux NaN fill",
       [&](auto& r) {
         AddLabel(r, "label", 2, 6, 5);
         r.mutable_aux(0)->set_fill(kNaN);
       },
       Code::kInvalidArgument, "aux[0].fill: expected a finite number, got nan"},
      {"duplicate aux names",
       [](auto& r) {
         AddLabel(r, "label", 2, 6, 5);
         AddLabel(r, "label", 2, 6, 5);
       },
       Code::kInvalidArgument, "aux[1].name: expected a unique name, got 'label' a second time"},
      // ---- routing
      {"unknown device", [](auto& r) { r.set_device(static_cast<v1::Device>(7)); },
       Code::kInvalidArgument,
       "device: expected DEVICE_AUTO, DEVICE_CPU or DEVICE_CUDA, got unknown value 7"},
      {"CUDA without a device", [](auto& r) { r.set_device(v1::DEVICE_CUDA); },
       Code::kFailedPrecondition, "device: DEVICE_CUDA requested but no CUDA device is usable"},
  };
}

TEST_F(BadInputTest, TableHasAtLeastFortyCases) { EXPECT_GE(Table().size(), 40u); }

TEST_F(BadInputTest, UnaryEachCaseGetsItsCodeAndFieldAndTheServerKeepsServing) {
  for (const BadCase& c : Table()) {
    SCOPED_TRACE(c.name);
    v1::ProcessRequest r = Good();
    c.mutate(r);
    auto resp = client_.Process(r);
    ASSERT_FALSE(resp.ok());
    EXPECT_EQ(resp.status().code(), c.code) << resp.status();
    EXPECT_EQ(resp.status().message().rfind("request 'r1': ", 0), 0u) << resp.status();
    EXPECT_NE(resp.status().message().find(c.message), std::string::npos) << resp.status();
    ExpectStillServing();
  }
}

TEST_F(BadInputTest, StreamEachCaseGetsAnErrorResponseAndTheStreamGoesOn) {
  // Every bad request interleaved with a good one on a single stream.
  const std::vector<BadCase> table = Table();
  std::vector<v1::ProcessRequest> reqs;
  for (size_t i = 0; i < table.size(); ++i) {
    v1::ProcessRequest bad = Good();
    table[i].mutate(bad);
    bad.set_request_id("bad-" + std::to_string(i));
    reqs.push_back(std::move(bad));
    v1::ProcessRequest good = Good();
    good.set_request_id("good-" + std::to_string(i));
    reqs.push_back(std::move(good));
  }
  std::vector<const v1::ProcessRequest*> ptrs;
  for (const auto& r : reqs) ptrs.push_back(&r);
  std::map<std::string, v1::ProcessResponse> got;
  absl::Status s =
      client_.Stream(ptrs, 4, [&](v1::ProcessResponse& r) { got[r.request_id()] = r; });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(got.size(), reqs.size());
  for (size_t i = 0; i < table.size(); ++i) {
    SCOPED_TRACE(table[i].name);
    const v1::ProcessResponse& bad = got["bad-" + std::to_string(i)];
    ASSERT_TRUE(bad.has_error());
    EXPECT_EQ(bad.error().code(), static_cast<int>(table[i].code)) << bad.error().message();
    EXPECT_NE(bad.error().message().find(table[i].message), std::string::npos)
        << bad.error().message();
    const v1::ProcessResponse& good = got["good-" + std::to_string(i)];
    ASSERT_FALSE(good.has_error()) << good.error().message();
    const auto values = kernels::reference::ToDoubles(
        {DType::kFloat32, images_.shape(), good.images().data().data()});
    for (size_t k = 0; k < values.size(); ++k) ASSERT_NEAR(values[k], want_[k], 1e-5) << k;
  }
}

TEST_F(BadInputTest, ZeroByteMessageIsARequestWithoutImages) {
  const grpc::Status s = RawProcess("");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "images: expected a batch tensor (or an image_list), got none");
  ExpectStillServing();
}

TEST_F(BadInputTest, TruncatedAndGarbageMessagesAreInvalidArgument) {
  // The service parses the raw bytes itself (gRPC's own decoder would answer UNIMPLEMENTED with
  // no message), so a client learns that its message, not the method, is the problem.
  const std::string whole = Good().SerializeAsString();
  for (const std::string& bytes :
       {whole.substr(0, whole.size() / 2), whole.substr(0, whole.size() - 1),
        std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11),
        std::string("\x12\xff\xff\xff\xff\x0f", 6)}) {
    SCOPED_TRACE(bytes.size());
    const grpc::Status s = RawProcess(bytes);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
    EXPECT_EQ(s.error_message(),
              absl::StrCat("the request is not a valid tensorprep.v1.ProcessRequest message (",
                           bytes.size(),
                           " bytes that protobuf cannot parse); check that the client sends "
                           "messages of this API"));
    ExpectStillServing();
  }
}

TEST_F(BadInputTest, MessageOverTheSizeLimitIsResourceExhausted) {
  v1::ProcessRequest r = Good();
  r.mutable_images()->mutable_data()->resize((kMaxMessageMb << 20) + 1);
  grpc::ClientContext ctx;
  auto stub = v1::Preprocessor::NewStub(channel_);
  v1::ProcessResponse resp;
  const grpc::Status s = stub->Process(&ctx, r, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
  EXPECT_NE(s.error_message().find(std::to_string(kMaxMessageMb << 20)), std::string::npos)
      << s.error_message();
  ExpectStillServing();
}

// Issue 13, item 3: a caller's long string is quoted with a bound, so the status stays
// INVALID_ARGUMENT instead of the client refusing the metadata (RESOURCE_EXHAUSTED "received
// metadata size exceeds hard limit"), and a stream's error message is bounded the same way.
TEST_F(BadInputTest, LongRequestIdsAndAuxNamesAreQuotedWithABound) {
  const std::string long_id(20 << 10, 'i');
  const std::string long_name(20 << 10, 'n');
  const std::string id_quote = "request '" + std::string(64, 'i') + "...' (20480 bytes): ";
  v1::ProcessRequest bad_id = Good();
  bad_id.set_request_id(long_id);
  bad_id.mutable_images()->set_shape(0, 3);  // 3 images declared, 2 sent
  v1::ProcessRequest bad_name = Good();
  AddLabel(bad_name, long_name, 2, 6, 5);
  AddLabel(bad_name, long_name, 2, 6, 5);  // the same name twice
  const std::string name_quote =
      "aux[1].name: expected a unique name, got '" + std::string(64, 'n') +
      "...' (20480 bytes) a second time";

  auto r1 = client_.Process(bad_id);
  ASSERT_FALSE(r1.ok());
  EXPECT_EQ(r1.status().code(), Code::kInvalidArgument) << r1.status().message().substr(0, 200);
  EXPECT_EQ(r1.status().message().rfind(id_quote, 0), 0u) << r1.status().message().substr(0, 200);
  EXPECT_LT(r1.status().message().size(), 512u);
  auto r2 = client_.Process(bad_name);
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.status().code(), Code::kInvalidArgument) << r2.status().message().substr(0, 200);
  EXPECT_NE(r2.status().message().find(name_quote), std::string::npos)
      << r2.status().message().substr(0, 300);
  EXPECT_LT(r2.status().message().size(), 512u);

  // On a stream: error responses (the id itself comes back whole, to match the response).
  bad_name.set_request_id("named");
  std::map<std::string, v1::ProcessResponse> got;
  absl::Status s = client_.Stream({&bad_id, &bad_name}, 2,
                                  [&](v1::ProcessResponse& r) { got[r.request_id()] = r; });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(got.size(), 2u);
  const v1::ProcessResponse& e1 = got[long_id];
  EXPECT_EQ(e1.error().code(), static_cast<int>(Code::kInvalidArgument));
  EXPECT_EQ(e1.error().message().rfind(id_quote, 0), 0u);
  EXPECT_LT(e1.error().message().size(), 512u);
  const v1::ProcessResponse& e2 = got["named"];
  EXPECT_EQ(e2.error().code(), static_cast<int>(Code::kInvalidArgument));
  EXPECT_NE(e2.error().message().find(name_quote), std::string::npos) << e2.error().message();
  EXPECT_LT(e2.error().message().size(), 512u);
  ExpectStillServing();
}

}  // namespace
}  // namespace tensorprep::testing
