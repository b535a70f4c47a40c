// The process's resident pages of file mappings, for tests of readers that give mapped pages back
// (storage/mapped_pages.h).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace rwr::testing {

// RssFile + RssShmem of /proc/self/status in bytes (a file on tmpfs, a /tmp of some machines,
// counts as shared memory); -1 where the kernel does not report them.
inline int64_t ResidentFileBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  int64_t kib = 0;
  int found = 0;
  while (std::getline(status, line)) {
    for (const char* field : {"RssFile:", "RssShmem:"}) {
      if (line.rfind(field, 0) == 0) {
        kib += std::stoll(line.substr(std::string(field).size()));
        ++found;
      }
    }
  }
  return found == 2 ? kib * 1024 : -1;
}

}  // namespace rwr::testing
