// Communicator over MPI_COMM_WORLD (trainer/communicator.h), for `rwr train` started by mpirun or
// srun. Errors come back as statuses (MPI_ERRORS_RETURN), naming the MPI call. Reductions are
// MPI_SUM in MPI's own order: deterministic for a given world size and library, the same bits on
// every rank. Large buffers go in pieces below MPI's int count limit.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "trainer/communicator.h"

namespace rwr::trainer {

class MpiCommunicator final : public Communicator {
 public:
  // Initialises MPI (once per process) and finds this rank's place on its host.
  static absl::StatusOr<std::unique_ptr<MpiCommunicator>> Create();
  ~MpiCommunicator() override;  // finalises MPI

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  absl::Status AllReduceSum(std::span<float> data) override;
  absl::Status AllReduceSum(std::span<double> data) override;
  absl::Status Broadcast(std::span<float> data, int root) override;
  absl::Status BroadcastBytes(std::span<std::byte> data, int root) override;
  absl::Status AllGather(std::span<float> data) override;
  absl::Status Barrier() override;
  void Abort(int exit_code) override;

 private:
  MpiCommunicator() = default;
  int rank_ = 0, world_ = 1, local_rank_ = 0, local_size_ = 1;
};

}  // namespace rwr::trainer
