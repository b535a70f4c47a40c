// RWR_RETURN_IF_ERROR / RWR_ASSIGN_OR_RETURN.
#include "common/status.h"

#include "gtest/gtest.h"

namespace rwr {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  RWR_ASSIGN_OR_RETURN(int half, Half(x));
  RWR_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

absl::Status CheckPositive(int x) {
  RWR_RETURN_IF_ERROR(x > 0 ? absl::OkStatus() : absl::OutOfRangeError("not positive"));
  return absl::OkStatus();
}

TEST(StatusMacrosTest, AssignOrReturnUnwrapsAndPropagates) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_EQ(Quarter(6).status().code(), absl::StatusCode::kInvalidArgument);  // 6 → 3 is odd
  EXPECT_EQ(Quarter(5).status().message(), "odd");
}

TEST(StatusMacrosTest, ReturnIfErrorPropagatesTheOriginalStatus) {
  EXPECT_TRUE(CheckPositive(1).ok());
  EXPECT_EQ(CheckPositive(-1).code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace rwr
