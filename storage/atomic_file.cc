// AtomicFile (see atomic_file.h).
#include "storage/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/status.h"
#include "fmt/format.h"

namespace rwr::storage {
namespace {

absl::Status ErrnoError(std::string_view what, const std::string& path) {
  return absl::UnavailableError(fmt::format("{} {}: {}", what, path, std::strerror(errno)));
}

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

absl::Status AtomicFile::Open() {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return ErrnoError("cannot create", tmp_);
  return absl::OkStatus();
}

absl::Status AtomicFile::Write(const void* data, size_t size) {
  // In pieces, so that the write-back keeps pace however large one Write is (a shard's tokens,
  // a tensor of moments).
  const char* bytes = static_cast<const char*>(data);
  for (size_t at = 0; at < size; at += kPieceBytes) {
    const size_t n = std::min(kPieceBytes, size - at);
    RWR_RETURN_IF_ERROR(WriteAll(fd_, bytes + at, n, tmp_));
    appended_ += static_cast<off_t>(n);
    WriteBack();
  }
  return absl::OkStatus();
}

void AtomicFile::WriteBack() {
  constexpr off_t kPiece = static_cast<off_t>(kPieceBytes);
  constexpr off_t kInFlight = 4 * kPiece;  // disk writes under way while the writer goes on
  while (appended_ - written_back_ >= kPiece) {
    // Best effort: where the file system does not take it, Commit's fsync still makes the file
    // durable; only the pacing is lost.
    ::sync_file_range(fd_, written_back_, kPiece, SYNC_FILE_RANGE_WRITE);
    if (written_back_ >= kInFlight) {
      ::sync_file_range(
          fd_, written_back_ - kInFlight, kPiece,
          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
    }
    written_back_ += kPiece;
  }
}

absl::Status AtomicFile::PwriteAt(const void* data, size_t size, off_t offset) {
  if (::pwrite(fd_, data, size, offset) != static_cast<ssize_t>(size)) {
    return ErrnoError("cannot write", tmp_);
  }
  return absl::OkStatus();
}

absl::Status AtomicFile::Commit() {
  if (::fsync(fd_) != 0) return ErrnoError("cannot fsync", tmp_);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return ErrnoError("cannot close", tmp_);
  }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) return ErrnoError("cannot rename to", path_);
  const std::string dir = std::filesystem::path(path_).parent_path().string();
  return SyncDirectory(dir.empty() ? "." : dir);
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view bytes) {
  AtomicFile file(path);
  RWR_RETURN_IF_ERROR(file.Open());
  RWR_RETURN_IF_ERROR(file.Write(bytes.data(), bytes.size()));
  return file.Commit();
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open directory", dir);
  const int synced = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (synced != 0 && error != EINVAL) {
    errno = error;
    return ErrnoError("cannot fsync directory", dir);
  }
  return absl::OkStatus();
}

}  // namespace rwr::storage
