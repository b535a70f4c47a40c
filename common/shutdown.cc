#include "common/shutdown.h"

#include <csignal>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <initializer_list>

#include "spdlog/spdlog.h"

namespace rwr {
namespace {
// Plain lock-free atomics: the only things a signal handler may touch.
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

void OnSignal(int signal_number) {
  if (signal_number == SIGINT && g_signal.load() == SIGINT) {
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
    return;
  }
  g_signal.store(signal_number);
}
}  // namespace

void InstallShutdownHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGUSR1}) sigaction(s, &action, nullptr);
}

bool ShutdownRequested() { return g_signal.load(std::memory_order_relaxed) != 0; }
int ShutdownSignal() { return g_signal.load(); }
void RequestShutdown(int signal_number) { g_signal.store(signal_number); }
void ResetShutdownForTesting() { g_signal.store(0); }

void RecordStoppedEarly() {
  const char* path = std::getenv("RWR_STOPPED_EARLY_FILE");
  if (path == nullptr || *path == '\0') return;
  std::ofstream marker(path);
  marker << "stopped early\n";
  if (!marker.flush()) {
    spdlog::warn("cannot write RWR_STOPPED_EARLY_FILE {}: the batch script will not requeue", path);
  }
}

}  // namespace rwr
