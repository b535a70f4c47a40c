// The distill and cache commands as a user runs them (the real `rwr` binary, a real TeacherServer
// on loopback, real RocksDB):
// - `rwr distill run` killed with SIGKILL mid-run, then rerun: the rerun's teacher calls equal
//   exactly the answers not yet cached, and every cached record reads back intact.
// - `rwr distill run` on a teacher that is down waits and finishes once it listens; past
//   distill.teacher_outage_s it exits 1 in one line; a signal during the wait exits 0; a teacher
//   that answered in between starts a fresh wait.
// - a `distill serve` job on a teacher that is down: `status` says it waits, and why; it ends
//   SUCCEEDED once the teacher listens.
// - bad input: one line naming FILE:LINE, nothing sent to the teacher; skip mode quarantines.
// - `rwr cache inspect --json` and `rwr cache publish`.
// - `rwr distill serve` killed with SIGKILL mid-job and restarted: the job resumes and finishes;
//   killed after a cancel of its running job was acknowledged: the job ends CANCELLED.
// - `rwr distill serve` stopped with SIGTERM while one job runs and one waits: neither ends
//   SUCCEEDED short of its items; restarted, it finishes both, every item once.
// - `rwr distill submit` refusing a --teacher that `distill run` would refuse (exit 2, nothing
//   sent); job lines of jobs whose total is not known yet, and of running jobs with their total;
//   `rwr cache publish` into missing
//   parents, and every writer refusing a published copy.
// - `status --watch` against a service frozen mid-stream gives up after --stall-timeout; --server
//   pointing at a teacher says it is not a distill service.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "storage/rocksdb_store.h"
#include "teacher_client/distill_run.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/scripted_teacher.h"
#include "teacher_client/teacher_server.h"
#include "tests/distill/distill_test_data.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

namespace fs = std::filesystem;
using storage::Family;
using testing::Subprocess;

struct Ran {
  int exit_code;
  std::string output;
};

Ran RunRwr(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<std::string> argv = {RWR_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  Subprocess process(argv, log.string());
  const int code = process.Wait(120);
  return {code, testing::ReadFile(log)};
}

bool WaitUntil(const std::function<bool()>& done, double timeout_s) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

// `rwr distill status JOB --watch` against a service that is (re)starting: retried while no
// service answers yet, then followed until the job ends. False if none answered within a minute.
bool WatchOnceServing(const std::string& listen, const std::string& job, const fs::path& log,
                      Ran* watched) {
  return WaitUntil(
      [&] {
        *watched = RunRwr({"distill", "status", "--server", listen, job, "--watch"}, log);
        return watched->exit_code != 1 ||
               watched->output.find("no distill service") == std::string::npos;
      },
      60);
}

// `rwr distill submit` of one job at concurrency 1, retried until the service that was just
// started accepts it. False if none did within 30 s.
bool SubmitOnceServing(const std::string& listen, const std::string& input,
                       const std::string& teacher_url, const std::string& job, const fs::path& log,
                       Ran* submitted) {
  return WaitUntil(
      [&] {
        *submitted = RunRwr({"distill", "submit", "--server", listen, "--input", input, "--teacher",
                             teacher_url, "--job-id", job, "--concurrency", "1"},
                            log);
        return submitted->exit_code == 0;
      },
      30);
}

class DistillCliTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("distill_cli"); }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<TeacherServer> StartTeacher(double latency_s, int port = 0) {
    TeacherServerOptions options;
    options.listen = "127.0.0.1:" + std::to_string(port);
    options.workers = 4;
    auto server = TeacherServer::Start(
        options, std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = latency_s}));
    EXPECT_TRUE(server.ok()) << server.status();
    return server.ok() ? *std::move(server) : nullptr;
  }
  static std::string Url(const TeacherServer& server) {
    return "rwr://127.0.0.1:" + std::to_string(server.port());
  }
  std::string CacheDir() const { return (dir_ / "cache").string(); }
  // `rwr distill serve` over CacheDir() on a free loopback port: its address and command line.
  struct Serve {
    std::string listen;
    std::vector<std::string> argv;
  };
  Serve ServeOnAFreePort() const {
    const std::string listen = "127.0.0.1:" + std::to_string(testing::FreePort());
    return {listen, {RWR_BINARY, "distill", "serve", "--listen", listen, "--cache", CacheDir()}};
  }
  // `rwr distill run` of `input` into `cache` on an rwr teacher at `port` that may be down, tried
  // again after 0.2 s, doubling; `settings` are more --set values.
  static std::vector<std::string> RunOnPort(const std::string& input, int port,
                                            const std::string& cache,
                                            const std::vector<std::string>& settings) {
    std::vector<std::string> argv = {RWR_BINARY,
                                     "distill",
                                     "run",
                                     "--input",
                                     input,
                                     "--teacher",
                                     "rwr://127.0.0.1:" + std::to_string(port),
                                     "--cache",
                                     cache,
                                     "--set",
                                     "distill.teacher_retry_s=0.2"};
    for (const std::string& setting : settings) argv.insert(argv.end(), {"--set", setting});
    return argv;
  }
  // How many times the log says the run waits for its teacher.
  static size_t Waits(const fs::path& log) {
    const std::string text = testing::ReadFile(log);
    size_t n = 0;
    for (size_t at = text.find("trying again in"); at != std::string::npos;
         at = text.find("trying again in", at + 1))
      ++n;
    return n;
  }

  fs::path dir_;
};

// Every record parses, sits under the key of its own request, and holds what the extractive
// teacher answers for that request.
void ExpectEveryRecordIntact(const storage::KvStore& store) {
  ExtractiveTeacher reference;
  int64_t checked = 0;
  for (Family family : {Family::kNotes, Family::kVerdicts, Family::kNegatives}) {
    ASSERT_TRUE(
        store
            .ForEach(
                family, "",
                [&](std::string_view key, std::string_view value) {
                  v1::CacheRecord record;
                  EXPECT_TRUE(record.ParseFromArray(value.data(), static_cast<int>(value.size())));
                  EXPECT_EQ(CacheKey(record.request()), key) << "record under the wrong key";
                  EXPECT_EQ(record.schema_version(), kCacheSchemaVersion);
                  const v1::CanonicalRequest& r = record.request();
                  if (record.has_note()) {
                    EXPECT_EQ(record.note().note(),
                              reference.MakeNote({.context = r.context(), .question = r.question()})
                                  .text);
                  } else if (record.has_verdict()) {
                    EXPECT_EQ(record.verdict().consistent(), reference
                                                                 .Verify({.question = r.question(),
                                                                          .note = r.note(),
                                                                          .answer = r.answer()})
                                                                 .consistent);
                  } else if (record.has_negative()) {
                    EXPECT_EQ(record.negative().context(), reference
                                                               .Remove({.context = r.context(),
                                                                        .question = r.question(),
                                                                        .answer = r.answer()})
                                                               .context);
                  } else {
                    ADD_FAILURE() << "record without an answer";
                  }
                  ++checked;
                  return true;
                })
            .ok());
  }
  EXPECT_GT(checked, 0);
}

