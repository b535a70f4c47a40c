// ScriptedTeacher: latency via one timer thread, faults by call number.
#include "teacher_client/scripted_teacher.h"

#include "fmt/format.h"
#include "teacher_client/extractive_teacher.h"

namespace rwr::teacher {

ScriptedTeacher::ScriptedTeacher(ScriptedOptions options, std::shared_ptr<Teacher> inner)
    : options_(options), inner_(inner ? std::move(inner) : std::make_shared<ExtractiveTeacher>()) {
  timer_ = std::thread([this] { TimerLoop(); });
}

ScriptedTeacher::~ScriptedTeacher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  timer_.join();
}

TeacherInfo ScriptedTeacher::Info() const {
  TeacherInfo info = inner_->Info();
  info.teacher_id = "scripted+" + info.teacher_id;
  return info;
}

bool ScriptedTeacher::ShouldFail() {
  uint64_t n = calls_.fetch_add(1);  // 0-based
  return options_.fail_every > 0 && n % static_cast<uint64_t>(options_.fail_every) == 0;
}

void ScriptedTeacher::Schedule(std::function<void()> answer) {
  if (options_.latency_s <= 0) {
    answer();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push(Timed{Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(options_.latency_s)),
                        sequence_++, std::move(answer)});
  }
  wake_.notify_one();
}

void ScriptedTeacher::TimerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (pending_.empty()) {
      if (stopping_) return;
      wake_.wait(lock);
      continue;
    }
    // At shutdown, pending answers go out at once rather than being lost.
    if (!stopping_ && pending_.top().when > Clock::now()) {
      // A copy: wait_until reads its deadline again after waking, and a Schedule meanwhile may
      // have moved the queue's storage.
      const Clock::time_point when = pending_.top().when;
      wake_.wait_until(lock, when);
      continue;
    }
    std::function<void()> run = std::move(const_cast<Timed&>(pending_.top()).run);
    pending_.pop();
    lock.unlock();
    run();
    lock.lock();
  }
}

void ScriptedTeacher::ExtractNote(NoteTask task, TeacherCallback<Note> done) {
  const bool fail = ShouldFail();
  Schedule([this, fail, task = std::move(task), done = std::move(done)]() mutable {
    if (fail) return done(absl::Status(options_.fail_code, "scripted failure"));
    if (options_.answer == ScriptedOptions::Answer::kBlankNote)
      return done(Note{.text = "  ", .empty = false, .score = 1});
    inner_->ExtractNote(std::move(task), std::move(done));
  });
}

void ScriptedTeacher::VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) {
  const bool fail = ShouldFail();
  Schedule([this, fail, task = std::move(task), done = std::move(done)]() mutable {
    if (fail) return done(absl::Status(options_.fail_code, "scripted failure"));
    if (options_.answer == ScriptedOptions::Answer::kBadScore)
      return done(Verdict{.consistent = true, .score = 7});
    inner_->VerifyNote(std::move(task), std::move(done));
  });
}

void ScriptedTeacher::RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) {
  const bool fail = ShouldFail();
  Schedule([this, fail, task = std::move(task), done = std::move(done)]() mutable {
    if (fail) return done(absl::Status(options_.fail_code, "scripted failure"));
    inner_->RemoveEvidence(std::move(task), std::move(done));
  });
}

}  // namespace rwr::teacher
