#include "trainer/nccl_collectives.h"

#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

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

namespace {

// `call` for each piece inside one NCCL group (the group is closed even when a call fails).
template <typename Call>
absl::Status InOneGroup(std::span<const DeviceCollectives::Piece> pieces, Call call) {
  RWR_NCCL(ncclGroupStart());
  absl::Status status;
  for (const DeviceCollectives::Piece& piece : pieces) {
    status = call(piece);
    if (!status.ok()) break;
  }
  RWR_NCCL(ncclGroupEnd());
  return status;
}

}  // namespace

absl::Status DeviceCollectives::Broadcast(std::span<const Piece> pieces, cudaStream_t stream) {
  return InOneGroup(pieces, [&](const Piece& piece) {
    return RWR_NCCL_STATUS(ncclBroadcast(piece.data, piece.data, static_cast<size_t>(piece.bytes),
                                         ncclUint8, piece.root, comm_, stream));
  });
}

absl::Status DeviceCollectives::ReduceSum(std::span<const Piece> pieces, cudaStream_t stream) {
  return InOneGroup(pieces, [&](const Piece& piece) {
    return RWR_NCCL_STATUS(ncclReduce(piece.data, piece.data, static_cast<size_t>(piece.bytes / 4),
                                      ncclFloat32, ncclSum, piece.root, comm_, stream));
  });
}

namespace {

constexpr int kIdWords = 4;  // a GPU's 16-byte UUID as 32-bit words (exact in doubles)

// The first rank (by index) before `rank` whose GPU is `rank`'s, or −1.
int EarlierRankOnTheSameGpu(const std::vector<double>& ids, int rank) {
  for (int r = 0; r < rank; ++r) {
    if (std::equal(ids.begin() + r * kIdWords, ids.begin() + (r + 1) * kIdWords,
                   ids.begin() + rank * kIdWords)) {
      return r;
    }
  }
  return -1;
}

}  // namespace

absl::Status SelectCudaDevice(Communicator& comm) {
  int count = 0;
  RWR_CUDA(cudaGetDeviceCount(&count));
  // A launcher that gives each rank its own GPU (srun --gpus-per-task=1) leaves one visible.
  const int local_rank = count == 1 ? 0 : comm.local_rank();
  const std::string remedy =
      "start one rank per GPU (mpirun -np / srun --ntasks-per-node = GPUs per node)";
  // Agreed before any rank returns: a rank that failed here alone would leave the others waiting.
  RWR_RETURN_IF_ERROR(AgreeOnStatus(
      local_rank < count ? absl::OkStatus()
                         : absl::FailedPreconditionError(
                               fmt::format("rank {} is rank {} on host {}, which has {} GPU(s): {}",
                                           comm.rank(), local_rank, HostName(), count, remedy)),
      comm));
  RWR_CUDA(cudaSetDevice(local_rank));
  if (comm.world_size() == 1) return absl::OkStatus();
  // Every rank's GPU UUID, gathered by a sum over slots that only their owner fills.
  cudaDeviceProp prop;
  RWR_CUDA(cudaGetDeviceProperties(&prop, local_rank));
  uint32_t words[kIdWords];
  static_assert(sizeof(words) == sizeof(prop.uuid.bytes));
  std::memcpy(words, prop.uuid.bytes, sizeof(words));
  std::vector<double> ids(size_t{kIdWords} * comm.world_size(), 0.0);
  for (int k = 0; k < kIdWords; ++k) ids[comm.rank() * kIdWords + k] = words[k];
  RWR_RETURN_IF_ERROR(comm.AllReduceSum(std::span<double>(ids)));
  // Every rank finds the same first pair; agreed, so rank 0 alone prints it.
  absl::Status shared;
  for (int r = 0; r < comm.world_size() && shared.ok(); ++r) {
    if (const int earlier = EarlierRankOnTheSameGpu(ids, r); earlier >= 0) {
      shared = absl::FailedPreconditionError(
          fmt::format("ranks {} and {} share one GPU: {}", earlier, r, remedy));
    }
  }
  return AgreeOnStatus(shared, comm);
}

}  // namespace rwr::trainer
