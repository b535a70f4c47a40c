// RunDistill (teacher_client/distill_run.h) against the in-process extractive teacher and against a
// real TeacherServer on loopback with faults injected (ScriptedTeacher): counts add up, a rerun
// asks the teacher for nothing cached, failed items are reported with their reasons and a rerun
// finishes them, tampered records are re-asked. A teacher that fails every call stops the run
// early, one that is overloaded (a full queue, or one so deep that calls wait past their deadline)
// fails no item and never stops it; an input with no items, or one that changes between the two
// passes, is an error; a stop is honoured while the input is checked, and one that comes once every
// item has started leaves the run complete.
#include "teacher_client/distill_run.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <vector>

#include "storage/rocksdb_store.h"
#include "teacher_client/client.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/scripted_teacher.h"
#include "teacher_client/teacher_server.h"
#include "tests/distill/distill_test_data.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

namespace fs = std::filesystem;
using storage::Family;

class DistillRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("distill_run");
    input_ = (dir_ / "data.jsonl").string();
    testing::WriteDistillTestData(input_, kItems);
    OpenCache();
  }
  void TearDown() override {
    cache_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }
  void OpenCache() {
    cache_.reset();
    store_.reset();
    auto store = storage::RocksDbStore::Open((dir_ / "cache").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto cache = NoteCache::Open(store_.get());
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = *std::move(cache);
  }
  // A run over input_ without a progress bar, `in_flight` items at a time (0: the default).
  DistillRunOptions QuietRun(int in_flight = 0) const {
    DistillRunOptions options;
    options.input_path = input_;
    if (in_flight > 0) options.items_in_flight = in_flight;
    options.show_progress = false;
    return options;
  }
  DistillSummary Run(Teacher& teacher, double negative_fraction = 0.5) {
    DistillRunOptions options = QuietRun(16);
    options.negative_fraction = negative_fraction;
    auto summary = RunDistill(options, teacher, *cache_);
    EXPECT_TRUE(summary.ok()) << summary.status();
    return summary.ok() ? *summary : DistillSummary{};
  }
  // Distils `items` items through a TeacherServer on loopback with `behind` behind it, the client
  // asking for far more than the server can take at once, and expects every item to finish with
  // no failure and no early stop (an overloaded teacher pushes back; it does not fail items).
  // Returns the server's counters, for the test to check the teacher really was overloaded.
  TeacherServerStats DistillThroughAnOverloadedServer(int items,
                                                      TeacherServerOptions server_options,
                                                      std::shared_ptr<Teacher> behind,
                                                      TeacherClientOptions client_options) {
    testing::WriteDistillTestData(input_, items);
    server_options.listen = "127.0.0.1:0";
    auto server = TeacherServer::Start(server_options, std::move(behind));
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return {};
    auto client =
        MakeTeacher("rwr://127.0.0.1:" + std::to_string((*server)->port()), client_options);
    EXPECT_TRUE(client.ok()) << client.status();
    if (!client.ok()) return {};
    DistillRunOptions options = QuietRun(2 * items);
    auto summary = RunDistill(options, **client, *cache_);
    EXPECT_TRUE(summary.ok()) << summary.status();
    if (summary.ok()) {
      EXPECT_EQ(summary->counts.failures, 0)
          << (summary->failed.empty() ? "" : summary->failed[0].reason);
      EXPECT_TRUE(summary->teacher_unusable.ok()) << summary->teacher_unusable;
    }
    EXPECT_EQ(FinishedItems(), items);
    return (*server)->stats();
  }
  int64_t CachedAnswers() {
    return *store_->Count(Family::kNotes) + *store_->Count(Family::kVerdicts) +
           *store_->Count(Family::kNegatives);
  }
  int64_t FinishedItems() {
    int64_t n = 0;
    EXPECT_TRUE(ForEachItem(*store_, [&](const DistilledItem&) {
                  ++n;
                  return absl::OkStatus();
                }).ok());
    return n;
  }

  static constexpr int kItems = 40;
  fs::path dir_;
  std::string input_;
  std::unique_ptr<storage::RocksDbStore> store_;
  std::unique_ptr<NoteCache> cache_;
};

