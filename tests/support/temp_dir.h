// Scratch directories for tests, removed when the test process exits.
//
// Every test binary runs once per test (gtest_discover_tests), each run making its own
// directories; left behind, they filled the disk of a machine that runs the suite often. So each
// directory made here is registered and removed at normal exit by the process that made it (a
// forked child that exits removes its own and leaves its parent's alone). RWR_KEEP_TEST_DIRS=1
// keeps them, to look at what a failing test wrote.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace rwr::testing {

class ScratchDirs {
 public:
  ~ScratchDirs() {
    const char* keep = std::getenv("RWR_KEEP_TEST_DIRS");
    if (keep != nullptr && std::string_view(keep) == "1") return;
    const pid_t self = ::getpid();
    for (const auto& [dir, maker] : dirs_) {
      if (maker != self) continue;  // made before a fork, by the parent: the parent removes it
      std::error_code ec;           // best effort: a test may have removed it already
      std::filesystem::remove_all(dir, ec);
    }
  }

  void Add(const std::filesystem::path& dir) {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.emplace_back(dir, ::getpid());
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<std::filesystem::path, pid_t>> dirs_;  // with the pid that made it
};

inline ScratchDirs& TheScratchDirs() {
  static ScratchDirs dirs;
  return dirs;
}

// <system temp>/rwr_<prefix>_<name>_<pid>, emptied and created (the pid keeps concurrent test
// processes apart).
inline std::string FreshTempDir(std::string_view prefix, std::string_view name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("rwr_" + std::string(prefix) + "_" + std::string(name) + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  TheScratchDirs().Add(dir);
  return dir.string();
}

// <system temp>/<name>-XXXXXX made unique by mkdtemp; empty when it could not be made.
inline std::filesystem::path UniqueTempDir(const std::string& name) {
  std::string pattern = (std::filesystem::temp_directory_path() / (name + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) return {};
  TheScratchDirs().Add(pattern);
  return pattern;
}

}  // namespace rwr::testing
