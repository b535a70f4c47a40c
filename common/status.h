// Status plumbing for all host code: functions return absl::Status / absl::StatusOr<T>, and these
// macros propagate errors without boilerplate. Results of outside libraries (CUDA, cuBLAS, NCCL,
// MPI, gRPC, RocksDB) are converted by the RWR_<LIB>(call) family in call_status*.h.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"

#define RWR_STATUS_CONCAT_INNER(a, b) a##b
#define RWR_STATUS_CONCAT(a, b) RWR_STATUS_CONCAT_INNER(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RWR_RETURN_IF_ERROR(expr)                 \
  do {                                            \
    ::absl::Status rwr_status_ = (expr);          \
    if (!rwr_status_.ok()) return rwr_status_;    \
  } while (0)

// `RWR_ASSIGN_OR_RETURN(auto x, MakeX());` — unwraps a StatusOr or returns its error.
#define RWR_ASSIGN_OR_RETURN(lhs, expr) \
  RWR_ASSIGN_OR_RETURN_IMPL(RWR_STATUS_CONCAT(rwr_statusor_, __LINE__), lhs, expr)
#define RWR_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()

namespace rwr {

// An error that another process of the same job prints for it (rank 0 of a data-parallel run,
// where every rank failed alike): the command exits 1 without printing it a second time.
inline constexpr char kReportedElsewhereUrl[] = "rwr/reported-elsewhere";
inline absl::Status ReportedElsewhere(absl::Status error) {
  error.SetPayload(kReportedElsewhereUrl, absl::Cord("1"));
  return error;
}
inline bool IsReportedElsewhere(const absl::Status& status) {
  return status.GetPayload(kReportedElsewhereUrl).has_value();
}

}  // namespace rwr
