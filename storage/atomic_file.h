// Files written whole or not at all: `path`.tmp written, fsynced and renamed over `path`, then
// the directory fsynced. Shards, safetensors files, manifests and run files go through here.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace rwr::storage {

// Streams pieces to `path`.tmp; Commit makes them `path`. Destroyed without a Commit (an error on
// the way), it removes the .tmp: a failed write leaves nothing behind. Errors are Unavailable and
// name the file.
//
// Write starts the disk write of every 64 MiB as it is appended and waits for the one four pieces
// before (sync_file_range), so a large file — a 33 GB checkpoint — holds at most about 320 MiB
// in dirty page cache: the writer goes at the disk's pace, Commit's fsync finds little left (on a
// node whose RAM would otherwise hold the whole file dirty, it waited for all of it, in a stop's
// grace time), and a write given up stops within a few pieces.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {}
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // The write-back's unit (the class comment).
  static constexpr size_t kPieceBytes = size_t{64} << 20;

  absl::Status Open();
  absl::Status Write(const void* data, size_t size);
  absl::Status PwriteAt(const void* data, size_t size, off_t offset);
  absl::Status Commit();

 private:
  void WriteBack();  // sync_file_range of the whole pieces appended since the last call

  std::string path_, tmp_;
  int fd_ = -1;
  off_t appended_ = 0;      // bytes Write has appended
  off_t written_back_ = 0;  // the disk write of [0, written_back_) has been started
};

// Writes `bytes` to `path` through an AtomicFile.
absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes);

// fsyncs the directory `dir`, so that a rename into it or a file made in it survives a power loss
// or a node crash. EINVAL, a file system that cannot sync a directory, is not an error.
absl::Status SyncDirectory(const std::string& dir);

}  // namespace rwr::storage