TEST_F(DistillCliTest, KilledWithSigkillMidRunThenRerunAsksOnlyForWhatIsMissing) {
  constexpr int kItems = 120;
  const std::string input = (dir_ / "data.jsonl").string();
  const std::string cache_dir = CacheDir();
  testing::WriteDistillTestData(input, kItems);

  // The whole job's teacher calls, counted on a throwaway in-memory cache.
  int64_t total_calls = 0;
  {
    storage::MemoryKvStore memory;
    auto cache = NoteCache::Open(&memory);
    ScriptedTeacher counting({});
    DistillRunOptions options{
        .input_path = input, .negative_fraction = 0.3, .show_progress = false};
    auto summary = RunDistill(options, counting, **cache);
    ASSERT_TRUE(summary.ok()) << summary.status();
    total_calls = summary->counts.teacher_calls;
    ASSERT_EQ(total_calls, static_cast<int64_t>(counting.calls()));
  }

  auto server = StartTeacher(/*latency_s=*/0.01);
  ASSERT_TRUE(server);
  const std::vector<std::string> args = {"distill",
                                         "run",
                                         "--input",
                                         input,
                                         "--teacher",
                                         Url(*server),
                                         "--cache",
                                         cache_dir,
                                         "--concurrency",
                                         "4",
                                         "--negative-fraction",
                                         "0.3",
                                         "--summary-json",
                                         (dir_ / "summary.json").string()};
  {
    std::vector<std::string> argv = {RWR_BINARY};
    argv.insert(argv.end(), args.begin(), args.end());
    Subprocess run(argv, (dir_ / "killed.log").string());
    ASSERT_TRUE(run.started());
    ASSERT_TRUE(WaitUntil(
        [&] { return server->stats().served >= static_cast<uint64_t>(total_calls / 3); }, 60))
        << testing::ReadFile(dir_ / "killed.log");
    run.Signal(SIGKILL);
    EXPECT_EQ(run.Wait(10), 128 + SIGKILL) << "the run finished before it could be killed";
  }
  // Calls the killed client left in flight still finish on the server; count them as before.
  ASSERT_TRUE(WaitUntil([&] { return server->stats().outstanding == 0; }, 10));
  const uint64_t served_before_kill = server->stats().served;

  int64_t cached_after_kill = 0;
  {
    auto store = storage::RocksDbStore::Open(cache_dir);
    ASSERT_TRUE(store.ok()) << store.status();
    ExpectEveryRecordIntact(**store);
    for (Family family : {Family::kNotes, Family::kVerdicts, Family::kNegatives}) {
      cached_after_kill += *(*store)->Count(family);
    }
  }
  ASSERT_GT(cached_after_kill, 0);
  ASSERT_LT(cached_after_kill, total_calls);
  // Answers served but not yet acknowledged by the killed client may be lost; nothing else.
  EXPECT_LE(cached_after_kill, static_cast<int64_t>(served_before_kill));

  Ran rerun = RunRwr(args, dir_ / "rerun.log");
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  const nlohmann::json summary = nlohmann::json::parse(testing::ReadFile(dir_ / "summary.json"));
  EXPECT_EQ(summary["teacher_calls"].get<int64_t>(), total_calls - cached_after_kill);
  EXPECT_EQ(static_cast<int64_t>(server->stats().served - served_before_kill),
            total_calls - cached_after_kill);
  EXPECT_EQ(summary["cache_hits"].get<int64_t>(), cached_after_kill);
  EXPECT_EQ(summary["items"].get<int64_t>(), kItems);
  EXPECT_EQ(summary["failures"].get<int64_t>(), 0);
  for (const char* key : {"notes_kept", "dropped_by_verification", "negatives"}) {
    EXPECT_TRUE(summary.contains(key)) << key;
  }
  EXPECT_NE(rerun.output.find("distill: 120 items"), std::string::npos) << rerun.output;

  auto store = storage::RocksDbStore::Open(cache_dir, {.read_only = true});
  ASSERT_TRUE(store.ok());
  ExpectEveryRecordIntact(**store);
  int64_t items = 0;
  ASSERT_TRUE(ForEachItem(**store, [&](const DistilledItem&) {
                ++items;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(items, kItems);
}

TEST_F(DistillCliTest, BadInputIsOneLineWithFileAndLineAndSkipQuarantines) {
  const std::string corpus = std::string(RWR_SOURCE_DIR) + "/tests/fixtures/bad_input/";
  Ran failed =
      RunRwr({"distill", "run", "--input", corpus + "missing_field.jsonl", "--teacher",
              "builtin:extractive", "--cache", (dir_ / "cache").string(), "--log-level", "error"},
             dir_ / "fail.log");
  EXPECT_EQ(failed.exit_code, 1);
  EXPECT_NE(failed.output.find("missing_field.jsonl:2: missing field 'answer'"), std::string::npos)
      << failed.output;
  EXPECT_EQ(std::count(failed.output.begin(), failed.output.end(), '\n'), 1) << failed.output;

  const std::string quarantine = (dir_ / "rejected.jsonl").string();
  Ran skipped =
      RunRwr({"distill", "run", "--input", corpus + "mixed.jsonl", "--teacher",
              "builtin:extractive", "--cache", (dir_ / "cache").string(), "--on-bad-input", "skip",
              "--quarantine", quarantine, "--summary-json", (dir_ / "s.json").string()},
             dir_ / "skip.log");
  EXPECT_EQ(skipped.exit_code, 0) << skipped.output;
  const nlohmann::json summary = nlohmann::json::parse(testing::ReadFile(dir_ / "s.json"));
  EXPECT_EQ(summary["items"].get<int64_t>(), 4);
  EXPECT_EQ(summary["bad_input_lines"].get<int64_t>(), 5);
  std::ifstream in(quarantine);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) ++lines;
  EXPECT_EQ(lines, 5);
}

TEST_F(DistillCliTest, InspectReportsFamiliesAndPublishMakesAReadOnlyCopy) {
  const std::string input = (dir_ / "data.jsonl").string();
  const std::string cache_dir = CacheDir();
  testing::WriteDistillTestData(input, 12);
  Ran run = RunRwr({"distill", "run", "--input", input, "--teacher", "builtin:extractive",
                    "--cache", cache_dir, "--summary-json", (dir_ / "s.json").string()},
                   dir_ / "run.log");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json summary = nlohmann::json::parse(testing::ReadFile(dir_ / "s.json"));

  Ran inspect = RunRwr({"cache", "inspect", cache_dir, "--json"}, dir_ / "inspect.log");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  const nlohmann::json report = nlohmann::json::parse(inspect.output);
  EXPECT_EQ(report["schema_version"], 1);
  EXPECT_EQ(report["families"]["notes"].get<int64_t>(), 12);
  EXPECT_EQ(report["families"]["verdicts"].get<int64_t>(), 12);
  EXPECT_EQ(report["families"]["negatives"].get<int64_t>(),
            summary["teacher_calls"].get<int64_t>() - 24);
  EXPECT_EQ(report["families"]["jobs"].get<int64_t>(), 12);
  EXPECT_EQ(report["families"]["meta"].get<int64_t>(), 1);
  EXPECT_EQ(report["items"]["kept"].get<int64_t>(), summary["notes_kept"].get<int64_t>());
  ASSERT_FALSE(report["samples"]["notes"].empty());
  EXPECT_TRUE(report["samples"]["notes"][0]["intact"].get<bool>());

  const std::string published = (dir_ / "published").string();
  Ran publish = RunRwr({"cache", "publish", cache_dir, "--to", published}, dir_ / "publish.log");
  ASSERT_EQ(publish.exit_code, 0) << publish.output;
  Ran again = RunRwr({"cache", "publish", cache_dir, "--to", published}, dir_ / "again.log");
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.output.find("already exists"), std::string::npos) << again.output;
  auto copy = storage::RocksDbStore::Open(published, {.read_only = true});
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(*(*copy)->Count(Family::kNotes), 12);
  Ran inspect_copy = RunRwr({"cache", "inspect", published}, dir_ / "inspect2.log");
  EXPECT_EQ(inspect_copy.exit_code, 0) << inspect_copy.output;
  EXPECT_NE(inspect_copy.output.find("schema version 1"), std::string::npos) << inspect_copy.output;

  Ran missing = RunRwr({"cache", "inspect", (dir_ / "nope").string()}, dir_ / "missing.log");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("no cache here"), std::string::npos) << missing.output;
}

