// Integration tests over real gRPC on loopback: the C++ client against an in-process server.
// Results are checked against the kernel reference (kernels/reference), never against the
// server's own kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "google/protobuf/descriptor.h"
#include "kernels/common/philox.h"
#include "kernels/reference/reference.h"
#include "tests/handlers/request_util.h"
#include "tests/kernels/test_util.h"
#include "tests/server/test_server.h"

namespace tensorprep::testing {
namespace {

namespace v1 = ::tensorprep::v1;
using kernels::BatchShape;
using kernels::DType;
using kernels::testing::Buffer;
using kernels::testing::RandomBuffer;

v1::DType Wire(DType d) {
  switch (d) {
    case DType::kUInt8:
      return v1::DTYPE_UINT8;
    case DType::kInt32:
      return v1::DTYPE_INT32;
    case DType::kFloat32:
      return v1::DTYPE_FLOAT32;
    case DType::kFloat16:
      return v1::DTYPE_FLOAT16;
  }
  return v1::DTYPE_UNSPECIFIED;
}

v1::Tensor ToWire(const Buffer& b, bool nhw = false) {
  return handlers::testing::Wire(b, Wire(b.dtype()), nhw);
}

// Values of a wire tensor, through the reference's conversion.
std::vector<double> Values(const v1::Tensor& t, DType dtype, const BatchShape& shape) {
  return kernels::reference::ToDoubles({dtype, shape, t.data().data()});
}

void ExpectNear(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], tol) << "element " << i;
  }
}

v1::ProcessRequest RotateRequest(const Buffer& images, double angle) {
  v1::ProcessRequest r;
  *r.mutable_images() = ToWire(images);
  auto* rot = r.mutable_pipeline()->add_ops()->mutable_rotate();
  rot->set_angle_deg(angle);
  rot->set_interpolation(v1::INTERPOLATION_BILINEAR);
  rot->set_border(v1::BORDER_EDGE);
  return r;
}

class ServerTest : public ::testing::Test {
 protected:
  TestServer server_;
  client::Client client_ = server_.MakeClient();
};

TEST_F(ServerTest, UnaryRotateMatchesReference) {
  const BatchShape shape{2, 16, 20, 3};
  const Buffer images = RandomBuffer(DType::kFloat32, shape, 1, 0, 1);
  auto r = client_.Process(RotateRequest(images, 30));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->device(), v1::DEVICE_CPU);
  ASSERT_EQ(r->images().shape_size(), 4);
  EXPECT_EQ(r->images().dtype(), v1::DTYPE_FLOAT32);
  const kernels::Affine inv = kernels::RotationInverse(30, shape.h, shape.w);
  const auto want = kernels::reference::WarpAffine(
      images.view(), {&inv, 1},
      kernels::WarpParams{kernels::Interp::kBilinear, kernels::Border::kEdge, 0});
  ExpectNear(Values(r->images(), DType::kFloat32, shape), want, 1e-5);
  // Every stage was timed, and the stages fit in the total.
  const auto& t = r->timings();
  EXPECT_GT(t.kernel_ns(), 0);
  EXPECT_GT(t.total_ns(), 0);
  EXPECT_LE(t.decode_ns() + t.queue_ns() + t.kernel_ns() + t.encode_ns(), t.total_ns());
}

TEST_F(ServerTest, LabelsFollowRotationWithNearestAndKeepTheirValues) {
  const BatchShape shape{3, 21, 17, 3};
  const BatchShape label_shape{3, 21, 17, 1};
  const Buffer images = RandomBuffer(DType::kUInt8, shape, 2, 0, 255);
  std::vector<double> labels(label_shape.elements());
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<double>((i * 7) % 5);
  const Buffer label_buf = kernels::testing::FromValues(DType::kInt32, label_shape, labels);
  v1::ProcessRequest r = RotateRequest(images, -37.5);
  auto* aux = r.add_aux();
  aux->set_name("label");
  aux->set_fill(255);
  *aux->mutable_tensor() = ToWire(label_buf, /*nhw=*/true);
  r.mutable_pipeline()->mutable_ops(0)->mutable_rotate()->set_border(v1::BORDER_CONSTANT);
  auto resp = client_.Process(r);
  ASSERT_TRUE(resp.ok()) << resp.status();
  ASSERT_EQ(resp->aux_size(), 1);
  EXPECT_EQ(resp->aux(0).name(), "label");
  ASSERT_EQ(resp->aux(0).tensor().shape_size(), 3);  // NHW in, NHW out
  const auto got = Values(resp->aux(0).tensor(), DType::kInt32, label_shape);
  std::set<double> seen(got.begin(), got.end());
  for (double v : seen) EXPECT_TRUE(v == 255 || (v >= 0 && v <= 4)) << v;
  EXPECT_TRUE(seen.count(255)) << "corners outside the rotated image take the aux fill";
  const kernels::Affine inv = kernels::RotationInverse(-37.5, shape.h, shape.w);
  const auto want = kernels::reference::WarpAffine(
      label_buf.view(), {&inv, 1},
      kernels::WarpParams{kernels::Interp::kNearest, kernels::Border::kConstant, 255});
  ExpectNear(got, want, 0);
}

