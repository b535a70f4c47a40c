#include "trainer/nccl_collectives.h"

#include <nccl.h>

#include <cstring>

#include "common/call_status_cuda.h"
#include "common/call_status_nccl.h"
#include "common/process.h"
#include "common/status.h"
#include "fmt/format.h"

namespace rwr::trainer {

absl::StatusOr<std::unique_ptr<DeviceCollectives>> DeviceCollectives::Create(Communicator& host) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (host.rank() == 0) RWR_NCCL(ncclGetUniqueId(&id));
  RWR_RETURN_IF_ERROR(
      host.BroadcastBytes(std::span<std::byte>(reinterpret_cast<std::byte*>(&id), sizeof(id)), 0));
  // Some MPIs complete a broadcast only at a later MPI call; ncclCommInitRank blocks until every
  // rank has joined, so every rank has the id first.
  RWR_RETURN_IF_ERROR(host.Barrier());
  std::unique_ptr<DeviceCollectives> dc(new DeviceCollectives());
  dc->rank_ = host.rank();
  dc->world_ = host.world_size();
  RWR_NCCL(ncclCommInitRank(&dc->comm_, dc->world_, id, dc->rank_));
  return dc;
}

DeviceCollectives::~DeviceCollectives() {
  if (comm_ != nullptr) ncclCommDestroy(comm_);
}

absl::Status DeviceCollectives::ReduceScatterSum(float* data, int64_t per_rank,
                                                 cudaStream_t stream) {
  RWR_NCCL(ncclReduceScatter(data, data + per_rank * rank_, static_cast<size_t>(per_rank),
                             ncclFloat32, ncclSum, comm_, stream));
  return absl::OkStatus();
}

absl::Status DeviceCollectives::AllReduceSum(double* data, int64_t n, cudaStream_t stream) {
  RWR_NCCL(ncclAllReduce(data, data, static_cast<size_t>(n), ncclFloat64, ncclSum, comm_, stream));
  return absl::OkStatus();
}

absl::Status DeviceCollectives::Broadcast(std::span<const Piece> pieces, cudaStream_t stream) {
  RWR_NCCL(ncclGroupStart());
  absl::Status status;
  for (const Piece& piece : pieces) {
    status = RWR_NCCL_STATUS(ncclBroadcast(piece.data, piece.data, static_cast<size_t>(piece.bytes),
                                           ncclUint8, piece.root, comm_, stream));
    if (!status.ok()) break;
  }
  RWR_NCCL(ncclGroupEnd());
  return status;
}

absl::Status SelectCudaDevice(int local_rank) {
  int count = 0;
  RWR_CUDA(cudaGetDeviceCount(&count));
  // A launcher that gives each rank its own GPU (srun --gpus-per-task=1) leaves one visible.
  if (count == 1) local_rank = 0;
  if (local_rank >= count) {
    return absl::FailedPreconditionError(
        fmt::format("rank {} is rank {} on host {}, which has {} GPU(s): start one rank per GPU "
                    "(mpirun -np / srun --ntasks-per-node = GPUs per node)",
                    ProcessRank(), local_rank, HostName(), count));
  }
  RWR_CUDA(cudaSetDevice(local_rank));
  return absl::OkStatus();
}

}  // namespace rwr::trainer