TEST_F(DistillCliTest, ServeJobSurvivesSigkillOfTheServiceAndResumes) {
  constexpr int kItems = 80;
  const std::string input = (dir_ / "data.jsonl").string();
  const std::string cache_dir = CacheDir();
  testing::WriteDistillTestData(input, kItems);
  auto teacher = StartTeacher(/*latency_s=*/0.02);
  ASSERT_TRUE(teacher);
  const auto [listen, serve] = ServeOnAFreePort();
  {
    Subprocess service(serve, (dir_ / "serve1.log").string());
    ASSERT_TRUE(service.started());
    Ran submitted;
    ASSERT_TRUE(WaitUntil(
        [&] {
          submitted =
              RunRwr({"distill", "submit", "--server", listen, "--input", input, "--teacher",
                      Url(*teacher), "--job-id", "harbours", "--concurrency", "4"},
                     dir_ / "submit.log");
          return submitted.exit_code == 0;
        },
        30))
        << submitted.output << testing::ReadFile(dir_ / "serve1.log");
    EXPECT_NE(submitted.output.find("submitted harbours"), std::string::npos);
    ASSERT_TRUE(WaitUntil([&] { return teacher->stats().served >= 40; }, 60))
        << testing::ReadFile(dir_ / "serve1.log");
    Ran status = RunRwr({"distill", "status", "--server", listen, "harbours"}, dir_ / "status.log");
    EXPECT_EQ(status.exit_code, 0) << status.output;
    EXPECT_NE(status.output.find("harbours RUNNING"), std::string::npos) << status.output;
    service.Signal(SIGKILL);
    ASSERT_EQ(service.Wait(10), 128 + SIGKILL);
  }
  ASSERT_TRUE(WaitUntil([&] { return teacher->stats().outstanding == 0; }, 10));
  const uint64_t served_before = teacher->stats().served;

  Subprocess service(serve, (dir_ / "serve2.log").string());
  ASSERT_TRUE(service.started());
  Ran watched;
  ASSERT_TRUE(WatchOnceServing(listen, "harbours", dir_ / "watch.log", &watched));
  EXPECT_EQ(watched.exit_code, 0) << watched.output << testing::ReadFile(dir_ / "serve2.log");
  EXPECT_NE(watched.output.find("harbours SUCCEEDED"), std::string::npos) << watched.output;

  Ran json =
      RunRwr({"distill", "status", "--server", listen, "harbours", "--json"}, dir_ / "json.log");
  ASSERT_EQ(json.exit_code, 0) << json.output;
  const nlohmann::json job = nlohmann::json::parse(json.output);
  EXPECT_EQ(job["state"], "SUCCEEDED");
  const nlohmann::json& counts = job["counts"];
  EXPECT_EQ(std::stoll(counts["items"].get<std::string>()),
            kItems);  // proto3 JSON: uint64 as string
  EXPECT_GT(std::stoll(counts["cache_hits"].get<std::string>()), 0) << "resumed from the cache";
  EXPECT_EQ(std::stoll(counts["teacher_calls"].get<std::string>()),
            static_cast<int64_t>(teacher->stats().served - served_before));
  service.Signal(SIGTERM);
  EXPECT_EQ(service.Wait(30), 0) << testing::ReadFile(dir_ / "serve2.log");

  auto store = storage::RocksDbStore::Open(cache_dir, {.read_only = true});
  ASSERT_TRUE(store.ok());
  int64_t items = 0;
  ASSERT_TRUE(ForEachItem(**store, [&](const DistilledItem&) {
                ++items;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(items, kItems);
  ExpectEveryRecordIntact(**store);
}

// `rwr distill cancel` of a running job, then the service killed before the job stops (its
// in-flight calls take a second): the restarted service ends the job CANCELLED and asks the
// teacher nothing more, where it used to resume it.
TEST_F(DistillCliTest, CancelledJobStaysCancelledWhenTheServiceIsKilledBeforeItStops) {
  const std::string input = (dir_ / "data.jsonl").string();
  const std::string cache_dir = CacheDir();
  testing::WriteDistillTestData(input, 40);
  auto teacher = StartTeacher(/*latency_s=*/1.0);
  ASSERT_TRUE(teacher);
  const auto [listen, serve] = ServeOnAFreePort();
  {
    Subprocess service(serve, (dir_ / "serve1.log").string());
    ASSERT_TRUE(service.started());
    Ran submitted;
    ASSERT_TRUE(
        SubmitOnceServing(listen, input, Url(*teacher), "doomed", dir_ / "submit.log", &submitted))
        << submitted.output << testing::ReadFile(dir_ / "serve1.log");
    ASSERT_TRUE(WaitUntil([&] { return teacher->stats().served >= 1; }, 30))
        << testing::ReadFile(dir_ / "serve1.log");
    Ran cancelled =
        RunRwr({"distill", "cancel", "--server", listen, "doomed"}, dir_ / "cancel.log");
    ASSERT_EQ(cancelled.exit_code, 0) << cancelled.output;
    EXPECT_NE(cancelled.output.find("doomed RUNNING (cancel requested)"), std::string::npos)
        << cancelled.output;
    service.Signal(SIGKILL);
    ASSERT_EQ(service.Wait(10), 128 + SIGKILL);
  }
  ASSERT_TRUE(WaitUntil([&] { return teacher->stats().outstanding == 0; }, 10));
  const uint64_t served_before = teacher->stats().served;
  Ran inspect = RunRwr({"cache", "inspect", cache_dir}, dir_ / "inspect.log");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("job doomed RUNNING (cancel requested): "), std::string::npos)
      << inspect.output;

  Subprocess service(serve, (dir_ / "serve2.log").string());
  ASSERT_TRUE(service.started());
  Ran watched;
  ASSERT_TRUE(WatchOnceServing(listen, "doomed", dir_ / "watch.log", &watched));
  EXPECT_EQ(watched.exit_code, 1) << watched.output;
  EXPECT_NE(watched.output.find("job doomed ended CANCELLED"), std::string::npos)
      << watched.output << testing::ReadFile(dir_ / "serve2.log");
  EXPECT_EQ(teacher->stats().served, served_before) << "the cancelled job was resumed";
  service.Signal(SIGTERM);
  EXPECT_EQ(service.Wait(30), 0) << testing::ReadFile(dir_ / "serve2.log");
}

// The service stops its running job as soon as SIGTERM arrives but notices the signal itself
// only on its next 100 ms poll. Fast answers drain the items in flight within that window, where
// the interrupted job used to end SUCCEEDED and the queued one to start, stop at once and end
// SUCCEEDED too — neither resumed on restart.
TEST_F(DistillCliTest, ServeStoppedBySigtermLeavesItsJobsToResumeAndARestartFinishesThem) {
  constexpr int kItems = 2000;  // the first job runs about a second, ample to submit the second
  const std::string first = (dir_ / "first.jsonl").string();
  const std::string second = (dir_ / "second.jsonl").string();
  const std::string cache_dir = CacheDir();
  testing::WriteDistillTestData(first, kItems);
  testing::WriteDistillTestData(second, kItems, /*first=*/kItems);  // ids of its own
  auto teacher = StartTeacher(/*latency_s=*/0);
  ASSERT_TRUE(teacher);
  const auto [listen, serve] = ServeOnAFreePort();
  auto submit = [&](const std::string& id, const std::string& input) {
    return RunRwr({"distill", "submit", "--server", listen, "--input", input, "--teacher",
                   Url(*teacher), "--job-id", id, "--concurrency", "4"},
                  dir_ / ("submit-" + id + ".log"));
  };
  {
    Subprocess service(serve, (dir_ / "serve1.log").string());
    ASSERT_TRUE(service.started());
    Ran submitted;
    ASSERT_TRUE(WaitUntil(
        [&] {
          submitted = submit("first", first);
          return submitted.exit_code == 0;
        },
        30))
        << submitted.output << testing::ReadFile(dir_ / "serve1.log");
    submitted = submit("second", second);
    ASSERT_EQ(submitted.exit_code, 0) << submitted.output;
    ASSERT_TRUE(WaitUntil([&] { return teacher->stats().served >= 100; }, 60))
        << testing::ReadFile(dir_ / "serve1.log");
    service.Signal(SIGTERM);
    EXPECT_EQ(service.Wait(30), 0) << testing::ReadFile(dir_ / "serve1.log");
  }
  Ran inspect = RunRwr({"cache", "inspect", cache_dir}, dir_ / "inspect.log");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("job first RUNNING: "), std::string::npos)
      << "the interrupted job must resume: " << inspect.output
      << testing::ReadFile(dir_ / "serve1.log");
  EXPECT_NE(inspect.output.find("job second QUEUED: "), std::string::npos)
      << "no job may start after the signal: " << inspect.output;

  Subprocess service(serve, (dir_ / "serve2.log").string());
  ASSERT_TRUE(service.started());
  Ran watched;
  ASSERT_TRUE(WatchOnceServing(listen, "second", dir_ / "watch.log", &watched));
  EXPECT_EQ(watched.exit_code, 0) << watched.output << testing::ReadFile(dir_ / "serve2.log");
  for (const char* id : {"first", "second"}) {
    Ran json = RunRwr({"distill", "status", "--server", listen, id, "--json"},
                      dir_ / fmt::format("json-{}.log", id));
    ASSERT_EQ(json.exit_code, 0) << json.output;
    const nlohmann::json job = nlohmann::json::parse(json.output);
    EXPECT_EQ(job["state"], "SUCCEEDED") << id << ": " << json.output;
    const nlohmann::json& counts = job["counts"];  // proto3 JSON: uint64 as string
    EXPECT_EQ(std::stoll(counts["items"].get<std::string>()), kItems) << id;
    EXPECT_EQ(std::stoll(counts["items_done"].get<std::string>()), kItems) << id;
    EXPECT_EQ(std::stoll(counts["failures"].get<std::string>()), 0) << id;
  }
  service.Signal(SIGTERM);
  EXPECT_EQ(service.Wait(30), 0) << testing::ReadFile(dir_ / "serve2.log");
  ASSERT_TRUE(WaitUntil([&] { return teacher->stats().outstanding == 0; }, 10));

  auto store = storage::RocksDbStore::Open(cache_dir, {.read_only = true});
  ASSERT_TRUE(store.ok()) << store.status();
  std::set<std::string> ids;
  int64_t items = 0;
  ASSERT_TRUE(ForEachItem(**store, [&](const DistilledItem& item) {
                ids.insert(item.id);
                ++items;
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(items, 2 * kItems);
  EXPECT_EQ(ids.size(), static_cast<size_t>(2 * kItems));
  int64_t cached = 0;
  for (Family family : {Family::kNotes, Family::kVerdicts, Family::kNegatives}) {
    cached += *(*store)->Count(family);
  }
  // Every answer the teacher gave was cached and none was asked for twice.
  EXPECT_EQ(static_cast<int64_t>(teacher->stats().served), cached);
  ExpectEveryRecordIntact(**store);
}

TEST_F(DistillCliTest, ExtractiveKeysReachTheBuiltinTeacher) {
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, 12);
  Ran run = RunRwr(
      {"distill", "run", "--input", input, "--teacher", "builtin:extractive", "--cache",
       (dir_ / "cache").string(), "--summary-json", (dir_ / "s.json").string(), "--set",
       "teacher.extractive.min_coverage=0.9", "--set", "teacher.extractive.verify_threshold=0.99",
       "--set", "teacher.extractive.note_budget_bytes=40"},
      dir_ / "run.log");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json summary = nlohmann::json::parse(testing::ReadFile(dir_ / "s.json"));
  const std::string revision = summary["teacher"]["revision"].get<std::string>();
  EXPECT_NE(revision.find("budget=40;"), std::string::npos) << revision;
  EXPECT_NE(revision.find("coverage=0.9;"), std::string::npos) << revision;
  EXPECT_NE(revision.find("verify=0.99;"), std::string::npos) << revision;
  // The notes themselves follow the options: none over the 40-byte budget.
  auto store = storage::RocksDbStore::Open((dir_ / "cache").string(), {.read_only = true});
  ASSERT_TRUE(store.ok()) << store.status();
  int64_t notes = 0;
  ASSERT_TRUE((*store)
                  ->ForEach(Family::kNotes, "",
                            [&](std::string_view, std::string_view value) {
                              v1::CacheRecord record;
                              EXPECT_TRUE(record.ParseFromArray(value.data(),
                                                                static_cast<int>(value.size())));
                              EXPECT_EQ(record.request().teacher_revision(), revision);
                              EXPECT_LE(record.note().note().size(), 40u) << record.note().note();
                              ++notes;
                              return true;
                            })
                  .ok());
  EXPECT_EQ(notes, 12);

  // Out-of-range values: one line naming the key, before anything runs.
  for (const auto& [assignment, expected] : std::vector<std::pair<std::string, std::string>>{
           {"teacher.extractive.max_sentences=-1", "teacher.extractive.max_sentences is -1"},
           {"teacher.extractive.min_coverage=1.5", "teacher.extractive.min_coverage is 1.5"},
           {"teacher.extractive.verify_threshold=-0.1",
            "teacher.extractive.verify_threshold is -0.1"}}) {
    Ran bad =
        RunRwr({"distill", "run", "--input", input, "--teacher", "builtin:extractive", "--cache",
                (dir_ / "bad_cache").string(), "--log-level", "error", "--set", assignment},
               dir_ / "bad.log");
    EXPECT_EQ(bad.exit_code, 1) << assignment;
    EXPECT_NE(bad.output.find(expected), std::string::npos) << bad.output;
    EXPECT_EQ(std::count(bad.output.begin(), bad.output.end(), '\n'), 1) << bad.output;
    EXPECT_FALSE(fs::exists(dir_ / "bad_cache")) << assignment;
  }
}

TEST_F(DistillCliTest, SummaryJsonInAMissingDirectoryFailsBeforeAnyTeacherCall) {
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, 8);
  auto server = StartTeacher(/*latency_s=*/0);
  ASSERT_TRUE(server);
  const std::string summary = (dir_ / "missing" / "s.json").string();
  Ran run = RunRwr({"distill", "run", "--input", input, "--teacher", Url(*server), "--cache",
                    (dir_ / "cache").string(), "--log-level", "error", "--summary-json", summary},
                   dir_ / "run.log");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--summary-json " + summary + ": directory " +
                            (dir_ / "missing").string() + " does not exist"),
            std::string::npos)
      << run.output;
  EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
  EXPECT_EQ(server->stats().served, 0u);
}

