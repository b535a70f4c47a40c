// A fresh scratch directory for a test: <system temp>/rwr_<prefix>_<name>_<pid>, emptied and
// created (the pid keeps concurrent test processes apart).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <string_view>

namespace rwr::testing {

inline std::string FreshTempDir(std::string_view prefix, std::string_view name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("rwr_" + std::string(prefix) + "_" + std::string(name) + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

}  // namespace rwr::testing
