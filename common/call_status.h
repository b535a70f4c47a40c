// One macro family that turns the result of an outside library call into an absl::Status naming
// the call, file, line, rank and host, and returns it from the enclosing function on failure:
//
//   RWR_CUDA(cudaMalloc(&p, n));        // call_status_cuda.h   (also RWR_CUBLAS)
//   RWR_NCCL(ncclAllReduce(...));       // call_status_nccl.h
//   RWR_MPI(MPI_Barrier(comm));         // call_status_mpi.h
//   RWR_GRPC(stub->Call(&ctx, req, &resp));  // call_status_grpc.h
//   RWR_ROCKSDB(db->Put(opts, k, v));   // call_status_rocksdb.h
//
// Each library's header is separate so that common/ never links gRPC, RocksDB, CUDA or MPI;
// only code that includes a header pays for it. RWR_<LIB>_STATUS(call) yields the Status
// instead of returning.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "common/status.h"

namespace rwr::internal {

// "cudaMalloc(&p, n) failed: out of memory [cuda error 2 at trainer/x.cc:42, rank 3 on node7]"
absl::Status CallFailed(absl::StatusCode code, std::string_view library, std::string_view call,
                        std::string_view detail, const char* file, int line);

}  // namespace rwr::internal

// Shared shape of every RWR_<LIB> macro: `to_status` is a callable (result, call, file, line).
#define RWR_CALL_RETURN_IF_ERROR(to_status, call)                              \
  do {                                                                         \
    ::absl::Status rwr_call_status_ = to_status((call), #call, __FILE__, __LINE__); \
    if (!rwr_call_status_.ok()) return rwr_call_status_;                       \
  } while (0)
