#include "common/process.h"

#include <unistd.h>

#include <atomic>

namespace rwr {
namespace {
std::atomic<int> g_rank{0};
std::atomic<int> g_world_size{1};
}  // namespace

void SetProcessRank(int rank, int world_size) {
  g_rank = rank;
  g_world_size = world_size;
}
int ProcessRank() { return g_rank; }
int ProcessWorldSize() { return g_world_size; }

const std::string& HostName() {
  static const std::string name = [] {
    char buf[256] = {};
    if (gethostname(buf, sizeof(buf) - 1) != 0) return std::string("unknown-host");
    return std::string(buf);
  }();
  return name;
}

}  // namespace rwr
