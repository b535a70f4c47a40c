// CallScheduler (teacher_client/call_scheduler.h) driven by fake backends, no server: a teacher
// that refuses calls above its capacity (RESOURCE_EXHAUSTED) loses no call however large the
// client's window, the window halves on overload once per window and grows back one per answer,
// a teacher that answers nothing but overload still ends every call, a deadline that passes in a
// deep queue while the teacher answers others is overload too (one that passes while it answers
// nothing is not), and what counts as overload.
#include "teacher_client/call_scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace rwr::teacher {
namespace {

using Clock = std::chrono::steady_clock;
using AttemptDoneFn = std::function<void(grpc::Status)>;

const grpc::Status kOverloaded(grpc::StatusCode::RESOURCE_EXHAUSTED,
                               "teacher queue full (4 tasks outstanding, capacity 4); retry later");

// Runs closures in order on its own thread: completions arrive off the scheduler's threads, as
// gRPC's do.
class Completer {
 public:
  Completer() : thread_([this] { Loop(); }) {}
  ~Completer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void Post(std::function<void()> work) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(work));
    }
    wake_.notify_all();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      std::function<void()> work = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      work();
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;  // last: started once the rest exists
};

// A teacher with room for `capacity` calls at once, as `rwr teacher serve`'s admission: a call
// over it is refused at once with RESOURCE_EXHAUSTED, an admitted one is answered OK by a single
// worker in arrival order.
class CapacityTeacher {
 public:
  explicit CapacityTeacher(int capacity) : capacity_(capacity) {}
  CallScheduler::StartFn Start() {
    return [this](grpc::ClientContext*, AttemptDoneFn done) {
      std::lock_guard<std::mutex> lock(mu_);
      if (outstanding_ >= capacity_) {
        ++rejected_;
        rejecter_.Post([done = std::move(done)] { done(kOverloaded); });
        return;
      }
      ++outstanding_;
      worker_.Post([this, done = std::move(done)] {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        {
          std::lock_guard<std::mutex> lock(mu_);
          --outstanding_;
          ++answered_;
        }
        done(grpc::Status::OK);
      });
    };
  }
  int rejected() {
    std::lock_guard<std::mutex> lock(mu_);
    return rejected_;
  }
  int answered() {
    std::lock_guard<std::mutex> lock(mu_);
    return answered_;
  }

 private:
  const int capacity_;
  std::mutex mu_;
  int outstanding_ = 0;
  int rejected_ = 0;
  int answered_ = 0;
  Completer worker_;
  Completer rejecter_;
};

// Final statuses and attempt counts, collected from FinishFns.
class Finished {
 public:
  CallScheduler::FinishFn Callback() {
    return [this](const grpc::Status& status, int attempts) {
      std::lock_guard<std::mutex> lock(mu_);
      results_.emplace_back(status, attempts);
      cv_.notify_all();
    };
  }
  bool WaitFor(size_t n, double timeout_s = 60) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                        [&] { return results_.size() >= n; });
  }
  std::vector<std::pair<grpc::Status, int>> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return results_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<grpc::Status, int>> results_;
};

TeacherClientOptions QuickRetries() {
  TeacherClientOptions options;
  options.deadline_s = 5;
  options.max_attempts = 3;
  options.initial_backoff_s = 0.001;
  options.max_backoff_s = 0.01;
  return options;
}

// The reviewer's case in miniature: a window 100 times the teacher's capacity. Every call over the
// capacity is refused, most of them more often than max_attempts, and yet every call is answered.
TEST(CallScheduler, AWindowFarOverTheTeachersCapacityLosesNoCall) {
  constexpr int kCalls = 400;
  constexpr int kMaxAttempts = 2;
  CapacityTeacher teacher(/*capacity=*/4);
  Finished finished;
  {
    TeacherClientOptions options = QuickRetries();
    options.concurrency = kCalls;
    options.max_attempts = kMaxAttempts;
    CallScheduler scheduler(options);
    for (int i = 0; i < kCalls; ++i) scheduler.Submit(teacher.Start(), finished.Callback());
    ASSERT_TRUE(finished.WaitFor(kCalls));
  }
  int most_attempts = 0;
  for (const auto& [status, attempts] : finished.Take()) {
    ASSERT_TRUE(status.ok()) << status.error_message() << " after " << attempts << " attempts";
    most_attempts = std::max(most_attempts, attempts);
  }
  EXPECT_EQ(teacher.answered(), kCalls);
  EXPECT_GT(most_attempts, kMaxAttempts) << "no call was refused often enough to matter";
}

