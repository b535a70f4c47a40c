// The process's resident pages of file mappings, for tests of readers that give mapped pages back
// (storage/mapped_pages.h).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace rwr::testing {

// RssFile of /proc/self/status in bytes; -1 where the kernel does not report it.
inline int64_t ResidentFileBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8)) * 1024;
  }
  return -1;
}

}  // namespace rwr::testing
