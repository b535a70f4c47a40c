// ScriptedTeacher: a Teacher with scripted latency and faults, wrapped around a real one (the
// ExtractiveTeacher by default). Serves fault-injection tests and bench/teacher_bench behind a real
// TeacherServer: answers after a fixed latency from its own timer thread (no thread per call, so a
// window of 512 costs nothing), every Nth call fails with a chosen code, or answers come back
// blank / out of range so the client's answer checks can be exercised.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "teacher_client/teacher.h"

namespace rwr::teacher {

struct ScriptedOptions {
  double latency_s = 0;  // every answer waits this long
  int fail_every = 0;    // calls 1, 1+N, 1+2N, ... (1-based) fail with fail_code; 0 = none
  absl::StatusCode fail_code = absl::StatusCode::kUnavailable;
  enum class Answer { kReal, kBlankNote, kBadScore } answer = Answer::kReal;
};

class ScriptedTeacher final : public Teacher {
 public:
  explicit ScriptedTeacher(ScriptedOptions options, std::shared_ptr<Teacher> inner = nullptr);
  ~ScriptedTeacher() override;  // answers what is still pending, then stops the timer

  TeacherInfo Info() const override;
  void ExtractNote(NoteTask task, TeacherCallback<Note> done) override;
  void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override;
  void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override;

  uint64_t calls() const { return calls_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Timed {
    Clock::time_point when;
    uint64_t sequence;
    std::function<void()> run;
    bool operator>(const Timed& other) const {
      return when != other.when ? when > other.when : sequence > other.sequence;
    }
  };
  // Runs `answer` after the latency (inline when there is none); `fault` decides failures.
  void Schedule(std::function<void()> answer);
  bool ShouldFail();
  void TimerLoop();

  const ScriptedOptions options_;
  std::shared_ptr<Teacher> inner_;
  std::atomic<uint64_t> calls_{0};
  std::mutex mu_;
  std::condition_variable wake_;
  std::priority_queue<Timed, std::vector<Timed>, std::greater<Timed>> pending_;
  uint64_t sequence_ = 0;
  bool stopping_ = false;
  std::thread timer_;
};

}  // namespace rwr::teacher
