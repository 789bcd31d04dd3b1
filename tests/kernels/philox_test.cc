// Philox4x32-10 against the known-answer vectors published with Random123 (tests/kat_vectors,
// the "philox4x32 10" lines: counter words, key words, expected output words).
#include "kernels/common/philox.h"

#include <cstdint>
#include <set>

#include "gtest/gtest.h"

namespace tensorprep::kernels {
namespace {

struct KnownAnswer {
  uint32_t counter[4];
  uint32_t key[2];
  uint32_t want[4];
};

TEST(Philox, Random123KnownAnswers) {
  const KnownAnswer cases[] = {
      {{0x00000000, 0x00000000, 0x00000000, 0x00000000},
       {0x00000000, 0x00000000},
       {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const KnownAnswer& c : cases) {
    // Our 64-bit key holds Random123's key word 0 in its low half.
    const uint64_t key = (static_cast<uint64_t>(c.key[1]) << 32) | c.key[0];
    const Philox4x32 out =
        Philox(Philox4x32{{c.counter[0], c.counter[1], c.counter[2], c.counter[3]}}, key);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out.v[i], c.want[i]) << "word " << i;
  }
}

TEST(Philox, UniformDoubleIsInUnitIntervalAndDeterministic) {
  double sum = 0;
  int below_quarter = 0;
  std::set<double> seen;
  const int kDraws = 200000;
  for (int i = 0; i < kDraws; ++i) {
    const double u = UniformDouble(12345, static_cast<uint64_t>(i), 2, 0);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    EXPECT_EQ(u, UniformDouble(12345, static_cast<uint64_t>(i), 2, 0));
    sum += u;
    below_quarter += u < 0.25;
    seen.insert(u);
  }
  // A fixed seed makes these deterministic; the bounds are 5+ standard deviations wide.
  EXPECT_NEAR(sum / kDraws, 0.5, 0.005);
  EXPECT_NEAR(static_cast<double>(below_quarter) / kDraws, 0.25, 0.005);
  EXPECT_EQ(static_cast<int>(seen.size()), kDraws);
}

TEST(Philox, EveryCoordinateChangesTheDraw) {
  const double base = UniformDouble(7, 3, 1, 0);
  EXPECT_NE(base, UniformDouble(8, 3, 1, 0));
  EXPECT_NE(base, UniformDouble(7, 4, 1, 0));
  EXPECT_NE(base, UniformDouble(7, 3, 2, 0));
  EXPECT_NE(base, UniformDouble(7, 3, 1, 1));
  EXPECT_NE(base, UniformDouble(7, 3 + (uint64_t{1} << 32), 1, 0));  // high half of the sample
  EXPECT_NE(base, UniformDouble(7 + (uint64_t{1} << 32), 3, 1, 0));  // high half of the seed
}

}  // namespace
}  // namespace tensorprep::kernels