TEST_F(DistillCliTest, SigtermSaysItDrainsThenReportsInterruptedAndExitsZero) {
  constexpr int kItems = 400;
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, kItems);
  auto server = StartTeacher(/*latency_s=*/0.02);
  ASSERT_TRUE(server);
  const std::vector<std::string> argv = {RWR_BINARY,
                                         "distill",
                                         "run",
                                         "--input",
                                         input,
                                         "--teacher",
                                         Url(*server),
                                         "--cache",
                                         (dir_ / "cache").string(),
                                         "--concurrency",
                                         "4",
                                         "--summary-json",
                                         (dir_ / "s.json").string()};
  Subprocess run(argv, (dir_ / "run.log").string());
  ASSERT_TRUE(run.started());
  ASSERT_TRUE(WaitUntil([&] { return server->stats().served >= 20; }, 60))
      << testing::ReadFile(dir_ / "run.log");
  run.Signal(SIGTERM);
  // docs/cache.md: SIGINT/SIGTERM let the items in flight finish, sync the cache and exit 0.
  EXPECT_EQ(run.Wait(30), 0);
  const std::string log = testing::ReadFile(dir_ / "run.log");
  EXPECT_NE(log.find(fmt::format("signal {}: finishing the ", SIGTERM)), std::string::npos) << log;
  EXPECT_NE(log.find(" calls in flight, then stopping; rerun to continue"), std::string::npos)
      << log;
  EXPECT_NE(log.find("distill: interrupted, "), std::string::npos) << log;
  EXPECT_EQ(log.find("distill: done"), std::string::npos) << log;
  const nlohmann::json summary = nlohmann::json::parse(testing::ReadFile(dir_ / "s.json"));
  EXPECT_TRUE(summary["interrupted"].get<bool>());
  EXPECT_LT(summary["items_done"].get<int64_t>(), kItems);
  EXPECT_EQ(summary["failures"].get<int64_t>(), 0);
}