// The outage policy both commands share: delays double from retry_s up to 5 minutes, a teacher
// is given up once waiting cannot mend it or it has waited outage_s, and values out of range are
// one error naming both keys.
TEST(TeacherOutagePolicy, DelaysDoubleToTheCapAndAWaitEndsAtTheLimit) {
  const TeacherOutagePolicy policy{.outage_s = 3600, .retry_s = 15};
  EXPECT_EQ(policy.NextDelay(0), 15);
  EXPECT_EQ(policy.NextDelay(15), 30);
  EXPECT_EQ(policy.NextDelay(240), 300);
  EXPECT_EQ(policy.NextDelay(300), 300);
  EXPECT_FALSE(policy.GivesUp(absl::StatusCode::kUnavailable, 3599));
  EXPECT_TRUE(policy.GivesUp(absl::StatusCode::kUnavailable, 3600));
  EXPECT_FALSE(policy.GivesUp(absl::StatusCode::kDeadlineExceeded, 0));
  EXPECT_TRUE(policy.GivesUp(absl::StatusCode::kUnauthenticated, 0));
  EXPECT_TRUE((TeacherOutagePolicy{.outage_s = 0}).GivesUp(absl::StatusCode::kUnavailable, 0));
  EXPECT_TRUE(policy.Check().ok());
  for (const TeacherOutagePolicy bad :
       {TeacherOutagePolicy{.outage_s = -1}, TeacherOutagePolicy{.retry_s = 0},
        TeacherOutagePolicy{.outage_s = 31 * 86400.0}}) {
    const absl::Status checked = bad.Check();
    EXPECT_EQ(checked.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(checked.message().find("distill.teacher_outage_s"), std::string::npos) << checked;
    EXPECT_NE(checked.message().find("distill.teacher_retry_s"), std::string::npos) << checked;
  }
}

// The "is X the teacher's address?" hint goes only with failures an unreachable address gives
// (unavailable, deadline exceeded) and only while no call has reached the teacher: a teacher that
// answered, even to refuse (unauthenticated, invalid argument, internal), is at that address.
TEST(NeverReachedHint, OnlyForAnUnreachedTeacherFailingAsAnUnreachableOneDoes) {
  const std::string hint =
      NeverReachedHint(absl::StatusCode::kUnavailable, false, "dns:///t:1", "this run started");
  EXPECT_EQ(hint,
            "; it has not been reached once since this run started: is dns:///t:1 the teacher's "
            "address?");
  EXPECT_NE(NeverReachedHint(absl::StatusCode::kDeadlineExceeded, false, "a", "x"), "");
  EXPECT_EQ(NeverReachedHint(absl::StatusCode::kUnavailable, true, "a", "x"), "");
  for (const absl::StatusCode refused :
       {absl::StatusCode::kUnauthenticated, absl::StatusCode::kPermissionDenied,
        absl::StatusCode::kInvalidArgument, absl::StatusCode::kInternal,
        absl::StatusCode::kResourceExhausted}) {
    EXPECT_EQ(NeverReachedHint(refused, false, "a", "x"), "") << absl::StatusCodeToString(refused);
  }
}

TEST_F(DistillRunTest, CountsAddUpAndARerunAsksTheTeacherNothing) {
  ScriptedTeacher teacher({});  // extractive inside, counts calls
  DistillSummary first = Run(teacher);
  const DistillCounts& c = first.counts;
  EXPECT_EQ(c.items, kItems);
  EXPECT_EQ(c.items_done, kItems);
  EXPECT_EQ(c.failures, 0);
  EXPECT_EQ(c.notes_kept + c.dropped_by_verification, kItems);
  EXPECT_EQ(c.dropped_by_verification, kItems / 4) << "the unanswerable quarter is dropped";
  EXPECT_GT(c.negatives, 0);
  EXPECT_LT(c.negatives, c.notes_kept) << "negatives go to a fraction of kept items";
  EXPECT_EQ(c.teacher_calls, static_cast<int64_t>(teacher.calls()));
  EXPECT_EQ(c.cache_hits, 0);
  EXPECT_EQ(c.teacher_calls, CachedAnswers()) << "every answer cached";
  EXPECT_EQ(FinishedItems(), kItems);

  ScriptedTeacher again({});
  DistillSummary second = Run(again);
  EXPECT_EQ(again.calls(), 0u);
  EXPECT_EQ(second.counts.teacher_calls, 0);
  EXPECT_EQ(second.counts.cache_hits, c.teacher_calls);
  EXPECT_EQ(second.counts.notes_kept, c.notes_kept);
  EXPECT_EQ(second.counts.negatives, c.negatives);

  // The data stage sees what was distilled, with the input's extra fields.
  auto item = LookupItem(*store_, "item-1");
  ASSERT_TRUE(item.ok() && item->has_value());
  EXPECT_TRUE((*item)->kept);
  EXPECT_NE((*item)->note.find("Keeper1 Smith"), std::string::npos) << (*item)->note;
  EXPECT_EQ((*item)->answer, "Keeper1 Smith");
  EXPECT_NE((*item)->extra_json.find("harbours"), std::string::npos);
  EXPECT_NE((*item)->source.find("data.jsonl:2"), std::string::npos) << (*item)->source;
  int with_negative = 0;
  ASSERT_TRUE(ForEachItem(*store_, [&](const DistilledItem& it) {
                if (it.negative_context) {
                  ++with_negative;
                  EXPECT_EQ(it.negative_context->find(it.answer), std::string::npos)
                      << "the negative still holds the answer: " << *it.negative_context;
                }
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(with_negative, c.negatives);
}

TEST_F(DistillRunTest, NegativeSelectionIsAStableFractionOfIds) {
  int selected = 0;
  for (int i = 0; i < 2000; ++i) selected += SelectedForNegative("id-" + std::to_string(i), 0.3);
  EXPECT_GT(selected, 520);
  EXPECT_LT(selected, 680);
  EXPECT_EQ(SelectedForNegative("x", 0.3), SelectedForNegative("x", 0.3));
  EXPECT_FALSE(SelectedForNegative("x", 0));
  EXPECT_TRUE(SelectedForNegative("x", 1));
}

TEST_F(DistillRunTest, FailingCallsAreReportedPerItemAndARerunFinishesThem) {
  // Every 5th teacher call fails for good (in process: no client retries).
  ScriptedTeacher flaky({.fail_every = 5, .fail_code = absl::StatusCode::kUnavailable});
  DistillSummary first = Run(flaky);
  EXPECT_GT(first.counts.failures, 0);
  EXPECT_EQ(first.counts.items_done, kItems);
  ASSERT_EQ(static_cast<int64_t>(first.failed.size()), first.counts.failures);
  for (const FailedItem& failed : first.failed) {
    EXPECT_FALSE(failed.id.empty());
    EXPECT_NE(failed.source.find("data.jsonl:"), std::string::npos);
    EXPECT_TRUE(failed.stage == "note" || failed.stage == "verify" ||
                failed.stage == "remove_evidence")
        << failed.stage;
    EXPECT_FALSE(failed.reason.empty());
    // The reason is recorded in the cache (jobs family) too.
    auto bytes = store_->Get(Family::kJobs, std::string(kItemKeyPrefix) + failed.id);
    ASSERT_TRUE(bytes.ok() && bytes->has_value());
    v1::ItemRecord record;
    ASSERT_TRUE(record.ParseFromString(**bytes));
    EXPECT_EQ(record.state(), v1::ItemRecord::FAILED);
    EXPECT_EQ(record.failed_stage(), failed.stage);
    EXPECT_EQ(record.failure(), failed.reason);
  }
  EXPECT_EQ(FinishedItems(), kItems - first.counts.failures);
  const int64_t cached_before = CachedAnswers();

  // The rerun asks only for what is missing, and finishes everything.
  ScriptedTeacher healthy({});
  DistillSummary second = Run(healthy);
  EXPECT_EQ(second.counts.failures, 0);
  EXPECT_EQ(FinishedItems(), kItems);
  EXPECT_EQ(second.counts.teacher_calls, CachedAnswers() - cached_before);
  EXPECT_EQ(second.counts.cache_hits, cached_before);
  auto retried = store_->Get(Family::kJobs, std::string(kItemKeyPrefix) + first.failed[0].id);
  v1::ItemRecord record;
  ASSERT_TRUE(record.ParseFromString(**retried));
  EXPECT_EQ(record.attempts(), 2u);
  EXPECT_NE(record.state(), v1::ItemRecord::FAILED);
}

TEST_F(DistillRunTest, MalformedAnswersFailTheirItemsWithTheReason) {
  ScriptedTeacher blank({.answer = ScriptedOptions::Answer::kBlankNote});
  DistillSummary summary = Run(blank);
  EXPECT_EQ(summary.counts.failures, kItems);
  ASSERT_FALSE(summary.failed.empty());
  EXPECT_EQ(summary.failed[0].stage, "note");
  EXPECT_NE(summary.failed[0].reason.find("blank"), std::string::npos) << summary.failed[0].reason;
  EXPECT_EQ(*store_->Count(Family::kNotes), 0) << "malformed answers are never cached";

  ScriptedTeacher bad_score({.answer = ScriptedOptions::Answer::kBadScore});
  summary = Run(bad_score);
  EXPECT_EQ(summary.counts.failures, kItems);
  EXPECT_EQ(summary.failed[0].stage, "verify");
  EXPECT_EQ(*store_->Count(Family::kVerdicts), 0);
  EXPECT_EQ(*store_->Count(Family::kNotes), kItems) << "the good notes were kept";
}

TEST_F(DistillRunTest, TamperedRecordIsReaskedAndOverwritten) {
  ScriptedTeacher teacher({});
  const DistillSummary first = Run(teacher);
  // Forge one note: same key, a different request inside (what a collision would look like).
  const auto request =
      NoteRequestFor(teacher.Info(), testing::DistillTestItem(0)["context"].get<std::string>(),
                     testing::DistillTestItem(0)["question"].get<std::string>());
  const std::string key = CacheKey(request);
  v1::CacheRecord record;
  ASSERT_TRUE(record.ParseFromString(**store_->Get(Family::kNotes, key)));
  record.mutable_request()->set_question("something else");
  ASSERT_TRUE(store_->Put(Family::kNotes, key, record.SerializeAsString()).ok());

  ScriptedTeacher second_teacher({});
  DistillSummary second = Run(second_teacher);
  EXPECT_EQ(second.counts.cache_rejected, 1);
  EXPECT_EQ(second.counts.teacher_calls, 1);
  EXPECT_EQ(second_teacher.calls(), 1u);
  EXPECT_EQ(cache_->Lookup(request)->outcome, CacheLookup::Outcome::kHit) << "overwritten";
  EXPECT_EQ(second.counts.notes_kept, first.counts.notes_kept);
}

// --- Over gRPC, against a real TeacherServer on loopback ---

std::unique_ptr<TeacherServer> StartServer(int port, std::shared_ptr<Teacher> backend) {
  TeacherServerOptions options;
  options.listen = "127.0.0.1:" + std::to_string(port);
  auto server = TeacherServer::Start(options, std::move(backend));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TeacherClientOptions ClientOptions() {
  TeacherClientOptions options;
  options.concurrency = 16;
  options.deadline_s = 5;
  options.max_attempts = 30;
  options.initial_backoff_s = 0.02;
  options.max_backoff_s = 0.2;
  options.connect_timeout_s = 5;
  return options;
}

TEST_F(DistillRunTest, TeacherKilledAndRestartedMidRunLosesNothing) {
  const int port = testing::FreePort();
  auto backend = std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.01});
  auto server = StartServer(port, backend);
  ASSERT_TRUE(server);
  auto client = MakeTeacher("rwr://127.0.0.1:" + std::to_string(port), ClientOptions());
  ASSERT_TRUE(client.ok()) << client.status();

  // Kill the server once some answers are cached; bring a new one up on the same port 300 ms later.
  std::atomic<bool> restarted{false};
  std::thread chaos([&] {
    while (CachedAnswers() < 10) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    server->Shutdown(0);
    server.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    server =
        StartServer(port, std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.01}));
    restarted = true;
  });
  DistillSummary first = Run(**client);
  chaos.join();
  ASSERT_TRUE(restarted.load());
  // The client retried through the outage; any item that still failed is listed with its reason.
  EXPECT_EQ(first.counts.items_done, kItems);
  EXPECT_EQ(static_cast<int64_t>(first.failed.size()), first.counts.failures);
  EXPECT_EQ(FinishedItems(), kItems - first.counts.failures);
  DistillSummary second = Run(**client);
  EXPECT_EQ(second.counts.failures, 0);
  EXPECT_EQ(FinishedItems(), kItems);
  if (first.counts.failures == 0) EXPECT_EQ(second.counts.teacher_calls, 0);
}

TEST_F(DistillRunTest, AnswersSlowerThanTheDeadlineFailWithTheReasonThenRerunFinishes) {
  const int port = testing::FreePort();
  auto server =
      StartServer(port, std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.5}));
  ASSERT_TRUE(server);
  TeacherClientOptions options = ClientOptions();
  options.deadline_s = 0.05;
  options.max_attempts = 2;
  auto slow_client = MakeTeacher("rwr://127.0.0.1:" + std::to_string(port), options);
  ASSERT_TRUE(slow_client.ok()) << slow_client.status();
  DistillSummary first = Run(**slow_client);
  // Every call timed out: the run stops once a window of items has failed that way
  // (TeacherThatFailsEveryCallStopsTheRun...), each failed item listed with its reason.
  EXPECT_NE(first.teacher_unusable.message().find("eadline"), std::string::npos)
      << first.teacher_unusable;
  EXPECT_GE(first.counts.failures, 16);
  ASSERT_EQ(first.failed.size(), static_cast<size_t>(first.counts.failures));
  EXPECT_EQ(first.failed[0].stage, "note");
  EXPECT_NE(first.failed[0].reason.find("eadline"), std::string::npos) << first.failed[0].reason;
  slow_client->reset();
  server->Shutdown(0);

  const int fast_port = testing::FreePort();
  auto fast = StartServer(fast_port, std::make_shared<ExtractiveTeacher>());
  auto client = MakeTeacher("rwr://127.0.0.1:" + std::to_string(fast_port), ClientOptions());
  ASSERT_TRUE(client.ok());
  DistillSummary second = Run(**client);
  EXPECT_EQ(second.counts.failures, 0);
  EXPECT_EQ(FinishedItems(), kItems);
}

