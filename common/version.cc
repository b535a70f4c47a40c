#include "common/version.h"

#include "fmt/format.h"

namespace rwr {

bool BuiltWithCuda() { return RWR_BUILD_CUDA; }
bool BuiltWithServices() { return RWR_BUILD_SERVICES; }

std::string VersionString() {
  auto on_off = [](bool b) { return b ? "on" : "off"; };
  return fmt::format("rwr {} (cuda: {}, services: {}, mpi: {})", RWR_VERSION,
                     on_off(RWR_BUILD_CUDA), on_off(RWR_BUILD_SERVICES), on_off(RWR_BUILD_MPI));
}

}  // namespace rwr
