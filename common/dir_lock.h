// DirLock: one writer at a time in a directory a job fills — a training run (`train.out_dir`), a
// dataset (`rwr data build --out`) — or of a file a job appends to (`rwr eval --out`).
//
// Two processes in one such directory (a Slurm job requeued while its first run still drains, the
// same script submitted twice) overwrite each other's files and can both exit 0 over a mix of
// them. The lock is a POSIX record lock (fcntl) on DIR/.lock: the kernel drops it when the holding
// process ends however it ends (kill -9 included), so it never goes stale, and NFS and Lustre
// honour it across nodes. The file holds the holder's host, pid, Slurm job and start time, so that
// a refused process can say which one holds the directory. The file stays after the holder ends
// (removing it would race a process taking it).
//
// Record locks belong to the process: take one per process and directory, hold it for as long as
// the directory is written, and never open DIR/.lock otherwise (closing any descriptor of the file
// drops the lock).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rwr {

// What a lock guards, for its refusal: "train.out_dir runs/x is in use by another rwr train (host
// …): two runs in one directory would overwrite each other's checkpoints; wait for it to end, or
// give this one another train.out_dir".
struct DirLockUse {
  std::string_view setting;  // what chose the directory: "train.out_dir", "--out"
  std::string_view command;  // who writes it: "rwr train"
  std::string_view clash;    // what two of them there would do to each other
};

class DirLock {
 public:
  static constexpr std::string_view kFileName = ".lock";

  // Creates DIR if missing and takes DIR/.lock, or FailedPrecondition naming the holder. On a file
  // system without record locks it warns and returns an inert lock: unguarded rather than not at
  // all.
  static absl::StatusOr<DirLock> Acquire(const std::string& dir, const DirLockUse& use);
  // The same for one file a job writes: the lock is FILE.lock, beside it.
  static absl::StatusOr<DirLock> AcquireForFile(const std::string& file, const DirLockUse& use);

  DirLock(DirLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  DirLock& operator=(DirLock&&) = delete;
  DirLock(const DirLock&) = delete;
  ~DirLock();

 private:
  explicit DirLock(int fd) : fd_(fd) {}
  // Takes the record lock on `path` for `guarded` (the directory or file named in messages).
  static absl::StatusOr<DirLock> Lock(const std::string& path, const std::string& guarded,
                                      const DirLockUse& use);
  int fd_ = -1;
};

}  // namespace rwr
