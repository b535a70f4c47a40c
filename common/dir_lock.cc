// DirLock (see dir_lock.h).
#include "common/dir_lock.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "common/process.h"
#include "fmt/chrono.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

namespace rwr {
namespace {

// What the lock file says of its holder: "host H, pid P, Slurm job J, since T".
std::string HolderLine() {
  std::string line = fmt::format("host {}, pid {}", HostName(), getpid());
  if (const char* job = std::getenv("SLURM_JOB_ID"); job != nullptr && *job != '\0') {
    line += fmt::format(", Slurm job {}", job);
  }
  line += fmt::format(", since {:%Y-%m-%d %H:%M:%S} UTC", fmt::gmtime(std::time(nullptr)));
  return line;
}

std::string ReadHolder(int fd) {
  char buffer[512];
  const ssize_t n = pread(fd, buffer, sizeof(buffer) - 1, 0);
  std::string holder(buffer, n > 0 ? static_cast<size_t>(n) : 0);
  while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\r')) holder.pop_back();
  return holder;
}

}  // namespace

absl::StatusOr<DirLock> DirLock::Acquire(const std::string& dir, const DirLockUse& use) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("{} {}: cannot create it: {}", use.setting, dir, ec.message()));
  }
  return Lock((std::filesystem::path(dir) / kFileName).string(), dir, use);
}

absl::StatusOr<DirLock> DirLock::AcquireForFile(const std::string& file, const DirLockUse& use) {
  return Lock(file + std::string(kFileName), file, use);
}

absl::StatusOr<DirLock> DirLock::Lock(const std::string& path, const std::string& guarded,
                                      const DirLockUse& use) {
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::UnavailableError(fmt::format("{} {}: cannot open {}: {}", use.setting, guarded,
                                              path, std::strerror(errno)));
  }
  struct flock whole = {};
  whole.l_type = F_WRLCK;
  whole.l_whence = SEEK_SET;  // l_start 0, l_len 0: the whole file
  if (fcntl(fd, F_SETLK, &whole) != 0) {
    const int error = errno;
    if (error == EACCES || error == EAGAIN) {
      const std::string holder = ReadHolder(fd);
      close(fd);
      return absl::FailedPreconditionError(fmt::format(
          "{} {} is in use by another {} ({}): {}; wait for it to end, or give this one another {}",
          use.setting, guarded, use.command, holder.empty() ? "starting up" : holder, use.clash,
          use.setting));
    }
    // A file system without record locks (ENOLCK, EINVAL).
    spdlog::warn("{} {}: cannot lock {} ({}); nothing stops a second {} from using it too",
                 use.setting, guarded, path, std::strerror(error), use.command);
    close(fd);
    return DirLock(-1);
  }
  const std::string holder = HolderLine() + "\n";
  if (ftruncate(fd, 0) != 0 || pwrite(fd, holder.data(), holder.size(), 0) < 0) {
    spdlog::warn("{} {}: cannot write the holder into {}: {}", use.setting, guarded, path,
                 std::strerror(errno));
  }
  return DirLock(fd);
}

DirLock::~DirLock() {
  if (fd_ >= 0) close(fd_);  // drops the lock
}

}  // namespace rwr
