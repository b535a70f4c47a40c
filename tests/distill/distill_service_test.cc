// DistillServer (teacher_client/distill_service.h) through its gRPC API on loopback: jobs run to
// SUCCEEDED and are persisted, bad submissions are refused with the right code, cancel stops a
// running job, a job whose items fail ends FAILED naming them, WatchJob streams until the end,
// and a service restarted over the same cache resumes an unfinished job. A running job reports
// its item total (and so an ETA) while it runs. A shutdown signal that reaches the running job
// before the owner calls Shutdown() leaves it resumable and starts no further job. Also: a teacher
// whose calls fail with UNAVAILABLE now and then, behind a real server, is retried to completion;
// one that fails every call stops its job early, and the job waits for the teacher (others run
// meanwhile) and runs when it is back, or fails with the reason once it has waited its limit (at
// once with no wait allowed). Cancel of an ended job is
// refused; an oversized concurrency is refused at submit; a resumed job shows no stale rate. A
// cancel of a running job is durable: a restart ends the job CANCELLED instead of resuming it.
#include "teacher_client/distill_service.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <set>
#include <thread>

#include "common/shutdown.h"
#include "fmt/chrono.h"
#include "rwr/v1/distill.grpc.pb.h"
#include "storage/rocksdb_store.h"
#include "teacher_client/distill_run.h"
#include "teacher_client/scripted_teacher.h"
#include "teacher_client/teacher_server.h"
#include "tests/distill/distill_test_data.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

namespace fs = std::filesystem;

class DistillServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ResetShutdownForTesting();
    dir_ = testing::MakeTempDir("distill_service");
    input_ = (dir_ / "data.jsonl").string();
    testing::WriteDistillTestData(input_, kItems);
    auto store = storage::RocksDbStore::Open((dir_ / "cache").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void TearDown() override {
    service_.reset();
    teacher_.reset();
    store_.reset();
    fs::remove_all(dir_);
    ResetShutdownForTesting();  // a test that requested shutdown and failed midway
  }

  void StartService(const std::string& auth_token = "", double teacher_outage_s = 3600,
                    double teacher_retry_s = 15) {
    DistillServerOptions options;
    options.auth_token = auth_token;
    options.teacher_outage = {.outage_s = teacher_outage_s, .retry_s = teacher_retry_s};
    options.client.concurrency = 4;
    options.client.deadline_s = 5;
    options.client.initial_backoff_s = 0.01;
    options.client.max_backoff_s = 0.1;
    options.client.max_attempts = 10;
    options.client.connect_timeout_s = 1;
    options.persist_interval_s = 0.05;
    auto service = DistillServer::Start(options, store_.get());
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    stub_ = v1::DistillService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(service_->port()), grpc::InsecureChannelCredentials()));
  }
  void StartTeacher(ScriptedOptions scripted, int port = 0) {
    TeacherServerOptions options;
    options.listen = "127.0.0.1:" + std::to_string(port);
    options.workers = 4;
    auto server = TeacherServer::Start(options, std::make_shared<ScriptedTeacher>(scripted));
    ASSERT_TRUE(server.ok()) << server.status();
    teacher_ = *std::move(server);
  }
  std::string TeacherUrl() const { return "rwr://127.0.0.1:" + std::to_string(teacher_->port()); }

  grpc::Status Submit(const std::string& id, const std::string& teacher, v1::Job* job,
                      const std::string& dataset = "") {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    request.set_job_id(id);
    request.set_dataset_path(dataset.empty() ? input_ : dataset);
    request.set_teacher(teacher);
    request.mutable_recipe()->set_negative_fraction(0.3);
    return stub_->SubmitJob(&context, request, job);
  }
  v1::Job Get(const std::string& id) {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id(id);
    v1::Job job;
    EXPECT_TRUE(stub_->GetJob(&context, request, &job).ok());
    return job;
  }
  // Follows WatchJob to the end; returns the last state seen and how many updates came.
  v1::Job Watch(const std::string& id, int* updates = nullptr) {
    grpc::ClientContext context;
    v1::WatchJobRequest request;
    request.set_job_id(id);
    request.set_interval_ms(50);
    auto reader = stub_->WatchJob(&context, request);
    v1::Job job;
    int n = 0;
    while (reader->Read(&job)) ++n;
    EXPECT_TRUE(reader->Finish().ok());
    if (updates != nullptr) *updates = n;
    return job;
  }
  v1::Job Persisted(const std::string& id) {
    auto stored = store_->Get(storage::Family::kJobs, std::string(kJobKeyPrefix) + id);
    v1::Job job;
    EXPECT_TRUE(stored.ok() && stored->has_value()) << id;
    if (stored.ok() && stored->has_value()) EXPECT_TRUE(job.ParseFromString(**stored)) << id;
    return job;
  }
  int64_t CachedAnswers() {
    int64_t n = 0;
    for (storage::Family family :
         {storage::Family::kNotes, storage::Family::kVerdicts, storage::Family::kNegatives}) {
      n += *store_->Count(family);
    }
    return n;
  }
  bool WaitFor(const std::function<bool()>& done, double timeout_s = 30) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < until) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done();
  }

  static constexpr int kItems = 40;
  fs::path dir_;
  std::string input_;
  std::unique_ptr<storage::RocksDbStore> store_;
  std::unique_ptr<TeacherServer> teacher_;
  std::unique_ptr<DistillServer> service_;
  std::unique_ptr<v1::DistillService::Stub> stub_;
};