TEST_F(DistillRunTest, BadInputInFailModeStopsBeforeAnyTeacherCall) {
  std::ofstream(input_, std::ios::app) << "{not json\n";
  ScriptedTeacher teacher({});
  DistillRunOptions options = QuietRun();
  auto summary = RunDistill(options, teacher, *cache_);
  ASSERT_FALSE(summary.ok());
  EXPECT_NE(std::string(summary.status().message()).find("data.jsonl:41: malformed JSON"),
            std::string::npos)
      << summary.status();
  EXPECT_EQ(teacher.calls(), 0u);

  options.dataset = {.on_bad_input = OnBadInput::kSkip,
                     .quarantine_path = (dir_ / "quarantine.jsonl").string()};
  summary = RunDistill(options, teacher, *cache_);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->counts.bad_input_lines, 1);
  EXPECT_EQ(summary->counts.items_done, kItems);
  EXPECT_NE(testing::ReadFile(dir_ / "quarantine.jsonl").find("\"line\":41"), std::string::npos);
}

// The total counted by the check pass reaches the progress callback (the service's job counts,
// `rwr distill status`) from the first report on, not only with the summary at the end.
TEST_F(DistillRunTest, ProgressReportsCarryTheTotalWhileTheRunIsGoing) {
  ScriptedTeacher teacher({.latency_s = 0.01});  // a few hundred ms for the whole run
  DistillRunOptions options = QuietRun(4);
  options.progress_interval_s = 0.01;
  std::vector<DistillCounts> reports;  // on_progress runs on the driving thread only
  options.on_progress = [&](const DistillCounts& counts) { reports.push_back(counts); };
  auto summary = RunDistill(options, teacher, *cache_);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_FALSE(reports.empty());
  EXPECT_EQ(reports.front().items_done, 0) << "the first report comes before any item is done";
  int64_t while_running = 0;
  for (const DistillCounts& counts : reports) {
    EXPECT_EQ(counts.items, kItems) << "at " << counts.items_done << " items done";
    if (counts.items_done < kItems) ++while_running;
  }
  EXPECT_GT(while_running, 0);
  EXPECT_EQ(summary->counts.items, kItems);
  EXPECT_EQ(summary->counts.items_done, kItems);
}