TEST_F(ServerTest, FlipArithmeticCastChainMatchesReference) {
  const BatchShape shape{2, 5, 7, 3};
  const Buffer images = RandomBuffer(DType::kFloat32, shape, 3, 0, 1);
  v1::ProcessRequest r;
  *r.mutable_images() = ToWire(images);
  auto* ops = r.mutable_pipeline();
  ops->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_VERTICAL);
  auto* per_channel = ops->add_ops()->mutable_multiply();
  for (double v : {255.0, 254.0, 253.0}) per_channel->add_value(v);
  ops->add_ops()->mutable_add()->add_value(0.5);
  ops->add_ops()->mutable_cast()->set_dtype(v1::DTYPE_UINT8);
  auto resp = client_.Process(r);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->images().dtype(), v1::DTYPE_UINT8);
  const kernels::FlipFlags f{false, true};
  const auto flipped = kernels::reference::Flip(images.view(), {&f, 1});
  const Buffer flipped_buf = kernels::testing::FromValues(DType::kFloat32, shape, flipped);
  std::vector<kernels::ElementwiseOp> chain(3);
  chain[0].kind = kernels::ElementwiseKind::kMultiply;
  chain[0].a = {255, 254, 253};
  chain[1].kind = kernels::ElementwiseKind::kAdd;
  chain[1].a = {0.5};
  chain[2].kind = kernels::ElementwiseKind::kCast;
  chain[2].to = DType::kUInt8;
  const auto want = kernels::reference::Elementwise(flipped_buf.view(), chain);
  ExpectNear(Values(resp->images(), DType::kUInt8, shape), want, 0);
}

TEST_F(ServerTest, W1AddOneToInt32IsExact) {
  const BatchShape shape{1, 1, 100000, 1};
  const Buffer x = RandomBuffer(DType::kInt32, shape, 4, -1e6, 1e6);
  v1::ProcessRequest r;
  *r.mutable_images() = ToWire(x, /*nhw=*/true);
  r.mutable_pipeline()->add_ops()->mutable_add()->add_value(1);
  auto resp = client_.Process(r);
  ASSERT_TRUE(resp.ok()) << resp.status();
  const auto in = kernels::reference::ToDoubles(x.view());
  const auto out = Values(resp->images(), DType::kInt32, shape);
  for (size_t i = 0; i < in.size(); ++i) ASSERT_EQ(out[i], in[i] + 1) << i;
}

TEST_F(ServerTest, StreamManyInFlightEveryIdAnsweredOnceWithItsOwnResult) {
  const BatchShape shape{1, 8, 8, 1};
  const Buffer x = RandomBuffer(DType::kFloat32, shape, 5, 0, 1);
  const auto base = kernels::reference::ToDoubles(x.view());
  constexpr int kRequests = 64;
  std::vector<v1::ProcessRequest> reqs(kRequests);
  std::vector<const v1::ProcessRequest*> ptrs;
  for (int i = 0; i < kRequests; ++i) {
    *reqs[i].mutable_images() = ToWire(x);
    reqs[i].set_request_id("req-" + std::to_string(i));
    reqs[i].mutable_pipeline()->add_ops()->mutable_add()->add_value(i);
    ptrs.push_back(&reqs[i]);
  }
  std::map<std::string, int> seen;
  absl::Status s = client_.Stream(ptrs, 8, [&](v1::ProcessResponse& r) {
    ASSERT_FALSE(r.has_error()) << r.error().message();
    const int i = std::stoi(r.request_id().substr(4));
    ++seen[r.request_id()];
    const auto got = Values(r.images(), DType::kFloat32, shape);
    for (size_t k = 0; k < got.size(); ++k) {
      ASSERT_EQ(got[k], static_cast<double>(static_cast<float>(base[k]) + static_cast<float>(i)));
    }
  });
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(seen.size(), static_cast<size_t>(kRequests));
  for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << id;
}

