// BackgroundCheckpoint; see background_checkpoint.h.
#include "trainer/background_checkpoint.h"

#include <utility>

#include "common/status.h"

namespace rwr::trainer {

BackgroundCheckpoint::BackgroundCheckpoint(std::string checkpoints_dir, CheckpointData data,
                                           int keep, Communicator* comm)
    : checkpoints_dir_(std::move(checkpoints_dir)),
      data_(std::move(data)),
      step_(data_.state.step),
      keep_(keep),
      comm_(comm) {}

absl::StatusOr<std::unique_ptr<BackgroundCheckpoint>> BackgroundCheckpoint::Start(
    std::string checkpoints_dir, CheckpointData data, int keep, Communicator* comm) {
  RWR_RETURN_IF_ERROR(BeginCheckpoint(checkpoints_dir, data.state.step, comm));
  std::unique_ptr<BackgroundCheckpoint> writing(
      new BackgroundCheckpoint(std::move(checkpoints_dir), std::move(data), keep, comm));
  BackgroundCheckpoint* self = writing.get();
  self->thread_ = std::thread([self] {
    const auto start = std::chrono::steady_clock::now();
    self->status_ =
        WriteCheckpointFiles(self->checkpoints_dir_, self->data_,
                             self->comm_ != nullptr ? self->comm_->rank() : 0, &self->abandon_);
    self->write_seconds_ =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    self->written_.store(true, std::memory_order_release);
  });
  return writing;
}

BackgroundCheckpoint::~BackgroundCheckpoint() {
  Abandon();
  Join();
}

void BackgroundCheckpoint::Join() {
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<std::string> BackgroundCheckpoint::Finish() {
  Join();
  return FinishCheckpoint(checkpoints_dir_, step_, keep_, status_, comm_);
}

}  // namespace rwr::trainer