// A teacher that is down (or hung, or refusing the token) fails every call after the client's
// retries. The run stops after a window of such items instead of failing every remaining item in
// turn, leaves the items it did not start alone, and a rerun on a healthy teacher finishes them.
TEST_F(DistillRunTest, TeacherThatFailsEveryCallStopsTheRunAndLeavesTheRestAlone) {
  constexpr int kMany = 400;
  testing::WriteDistillTestData(input_, kMany);
  ScriptedTeacher down({.fail_every = 1, .fail_code = absl::StatusCode::kUnavailable});
  DistillRunOptions options = QuietRun(4);
  auto summary = RunDistill(options, down, *cache_);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_FALSE(summary->interrupted);
  EXPECT_NE(summary->teacher_unusable.message().find("16 items in a row"), std::string::npos)
      << summary->teacher_unusable;
  EXPECT_GE(summary->counts.failures, kTeacherDownItems);
  EXPECT_LE(summary->counts.failures, kTeacherDownItems + options.items_in_flight);
  EXPECT_EQ(summary->counts.items, kMany);
  EXPECT_EQ(*store_->Count(Family::kJobs), summary->counts.failures)
      << "only the items that were tried have a record";
  EXPECT_NE(SummaryLine(*summary).find("stopped after"), std::string::npos);
  EXPECT_EQ(SummaryJson(*summary)["teacher_unusable"],
            std::string(summary->teacher_unusable.message()));

  ScriptedTeacher healthy({});
  auto rerun = RunDistill(options, healthy, *cache_);
  ASSERT_TRUE(rerun.ok()) << rerun.status();
  EXPECT_TRUE(rerun->teacher_unusable.ok());
  EXPECT_EQ(rerun->counts.failures, 0);
  EXPECT_EQ(FinishedItems(), kMany);
}