// `rwr distill run` on a teacher that is down waits for it (distill.teacher_outage_s), saying so
// and when it tries again, and finishes once the teacher listens; past its limit it exits 1 with
// one line saying how long the teacher has been unusable; a signal during the wait exits 0, as
// an interrupted run.
TEST_F(DistillCliTest, RunWaitsForATeacherThatIsDownAndFinishesWhenItIsBack) {
  constexpr int kItems = 30;
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, kItems);
  const int port = testing::FreePort();
  Subprocess run(RunOnPort(input, port, CacheDir(), {"teacher.connect_timeout_s=0.5"}),
                 (dir_ / "run.log").string());
  ASSERT_TRUE(run.started());
  ASSERT_TRUE(WaitUntil([&] { return Waits(dir_ / "run.log") >= 1; }, 30))
      << testing::ReadFile(dir_ / "run.log");
  auto server = StartTeacher(/*latency_s=*/0, port);
  ASSERT_TRUE(server);
  EXPECT_EQ(run.Wait(60), 0) << testing::ReadFile(dir_ / "run.log");
  const std::string log = testing::ReadFile(dir_ / "run.log");
  EXPECT_NE(log.find("the teacher cannot be used: "), std::string::npos) << log;
  // Not reached yet: perhaps a wrong address, which the warning names.
  EXPECT_NE(log.find(fmt::format("it has not been reached once since this run started: is "
                                 "rwr://127.0.0.1:{} the teacher's address?",
                                 port)),
            std::string::npos)
      << log;
  EXPECT_NE(log.find(fmt::format("distill: {} items", kItems)), std::string::npos) << log;
  EXPECT_NE(log.find(" 0 failures"), std::string::npos) << log;

  // On a teacher that never comes up, waiting at most 0.5 s: one line, exit 1.
  const int nowhere = testing::FreePort();
  const std::string other_cache = (dir_ / "c2").string();
  std::vector<std::string> gives_up =
      RunOnPort(input, nowhere, other_cache,
                {"distill.teacher_outage_s=0.5", "teacher.connect_timeout_s=0.2"});
  gives_up.erase(gives_up.begin());  // RunRwr adds the binary
  gives_up.insert(gives_up.end(), {"--log-level", "error"});
  const Ran gave_up = RunRwr(gives_up, dir_ / "down.log");
  EXPECT_EQ(gave_up.exit_code, 1) << gave_up.output;
  EXPECT_NE(gave_up.output.find("UNAVAILABLE"), std::string::npos) << gave_up.output;
  EXPECT_NE(gave_up.output.find("distill.teacher_outage_s 0.5"), std::string::npos)
      << gave_up.output;
  EXPECT_NE(gave_up.output.find("it has not been reached once since this run started"),
            std::string::npos)
      << gave_up.output;
  EXPECT_EQ(std::count(gave_up.output.begin(), gave_up.output.end(), '\n'), 1) << gave_up.output;

  // A signal during the wait: exit 0, interrupted.
  Subprocess signalled(RunOnPort(input, nowhere, other_cache, {"teacher.connect_timeout_s=0.2"}),
                       (dir_ / "signalled.log").string());
  ASSERT_TRUE(signalled.started());
  ASSERT_TRUE(WaitUntil([&] { return Waits(dir_ / "signalled.log") >= 1; }, 30));
  signalled.Signal(SIGTERM);
  EXPECT_EQ(signalled.Wait(10), 0) << testing::ReadFile(dir_ / "signalled.log");
  EXPECT_NE(testing::ReadFile(dir_ / "signalled.log").find("while waiting for the teacher"),
            std::string::npos);
}