TEST_F(DistillServiceTest, JobRunsToSuccessWithCountsAndIsPersisted) {
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("first", "builtin:extractive", &job).ok());
  EXPECT_EQ(job.job_id(), "first");
  int updates = 0;
  job = Watch("first", &updates);
  EXPECT_GE(updates, 1);
  EXPECT_EQ(job.state(), v1::Job::SUCCEEDED) << job.error();
  EXPECT_EQ(job.counts().items(), static_cast<uint64_t>(kItems));
  EXPECT_EQ(job.counts().items_done(), static_cast<uint64_t>(kItems));
  EXPECT_EQ(job.counts().notes_kept() + job.counts().dropped_by_verification(),
            static_cast<uint64_t>(kItems));
  EXPECT_GT(job.counts().teacher_calls(), 0u);
  service_->Shutdown();
  auto stored = store_->Get(storage::Family::kJobs, std::string(kJobKeyPrefix) + "first");
  ASSERT_TRUE(stored.ok() && stored->has_value());
  v1::Job persisted;
  ASSERT_TRUE(persisted.ParseFromString(**stored));
  EXPECT_EQ(persisted.state(), v1::Job::SUCCEEDED);
  EXPECT_EQ(persisted.counts().items_done(), static_cast<uint64_t>(kItems));
}

