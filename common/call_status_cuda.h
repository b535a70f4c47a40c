// RWR_CUDA / RWR_CUBLAS: CUDA runtime and cuBLAS(Lt) results as statuses (see call_status.h).
#pragma once

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include "fmt/format.h"
#include "common/call_status.h"

namespace rwr::internal {

inline absl::Status CudaToStatus(cudaError_t result, std::string_view call, const char* file,
                                 int line) {
  if (result == cudaSuccess) return absl::OkStatus();
  const absl::StatusCode code = result == cudaErrorMemoryAllocation
                                    ? absl::StatusCode::kResourceExhausted
                                    : absl::StatusCode::kInternal;
  return CallFailed(code, "cuda", call,
                    fmt::format("{}: {}", cudaGetErrorName(result), cudaGetErrorString(result)), file,
                    line);
}

inline absl::Status CublasToStatus(cublasStatus_t result, std::string_view call, const char* file,
                                   int line) {
  if (result == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const absl::StatusCode code = result == CUBLAS_STATUS_NOT_SUPPORTED
                                    ? absl::StatusCode::kUnimplemented
                                : result == CUBLAS_STATUS_ALLOC_FAILED
                                    ? absl::StatusCode::kResourceExhausted
                                    : absl::StatusCode::kInternal;
  return CallFailed(code, "cublas", call,
                    fmt::format("{}: {}", cublasGetStatusName(result), cublasGetStatusString(result)),
                    file, line);
}

}  // namespace rwr::internal

#define RWR_CUDA(call) RWR_CALL_RETURN_IF_ERROR(::rwr::internal::CudaToStatus, call)
#define RWR_CUDA_STATUS(call) ::rwr::internal::CudaToStatus((call), #call, __FILE__, __LINE__)
#define RWR_CUBLAS(call) RWR_CALL_RETURN_IF_ERROR(::rwr::internal::CublasToStatus, call)
#define RWR_CUBLAS_STATUS(call) ::rwr::internal::CublasToStatus((call), #call, __FILE__, __LINE__)
// After a kernel launch: the launch error, if any.
#define RWR_CUDA_LAUNCH() RWR_CUDA(cudaGetLastError())
