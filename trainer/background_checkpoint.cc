// BackgroundCheckpoint; see background_checkpoint.h.
#include "trainer/background_checkpoint.h"

#include <system_error>
#include <utility>

#include "common/status.h"
#include "spdlog/spdlog.h"

namespace rwr::trainer {
namespace {
// Set before a run starts its writer threads and cleared after they are joined.
CheckpointWriteHookForTesting& WriteHook() {
  static CheckpointWriteHookForTesting hook;
  return hook;
}
}  // namespace

void SetCheckpointWriteHookForTesting(CheckpointWriteHookForTesting hook) {
  WriteHook() = std::move(hook);
}

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
  try {
    self->thread_ = std::thread([self] { self->Write(); });
  } catch (const std::system_error& e) {
    // No thread to be had (a pids limit, say): written here, as a synchronous save was.
    spdlog::warn(
        "train: no thread for the checkpoint of step {} ({}); writing it before the "
        "steps go on",
        self->step_, e.what());
    self->beside_ = false;
    self->Write();
  }
  return writing;
}

void BackgroundCheckpoint::Write() {
  const auto start = std::chrono::steady_clock::now();
  if (WriteHook()) WriteHook()(step_, abandon_);
  status_ = WriteCheckpointFiles(checkpoints_dir_, data_, comm_ != nullptr ? comm_->rank() : 0,
                                 &abandon_);
  write_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  written_.store(true, std::memory_order_release);
}

BackgroundCheckpoint::~BackgroundCheckpoint() {
  Abandon();
  Join().IgnoreError();  // the run is ending on another error
}

absl::Status BackgroundCheckpoint::Join() {
  if (thread_.joinable()) thread_.join();
  return status_;
}

absl::StatusOr<std::string> BackgroundCheckpoint::Finish() {
  return FinishCheckpoint(checkpoints_dir_, step_, keep_, Join(), comm_);
}

}  // namespace rwr::trainer
