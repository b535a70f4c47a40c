// Helpers for the teacher tests: waiting for callbacks, a self-signed certificate, child processes,
// free loopback ports.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/support/temp_dir.h"

extern char** environ;

namespace rwr::teacher::testing {

// Collects results from callbacks that run on other threads.
template <typename T>
class Results {
 public:
  std::function<void(absl::StatusOr<T>)> Callback() {
    return [this](absl::StatusOr<T> result) {
      std::lock_guard<std::mutex> lock(mu_);
      results_.push_back(std::move(result));
      cv_.notify_all();
    };
  }
  // Waits (bounded, to fail rather than hang) until `n` results arrived.
  bool WaitFor(size_t n, double timeout_s = 60) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                        [&] { return results_.size() >= n; });
  }
  std::vector<absl::StatusOr<T>> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<absl::StatusOr<T>> results_;
};

// A unique scratch directory, removed when the test process exits.
inline std::filesystem::path MakeTempDir(const std::string& name) {
  return rwr::testing::UniqueTempDir(name);
}

// A free TCP port on 127.0.0.1 (bound then released; the race is acceptable in tests).
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

// Writes cert.pem and key.pem (EC P-256, CN/SAN localhost + 127.0.0.1) into `dir`.
inline bool MakeSelfSignedCert(const std::filesystem::path& dir) {
  std::string command =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "
      "/CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      (dir / "key.pem").string() + " -out " + (dir / "cert.pem").string() + " >/dev/null 2>&1";
  return std::system(command.c_str()) == 0;
}

// A child process (argv[0] is a path), stdout+stderr to `log_path`.
class Subprocess {
 public:
  Subprocess(const std::vector<std::string>& argv, const std::string& log_path) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    if (posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  ~Subprocess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      Wait();
    }
  }
  bool started() const { return pid_ > 0; }
  void Signal(int signal_number) { kill(pid_, signal_number); }
  // Exit status (or 128 + signal); waits up to `timeout_s`, -1 if still running.
  int Wait(double timeout_s = 30) {
    if (exited_) return status_;
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    for (;;) {
      int raw = 0;
      pid_t r = waitpid(pid_, &raw, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        status_ = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
        return status_;
      }
      if (std::chrono::steady_clock::now() > until) return -1;
      usleep(10000);
    }
  }
  bool Running() {
    if (exited_) return false;
    return Wait(0) == -1;
  }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = -1;
};

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace rwr::teacher::testing