// Failures about the request (here INVALID_ARGUMENT on every call) say nothing about the teacher
// as a whole: each item fails on its own and the run goes through the dataset.
TEST_F(DistillRunTest, FailuresAboutTheRequestDoNotStopTheRun) {
  ScriptedTeacher refusing({.fail_every = 1, .fail_code = absl::StatusCode::kInvalidArgument});
  DistillRunOptions options = QuietRun(2);
  auto summary = RunDistill(options, refusing, *cache_);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(summary->teacher_unusable.ok()) << summary->teacher_unusable;
  EXPECT_EQ(summary->counts.failures, kItems);
}

// A teacher server answering RESOURCE_EXHAUSTED because the client asks far faster than its queue
// holds (the reviewer's `--concurrency 5000` against `rwr teacher serve`'s queue of 1024, scaled
// down) is pushing back, not failing items: every item finishes and the run never stops.
TEST_F(DistillRunTest, AClientWindowOverTheTeachersQueueFailsNoItem) {
  constexpr int kMany = 200;
  TeacherServerOptions server_options;
  server_options.workers = 1;
  server_options.queue_capacity = 8;
  TeacherClientOptions client_options = ClientOptions();
  client_options.concurrency = 4 * kMany;
  client_options.max_attempts = 2;
  const TeacherServerStats stats = DistillThroughAnOverloadedServer(
      kMany, server_options, std::make_shared<ExtractiveTeacher>(), client_options);
  EXPECT_GT(stats.rejected, 0u) << "the teacher was not overloaded";
}

