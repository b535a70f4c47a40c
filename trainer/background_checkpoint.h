// A checkpoint written on a thread of its own while the training steps go on: the steps pause
// only to copy the state (from the GPU, or of the CPU's live vectors), not for the minute a 2.8B
// checkpoint's 33 GB take to reach the disk. Usage, on every rank at the same points of the run:
//
//   RWR_ASSIGN_OR_RETURN(auto writing,
//                        BackgroundCheckpoint::Start(dir, std::move(data), keep, comm));
//   ... steps; each sums !writing->Written() over the ranks in a collective it makes anyway ...
//   RWR_ASSIGN_OR_RETURN(std::string published, writing->Finish());   // once the sum is 0
//
// Start and Finish are collective (BeginCheckpoint, FinishCheckpoint); the thread makes none, so
// the communicator stays with the training thread. One checkpoint is written at a time; after
// Finish, TakeData hands its host copy back for the next one to copy into.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "trainer/checkpoint.h"
#include "trainer/communicator.h"

namespace rwr::trainer {

// For tests: called on the writer's thread (or inline) before each checkpoint's files are
// written, with its step and its abandon flag, so that a test can hold a write back and see what
// the training loop does meanwhile. Set it before the run and clear it (nullptr) after.
using CheckpointWriteHookForTesting =
    std::function<void(int64_t step, const std::atomic<bool>& abandon)>;
void SetCheckpointWriteHookForTesting(CheckpointWriteHookForTesting hook);

class BackgroundCheckpoint {
 public:
  // Begins the checkpoint of data.state.step (agreed) and starts writing this rank's files.
  static absl::StatusOr<std::unique_ptr<BackgroundCheckpoint>> Start(std::string checkpoints_dir,
                                                                     CheckpointData data, int keep,
                                                                     Communicator* comm);
  // Where Finish was not called (a run ending on another error), abandons the write and waits
  // for it to stop (Abandon); what it wrote stays a .tmp, which no resume reads and the
  // next save clears.
  ~BackgroundCheckpoint();
  BackgroundCheckpoint(const BackgroundCheckpoint&) = delete;
  BackgroundCheckpoint& operator=(const BackgroundCheckpoint&) = delete;

  int64_t step() const { return step_; }
  // This rank's files are written (or failed): Finish would not wait here.
  bool Written() const { return written_.load(std::memory_order_acquire); }
  // Waits for this rank's files, then publishes once every rank's are in (collective). Returns
  // the checkpoint's directory, or the failure of any rank's part on every rank. Call once.
  absl::StatusOr<std::string> Finish();
  // Stops the write within 64 MiB of writing (or the file flush under way), for a newer checkpoint
  // that is about to be written (a stop's): the Finish that follows removes the .tmp and returns
  // Cancelled, unless every rank's part was already in, which it then publishes. Every rank calls
  // it at the same point.
  void Abandon() { abandon_.store(true, std::memory_order_relaxed); }
  // Waits for this rank's files and returns how their write went (this rank's alone; Finish
  // agrees it with the other ranks).
  absl::Status Join();
  // Seconds this rank's files took to write (after Finish).
  double write_seconds() const { return write_seconds_; }
  // Written on its own thread, beside what the caller did meanwhile (not inline, where no thread
  // could be started).
  bool written_beside() const { return beside_; }
  // After Finish: the copy it wrote, whose buffers the next checkpoint's copy reuses (resident
  // pages take a copy from the GPU 5x faster than fresh ones, and the host held them anyway).
  CheckpointData TakeData() { return std::move(data_); }

 private:
  BackgroundCheckpoint(std::string checkpoints_dir, CheckpointData data, int keep,
                       Communicator* comm);
  void Write();  // this rank's files, on the thread (or inline where none could be started)

  const std::string checkpoints_dir_;
  CheckpointData data_;
  const int64_t step_;
  const int keep_;
  Communicator* const comm_;
  absl::Status status_;  // the thread's result, read after Join
  double write_seconds_ = 0;
  bool beside_ = true;
  std::atomic<bool> written_{false};
  std::atomic<bool> abandon_{false};
  std::thread thread_;
};

}  // namespace rwr::trainer
