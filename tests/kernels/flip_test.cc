// FlipCpu against the reference (exact: a flip only moves values) and a hand-written example;
// every row-reversal kernel (each instruction set this CPU has, each pixel size) against a plain
// loop; FlipRowsCpu against FlipCpu.
#include "kernels/flip/flip.h"

#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/common/thread_pool.h"
#include "kernels/flip/flip_rows.h"
#include "kernels/flip/reverse_row.h"
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

// Every pixel size the kernels specialise (1..16 bytes: 1, 3 or 4 channels of 1, 2 or 4 bytes) and
// a few they do not, at widths around the AVX2 block sizes (32 bytes of pixels, or 96 for pixel
// sizes 3, 6 and 12: 32, 16 or 8 pixels), so that whole blocks, a partial last block and rows
// shorter than one block are all reached, through FlipCpu against the reference.
class FlipOddWidths : public ::testing::TestWithParam<DType> {};

TEST_P(FlipOddWidths, EveryChannelCountAndWidth) {
  const DType dtype = GetParam();
  double lo, hi;
  testing::DefaultRange(dtype, &lo, &hi);
  uint64_t seed = 101;
  for (int64_t c : {1, 2, 3, 4, 5}) {
    for (int64_t w : {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 97, 255}) {
      const BatchShape shape{2, 3, w, c};
      const Buffer src = RandomBuffer(dtype, shape, seed++, lo, hi);
      for (const FlipFlags flags : {FlipFlags{true, false}, FlipFlags{true, true}}) {
        SCOPED_TRACE(absl::StrCat(testing::ShapeName(shape), " v=", flags.vertical));
        Buffer out(dtype, shape);
        ASSERT_TRUE(FlipCpu(src.view(), out.mutable_view(), {flags}, nullptr).ok());
        EXPECT_EQ(reference::ToDoubles(out.view()), reference::Flip(src.view(), {flags}));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, FlipOddWidths,
                         ::testing::Values(DType::kUInt8, DType::kInt32, DType::kFloat32,
                                           DType::kFloat16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

// The instruction sets whose kernels this CPU can run.
std::vector<FlipIsa> RunnableIsas() {
  std::vector<FlipIsa> isas = {FlipIsa::kPortable};
  if (FlipIsaSupported(FlipIsa::kAvx2)) isas.push_back(FlipIsa::kAvx2);
  return isas;
}

// Each kernel directly, byte by byte against a plain loop: random bytes catch a wrong permutation
// inside or between pixels, the widths every tail length, and guard bytes on both
// sides of the output any write outside the row. The source is exactly the row (no slack), so a
// sanitizer build catches reads beyond it.
TEST(ReverseRowKernels, EveryIsaPixelSizeAndWidth) {
  std::mt19937 rng(5);
  constexpr int64_t kGuard = 64;
  for (const FlipIsa isa : RunnableIsas()) {
    for (int64_t pixel : {1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20}) {
      const ReverseRowFn kernel = ReverseRowKernel(isa, pixel);
      if (kernel == nullptr) {
        // Only AVX2 may lack a size, and never a specialised one.
        EXPECT_EQ(isa, FlipIsa::kAvx2) << "pixel " << pixel;
        for (int64_t common : {1, 2, 3, 4, 6, 8, 12, 16}) EXPECT_NE(pixel, common);
        continue;
      }
      for (int64_t w = 1; w <= 100; ++w) {
        SCOPED_TRACE(absl::StrCat("isa=", static_cast<int>(isa), " pixel=", pixel, " w=", w));
        const size_t bytes = static_cast<size_t>(w * pixel);
        std::vector<unsigned char> src(bytes);
        for (unsigned char& b : src) b = static_cast<unsigned char>(rng());
        std::vector<unsigned char> want(bytes);
        for (int64_t x = 0; x < w; ++x) {
          std::memcpy(want.data() + x * pixel, src.data() + (w - 1 - x) * pixel, pixel);
        }
        std::vector<unsigned char> dst(bytes + 2 * kGuard, 0xA5);
        kernel(src.data(), dst.data() + kGuard, w, pixel);
        ASSERT_EQ(std::vector<unsigned char>(dst.begin() + kGuard, dst.end() - kGuard), want);
        for (int64_t i = 0; i < kGuard; ++i) {
          ASSERT_EQ(dst[i], 0xA5) << "wrote before the row";
          ASSERT_EQ(dst[dst.size() - 1 - i], 0xA5) << "wrote after the row";
        }
      }
    }
  }
}

// FlipCpu takes the AVX2 kernels wherever the CPU has AVX2 (a dispatch that quietly fell back to
// the portable loops would pass every value test above), and the portable ones otherwise.
TEST(ReverseRowKernels, FlipUsesTheWidestKernelTheCpuRuns) {
#if defined(__x86_64__)
  EXPECT_EQ(FlipIsaSupported(FlipIsa::kAvx2), __builtin_cpu_supports("avx2") != 0);
#endif
  for (int64_t pixel : {1, 2, 3, 4, 6, 8, 12, 16}) {
    const FlipIsa want = FlipIsaSupported(FlipIsa::kAvx2) ? FlipIsa::kAvx2 : FlipIsa::kPortable;
#if defined(__x86_64__)
    EXPECT_NE(ReverseRowKernel(FlipIsa::kAvx2, pixel), nullptr) << "pixel " << pixel;
#endif
    EXPECT_EQ(FlipRowKernel(pixel), ReverseRowKernel(want, pixel)) << "pixel " << pixel;
  }
  for (int64_t pixel : {5, 7, 20}) {
    EXPECT_EQ(FlipRowKernel(pixel), ReverseRowKernel(FlipIsa::kPortable, pixel)) << pixel;
  }
}

// The row-band entry point writes exactly FlipCpu's bytes for any band, whatever the flags.
TEST(FlipRowsCpu, BandsEqualFlipCpu) {
  for (DType dtype : {DType::kUInt8, DType::kInt32, DType::kFloat32, DType::kFloat16}) {
    for (const BatchShape& shape : {BatchShape{2, 9, 37, 3}, BatchShape{1, 5, 70, 4},
                                    BatchShape{1, 4, 11, 1}, BatchShape{1, 6, 13, 5}}) {
      double lo, hi;
      testing::DefaultRange(dtype, &lo, &hi);
      const Buffer src = RandomBuffer(dtype, shape, 77, lo, hi);
      const size_t row = static_cast<size_t>(shape.w * shape.c) * DTypeSize(dtype);
      for (int f = 0; f < 4; ++f) {
        const FlipFlags flags{(f & 1) != 0, (f & 2) != 0};
        SCOPED_TRACE(absl::StrCat(DTypeName(dtype), " ", testing::ShapeName(shape),
                                  " h=", flags.horizontal, " v=", flags.vertical));
        Buffer whole(dtype, shape);
        ASSERT_TRUE(FlipCpu(src.view(), whole.mutable_view(), {flags}, nullptr).ok());
        ASSERT_TRUE(CheckFlipSource("test", src.view(), {flags}).ok());
        for (int64_t n = 0; n < shape.n; ++n) {
          for (int64_t y_begin = 0; y_begin < shape.h; ++y_begin) {
            for (int64_t y_end = y_begin + 1; y_end <= shape.h; ++y_end) {
              std::vector<unsigned char> band((y_end - y_begin) * row);
              FlipRowsCpu(src.view(), n, y_begin, y_end, flags, band.data());
              const unsigned char* want = whole.bytes().data() + (n * shape.h + y_begin) * row;
              ASSERT_EQ(0, std::memcmp(band.data(), want, band.size()))
                  << "n=" << n << " rows [" << y_begin << ", " << y_end << ")";
            }
          }
        }
      }
    }
  }
}

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

// Broken preconditions are INTERNAL (kernels/common/checks.h): requests are validated upstream.
TEST(FlipCpu, RejectsMismatchedViews) {
  const BatchShape shape{2, 3, 3, 1};
  const Buffer src = RandomBuffer(DType::kUInt8, shape, 1, 0, 255);
  {
    Buffer dst(DType::kUInt8, shape);
    const std::vector<FlipFlags> three(3);
    const absl::Status st = FlipCpu(src.view(), dst.mutable_view(), three, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("3 flag sets; expected 1 or 2"), std::string::npos) << st;
  }
  {
    Buffer dst(DType::kInt32, shape);
    const absl::Status st = FlipCpu(src.view(), dst.mutable_view(), {FlipFlags{}}, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
    EXPECT_NE(st.message().find("FlipCpu: dst dtype int32; expected uint8"), std::string::npos)
        << st;
  }
  {
    Buffer dst(DType::kUInt8, BatchShape{2, 3, 4, 1});
    const absl::Status st = FlipCpu(src.view(), dst.mutable_view(), {FlipFlags{}}, nullptr);
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  }
}

}  // namespace
}  // namespace tensorprep::kernels
