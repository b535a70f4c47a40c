// RWR_ROCKSDB: rocksdb::Status as absl::Status (see call_status.h).
#pragma once

#include <rocksdb/status.h>

#include "common/call_status.h"

namespace rwr::internal {

inline absl::Status RocksdbToStatus(const rocksdb::Status& result, std::string_view call,
                                    const char* file, int line) {
  if (result.ok()) return absl::OkStatus();
  absl::StatusCode code = absl::StatusCode::kInternal;
  if (result.IsNotFound()) code = absl::StatusCode::kNotFound;
  else if (result.IsCorruption()) code = absl::StatusCode::kDataLoss;
  else if (result.IsInvalidArgument()) code = absl::StatusCode::kInvalidArgument;
  else if (result.IsIOError()) code = absl::StatusCode::kUnavailable;
  else if (result.IsBusy() || result.IsTryAgain()) code = absl::StatusCode::kAborted;
  return CallFailed(code, "rocksdb", call, result.ToString(), file, line);
}

}  // namespace rwr::internal

#define RWR_ROCKSDB(call) RWR_CALL_RETURN_IF_ERROR(::rwr::internal::RocksdbToStatus, call)
#define RWR_ROCKSDB_STATUS(call) \
  ::rwr::internal::RocksdbToStatus((call), #call, __FILE__, __LINE__)
