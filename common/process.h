// Who this process is in a (possibly distributed) job: rank, world size, host. Logging and error
// messages read it so every line names the rank it came from.
#pragma once

#include <string>

namespace rwr {

void SetProcessRank(int rank, int world_size);
int ProcessRank();
int ProcessWorldSize();
const std::string& HostName();

}  // namespace rwr
