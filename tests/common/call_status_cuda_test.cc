// RWR_CUDA: CUDA runtime results become statuses carrying the error's name.
#include "common/call_status_cuda.h"
#include "gtest/gtest.h"

namespace rwr {
namespace {

absl::Status CudaCall(cudaError_t result) {
  RWR_CUDA(result);
  return absl::OkStatus();
}

TEST(CallStatusTest, CudaErrorsCarryTheirNames) {
  EXPECT_TRUE(CudaCall(cudaSuccess).ok());
  absl::Status oom = CudaCall(cudaErrorMemoryAllocation);
  EXPECT_EQ(oom.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(oom.message().find("cudaErrorMemoryAllocation"), std::string::npos) << oom;
  EXPECT_EQ(CudaCall(cudaErrorInvalidValue).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace rwr
