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
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {}
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  absl::Status Open();
  absl::Status Write(const void* data, size_t size);
  absl::Status PwriteAt(const void* data, size_t size, off_t offset);
  absl::Status Commit();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

// Writes `bytes` to `path` through an AtomicFile.
absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes);

// fsyncs the directory `dir`, so that a rename into it or a file made in it survives a power loss
// or a node crash. EINVAL, a file system that cannot sync a directory, is not an error.
absl::Status SyncDirectory(const std::string& dir);

}  // namespace rwr::storage