// A teacher answering only RESOURCE_EXHAUSTED (a spent quota, say): after a deadline of refusals
// the attempts count again, and every call ends with that status.
TEST(CallScheduler, ATeacherThatOnlyRefusesStillEndsEveryCall) {
  Completer rejecter;
  auto start = [&](grpc::ClientContext*, AttemptDoneFn done) {
    rejecter.Post([done = std::move(done)] { done(kOverloaded); });
  };
  Finished finished;
  TeacherClientOptions options = QuickRetries();
  options.concurrency = 8;
  options.deadline_s = 0.1;
  CallScheduler scheduler(options);
  for (int i = 0; i < 20; ++i) scheduler.Submit(start, finished.Callback());
  ASSERT_TRUE(finished.WaitFor(20));
  for (const auto& [status, attempts] : finished.Take()) {
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_GE(attempts, options.max_attempts);
  }
  EXPECT_EQ(scheduler.Window(), 1) << "the window shrinks while only refusals come back";
}

// Overload is given back for a deadline (deadline_s) from the call's first refusal, then the
// attempts count again and the call ends.
TEST(CallScheduler, OverloadIsGivenBackForADeadlineThenTheCallEnds) {
  Completer completer;
  std::mutex mu;
  bool answered_once = false;
  auto start = [&](grpc::ClientContext*, AttemptDoneFn done) {
    std::lock_guard<std::mutex> lock(mu);
    const grpc::Status status = answered_once ? kOverloaded : grpc::Status::OK;
    answered_once = true;
    completer.Post([done = std::move(done), status] { done(status); });
  };
  Finished finished;
  TeacherClientOptions options = QuickRetries();
  options.concurrency = 1;
  options.deadline_s = 0.3;
  CallScheduler scheduler(options);
  scheduler.Submit(start, finished.Callback());
  ASSERT_TRUE(finished.WaitFor(1));
  scheduler.Submit(start, finished.Callback());
  ASSERT_TRUE(finished.WaitFor(2, 30)) << "a call refused forever must end";
  const auto results = finished.Take();
  EXPECT_TRUE(results[0].first.ok());
  EXPECT_EQ(results[1].first.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Refusals within the grace period were free (backoff at most 10 ms, so many of them).
  EXPECT_GT(results[1].second, options.max_attempts);
}

// ... and for as long as the teacher keeps answering other calls, however long that is.
TEST(CallScheduler, OverloadIsGivenBackWhileTheTeacherAnswersOtherCalls) {
  Completer completer;
  auto refused = [&](grpc::ClientContext*, AttemptDoneFn done) {
    completer.Post([done = std::move(done)] { done(kOverloaded); });
  };
  auto answered = [&](grpc::ClientContext*, AttemptDoneFn done) {
    completer.Post([done = std::move(done)] { done(grpc::Status::OK); });
  };
  Finished refused_call;
  Finished others;
  TeacherClientOptions options = QuickRetries();
  options.concurrency = 4;
  options.deadline_s = 0.3;
  CallScheduler scheduler(options);
  scheduler.Submit(refused, refused_call.Callback());
  // Other calls answered every 10 ms for four deadlines.
  int submitted = 0;
  for (const Clock::time_point end = Clock::now() + std::chrono::milliseconds(1200);
       Clock::now() < end; ++submitted) {
    scheduler.Submit(answered, others.Callback());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(others.WaitFor(submitted));
  EXPECT_FALSE(refused_call.WaitFor(1, 0)) << "ended although the teacher was answering";
  ASSERT_TRUE(refused_call.WaitFor(1, 30)) << "once the answers stop, the refused call ends";
  EXPECT_EQ(refused_call.Take()[0].first.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

// A fake whose attempts the test answers by hand, one by one.
class ManualTeacher {
 public:
  CallScheduler::StartFn Start() {
    return [this](grpc::ClientContext*, AttemptDoneFn done) {
      std::lock_guard<std::mutex> lock(mu_);
      started_.push_back(std::move(done));
      cv_.notify_all();
    };
  }
  bool WaitStarted(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [&] { return started_.size() >= n; });
  }
  // Answers the i-th attempt started (0-based), once.
  void Answer(size_t i, const grpc::Status& status) {
    AttemptDoneFn done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ASSERT_LT(i, started_.size());
      ASSERT_TRUE(started_[i]) << "attempt " << i << " was answered already";
      done = std::move(started_[i]);
      started_[i] = nullptr;
    }
    done(status);
  }
  // Answers every attempt started and not answered yet; how many.
  int AnswerAllOpen(const grpc::Status& status) {
    int n = 0;
    for (size_t i = 0; i < started(); ++i) {
      bool open;
      {
        std::lock_guard<std::mutex> lock(mu_);
        open = static_cast<bool>(started_[i]);
      }
      if (open) {
        Answer(i, status);
        ++n;
      }
    }
    return n;
  }
  size_t started() {
    std::lock_guard<std::mutex> lock(mu_);
    return started_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<AttemptDoneFn> started_;
};

// Answers every open attempt with `status` (retries open after their backoff) until `finished`
// holds `calls` calls, or 30 s pass.
void AnswerUntilFinished(ManualTeacher& teacher, Finished& finished, size_t calls,
                         const grpc::Status& status) {
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(30);
  while (finished.Take().size() < calls && Clock::now() < give_up) {
    if (teacher.AnswerAllOpen(status) == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// AIMD: the calls in flight when the teacher fills up are refused together and halve the window
// once; a refusal of an attempt started at the halved window halves it again; each answer grows
// it by one, up to the configured concurrency.
TEST(CallScheduler, TheWindowHalvesOncePerOverloadAndGrowsBackByOnePerAnswer) {
  ManualTeacher teacher;
  Finished finished;
  TeacherClientOptions options = QuickRetries();
  options.concurrency = 8;
  options.max_attempts = 10;
  CallScheduler scheduler(options);
  for (int i = 0; i < 8; ++i) scheduler.Submit(teacher.Start(), finished.Callback());
  ASSERT_TRUE(teacher.WaitStarted(8));
  EXPECT_EQ(scheduler.Window(), 8);

  teacher.Answer(0, kOverloaded);
  EXPECT_EQ(scheduler.Window(), 4);
  teacher.Answer(1, kOverloaded);  // sent at the old window: no second halving
  EXPECT_EQ(scheduler.Window(), 4);
  // 6 in flight over a window of 4: the two refused calls wait, although their backoff has run.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(teacher.started(), 8u);

  for (size_t i = 2; i < 6; ++i) teacher.Answer(i, grpc::Status::OK);
  EXPECT_EQ(scheduler.Window(), 8) << "4 + one per answer, capped at the concurrency";
  ASSERT_TRUE(teacher.WaitStarted(10)) << "the refused calls are retried once there is room";

  teacher.Answer(8, kOverloaded);  // started at the halved window: halves again
  EXPECT_EQ(scheduler.Window(), 4);
  teacher.Answer(6, kOverloaded);  // started before the first halving: stale
  EXPECT_EQ(scheduler.Window(), 4);

  // Answer whatever is open (retries start after their backoff) until all 8 calls have finished.
  AnswerUntilFinished(teacher, finished, 8, grpc::Status::OK);
  ASSERT_EQ(finished.Take().size(), 8u);
  for (const auto& [status, attempts] : finished.Take()) EXPECT_TRUE(status.ok());
}

const grpc::Status kDeadlinePassed(grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded");

// A call whose attempt ran out its deadline while the teacher answered another call waited in the
// teacher's queue: overload. The window halves and the attempt is given back (max_attempts 1 here,
// so a spent attempt would end the call).
TEST(CallScheduler, ADeadlinePassedWhileTheTeacherAnswersOthersIsOverload) {
  ManualTeacher teacher;
  Finished finished;
  TeacherClientOptions options = QuickRetries();
  options.concurrency = 8;
  options.max_attempts = 1;
  CallScheduler scheduler(options);
  for (int i = 0; i < 8; ++i) scheduler.Submit(teacher.Start(), finished.Callback());
  ASSERT_TRUE(teacher.WaitStarted(8));
  teacher.Answer(0, grpc::Status::OK);
  teacher.Answer(1, kDeadlinePassed);
  EXPECT_EQ(scheduler.Window(), 4);
  EXPECT_EQ(finished.Take().size(), 1u) << "the call that ran out its deadline ended";
  // Answer whatever is open (the retry starts after its backoff) until all 8 calls have finished.
  AnswerUntilFinished(teacher, finished, 8, grpc::Status::OK);
  ASSERT_EQ(finished.Take().size(), 8u);
  EXPECT_EQ(teacher.started(), 9u) << "the call is retried once";
  for (const auto& [status, attempts] : finished.Take())
    EXPECT_TRUE(status.ok()) << status.error_message() << " after " << attempts << " attempts";
}

// A teacher that answers nothing (hung, or every call slower than the deadline) is not
// overloaded: deadlines spend attempts, the call ends DEADLINE_EXCEEDED after max_attempts, and
// an answer older than a deadline does not make it overload.
TEST(CallScheduler, ADeadlinePassedWithNoAnswerWithinADeadlineSpendsTheAttempt) {
  ManualTeacher teacher;
  Finished finished;
  TeacherClientOptions options = QuickRetries();
  options.concurrency = 4;
  options.deadline_s = 0.05;
  CallScheduler scheduler(options);
  scheduler.Submit(teacher.Start(), finished.Callback());
  ASSERT_TRUE(teacher.WaitStarted(1));
  teacher.Answer(0, grpc::Status::OK);
  ASSERT_TRUE(finished.WaitFor(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // two deadlines without answers
  for (int i = 0; i < 4; ++i) scheduler.Submit(teacher.Start(), finished.Callback());
  AnswerUntilFinished(teacher, finished, 5, kDeadlinePassed);
  const auto results = finished.Take();
  ASSERT_EQ(results.size(), 5u);
  for (size_t i = 1; i < results.size(); ++i) {
    EXPECT_EQ(results[i].first.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_EQ(results[i].second, options.max_attempts);
  }
  EXPECT_EQ(scheduler.Window(), 4) << "not overload: the window stays";
}

// A teacher with one worker and a deep queue, as `rwr teacher serve --workers 1`: a task whose
// deadline passed while it was queued is answered DEADLINE_EXCEEDED without being computed. A
// window far over what the teacher gets through in a deadline loses no call.
TEST(CallScheduler, ADeepQueuePastTheDeadlineLosesNoCall) {
  constexpr int kCalls = 600;
  Completer worker;
  std::atomic<int> answered{0};
  std::atomic<int> expired{0};
  auto start = [&](grpc::ClientContext* context, AttemptDoneFn done) {
    const auto deadline = context->deadline();
    worker.Post([&, deadline, done = std::move(done)] {
      if (std::chrono::system_clock::now() > deadline) {
        ++expired;
        done(kDeadlinePassed);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ++answered;
      done(grpc::Status::OK);
    });
  };
  Finished finished;
  {
    TeacherClientOptions options = QuickRetries();
    options.concurrency = kCalls;
    options.deadline_s = 0.1;
    options.max_attempts = 2;
    CallScheduler scheduler(options);
    for (int i = 0; i < kCalls; ++i) scheduler.Submit(start, finished.Callback());
    ASSERT_TRUE(finished.WaitFor(kCalls));
    EXPECT_LT(scheduler.Window(), kCalls);
  }
  for (const auto& [status, attempts] : finished.Take())
    ASSERT_TRUE(status.ok()) << status.error_message() << " after " << attempts << " attempts";
  EXPECT_EQ(answered.load(), kCalls);
  EXPECT_GT(expired.load(), 0) << "no call waited past its deadline";
}

// UNIMPLEMENTED says the address serves another API, whether or not the server sent a message
// ("Method not found!" from grpcio servers such as MLServer).
TEST(CallScheduler, UnimplementedIsDescribedAsAnotherApi) {
  EXPECT_NE(
      DescribeGrpcFailure({grpc::StatusCode::UNIMPLEMENTED, ""}).find("does not serve this API"),
      std::string::npos);
  EXPECT_EQ(
      DescribeGrpcFailure({grpc::StatusCode::UNIMPLEMENTED, "Method not found!"})
          .rfind("UNIMPLEMENTED: Method not found!; the server there does not serve this API", 0),
      0u);
  EXPECT_EQ(DescribeGrpcFailure({grpc::StatusCode::UNKNOWN, "model x not found"}),
            "UNKNOWN: model x not found");
  EXPECT_TRUE(CheckBearerToken("s3cret-Token_1.2", "t").ok());
  EXPECT_FALSE(CheckBearerToken("s3cret\r", "t").ok());
  EXPECT_FALSE(CheckBearerToken("caf\xc3\xa9", "t").ok());
}

TEST(CallScheduler, OverloadIsResourceExhaustedOrAFullQueueSaidAsUnavailable) {
  EXPECT_TRUE(CallScheduler::Overloaded(kOverloaded));
  EXPECT_TRUE(
      CallScheduler::Overloaded({grpc::StatusCode::UNAVAILABLE, "Exceeds maximum queue size"}));
  EXPECT_TRUE(CallScheduler::Overloaded(
      {grpc::StatusCode::UNAVAILABLE, "Received http2 header with status: 429"}));
  // A proxy's 503 is also what a backend that is down looks like; gRPC's own size limit is about
  // the request, not the teacher.
  EXPECT_FALSE(CallScheduler::Overloaded(
      {grpc::StatusCode::UNAVAILABLE, "Received http2 header with status: 503"}));
  EXPECT_FALSE(CallScheduler::Overloaded({grpc::StatusCode::UNAVAILABLE, "failed to connect"}));
  const grpc::Status too_large(grpc::StatusCode::RESOURCE_EXHAUSTED,
                               "Received message larger than max (9000000 vs. 4194304)");
  EXPECT_FALSE(CallScheduler::Overloaded(too_large));
  EXPECT_FALSE(CallScheduler::Retryable(too_large));

  // Whatever the wire code, a final overload is RESOURCE_EXHAUSTED to the caller.
  absl::Status triton =
      FinalCallStatus("kserve://h:1/m", "ModelInfer",
                      {grpc::StatusCode::UNAVAILABLE, "Exceeds maximum queue size"}, 5);
  EXPECT_EQ(triton.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(std::string(triton.message()),
            "teacher kserve://h:1/m ModelInfer: UNAVAILABLE (overloaded) after 5 attempts: "
            "Exceeds maximum queue size");
  EXPECT_EQ(FinalCallStatus("rwr://h:1", "ExtractNote", kOverloaded, 3).code(),
            absl::StatusCode::kResourceExhausted);
}

// One reader of token files for servers and clients: `rwr teacher serve` trimmed both ends while
// `rwr distill` trimmed only the end, so a token file with leading whitespace authorised nothing.
TEST(BearerTokenFile, IsTrimmedOnBothEndsAndRefusedEmptyOrUnsendable) {
  const std::string path = ::testing::TempDir() + "/call_scheduler_test_token";
  auto read = [&](const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
    return ReadBearerTokenFile(path);
  };
  absl::StatusOr<std::string> padded = read("  \tsecret-1 \n\n");
  ASSERT_TRUE(padded.ok()) << padded.status();
  EXPECT_EQ(*padded, "secret-1");
  EXPECT_NE(read(" \n").status().message().find("the file is empty"), std::string::npos);
  EXPECT_NE(read("one\ntwo\n").status().message().find("more than one line"), std::string::npos);
  EXPECT_FALSE(ReadBearerTokenFile(path + ".missing").ok());
}

}  // namespace
}  // namespace rwr::teacher
