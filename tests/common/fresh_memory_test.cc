// ZeroedFloats: the size asked for, every element zero, across the one-thread and the
// several-thread paths (256 MiB and up) and sizes that end mid-page.
#include "common/fresh_memory.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace rwr {
namespace {

TEST(ZeroedFloats, GivesNZerosOnEitherSideOfTheThreadedSize) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{1027}, (size_t{256} << 20) / 4 + 3,
                   (size_t{300} << 20) / 4 + 1}) {
    const std::vector<float> v = ZeroedFloats(n);
    ASSERT_EQ(v.size(), n);
    EXPECT_TRUE(std::all_of(v.begin(), v.end(), [](float x) { return x == 0.f; })) << n;
  }
}

}  // namespace
}  // namespace rwr