// A teacher with one worker and a deep queue answers calls that waited in its queue past the
// client's deadline with DEADLINE_EXCEEDED (queue length × time per call > deadline_s) while it
// answers the calls ahead of them: overload, not a teacher that is down. Every item finishes and
// the run never stops.
TEST_F(DistillRunTest, ADeepTeacherQueuePastTheClientsDeadlineFailsNoItem) {
  constexpr int kMany = 400;
  // Computes in the worker for 2 ms a call, as a slow model would.
  class Slow final : public Teacher {
   public:
    TeacherInfo Info() const override { return inner_.Info(); }
    void ExtractNote(NoteTask task, TeacherCallback<Note> done) override {
      Work();
      inner_.ExtractNote(std::move(task), std::move(done));
    }
    void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override {
      Work();
      inner_.VerifyNote(std::move(task), std::move(done));
    }
    void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override {
      Work();
      inner_.RemoveEvidence(std::move(task), std::move(done));
    }

   private:
    static void Work() { std::this_thread::sleep_for(std::chrono::milliseconds(2)); }
    ExtractiveTeacher inner_;
  };
  TeacherServerOptions server_options;
  server_options.workers = 1;
  TeacherClientOptions client_options = ClientOptions();
  // 0.8 s of work queued against a 0.5 s deadline (a RunBatch of 64 tasks takes 0.13 s).
  client_options.concurrency = 2 * kMany;
  client_options.deadline_s = 0.5;
  client_options.max_attempts = 2;
  const TeacherServerStats stats = DistillThroughAnOverloadedServer(
      kMany, server_options, std::make_shared<Slow>(), client_options);
  EXPECT_GT(stats.failed, 0u) << "no call waited in the queue past its deadline";
}

