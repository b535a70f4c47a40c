// RWR_MPI: MPI return codes as statuses (see call_status.h). Needs MPI_ERRORS_RETURN on the
// communicator, otherwise MPI aborts before a code comes back.
#pragma once

#include <mpi.h>

#include <string>

#include "common/call_status.h"

namespace rwr::internal {

inline absl::Status MpiToStatus(int result, std::string_view call, const char* file, int line) {
  if (result == MPI_SUCCESS) return absl::OkStatus();
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(result, text, &length) != MPI_SUCCESS) length = 0;
  return CallFailed(absl::StatusCode::kInternal, "mpi", call,
                    length > 0 ? std::string(text, length) : "MPI error " + std::to_string(result),
                    file, line);
}

}  // namespace rwr::internal

#define RWR_MPI(call) RWR_CALL_RETURN_IF_ERROR(::rwr::internal::MpiToStatus, call)
#define RWR_MPI_STATUS(call) ::rwr::internal::MpiToStatus((call), #call, __FILE__, __LINE__)
