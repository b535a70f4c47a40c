// Runs the `rwr` binary the way a user does (a shell command line) and captures what it prints,
// for the CLI tests of every area. The including test defines RWR_BINARY (the built binary's path).
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>

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

// A shell command launched in its own process group, for tests that signal a running rwr; killed
// with its group if still running when the test leaves (a failed assertion must not leave ranks
// training, or the test hang in a wait).
class Launched {
 public:
  explicit Launched(const std::string& command) : pid_(fork()) {
    if (pid_ == 0) {
      setpgid(0, 0);
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    if (pid_ > 0) setpgid(pid_, pid_);  // also here: no race with the child's own call
  }
  ~Launched() {
    if (pid_ > 0 && !reaped_) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // The exit status once the process ends within `limit`, else nullopt.
  std::optional<int> Wait(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return std::nullopt;
  }

 private:
  pid_t pid_;
  bool reaped_ = false;
};

// The whole of a (log) file; empty where it cannot be read.
inline std::string ReadLog(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
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
