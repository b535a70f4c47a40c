// teacher_bench: how close the teacher client gets to the in-flight bound W/L. A loopback
// TeacherServer answers every call after a fixed latency L (ScriptedTeacher: one timer thread, no
// thread per call); the client keeps a window of W calls in flight; achieved calls/s is compared
// with W/L for each W. Prints a table and can write JSON (docs/benchmarks.md has the numbers).
//
//   teacher_bench --latency-ms 50 --windows 1,16,64,256,512 --seconds 2 --json out.json
#include <sys/resource.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "teacher_client/client.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/scripted_teacher.h"
#include "teacher_client/teacher_server.h"

namespace {

using namespace rwr::teacher;

// Answers at once with a fixed note, so the bench measures transport and scheduling, not BM25.
class ConstantTeacher final : public Teacher {
 public:
  TeacherInfo Info() const override { return {.teacher_id = "constant", .revision = "1"}; }
  void ExtractNote(NoteTask, TeacherCallback<Note> done) override {
    done(Note{.text = "The vault code is 4417.", .empty = false, .score = 1});
  }
  void VerifyNote(VerifyTask, TeacherCallback<Verdict> done) override {
    done(Verdict{.consistent = true, .score = 1});
  }
  void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override {
    done(Negative{.context = task.context});
  }
};

// CPU seconds (user + system) this process has used: client and server together.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
         1e-6 * (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

struct Row {
  int window;
  int64_t calls;
  double seconds;
  double rate;
  double bound;
  uint64_t retries;
  uint64_t failures;
  double cpu_us_per_call;  // client + server, all threads
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("teacher_bench: teacher client throughput vs the in-flight bound W/L on loopback");
  double latency_ms = 50;
  std::string windows_arg = "1,16,64,256,512";
  double seconds = 2;
  std::string backend = "constant";
  std::string json_path;
  int workers = 2;
  app.add_option("--latency-ms", latency_ms, "Fixed answer latency L of the loopback teacher")
      ->capture_default_str();
  app.add_option("--windows", windows_arg, "Comma-separated in-flight windows W")
      ->capture_default_str();
  app.add_option("--seconds", seconds, "Target run time per window at the bound")
      ->capture_default_str();
  app.add_option("--backend", backend,
                 "constant (transport only) or extractive (BM25 on each call)")
      ->capture_default_str();
  app.add_option("--workers", workers, "Server worker threads")->capture_default_str();
  app.add_option("--json", json_path, "Also write the rows as JSON");
  CLI11_PARSE(app, argc, argv);

  std::vector<int> windows;
  for (size_t start = 0; start < windows_arg.size();) {
    size_t comma = windows_arg.find(',', start);
    windows.push_back(std::stoi(windows_arg.substr(start, comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::shared_ptr<Teacher> inner;
  if (backend == "constant")
    inner = std::make_shared<ConstantTeacher>();
  else if (backend == "extractive")
    inner = std::make_shared<ExtractiveTeacher>();
  else {
    std::fprintf(stderr, "teacher_bench: --backend %s: expected constant or extractive\n",
                 backend.c_str());
    return 2;
  }
  const double latency_s = latency_ms / 1000;
  auto scripted = std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = latency_s}, inner);
  // The scripted teacher only arms a timer per call (the answer comes from its timer thread), so
  // the server may call it on gRPC's thread.
  auto server = TeacherServer::Start({.listen = "127.0.0.1:0",
                                      .workers = workers,
                                      .queue_capacity = 1 << 16,
                                      .backend_never_blocks = true},
                                     scripted);
  if (!server.ok()) {
    std::fprintf(stderr, "teacher_bench: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const std::string url = fmt::format("rwr://127.0.0.1:{}", (*server)->port());
  // A realistic small task: ~1 KB of context.
  std::string context;
  for (int i = 0; i < 12; ++i)
    context += fmt::format("Paragraph {} describes the harbour and its boats.\n\n", i);
  context += "The vault code is 4417.";

  std::vector<Row> rows;
  std::printf(
      "teacher_bench: L = %.1f ms, backend %s, loopback gRPC (client and server in one process)\n",
      latency_ms, backend.c_str());
  std::printf("%6s %8s %8s %10s %10s %8s %8s %10s\n", "W", "calls", "sec", "calls/s", "W/L",
              "% bound", "retries", "CPU us/call");
  for (int window : windows) {
    TeacherClientOptions options;
    options.concurrency = window;
    options.deadline_s = 30 + latency_s;
    auto teacher = MakeTeacher(url, options);
    if (!teacher.ok()) {
      std::fprintf(stderr, "teacher_bench: %s\n", std::string(teacher.status().message()).c_str());
      return 1;
    }
    const double bound = window / latency_s;
    const int64_t calls = std::max<int64_t>(4 * window, static_cast<int64_t>(bound * seconds));
    std::mutex mu;
    std::condition_variable cv;
    int64_t done = 0, failures = 0;
    auto run = [&](int64_t n) {
      {
        std::lock_guard<std::mutex> lock(mu);
        done = 0;
      }
      auto start = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < n; ++i) {
        (*teacher)->ExtractNote({.context = context, .question = "What is the vault code?"},
                                [&](absl::StatusOr<Note> note) {
                                  std::lock_guard<std::mutex> lock(mu);
                                  if (!note.ok()) ++failures;
                                  if (++done == n) cv.notify_all();
                                });
      }
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return done == n; });
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    run(std::min<int64_t>(calls, 2 * window));  // warm-up: connection, threads, allocator
    failures = 0;
    auto* remote = dynamic_cast<RemoteTeacher*>(teacher->get());
    const uint64_t retries_before = remote->Stats().retries;
    const double cpu_before = ProcessCpuSeconds();
    const double elapsed = run(calls);
    const double cpu = ProcessCpuSeconds() - cpu_before;
    Row row{window,
            calls,
            elapsed,
            calls / elapsed,
            bound,
            remote->Stats().retries - retries_before,
            static_cast<uint64_t>(failures),
            1e6 * cpu / static_cast<double>(calls)};
    rows.push_back(row);
    std::printf("%6d %8lld %8.2f %10.1f %10.1f %7.1f%% %8llu %10.1f\n", row.window,
                static_cast<long long>(row.calls), row.seconds, row.rate, row.bound,
                100 * row.rate / row.bound, static_cast<unsigned long long>(row.retries),
                row.cpu_us_per_call);
    if (row.failures > 0)
      std::printf("       (%llu calls failed)\n", static_cast<unsigned long long>(row.failures));
  }
  if (!json_path.empty()) {
    nlohmann::json j = {
        {"latency_ms", latency_ms}, {"backend", backend}, {"rows", nlohmann::json::array()}};
    for (const Row& r : rows)
      j["rows"].push_back({{"window", r.window},
                           {"calls", r.calls},
                           {"seconds", r.seconds},
                           {"calls_per_s", r.rate},
                           {"bound_calls_per_s", r.bound},
                           {"fraction_of_bound", r.rate / r.bound},
                           {"retries", r.retries},
                           {"failures", r.failures},
                           {"cpu_us_per_call", r.cpu_us_per_call}});
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  (*server)->Shutdown(1);
  return 0;
}