// Overload that outlasts the client's patience ends an item with RESOURCE_EXHAUSTED, which is
// neither the teacher being down nor an answer: a teacher refusing everything as overloaded does
// not stop the run, and refusals between failures of a teacher that is down do not hide it.
TEST_F(DistillRunTest, OverloadIsNeitherTheTeacherDownNorAnAnswer) {
  ScriptedTeacher full({.fail_every = 1, .fail_code = absl::StatusCode::kResourceExhausted});
  DistillRunOptions options = QuietRun(1);
  auto summary = RunDistill(options, full, *cache_);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(summary->teacher_unusable.ok()) << summary->teacher_unusable;
  EXPECT_EQ(summary->counts.failures, kItems);

  // Every other item UNAVAILABLE, the rest RESOURCE_EXHAUSTED: 16 down in a row, counting only
  // the UNAVAILABLE ones, stop the run after 31 items.
  class DownOrFull final : public Teacher {
   public:
    TeacherInfo Info() const override { return inner_.Info(); }
    void ExtractNote(NoteTask, TeacherCallback<Note> done) override { done(Next()); }
    void VerifyNote(VerifyTask, TeacherCallback<Verdict> done) override { done(Next()); }
    void RemoveEvidence(RemoveEvidenceTask, TeacherCallback<Negative> done) override {
      done(Next());
    }

   private:
    absl::Status Next() {
      return calls_++ % 2 == 0 ? absl::UnavailableError("teacher down")
                               : absl::ResourceExhaustedError("teacher queue full");
    }
    ExtractiveTeacher inner_;
    std::atomic<int> calls_{0};
  } down_or_full;
  auto stopped = RunDistill(options, down_or_full, *cache_);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_NE(stopped->teacher_unusable.message().find("16 items in a row"), std::string::npos)
      << stopped->teacher_unusable;
  EXPECT_EQ(stopped->counts.failures, 2 * kTeacherDownItems - 1);
}

