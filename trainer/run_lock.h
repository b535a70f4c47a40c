// RunDirLock: one `rwr train` at a time in a run directory.
//
// Two processes training into one train.out_dir (a Slurm job requeued while its first run still
// drains, the same script submitted twice) would write each other's checkpoints and interleave
// metrics.jsonl. The lock is a POSIX record lock (fcntl) on OUT/.lock: the kernel drops it when
// the holding process ends however it ends (kill -9 included), so it never goes stale, and NFS
// and Lustre honour it across nodes. The file holds the holder's host, pid, Slurm job and start
// time, so that a refused run can say which run holds the directory.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rwr::trainer {

class RunDirLock {
 public:
  // Takes DIR/.lock (created if missing) or says who holds it: FailedPrecondition naming `what`
  // (the setting that chose DIR, e.g. "train.out_dir") and the holder.
  static absl::StatusOr<RunDirLock> Acquire(const std::string& dir, std::string_view what);

  RunDirLock(RunDirLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  RunDirLock& operator=(RunDirLock&&) = delete;
  RunDirLock(const RunDirLock&) = delete;
  ~RunDirLock();

 private:
  explicit RunDirLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace rwr::trainer