TEST_F(ServerTest, StreamBadRequestGetsErrorResponseAndStreamContinues) {
  const Buffer x = RandomBuffer(DType::kUInt8, {1, 4, 4, 3}, 6, 0, 255);
  std::vector<v1::ProcessRequest> reqs(5);
  std::vector<const v1::ProcessRequest*> ptrs;
  for (int i = 0; i < 5; ++i) {
    *reqs[i].mutable_images() = ToWire(x);
    reqs[i].set_request_id(std::to_string(i));
    reqs[i].mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    ptrs.push_back(&reqs[i]);
  }
  reqs[2].mutable_images()->mutable_data()->resize(10);
  std::map<std::string, v1::ProcessResponse> got;
  ASSERT_TRUE(
      client_.Stream(ptrs, 2, [&](v1::ProcessResponse& r) { got[r.request_id()] = r; }).ok());
  ASSERT_EQ(got.size(), 5u);
  EXPECT_EQ(got["2"].error().code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
  EXPECT_NE(got["2"].error().message().find("images.data: expected 48 bytes"), std::string::npos)
      << got["2"].error().message();
  for (const char* id : {"0", "1", "3", "4"}) {
    EXPECT_FALSE(got[id].has_error()) << id;
    EXPECT_EQ(got[id].images().data().size(), 48u);
  }
}

TEST_F(ServerTest, ListOpsAndHealth) {
  auto ops = client_.ListOps();
  ASSERT_TRUE(ops.ok()) << ops.status();
  // Every field of the Op oneof is served, described from the descriptor: its arguments are its
  // message's fields, each with a description, and the flags are the field's (op) option.
  std::set<std::string> names;
  for (const auto& op : ops->ops()) {
    names.insert(op.name());
    const google::protobuf::FieldDescriptor* f = v1::Op::descriptor()->FindFieldByName(op.name());
    ASSERT_NE(f, nullptr) << op.name();
    const v1::OpOptions& o = f->options().GetExtension(v1::op);
    EXPECT_FALSE(op.summary().empty()) << op.name();
    EXPECT_EQ(op.summary(), o.summary()) << op.name();
    EXPECT_EQ(op.geometric(), o.geometric()) << op.name();
    EXPECT_EQ(op.random(), o.random()) << op.name();
    ASSERT_EQ(op.args_size(), f->message_type()->field_count()) << op.name();
    for (int k = 0; k < op.args_size(); ++k) {
      EXPECT_EQ(op.args(k).name(), f->message_type()->field(k)->name()) << op.name();
      EXPECT_FALSE(op.args(k).description().empty()) << op.name() << "." << op.args(k).name();
    }
    EXPECT_GE(op.dtypes_size(), 1) << op.name();
  }
  std::set<std::string> fields;
  const google::protobuf::OneofDescriptor* kind = v1::Op::descriptor()->FindOneofByName("kind");
  for (int k = 0; k < kind->field_count(); ++k) fields.insert(std::string(kind->field(k)->name()));
  EXPECT_EQ(names, fields);
  EXPECT_TRUE(names.count("random_resized_crop") && names.count("color_jitter") &&
              names.count("channels_first"));
  ASSERT_GE(ops->devices_size(), 1);
  EXPECT_EQ(ops->devices(0).device(), v1::DEVICE_CPU);
  EXPECT_TRUE(ops->devices(0).usable());
  auto h = client_.Health("");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, "SERVING");
  h = client_.Health("tensorprep.v1.Preprocessor");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(*h, "SERVING");
}

TEST_F(ServerTest, CudaRequestedWithoutDeviceIsFailedPrecondition) {
  v1::ProcessRequest r = RotateRequest(RandomBuffer(DType::kFloat32, {1, 4, 4, 1}, 7, 0, 1), 10);
  r.set_device(v1::DEVICE_CUDA);
  auto resp = client_.Process(r);
  ASSERT_FALSE(resp.ok());
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(resp.status().message().find("DEVICE_CUDA"), std::string::npos);
}

// ---- random ops -------------------------------------------------------------------------------

