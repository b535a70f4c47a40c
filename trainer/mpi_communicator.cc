#include "trainer/mpi_communicator.h"

#include <mpi.h>

#include <climits>

#include "common/call_status_mpi.h"
#include "common/status.h"

namespace rwr::trainer {
namespace {

// MPI counts are ints: buffers go in pieces of at most this many elements.
constexpr int64_t kMaxPiece = int64_t{1} << 30;

template <typename T>
absl::Status AllReducePieces(std::span<T> data, MPI_Datatype type) {
  for (int64_t at = 0; at < static_cast<int64_t>(data.size()); at += kMaxPiece) {
    const int count = static_cast<int>(std::min<int64_t>(kMaxPiece, data.size() - at));
    RWR_MPI(MPI_Allreduce(MPI_IN_PLACE, data.data() + at, count, type, MPI_SUM, MPI_COMM_WORLD));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status BroadcastPieces(T* data, int64_t n, MPI_Datatype type, int root) {
  for (int64_t at = 0; at < n; at += kMaxPiece) {
    const int count = static_cast<int>(std::min<int64_t>(kMaxPiece, n - at));
    RWR_MPI(MPI_Bcast(data + at, count, type, root, MPI_COMM_WORLD));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<MpiCommunicator>> MpiCommunicator::Create() {
  int initialized = 0;
  RWR_MPI(MPI_Initialized(&initialized));
  if (!initialized) {
    // Collectives come from the training thread only; FUNNELED keeps MPI's locking out.
    int provided = 0;
    RWR_MPI(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
    if (provided < MPI_THREAD_FUNNELED) {
      return absl::FailedPreconditionError(
          "this MPI library offers no thread support (MPI_THREAD_FUNNELED), which rwr train's "
          "worker threads need beside the collectives");
    }
  }
  RWR_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  std::unique_ptr<MpiCommunicator> comm(new MpiCommunicator());
  RWR_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &comm->rank_));
  RWR_MPI(MPI_Comm_size(MPI_COMM_WORLD, &comm->world_));
  MPI_Comm local;
  RWR_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, comm->rank_, MPI_INFO_NULL,
                              &local));
  absl::Status ranked = RWR_MPI_STATUS(MPI_Comm_rank(local, &comm->local_rank_));
  if (ranked.ok()) ranked = RWR_MPI_STATUS(MPI_Comm_size(local, &comm->local_size_));
  MPI_Comm_free(&local);
  RWR_RETURN_IF_ERROR(ranked);
  return comm;
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

absl::Status MpiCommunicator::AllReduceSum(std::span<float> data) {
  return AllReducePieces(data, MPI_FLOAT);
}
absl::Status MpiCommunicator::AllReduceSum(std::span<double> data) {
  return AllReducePieces(data, MPI_DOUBLE);
}
absl::Status MpiCommunicator::Broadcast(std::span<float> data, int root) {
  return BroadcastPieces(data.data(), static_cast<int64_t>(data.size()), MPI_FLOAT, root);
}
absl::Status MpiCommunicator::BroadcastBytes(std::span<std::byte> data, int root) {
  return BroadcastPieces(data.data(), static_cast<int64_t>(data.size()), MPI_BYTE, root);
}

// Each owner broadcasts its range: ranges are unequal at the end and may pass MPI's int counts,
// which MPI_Allgatherv's counts and displacements could not express.
absl::Status MpiCommunicator::AllGather(std::span<float> data) {
  const int64_t total = static_cast<int64_t>(data.size());
  for (int owner = 0; owner < world_; ++owner) {
    const ShardRange range = ShardRange::For(total, owner, world_);
    RWR_RETURN_IF_ERROR(BroadcastPieces(data.data() + range.begin, range.size(), MPI_FLOAT, owner));
  }
  return absl::OkStatus();
}

absl::Status MpiCommunicator::Barrier() {
  RWR_MPI(MPI_Barrier(MPI_COMM_WORLD));
  return absl::OkStatus();
}

void MpiCommunicator::Abort(int exit_code) {
  if (world_ > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace rwr::trainer