// A pass that got answers ends the outage it waited through: the teacher down at the start, up,
// then down again mid-run, and back only after the first wait's limit — the run waits afresh on
// a new clock, and finishes.
TEST_F(DistillCliTest, RunWaitsAfreshWhenTheTeacherAnsweredInBetween) {
  constexpr int kItems = 400;
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, kItems);
  const int port = testing::FreePort();
  std::vector<std::string> argv = RunOnPort(
      input, port, CacheDir(),
      {"distill.teacher_outage_s=3", "teacher.connect_timeout_s=0.3", "teacher.max_attempts=2"});
  argv.insert(argv.end(), {"--concurrency", "4"});
  Subprocess run(argv, (dir_ / "run.log").string());
  ASSERT_TRUE(run.started());
  const fs::path log = dir_ / "run.log";
  ASSERT_TRUE(WaitUntil([&] { return Waits(log) >= 1; }, 30)) << testing::ReadFile(log);
  const auto first_wait = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // half of the 3 s allowed
  auto server = StartTeacher(/*latency_s=*/0.02, port);
  ASSERT_TRUE(server);
  ASSERT_TRUE(WaitUntil([&] { return server->stats().served >= 40; }, 30));
  const size_t before = Waits(log);
  server.reset();  // down again, mid-run
  ASSERT_TRUE(WaitUntil([&] { return Waits(log) > before; }, 30)) << testing::ReadFile(log);
  // Past the first wait's limit: a run still on that clock would have given up by now.
  std::this_thread::sleep_until(first_wait + std::chrono::milliseconds(3500));
  server = StartTeacher(/*latency_s=*/0, port);
  ASSERT_TRUE(server);
  EXPECT_EQ(run.Wait(60), 0) << testing::ReadFile(dir_ / "run.log");
  EXPECT_NE(testing::ReadFile(dir_ / "run.log").find(fmt::format("distill: {} items", kItems)),
            std::string::npos);
}

