// Runs the `rwr` binary the way a user does (a shell command line) and captures what it prints,
// for the CLI tests of every area. The including test defines RWR_BINARY (the built binary's path).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace rwr::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when the command did not exit normally
  std::string output;  // stdout and stderr together
};

inline CommandResult RunShell(const std::string& command) {
  CommandResult result;
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

#ifdef RWR_BINARY
// `rwr <args>` with stderr folded into the output.
inline CommandResult RunRwr(const std::string& args) {
  return RunShell("'" + std::string(RWR_BINARY) + "' " + args + " 2>&1");
}
#endif

}  // namespace rwr::testing