v1::ProcessRequest RandomRequest(const Buffer& images, uint64_t seed, uint64_t offset) {
  v1::ProcessRequest r;
  *r.mutable_images() = ToWire(images);
  r.set_seed(seed);
  r.set_sample_offset(offset);
  auto* f = r.mutable_pipeline()->add_ops()->mutable_random_flip();
  f->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  f->set_p(0.5);
  auto* rot = r.mutable_pipeline()->add_ops()->mutable_random_rotate();
  rot->set_min_deg(-20);
  rot->set_max_deg(20);
  rot->set_interpolation(v1::INTERPOLATION_NEAREST);
  rot->set_border(v1::BORDER_REFLECT);
  return r;
}

TEST(RandomOpsTest, SameSeedSameResultAtAnySplitAndThreadCount) {
  const BatchShape shape{8, 9, 11, 3};
  const Buffer images = RandomBuffer(DType::kUInt8, shape, 8, 0, 255);
  TestServerOptions one;
  one.threads = 1;
  TestServerOptions three;
  three.threads = 3;
  TestServer s1(one), s3(three);
  auto whole = s1.MakeClient().Process(RandomRequest(images, 99, 0));
  ASSERT_TRUE(whole.ok()) << whole.status();
  auto again = s3.MakeClient().Process(RandomRequest(images, 99, 0));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(whole->images().data(), again->images().data());
  // The same batch as two requests of 4 samples with offsets 0 and 4.
  const size_t half_bytes = whole->images().data().size() / 2;
  for (int part = 0; part < 2; ++part) {
    std::vector<unsigned char> bytes(images.bytes().begin() + part * half_bytes,
                                     images.bytes().begin() + (part + 1) * half_bytes);
    Buffer half(DType::kUInt8, {4, 9, 11, 3});
    std::copy(bytes.begin(), bytes.end(), static_cast<unsigned char*>(half.mutable_view().data));
    auto r = s3.MakeClient().Process(RandomRequest(half, 99, part * 4));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->images().data(), whole->images().data().substr(part * half_bytes, half_bytes));
  }
  auto other = s1.MakeClient().Process(RandomRequest(images, 100, 0));
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->images().data(), whole->images().data());
}

TEST(RandomOpsTest, DrawsFollowTheDocumentedCounterBasedKeying) {
  // Each sample equals the reference applied with the parameters drawn from
  // Philox(seed, sample_offset + i, op index, 0), computed here independently of the server.
  const BatchShape shape{6, 10, 12, 1};
  const Buffer images = RandomBuffer(DType::kFloat32, shape, 9, 0, 1);
  TestServerOptions opts;
  opts.processor.plan.fuse = false;
  TestServer server(opts);
  constexpr uint64_t kSeed = 1234, kOffset = 1000;
  auto r = server.MakeClient().Process(RandomRequest(images, kSeed, kOffset));
  ASSERT_TRUE(r.ok()) << r.status();
  const auto got = Values(r->images(), DType::kFloat32, shape);
  const int64_t per = shape.sample_elements();
  int flipped = 0;
  for (int64_t i = 0; i < shape.n; ++i) {
    const bool flip = kernels::UniformDouble(kSeed, kOffset + i, 0, 0) < 0.5;
    flipped += flip;
    const double angle = -20 + kernels::UniformDouble(kSeed, kOffset + i, 1, 0) * 40;
    const BatchShape one{1, shape.h, shape.w, 1};
    const kernels::ConstTensorView sample{DType::kFloat32, one,
                                          images.bytes().data() + i * per * 4};
    const kernels::FlipFlags f{flip, false};
    const Buffer after_flip = kernels::testing::FromValues(
        DType::kFloat32, one, kernels::reference::Flip(sample, {&f, 1}));
    const kernels::Affine inv = kernels::RotationInverse(angle, shape.h, shape.w);
    const auto want = kernels::reference::WarpAffine(
        after_flip.view(), {&inv, 1},
        kernels::WarpParams{kernels::Interp::kNearest, kernels::Border::kReflect, 0});
    ExpectNear(std::vector<double>(got.begin() + i * per, got.begin() + (i + 1) * per), want, 0);
  }
  EXPECT_GT(flipped, 0);
  EXPECT_LT(flipped, shape.n);
}

// Malformed input: see bad_input_test.cc.

}  // namespace
}  // namespace tensorprep::testing
