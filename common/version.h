// Version and the features this build has, for `rwr --version` and logs.
#pragma once

#include <string>

namespace rwr {

std::string VersionString();  // "rwr 0.1.0 (cuda: on, services: on, mpi: on)"
bool BuiltWithCuda();
bool BuiltWithServices();

}  // namespace rwr
