// FlipCpu against the reference (exact: a flip only moves values) and a hand-written example.
#include "kernels/flip/flip.h"

#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/common/thread_pool.h"
#include "kernels/reference/reference.h"
#include "tests/kernels/test_util.h"

namespace tensorprep::kernels {
namespace {

using testing::Buffer;
using testing::RandomBuffer;

class FlipVsReference : public ::testing::TestWithParam<DType> {};

TEST_P(FlipVsReference, AllShapesAndFlags) {
  const DType dtype = GetParam();
  const std::vector<BatchShape> shapes = {
      {1, 1, 1, 1},     {1, 2, 3, 1},   {1, 7, 5, 3},
      {2, 17, 13, 4},   {1, 48, 64, 3}, {3, 5, 4, 5},  // 5 channels: the generic pixel-size path
      {2, 300, 257, 1},                                // several row bands per sample
  };
  double lo, hi;
  testing::DefaultRange(dtype, &lo, &hi);
  uint64_t seed = 11;
  for (const BatchShape& shape : shapes) {
    const Buffer src = RandomBuffer(dtype, shape, seed++, lo, hi);
    std::vector<std::vector<FlipFlags>> flag_sets;
    for (int f = 0; f < 4; ++f) flag_sets.push_back({FlipFlags{(f & 1) != 0, (f & 2) != 0}});
    if (shape.n > 1) {  // per-sample flags, all combinations present
      std::vector<FlipFlags> mixed;
      for (int64_t n = 0; n < shape.n; ++n) mixed.push_back({n % 2 == 1, n % 3 != 0});
      flag_sets.push_back(mixed);
    }
    for (const auto& flags : flag_sets) {
      SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " h=", flags[0].horizontal,
                                " v=", flags[0].vertical, " sets=", flags.size()));
      Buffer out(dtype, shape);
      ASSERT_TRUE(FlipCpu(src.view(), out.mutable_view(), flags, nullptr).ok());
      EXPECT_EQ(reference::ToDoubles(out.view()), reference::Flip(src.view(), flags));
      for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        Buffer again(dtype, shape);
        ASSERT_TRUE(FlipCpu(src.view(), again.mutable_view(), flags, &pool).ok());
        EXPECT_EQ(again.bytes(), out.bytes()) << "threads=" << threads;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, FlipVsReference,
                         ::testing::Values(DType::kUInt8, DType::kInt32, DType::kFloat32,
                                           DType::kFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TEST(FlipCpu, HandWrittenTwoByThree) {
  const BatchShape shape{1, 2, 3, 1};
  const Buffer src = testing::FromValues(DType::kInt32, shape, {1, 2, 3, 4, 5, 6});
  struct Case {
    FlipFlags flags;
    std::vector<double> want;
  };
  for (const Case& c :
       {Case{{true, false}, {3, 2, 1, 6, 5, 4}}, Case{{false, true}, {4, 5, 6, 1, 2, 3}},
        Case{{true, true}, {6, 5, 4, 3, 2, 1}}, Case{{false, false}, {1, 2, 3, 4, 5, 6}}}) {
    Buffer out(DType::kInt32, shape);
    ASSERT_TRUE(FlipCpu(src.view(), out.mutable_view(), {c.flags}, nullptr).ok());
    EXPECT_EQ(reference::ToDoubles(out.view()), c.want);
  }
}

TEST(FlipCpu, KeepsPixelsTogether) {
  // A horizontal flip moves whole pixels: channel order inside a pixel is unchanged.
  const BatchShape shape{1, 1, 2, 3};
  const Buffer src = testing::FromValues(DType::kUInt8, shape, {1, 2, 3, 4, 5, 6});
  Buffer out(DType::kUInt8, shape);
  ASSERT_TRUE(FlipCpu(src.view(), out.mutable_view(), {FlipFlags{true, false}}, nullptr).ok());
  EXPECT_EQ(reference::ToDoubles(out.view()), (std::vector<double>{4, 5, 6, 1, 2, 3}));
}

TEST(FlipCpu, RejectsMismatchedViews) {
  const BatchShape shape{2, 3, 3, 1};
  const Buffer src = RandomBuffer(DType::kUInt8, shape, 1, 0, 255);
  {
    Buffer dst(DType::kUInt8, shape);
    const std::vector<FlipFlags> three(3);
    const absl::Status st = FlipCpu(src.view(), dst.mutable_view(), three, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("3 flag sets; expected 1 or 2"), std::string::npos) << st;
  }
  {
    Buffer dst(DType::kInt32, shape);
    const absl::Status st = FlipCpu(src.view(), dst.mutable_view(), {FlipFlags{}}, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("dst dtype int32; expected src dtype uint8"), std::string::npos)
        << st;
  }
  {
    Buffer dst(DType::kUInt8, BatchShape{2, 3, 4, 1});
    const absl::Status st = FlipCpu(src.view(), dst.mutable_view(), {FlipFlags{}}, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace tensorprep::kernels
