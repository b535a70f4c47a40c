// RWR_GRPC: grpc::Status as absl::Status, keeping the code (see call_status.h).
#pragma once

#include <grpcpp/support/status.h>

#include "common/call_status.h"

namespace rwr::internal {

inline absl::Status GrpcToStatus(const grpc::Status& result, std::string_view call,
                                 const char* file, int line) {
  if (result.ok()) return absl::OkStatus();
  // grpc::StatusCode and absl::StatusCode share their numbering (both follow google.rpc.Code).
  return CallFailed(static_cast<absl::StatusCode>(result.error_code()), "grpc", call,
                    result.error_message(), file, line);
}

}  // namespace rwr::internal

#define RWR_GRPC(call) RWR_CALL_RETURN_IF_ERROR(::rwr::internal::GrpcToStatus, call)
#define RWR_GRPC_STATUS(call) ::rwr::internal::GrpcToStatus((call), #call, __FILE__, __LINE__)