// A job whose teacher is down waits QUEUED and `status` says why and until when; once the
// teacher listens the job runs to SUCCEEDED (`status --watch` follows it there).
TEST_F(DistillCliTest, AServiceJobWaitsForItsTeacherAndStatusSaysWhy) {
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, 20);
  const int port = testing::FreePort();
  const std::string teacher_url = "rwr://127.0.0.1:" + std::to_string(port);
  auto [listen, serve] = ServeOnAFreePort();
  serve.insert(serve.end(),
               {"--set", "distill.teacher_retry_s=0.2", "--set", "teacher.connect_timeout_s=0.3"});
  Subprocess service(serve, (dir_ / "serve.log").string());
  ASSERT_TRUE(service.started());
  Ran submitted;
  ASSERT_TRUE(
      SubmitOnceServing(listen, input, teacher_url, "waits", dir_ / "submit.log", &submitted))
      << submitted.output << testing::ReadFile(dir_ / "serve.log");
  Ran status;
  ASSERT_TRUE(WaitUntil(
      [&] {
        status = RunRwr({"distill", "status", "--server", listen, "waits"}, dir_ / "status.log");
        return status.output.find("waiting: ") != std::string::npos;
      },
      30))
      << status.output << testing::ReadFile(dir_ / "serve.log");
  EXPECT_NE(status.output.find("waits QUEUED "), std::string::npos) << status.output;
  EXPECT_NE(status.output.find("waiting: teacher unusable since "), std::string::npos)
      << status.output;
  EXPECT_NE(status.output.find("; next try at "), std::string::npos) << status.output;
  // As persisted: read while the job is not trying the teacher (RUNNING for that moment).
  Ran inspect;
  EXPECT_TRUE(WaitUntil(
      [&] {
        inspect = RunRwr({"cache", "inspect", CacheDir()}, dir_ / "inspect.log");
        return inspect.output.find("job waits QUEUED: 0 items done (total not known yet), " +
                                   input + "; waiting: teacher unusable since ") !=
               std::string::npos;
      },
      30))
      << inspect.output;

  auto teacher = StartTeacher(/*latency_s=*/0, port);
  ASSERT_TRUE(teacher);
  Ran watched;
  ASSERT_TRUE(WatchOnceServing(listen, "waits", dir_ / "watch.log", &watched)) << watched.output;
  EXPECT_EQ(watched.exit_code, 0) << watched.output;
  EXPECT_NE(watched.output.find("waits SUCCEEDED 20/20 items"), std::string::npos)
      << watched.output;
}

TEST_F(DistillCliTest, SubmitRefusesATeacherTargetRunWouldRefuseAndSendsNothing) {
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, 4);
  const auto [listen, serve] = ServeOnAFreePort();
  Subprocess service(serve, (dir_ / "serve.log").string());
  ASSERT_TRUE(service.started());
  Ran listed;
  ASSERT_TRUE(WaitUntil(
      [&] {
        listed = RunRwr({"distill", "status", "--server", listen}, dir_ / "status.log");
        return listed.exit_code == 0;
      },
      30))
      << listed.output << testing::ReadFile(dir_ / "serve.log");
  for (const std::string& bad : {"http://x", "rwr://teacher", "rwr://teacher:99999",
                                 "kserve://teacher:7000", "builtin:nope"}) {
    Ran submit = RunRwr({"distill", "submit", "--server", listen, "--input", input, "--teacher",
                         bad, "--job-id", "bad"},
                        dir_ / "submit.log");
    EXPECT_EQ(submit.exit_code, 2) << bad << ": " << submit.output;
    EXPECT_NE(submit.output.find("--teacher: teacher"), std::string::npos) << submit.output;
    EXPECT_NE(submit.output.find(bad), std::string::npos) << submit.output;
    EXPECT_EQ(std::count(submit.output.begin(), submit.output.end(), '\n'), 1) << submit.output;
    // The same target given to `distill run` is refused the same way, before the cache is made.
    Ran run = RunRwr({"distill", "run", "--input", input, "--teacher", bad, "--cache",
                      (dir_ / "run-cache").string()},
                     dir_ / "run.log");
    EXPECT_EQ(run.exit_code, 2) << bad << ": " << run.output;
    EXPECT_FALSE(fs::exists(dir_ / "run-cache")) << bad;
  }
  listed = RunRwr({"distill", "status", "--server", listen}, dir_ / "status.log");
  EXPECT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_NE(listed.output.find("no jobs"), std::string::npos)
      << "a bad submit reached the service: " << listed.output;
  Ran good = RunRwr({"distill", "submit", "--server", listen, "--input", input, "--teacher",
                     "builtin:extractive", "--job-id", "good", "--wait"},
                    dir_ / "good.log");
  EXPECT_EQ(good.exit_code, 0) << good.output;
  service.Signal(SIGTERM);
  EXPECT_EQ(service.Wait(30), 0) << testing::ReadFile(dir_ / "serve.log");
}

TEST_F(DistillCliTest, JobsWithoutATotalYetSayItAndRunningJobsShowTheirTotal) {
  constexpr int kItems = 40;
  const std::string input = (dir_ / "data.jsonl").string();
  const std::string cache_dir = CacheDir();
  testing::WriteDistillTestData(input, kItems);
  auto teacher = StartTeacher(/*latency_s=*/0.05);
  ASSERT_TRUE(teacher);
  const auto [listen, serve] = ServeOnAFreePort();
  Subprocess service(serve, (dir_ / "serve.log").string());
  ASSERT_TRUE(service.started());
  Ran submitted;
  ASSERT_TRUE(
      SubmitOnceServing(listen, input, Url(*teacher), "first", dir_ / "submit.log", &submitted))
      << submitted.output << testing::ReadFile(dir_ / "serve.log");
  // Runs one at a time: the second waits behind the first, its total not counted.
  Ran queued = RunRwr({"distill", "submit", "--server", listen, "--input", input, "--teacher",
                       Url(*teacher), "--job-id", "second"},
                      dir_ / "submit2.log");
  ASSERT_EQ(queued.exit_code, 0) << queued.output;
  ASSERT_TRUE(WaitUntil([&] { return teacher->stats().served >= 3; }, 60))
      << testing::ReadFile(dir_ / "serve.log");

  Ran status = RunRwr({"distill", "status", "--server", listen}, dir_ / "status.log");
  ASSERT_EQ(status.exit_code, 0) << status.output;
  EXPECT_NE(status.output.find("second QUEUED 0 items done (total not known yet), "),
            std::string::npos)
      << status.output;
  EXPECT_EQ(status.output.find("/0 items"), std::string::npos) << status.output;
  // The running job has counted its dataset before its first teacher call: N/M items (x%).
  const size_t first = status.output.find("first RUNNING ");
  ASSERT_NE(first, std::string::npos) << status.output;
  const std::string running = status.output.substr(first, status.output.find('\n', first) - first);
  EXPECT_NE(running.find(fmt::format("/{} items (", kItems)), std::string::npos) << running;
  EXPECT_EQ(running.find("total not known yet"), std::string::npos) << running;

  // Killed, the cache keeps both jobs as last persisted; inspect words them the same way.
  service.Signal(SIGKILL);
  ASSERT_EQ(service.Wait(10), 128 + SIGKILL);
  Ran inspect = RunRwr({"cache", "inspect", cache_dir}, dir_ / "inspect.log");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("job second QUEUED: 0 items done (total not known yet), "),
            std::string::npos)
      << inspect.output;
  EXPECT_EQ(inspect.output.find("/0 items"), std::string::npos) << inspect.output;
}

