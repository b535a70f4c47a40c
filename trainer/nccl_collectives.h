// Collectives over device memory for data-parallel training on GPUs: one NCCL communicator over
// the job's ranks (one GPU each), bootstrapped through the host Communicator (rank 0's NCCL
// unique id broadcast to the others). MambaCuda uses it for ZeRO-1: the gradients summed into
// their owners' ShardRanges (bucket by bucket as the backward finishes each layer, ReduceSum, or
// all at once, ReduceScatterSum), each rank's updated range broadcast back by its owner, bucket
// by bucket (Broadcast). In-place operations on buffers of world_size equal ranges
// (ShardRange::Padded elements). NCCL's reductions have a fixed order for a given world size and
// topology: a run repeats its bits.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "trainer/communicator.h"

struct ncclComm;

namespace rwr::trainer {

class DeviceCollectives {
 public:
  // Collective over every rank of `host`: each rank must call it, on its own GPU already selected.
  static absl::StatusOr<std::unique_ptr<DeviceCollectives>> Create(Communicator& host);
  ~DeviceCollectives();
  DeviceCollectives(const DeviceCollectives&) = delete;
  DeviceCollectives& operator=(const DeviceCollectives&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }

  // `data` holds world_size ranges of `per_rank` floats; range rank() ends as the sum of every
  // rank's range rank() (the other ranges are left undefined).
  absl::Status ReduceScatterSum(float* data, int64_t per_rank, cudaStream_t stream);
  absl::Status AllReduceSum(double* data, int64_t n, cudaStream_t stream);
  // A part of a buffer that every rank holds at the same address in its own copy, and the rank
  // the operation centres on.
  struct Piece {
    void* data;
    int64_t bytes;
    int root;
  };
  // In one NCCL group: each piece's bytes from its root rank to every other rank (in place).
  absl::Status Broadcast(std::span<const Piece> pieces, cudaStream_t stream);
  // In one NCCL group: each piece (fp32, bytes a multiple of 4) summed over the ranks into its
  // root's copy, in place; the other ranks' copies are left as they were.
  absl::Status ReduceSum(std::span<const Piece> pieces, cudaStream_t stream);

 private:
  DeviceCollectives() = default;
  ncclComm* comm_ = nullptr;
  int rank_ = 0, world_ = 1;
};

// Makes the GPU a rank uses current: the host's k-th rank takes its k-th GPU, or the only one
// visible where the launcher gave each rank its own. More ranks on a host than GPUs, or two ranks
// on one GPU (one visible to several ranks), is an error agreed by every rank (AgreeOnStatus:
// printed once, no MPI_Abort), before NCCL would fail with its own. Collective over `comm`.
absl::Status SelectCudaDevice(Communicator& comm);

}  // namespace rwr::trainer