// An input with nothing to distill is an error, not a success with 0 items for `rwr data build`
// (or a job's --wait) to go on from.
TEST_F(DistillRunTest, InputWithNoItemsIsAnError) {
  ScriptedTeacher teacher({});
  DistillRunOptions options = QuietRun();
  std::ofstream(input_, std::ios::trunc) << "\n  \n";
  auto summary = RunDistill(options, teacher, *cache_);
  ASSERT_FALSE(summary.ok());
  EXPECT_NE(std::string(summary.status().message()).find("data.jsonl: no items"), std::string::npos)
      << summary.status();

  std::ofstream(input_, std::ios::trunc) << "{not json\n[]\n";
  options.dataset = {.on_bad_input = OnBadInput::kSkip,
                     .quarantine_path = (dir_ / "quarantine.jsonl").string()};
  summary = RunDistill(options, teacher, *cache_);
  ASSERT_FALSE(summary.ok());
  EXPECT_NE(std::string(summary.status().message()).find("no usable items: all 2"),
            std::string::npos)
      << summary.status();
  EXPECT_EQ(teacher.calls(), 0u);
}

// The input is read twice (checked and counted, then distilled). A file rewritten in between — a
// generator still writing it, a user replacing it — must not end as a success over part of it.
TEST_F(DistillRunTest, InputChangedBetweenCheckAndReadIsAnError) {
  ScriptedTeacher teacher({});
  DistillRunOptions options = QuietRun(4);
  bool rewritten = false;
  // The first report comes once the input is counted, before the second pass opens it.
  options.on_progress = [&](const DistillCounts&) {
    if (!rewritten) testing::WriteDistillTestData(input_, kItems / 2);
    rewritten = true;
  };
  auto summary = RunDistill(options, teacher, *cache_);
  ASSERT_TRUE(rewritten);
  ASSERT_FALSE(summary.ok()) << "the run succeeded over part of its input";
  EXPECT_NE(std::string(summary.status().message()).find("changed while the run read it (40 items"),
            std::string::npos)
      << summary.status();
  EXPECT_EQ(FinishedItems(), kItems / 2) << "what was read is cached";
}

// Checking a large input takes a while; a stop (cancel, SIGTERM) is honoured during that pass
// rather than after it.
TEST_F(DistillRunTest, StopDuringTheCheckPassEndsTheRunThere) {
  constexpr int kMany = 5000;
  testing::WriteDistillTestData(input_, kMany);
  ScriptedTeacher teacher({});
  DistillRunOptions options = QuietRun();
  options.stop_requested = [] { return true; };
  auto summary = RunDistill(options, teacher, *cache_);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(summary->interrupted);
  EXPECT_LT(summary->counts.items, kMany) << "the whole input was checked first";
  EXPECT_EQ(teacher.calls(), 0u);
}

// The run asks whether to stop once before it starts each item. A stop that comes after the last
// item started stops nothing: the run is complete (a service records the job by its items, not
// CANCELLED). One that comes earlier leaves the items not started.
TEST_F(DistillRunTest, AStopOnceEveryItemHasStartedLeavesTheRunComplete) {
  for (const int stop_after : {kItems, kItems / 4}) {
    cache_.reset();
    store_.reset();
    fs::remove_all(dir_ / "cache");
    OpenCache();
    ScriptedTeacher teacher({});
    DistillRunOptions options = QuietRun();
    int asked = 0;
    options.stop_requested = [&] { return ++asked > stop_after; };
    auto summary = RunDistill(options, teacher, *cache_);
    ASSERT_TRUE(summary.ok()) << summary.status();
    if (stop_after == kItems) {
      EXPECT_FALSE(summary->interrupted) << "stopped after its last item had started";
      EXPECT_EQ(summary->counts.items_done, kItems);
      EXPECT_EQ(FinishedItems(), kItems);
    } else {
      EXPECT_TRUE(summary->interrupted);
      EXPECT_EQ(summary->counts.items_done, stop_after);
    }
  }
}

}  // namespace
}  // namespace rwr::teacher
