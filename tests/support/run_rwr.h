// Runs the `rwr` binary the way a user does (a shell command line) and captures what it prints,
// for the CLI tests of every area. The including test defines RWR_BINARY (the built binary's path).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
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

// `BINARY <args>` run from the working directory `dir`, with stderr folded into the output.
inline CommandResult RunFrom(const std::string& dir, const std::string& binary,
                             const std::string& args) {
  return RunShell("cd '" + dir + "' && '" + binary + "' " + args + " 2>&1");
}

#ifdef RWR_BINARY
// `rwr <args>` with stderr folded into the output.
inline CommandResult RunRwr(const std::string& args) {
  return RunShell("'" + std::string(RWR_BINARY) + "' " + args + " 2>&1");
}

// A copy of the binary at TREE/build/release/bin/rwr, where a build of a checkout at TREE puts
// it; its path. For what rwr finds through its own location (the shipped configs/): a copy, not a
// link, since rwr finds itself through /proc/self/exe, which names the file a link leads to.
inline std::string CopyRwrInto(const std::string& tree) {
  const std::filesystem::path bin = std::filesystem::path(tree) / "build" / "release" / "bin";
  std::filesystem::create_directories(bin);
  std::filesystem::copy_file(RWR_BINARY, bin / "rwr",
                             std::filesystem::copy_options::overwrite_existing);
  return (bin / "rwr").string();
}
#endif

}  // namespace rwr::testing