TEST_F(DistillServiceTest, BadSubmissionsAreRefusedWithTheirCode) {
  StartService("", /*teacher_outage_s=*/0);
  v1::Job job;
  EXPECT_EQ(Submit("a", "builtin:extractive", &job, "/nonexistent.jsonl").error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Submit("a", "", &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Submit("bad id!", "builtin:extractive", &job).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(Submit("dup", "builtin:extractive", &job).ok());
  grpc::Status dup = Submit("dup", "builtin:extractive", &job);
  EXPECT_EQ(dup.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(dup.error_message().find("submit under a new --job-id"), std::string::npos)
      << dup.error_message();
  grpc::ClientContext context;
  v1::GetJobRequest request;
  request.set_job_id("missing");
  EXPECT_EQ(stub_->GetJob(&context, request, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  // An unreachable teacher fails the job, with the reason, when no wait is allowed.
  ASSERT_TRUE(Submit("nowhere", "rwr://127.0.0.1:1", &job).ok());
  job = Watch("nowhere");
  EXPECT_EQ(job.state(), v1::Job::FAILED);
  EXPECT_FALSE(job.error().empty());
}

TEST_F(DistillServiceTest, WithATokenEveryCallMustCarryIt) {
  StartService("s3cret");
  v1::Job job;
  EXPECT_EQ(Submit("t", "builtin:extractive", &job).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext wrong;
  wrong.AddMetadata("authorization", "Bearer nope");
  v1::ListJobsResponse jobs;
  EXPECT_EQ(stub_->ListJobs(&wrong, v1::ListJobsRequest(), &jobs).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext right;
  right.AddMetadata("authorization", "Bearer s3cret");
  EXPECT_TRUE(stub_->ListJobs(&right, v1::ListJobsRequest(), &jobs).ok());
}

TEST_F(DistillServiceTest, CancelStopsARunningJobAndAQueuedOne) {
  StartTeacher({.latency_s = 0.05});
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("slow", TeacherUrl(), &job).ok());
  ASSERT_TRUE(Submit("queued", TeacherUrl(), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return Get("slow").state() == v1::Job::RUNNING; }));
  for (const char* id : {"queued", "slow"}) {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_job_id(id);
    ASSERT_TRUE(stub_->CancelJob(&context, request, &job).ok());
  }
  EXPECT_EQ(Get("queued").state(), v1::Job::CANCELLED);
  job = Watch("slow");
  EXPECT_EQ(job.state(), v1::Job::CANCELLED);
  EXPECT_LT(job.counts().items_done(), static_cast<uint64_t>(kItems));
}

// A cancel of a running job is persisted before it is acknowledged, and a service that died
// before the job stopped (kill -9: distill_cli_test) ends that job CANCELLED when it restarts,
// asking the teacher nothing.
TEST_F(DistillServiceTest, ACancelIsDurableAndARestartEndsTheCancelledJob) {
  StartTeacher({.latency_s = 0.05});
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("slow", TeacherUrl(), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return Get("slow").state() == v1::Job::RUNNING; }));
  grpc::ClientContext context;
  v1::CancelJobRequest request;
  request.set_job_id("slow");
  ASSERT_TRUE(stub_->CancelJob(&context, request, &job).ok());
  EXPECT_TRUE(job.cancel_requested());
  EXPECT_TRUE(Persisted("slow").cancel_requested()) << "acknowledged before it was durable";
  EXPECT_EQ(Watch("slow").state(), v1::Job::CANCELLED);
  service_.reset();

  // What a service killed between the cancel and the job's stop leaves in the cache.
  v1::Job killed = Persisted("slow");
  killed.set_job_id("killed");
  killed.set_state(v1::Job::RUNNING);
  ASSERT_TRUE(store_
                  ->Put(storage::Family::kJobs, std::string(kJobKeyPrefix) + "killed",
                        killed.SerializeAsString())
                  .ok());
  const uint64_t served = teacher_->stats().served;
  StartService();
  job = Watch("killed");
  EXPECT_EQ(job.state(), v1::Job::CANCELLED);
  EXPECT_EQ(Persisted("killed").state(), v1::Job::CANCELLED);
  EXPECT_EQ(teacher_->stats().served, served) << "a cancelled job was resumed";
}

TEST_F(DistillServiceTest, JobWithFailingItemsEndsFailedNamingThem) {
  StartTeacher({.fail_every = 7, .fail_code = absl::StatusCode::kInvalidArgument});  // not retried
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("flaky", TeacherUrl(), &job).ok());
  job = Watch("flaky");
  EXPECT_EQ(job.state(), v1::Job::FAILED);
  EXPECT_GT(job.counts().failures(), 0u);
  EXPECT_NE(job.error().find("items failed"), std::string::npos) << job.error();
  EXPECT_NE(job.error().find("item-"), std::string::npos) << job.error();
}

TEST_F(DistillServiceTest, RestartedServiceResumesTheUnfinishedJob) {
  StartTeacher({.latency_s = 0.1});  // ~2 s for the whole job at 4 calls in flight
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("resume-me", TeacherUrl(), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return Get("resume-me").counts().items_done() >= 10; }));
  service_->Shutdown();  // stops mid-job: stays RUNNING in the cache
  service_.reset();
  auto stored = store_->Get(storage::Family::kJobs, std::string(kJobKeyPrefix) + "resume-me");
  v1::Job persisted;
  ASSERT_TRUE(persisted.ParseFromString(**stored));
  EXPECT_EQ(persisted.state(), v1::Job::RUNNING);

  StartService();
  job = Watch("resume-me");
  EXPECT_EQ(job.state(), v1::Job::SUCCEEDED) << job.error();
  EXPECT_GT(job.counts().cache_hits(), 0u) << "the resumed run found the earlier answers";
  int64_t items = 0;
  ASSERT_TRUE(ForEachItem(*store_, [&](const DistilledItem&) {
                ++items;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(items, kItems);
}

// `rwr distill status` shows "N/M items (x%)" and an ETA while the job runs: the total counted by
// the run's check pass reaches the job's counts at once, not when the run ends.
TEST_F(DistillServiceTest, RunningJobShowsItsTotalAndAnEta) {
  StartTeacher({.latency_s = 0.05});  // ~1.5 s for the whole job at 4 calls in flight
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("counted", TeacherUrl(), &job).ok());
  ASSERT_TRUE(WaitFor([&] {
    job = Get("counted");
    return job.state() == v1::Job::RUNNING && job.counts().items_done() > 0 &&
           job.counts().items_done() < static_cast<uint64_t>(kItems);
  })) << "the job never seen running with items done";
  EXPECT_EQ(job.counts().items(), static_cast<uint64_t>(kItems))
      << "at " << job.counts().items_done() << " items done";
  EXPECT_GE(job.eta_seconds(), 0) << "no ETA while running";
  job = Watch("counted");
  EXPECT_EQ(job.state(), v1::Job::SUCCEEDED) << job.error();
  EXPECT_EQ(job.counts().items(), static_cast<uint64_t>(kItems));
}

// SIGINT/SIGTERM stop the running job at once (RunDistill polls the signal), while the owner
// (`rwr distill serve` polls every 100 ms) calls Shutdown() only later. In that window the
// interrupted job must not end SUCCEEDED short of its items and the queued job must not start;
// a service restarted on the cache finishes both, every item once and no answer asked twice.
TEST_F(DistillServiceTest, ShutdownSignalLeavesJobsResumableAndARestartFinishesThem) {
  const std::string second = (dir_ / "second.jsonl").string();
  testing::WriteDistillTestData(second, kItems, /*first=*/kItems);  // ids of its own
  StartTeacher({.latency_s = 0.02});
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("first", TeacherUrl(), &job).ok());
  ASSERT_TRUE(Submit("second", TeacherUrl(), &job, second).ok());
  ASSERT_TRUE(WaitFor([&] { return Get("first").counts().items_done() >= 5; }));
  RequestShutdown(SIGTERM);  // what the signal handler does; no Shutdown() yet
  // The items in flight drain (a few teacher calls); a worker that went on would then finish the
  // first job and run the second within well under the grace given here.
  ASSERT_TRUE(WaitFor([&] { return teacher_->stats().outstanding == 0; }));
  WaitFor(
      [&] {
        return Get("first").state() != v1::Job::RUNNING || Get("second").state() != v1::Job::QUEUED;
      },
      /*timeout_s=*/0.5);
  job = Get("first");
  EXPECT_EQ(job.state(), v1::Job::RUNNING)
      << "interrupted after " << job.counts().items_done() << " of " << kItems << " items";
  EXPECT_LT(job.counts().items_done(), static_cast<uint64_t>(kItems));
  EXPECT_EQ(Get("second").state(), v1::Job::QUEUED);
  v1::Job refused;
  EXPECT_EQ(Submit("late", "builtin:extractive", &refused).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  service_->Shutdown();
  service_.reset();
  EXPECT_EQ(Persisted("first").state(), v1::Job::RUNNING);
  EXPECT_EQ(Persisted("second").state(), v1::Job::QUEUED);
  EXPECT_FALSE(
      store_->Get(storage::Family::kJobs, std::string(kJobKeyPrefix) + "late")->has_value());

  ResetShutdownForTesting();  // the restarted process
  StartService();
  for (const char* id : {"first", "second"}) {
    job = Watch(id);
    EXPECT_EQ(job.state(), v1::Job::SUCCEEDED) << id << ": " << job.error();
    EXPECT_EQ(job.counts().items(), static_cast<uint64_t>(kItems)) << id;
    EXPECT_EQ(job.counts().items_done(), static_cast<uint64_t>(kItems)) << id;
    EXPECT_EQ(job.counts().failures(), 0u) << id;
  }
  std::set<std::string> ids;
  int64_t items = 0;
  ASSERT_TRUE(ForEachItem(*store_, [&](const DistilledItem& item) {
                ids.insert(item.id);
                ++items;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(items, 2 * kItems);
  EXPECT_EQ(ids.size(), static_cast<size_t>(2 * kItems));
  EXPECT_EQ(static_cast<int64_t>(teacher_->stats().served), CachedAnswers())
      << "an answer was asked for twice, or one was lost";
}

// A teacher that answers nothing (down, hung) stops the job after a window of items instead of
// failing every item of the dataset in turn; the job waits for the teacher, tries it again, and
// fails with the reason once it has waited teacher_outage_s. The items it did not reach are left
// alone for the resubmitted job.
TEST_F(DistillServiceTest, JobOnATeacherThatFailsEveryCallStopsEarlyAndSaysWhy) {
  constexpr int kMany = 200;
  testing::WriteDistillTestData(input_, kMany);
  StartTeacher({.fail_every = 1, .fail_code = absl::StatusCode::kUnavailable});
  StartService("", /*teacher_outage_s=*/0.5, /*teacher_retry_s=*/0.1);
  v1::Job job;
  ASSERT_TRUE(Submit("down", TeacherUrl(), &job).ok());
  job = Watch("down");
  EXPECT_EQ(job.state(), v1::Job::FAILED);
  EXPECT_NE(job.error().find("items in a row"), std::string::npos) << job.error();
  EXPECT_NE(job.error().find("UNAVAILABLE"), std::string::npos) << job.error();
  EXPECT_NE(job.error().find("has been unusable since"), std::string::npos) << job.error();
  EXPECT_LT(job.counts().items_done(), static_cast<uint64_t>(kMany) / 2);
  EXPECT_EQ(job.counts().items(), static_cast<uint64_t>(kMany));
  EXPECT_TRUE(job.waiting().empty());
  EXPECT_EQ(job.waiting_since_unix_ms(), 0);
  // "has been unusable since" above says it ran more than once: a first failure has waited 0 s.
}

// teacher_outage_s 0: the job fails at its first stop, as a teacher refusing the token always does.
TEST_F(DistillServiceTest, WithNoOutageAllowedAJobFailsAtOnce) {
  StartService("", /*teacher_outage_s=*/0);
  v1::Job job;
  ASSERT_TRUE(Submit("down", "rwr://127.0.0.1:" + std::to_string(testing::FreePort()), &job).ok());
  job = Watch("down");
  EXPECT_EQ(job.state(), v1::Job::FAILED);
  EXPECT_NE(job.error().find("UNAVAILABLE"), std::string::npos) << job.error();
  EXPECT_EQ(job.error().find("unusable since"), std::string::npos) << job.error();
  // Never reached: perhaps a wrong address, which the error names.
  EXPECT_NE(job.error().find("it has not been reached once since the service started: is rwr://"),
            std::string::npos)
      << job.error();
}

// A teacher down when its jobs start does not fail them: they wait QUEUED, saying why and until
// when, a job for another teacher runs meanwhile, and once the teacher listens again they run to
// their end. The wait is persisted with the job.
TEST_F(DistillServiceTest, JobsWaitForTheirTeacherWhileOthersRunAndFinishWhenItIsBack) {
  const int port = testing::FreePort();
  const std::string down = "rwr://127.0.0.1:" + std::to_string(port);
  StartService("", /*teacher_outage_s=*/3600, /*teacher_retry_s=*/0.2);
  v1::Job job;
  ASSERT_TRUE(Submit("first", down, &job).ok());
  ASSERT_TRUE(WaitFor([&] { return !Get("first").waiting().empty(); }));
  ASSERT_TRUE(Submit("second", down, &job).ok());
  EXPECT_EQ(job.state(), v1::Job::QUEUED);
  EXPECT_NE(job.waiting().find("teacher unusable since"), std::string::npos) << job.waiting();
  ASSERT_TRUE(Submit("other", "builtin:extractive", &job).ok());
  EXPECT_EQ(Watch("other").state(), v1::Job::SUCCEEDED);

  for (const std::string id : {"first", "second"}) {
    v1::Job waiting;
    // A job trying the teacher is RUNNING for that moment.
    EXPECT_TRUE(WaitFor([&] {
      waiting = Get(id);
      return waiting.state() == v1::Job::QUEUED && !waiting.waiting().empty();
    })) << id;
    EXPECT_NE(waiting.waiting().find("UNAVAILABLE"), std::string::npos) << waiting.waiting();
    EXPECT_NE(waiting.waiting().find("the job fails if it is still unusable at"), std::string::npos)
        << waiting.waiting();
    EXPECT_NE(waiting.waiting().find(fmt::format(
                  "it has not been reached once since the service started: is {} the teacher's "
                  "address?",
                  down)),
              std::string::npos)
        << waiting.waiting();
    EXPECT_GT(Persisted(id).waiting_since_unix_ms(), 0) << id;
  }

  // Slow enough that "first" runs for seconds: "second" stops saying it waits once "first" has
  // its first answers, not when "first" ends.
  StartTeacher({.latency_s = 0.1}, port);
  ASSERT_TRUE(WaitFor([&] { return Get("first").counts().items_done() > 0; }));
  EXPECT_EQ(Get("first").state(), v1::Job::RUNNING);
  EXPECT_TRUE(Get("second").waiting().empty()) << Get("second").waiting();
  for (const std::string id : {"first", "second"}) {
    job = Watch(id);
    EXPECT_EQ(job.state(), v1::Job::SUCCEEDED) << id << ": " << job.error();
    EXPECT_EQ(job.counts().items_done(), static_cast<uint64_t>(kItems)) << id;
    EXPECT_TRUE(job.waiting().empty()) << id;
    EXPECT_EQ(Persisted(id).waiting_since_unix_ms(), 0) << id;
  }
}

// The wait counts from the job's first failure, also across a restart of the service: the
// restarted service tries the teacher at once and the job waits on with its first time.
TEST_F(DistillServiceTest, AWaitCountsFromTheFirstFailureAcrossARestart) {
  StartService("", /*teacher_outage_s=*/3600, /*teacher_retry_s=*/0.2);
  v1::Job job;
  ASSERT_TRUE(Submit("w", "rwr://127.0.0.1:" + std::to_string(testing::FreePort()), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return !Get("w").waiting().empty(); }));
  const int64_t since = Persisted("w").waiting_since_unix_ms();
  ASSERT_GT(since, 0);
  service_->Shutdown();
  service_.reset();
  EXPECT_EQ(Persisted("w").state(), v1::Job::QUEUED);

  StartService("", /*teacher_outage_s=*/3600, /*teacher_retry_s=*/0.2);
  EXPECT_TRUE(Get("w").waiting().empty()) << "the stopped service's next try is stale";
  EXPECT_TRUE(Persisted("w").waiting().empty()) << "and so is its record";
  ASSERT_TRUE(WaitFor([&] { return !Get("w").waiting().empty(); }));  // it tried, and failed
  EXPECT_EQ(Persisted("w").waiting_since_unix_ms(), since);
  const std::string first =
      fmt::format("since {:%Y-%m-%d %H:%M:%S} UTC", fmt::gmtime(std::time_t{since / 1000}));
  EXPECT_NE(Get("w").waiting().find(first), std::string::npos) << first;
}

// A run that got answers ends the outage it waited through: when the teacher goes down again
// mid-run, the job waits afresh instead of failing on its first wait's clock.
TEST_F(DistillServiceTest, ATeacherThatAnsweredInBetweenStartsAFreshWait) {
  constexpr int kMany = 400;
  testing::WriteDistillTestData(input_, kMany);
  const int port = testing::FreePort();
  // 3 s allowed, the teacher back after half: room for a loaded machine to try it in time.
  StartService("", /*teacher_outage_s=*/3, /*teacher_retry_s=*/0.2);
  v1::Job job;
  ASSERT_TRUE(Submit("j", "rwr://127.0.0.1:" + std::to_string(port), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return !Get("j").waiting().empty(); }));
  const int64_t first_since = Persisted("j").waiting_since_unix_ms();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  StartTeacher({.latency_s = 0.02}, port);
  ASSERT_TRUE(WaitFor([&] { return teacher_->stats().served >= 40; }));
  teacher_.reset();  // down again, mid-run
  ASSERT_TRUE(WaitFor([&] {
    const v1::Job now = Get("j");
    return now.state() == v1::Job::QUEUED && !now.waiting().empty();
  })) << Get("j").state()
      << " " << Get("j").error();
  EXPECT_GT(Persisted("j").waiting_since_unix_ms(), first_since);
  StartTeacher({}, port);
  job = Watch("j");
  EXPECT_EQ(job.state(), v1::Job::SUCCEEDED) << job.error();
}

// A cancel reaches a job that waits for its teacher, as any queued job.
TEST_F(DistillServiceTest, AJobWaitingForItsTeacherCanBeCancelled) {
  StartService("", /*teacher_outage_s=*/3600, /*teacher_retry_s=*/60);  // no try while it waits
  v1::Job job;
  ASSERT_TRUE(Submit("w", "rwr://127.0.0.1:" + std::to_string(testing::FreePort()), &job).ok());
  ASSERT_TRUE(WaitFor([&] { return !Get("w").waiting().empty(); }));
  grpc::ClientContext context;
  v1::CancelJobRequest request;
  request.set_job_id("w");
  ASSERT_TRUE(stub_->CancelJob(&context, request, &job).ok());
  EXPECT_EQ(job.state(), v1::Job::CANCELLED);
  EXPECT_TRUE(job.waiting().empty());
  EXPECT_EQ(Persisted("w").state(), v1::Job::CANCELLED);
}

// Cancel of a job that has ended changes nothing and says so as an error (a script's
// `cancel && ...` must not read it as cancelled); an unknown id is NOT_FOUND.
TEST_F(DistillServiceTest, CancelOfAnEndedJobIsRefusedAndLeavesItAsItEnded) {
  StartService();
  v1::Job job;
  ASSERT_TRUE(Submit("done", "builtin:extractive", &job).ok());
  ASSERT_EQ(Watch("done").state(), v1::Job::SUCCEEDED);
  for (const auto& [id, code] :
       {std::pair<std::string, grpc::StatusCode>{"done", grpc::StatusCode::FAILED_PRECONDITION},
        {"unknown", grpc::StatusCode::NOT_FOUND}}) {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_job_id(id);
    grpc::Status status = stub_->CancelJob(&context, request, &job);
    EXPECT_EQ(status.error_code(), code) << id << ": " << status.error_message();
  }
  EXPECT_EQ(Get("done").state(), v1::Job::SUCCEEDED);
  EXPECT_EQ(Persisted("done").state(), v1::Job::SUCCEEDED);
}

// A recipe.concurrency that no teacher client could use is refused at submit, not accepted and
// failed later with a negative window in the message.
TEST_F(DistillServiceTest, SubmitRefusesAConcurrencyAboveTheLimit) {
  StartService();
  grpc::ClientContext context;
  v1::SubmitJobRequest request;
  request.set_job_id("wide");
  request.set_dataset_path(input_);
  request.set_teacher("builtin:extractive");
  request.mutable_recipe()->set_negative_fraction(0.3);
  request.mutable_recipe()->set_concurrency(3000000000u);
  v1::Job job;
  grpc::Status status = stub_->SubmitJob(&context, request, &job);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("65536"), std::string::npos) << status.error_message();
}

// A job resumed after a restart must not show the rate and ETA of the run that was stopped (here
// its dataset is gone, so the resumed run ends before reporting any of its own).
TEST_F(DistillServiceTest, ResumedJobDoesNotKeepTheStoppedRunsRate) {
  v1::Job stopped;
  stopped.set_job_id("old");
  stopped.set_state(v1::Job::RUNNING);
  stopped.set_dataset_path((dir_ / "gone.jsonl").string());
  stopped.set_teacher("builtin:extractive");
  stopped.mutable_recipe()->set_negative_fraction(0.3);
  stopped.set_items_per_second(99);
  stopped.set_eta_seconds(7);
  ASSERT_TRUE(store_
                  ->Put(storage::Family::kJobs, std::string(kJobKeyPrefix) + "old",
                        stopped.SerializeAsString())
                  .ok());
  StartService();
  v1::Job job = Watch("old");
  EXPECT_EQ(job.state(), v1::Job::FAILED);
  EXPECT_NE(job.error().find("gone.jsonl"), std::string::npos) << job.error();
  EXPECT_EQ(job.items_per_second(), 0);
  EXPECT_EQ(Persisted("old").items_per_second(), 0);
}

TEST(DistillOverGrpcTest, CallsFailingWithUnavailableAreRetriedToCompletion) {
  const fs::path dir = testing::MakeTempDir("distill_unavailable");
  const std::string input = (dir / "data.jsonl").string();
  testing::WriteDistillTestData(input, 30);
  // Every 3rd call the server answers UNAVAILABLE; the client retries with backoff.
  auto server =
      TeacherServer::Start({}, std::make_shared<ScriptedTeacher>(ScriptedOptions{.fail_every = 3}));
  ASSERT_TRUE(server.ok()) << server.status();
  TeacherClientOptions client;
  client.concurrency = 8;
  client.initial_backoff_s = 0.01;
  client.max_backoff_s = 0.05;
  client.max_attempts = 6;
  auto teacher = MakeTeacher("rwr://127.0.0.1:" + std::to_string((*server)->port()), client);
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  storage::MemoryKvStore store;
  auto cache = NoteCache::Open(&store);
  DistillRunOptions options{.input_path = input, .show_progress = false};
  auto summary = RunDistill(options, **teacher, **cache);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->counts.failures, 0);
  EXPECT_EQ(summary->counts.items_done, 30);
  auto* remote = dynamic_cast<RemoteTeacher*>(teacher->get());
  ASSERT_NE(remote, nullptr);
  EXPECT_GT(remote->Stats().retries, 0u) << "the failures were injected and retried";
  teacher->reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rwr::teacher
