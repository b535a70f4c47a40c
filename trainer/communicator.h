// Collective operations the trainer needs across data-parallel ranks. The trainer talks only to
// this interface: SingleRankCommunicator (here) serves one process, MpiCommunicator
// (mpi_communicator.h) the ranks an MPI launcher (mpirun, srun) started. Gradients are
// all-reduced over the flat parameter layout (trainer/param_layout.h); with ZeRO-1 each rank
// updates the parameter range it owns (ShardRange) and AllGather brings the others' ranges back.
// On the GPU the same pattern runs over device memory (DeviceCollectives, nccl_collectives.h),
// bootstrapped through this interface.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rwr::trainer {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // This rank's index among the ranks on its host (which GPU it takes), and their number.
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;
  // In place: every rank ends with the element-wise sum over ranks.
  virtual absl::Status AllReduceSum(std::span<float> data) = 0;
  virtual absl::Status AllReduceSum(std::span<double> data) = 0;
  virtual absl::Status Broadcast(std::span<float> data, int root) = 0;
  virtual absl::Status BroadcastBytes(std::span<std::byte> data, int root) = 0;
  // `data` holds the whole flat layout; the range ShardRange::For(data.size(), r, world) is
  // rank r's input, and every rank ends with all ranges filled from their owners.
  virtual absl::Status AllGather(std::span<float> data) = 0;
  virtual absl::Status Barrier() = 0;
  // Ends every rank of the job at once (after this rank failed alone, so that the others do not
  // wait in a collective forever). Does nothing on one rank.
  virtual void Abort(int exit_code) = 0;
};

// Every rank calls this at the same point of its work with the status of that work since the
// last such point, and all of them learn whether every rank got there without an error (one
// all-reduce; nothing on one rank, where the own status is returned). OK where every rank did;
// else an error on every rank, marked agreed (IsAgreedFailure): the ranks are in step, so they end
// normally instead of through Abort. A failed rank's error keeps its message, with "rank R: " in
// front on ranks other than 0. Where rank 0 failed, the other ranks' errors are reported by rank
// 0 (common/status.h ReportedElsewhere), so the job prints one line; where it did not, rank 0's
// error names the ranks that failed.
absl::Status AgreeOnStatus(absl::Status own, Communicator& comm);
bool IsAgreedFailure(const absl::Status& status);

// [begin, end) of `total` elements owned by `rank` of `world`: equal ranges of PerRank elements,
// the last ones shorter (or empty). PerRank is a multiple of kAlign, so that every non-empty range
// starts 256-byte aligned and on a whole 32-bit word of a per-element bit mask (the GPU optimizer's
// weight-decay bits), and a buffer of Padded elements holds world equal ranges, the layout NCCL's
// in-place reduce-scatter and all-gather need.
struct ShardRange {
  static constexpr int64_t kAlign = 64;
  int64_t begin = 0, end = 0;

  int64_t size() const { return end - begin; }
  static int64_t PerRank(int64_t total, int world) {
    const int64_t per = (total + world - 1) / world;
    return (per + kAlign - 1) / kAlign * kAlign;
  }
  static int64_t Padded(int64_t total, int world) { return PerRank(total, world) * world; }
  static ShardRange For(int64_t total, int rank, int world) {
    const int64_t per = PerRank(total, world);
    const int64_t b = std::min<int64_t>(total, per * rank);
    return {b, std::min<int64_t>(total, b + per)};
  }
};

class SingleRankCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  absl::Status AllReduceSum(std::span<float>) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(std::span<double>) override { return absl::OkStatus(); }
  absl::Status Broadcast(std::span<float>, int) override { return absl::OkStatus(); }
  absl::Status BroadcastBytes(std::span<std::byte>, int) override { return absl::OkStatus(); }
  absl::Status AllGather(std::span<float>) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
  void Abort(int) override {}
};

// The communicator of this process: MPI's where an MPI launcher started it (mpirun, or srun
// with an MPI plugin; LaunchedByMpi), else one rank. Launched by MPI in a build without MPI is
// an error that says so. Sets the process rank for logging (common/process.h).
absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorForThisProcess();

// Whether an MPI launcher started this process as one of several ranks: OMPI_COMM_WORLD_SIZE
// (Open MPI's mpirun), PMI_RANK with PMI_SIZE (MPICH's launchers, srun --mpi=pmi2) or PMIX_RANK
// with SLURM_NTASKS (srun --mpi=pmix). One rank needs no MPI (a build without it still trains).
bool LaunchedByMpi();

}  // namespace rwr::trainer