TEST_F(DistillCliTest, PublishCreatesMissingParentsAndWritersRefuseThePublishedCopy) {
  const std::string input = (dir_ / "data.jsonl").string();
  const std::string cache_dir = CacheDir();
  testing::WriteDistillTestData(input, 6);
  const std::vector<std::string> run_into_cache = {
      "distill", "run", "--input", input, "--teacher", "builtin:extractive", "--cache", cache_dir};
  Ran run = RunRwr(run_into_cache, dir_ / "run.log");
  ASSERT_EQ(run.exit_code, 0) << run.output;

  const fs::path published = dir_ / "scratch" / "run7" / "published";
  Ran publish =
      RunRwr({"cache", "publish", cache_dir, "--to", published.string()}, dir_ / "publish.log");
  ASSERT_EQ(publish.exit_code, 0) << publish.output;
  Ran inspect = RunRwr({"cache", "inspect", published.string()}, dir_ / "inspect.log");
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  Ran again =
      RunRwr({"cache", "publish", cache_dir, "--to", published.string()}, dir_ / "again.log");
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.output.find("already exists"), std::string::npos) << again.output;
  { std::ofstream(dir_ / "file") << "x"; }
  Ran blocked = RunRwr({"cache", "publish", cache_dir, "--to", (dir_ / "file" / "copy").string(),
                        "--log-level", "error"},
                       dir_ / "blocked.log");
  EXPECT_EQ(blocked.exit_code, 1);
  EXPECT_NE(blocked.output.find("cannot create its parent directory"), std::string::npos)
      << blocked.output;
  EXPECT_EQ(std::count(blocked.output.begin(), blocked.output.end(), '\n'), 1) << blocked.output;

  // Writers: distill run and distill serve, both through the one cache open.
  const std::string live = fs::absolute(cache_dir).lexically_normal().string();
  Ran into_copy = RunRwr({"distill", "run", "--input", input, "--teacher", "builtin:extractive",
                          "--cache", published.string(), "--log-level", "error"},
                         dir_ / "into_copy.log");
  ASSERT_EQ(into_copy.exit_code, 1) << into_copy.output;
  EXPECT_NE(into_copy.output.find(published.string() + ": a published copy"), std::string::npos)
      << into_copy.output;
  EXPECT_NE(into_copy.output.find("write to the live cache " + live + " instead"),
            std::string::npos)
      << into_copy.output;
  EXPECT_EQ(std::count(into_copy.output.begin(), into_copy.output.end(), '\n'), 1)
      << into_copy.output;
  Ran serve = RunRwr({"distill", "serve", "--listen", "127.0.0.1:0", "--cache", published.string()},
                     dir_ / "serve.log");
  EXPECT_EQ(serve.exit_code, 1) << serve.output;
  EXPECT_NE(serve.output.find("a published copy"), std::string::npos) << serve.output;
  EXPECT_FALSE(fs::exists(published / "LOCK")) << "the copy was opened for writing";
  // The live cache is still the one to write to.
  Ran rerun = RunRwr(run_into_cache, dir_ / "rerun.log");
  EXPECT_EQ(rerun.exit_code, 0) << rerun.output;
}

// `status --watch` (and `submit --wait`) against a service that stops answering mid-stream — a
// SIGSTOPped or wedged process, a network dropped without a reset — gives up after
// --stall-timeout with one line, instead of blocking a Slurm job until its time limit. And
// --server pointing at a teacher says so, instead of an empty "distill status: ".
TEST_F(DistillCliTest, WatchOfAServiceThatStopsAnsweringGivesUpAndATeacherIsNamedAsOne) {
  const std::string input = (dir_ / "data.jsonl").string();
  testing::WriteDistillTestData(input, 40);
  auto teacher = StartTeacher(/*latency_s=*/0.3);  // the job runs far longer than this test
  ASSERT_TRUE(teacher);
  Ran wrong =
      RunRwr({"distill", "status", "--server", "127.0.0.1:" + std::to_string(teacher->port())},
             dir_ / "wrong.log");
  EXPECT_EQ(wrong.exit_code, 1) << wrong.output;
  EXPECT_NE(wrong.output.find("does not serve rwr.v1.DistillService"), std::string::npos)
      << wrong.output;

  const auto [listen, serve] = ServeOnAFreePort();
  Subprocess service(serve, (dir_ / "serve.log").string());
  ASSERT_TRUE(service.started());
  Ran submitted;
  ASSERT_TRUE(
      SubmitOnceServing(listen, input, Url(*teacher), "long", dir_ / "submit.log", &submitted))
      << submitted.output << testing::ReadFile(dir_ / "serve.log");
  // Freeze the service once the watch stream is up and has printed the running job.
  Subprocess watch({RWR_BINARY, "distill", "status", "--server", listen, "long", "--watch",
                    "--stall-timeout", "1"},
                   (dir_ / "watch.log").string());
  ASSERT_TRUE(WaitUntil(
      [&] { return testing::ReadFile(dir_ / "watch.log").find("long ") != std::string::npos; }, 30))
      << testing::ReadFile(dir_ / "watch.log");
  service.Signal(SIGSTOP);
  const int watch_exit = watch.Wait(20);  // -1 or a signal status: it was still waiting
  service.Signal(SIGCONT);
  const std::string watched = testing::ReadFile(dir_ / "watch.log");
  EXPECT_EQ(watch_exit, 1) << watched;
  EXPECT_NE(watched.find("no update from the service"), std::string::npos) << watched;
  service.Signal(SIGTERM);
  EXPECT_EQ(service.Wait(30), 0) << testing::ReadFile(dir_ / "serve.log");
}

}  // namespace
}  // namespace rwr::teacher
