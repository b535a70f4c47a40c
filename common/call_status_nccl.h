// RWR_NCCL: NCCL results as statuses (see call_status.h).
#pragma once

#include <nccl.h>

#include "absl/strings/str_cat.h"
#include "common/call_status.h"

namespace rwr::internal {

inline absl::Status NcclToStatus(ncclResult_t result, std::string_view call, const char* file,
                                 int line) {
  if (result == ncclSuccess) return absl::OkStatus();
  const absl::StatusCode code = result == ncclInvalidArgument || result == ncclInvalidUsage
                                    ? absl::StatusCode::kInvalidArgument
                                : result == ncclRemoteError ? absl::StatusCode::kUnavailable
                                                            : absl::StatusCode::kInternal;
  return CallFailed(code, "nccl", call, ncclGetErrorString(result), file, line);
}

}  // namespace rwr::internal

#define RWR_NCCL(call) RWR_CALL_RETURN_IF_ERROR(::rwr::internal::NcclToStatus, call)
#define RWR_NCCL_STATUS(call) ::rwr::internal::NcclToStatus((call), #call, __FILE__, __LINE__)
