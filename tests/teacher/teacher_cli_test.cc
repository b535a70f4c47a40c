// `rwr teacher serve` as a real process: token file, calls served in the logs and over RPC,
// `rwr teacher info`, clean exit on SIGTERM, bad flag values and token files refused at start, and
// a client run that survives the server being killed with SIGKILL and started again mid-run.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "teacher_client/client.h"
#include "teacher_client/rwr_client.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

namespace fs = std::filesystem;
using testing::Results;

const char kContext[] =
    "The harbour master keeps the tide tables.\n\n"
    "The vault under the bank opens with the code 4417.\n\n"
    "Gulls circle the fish market at dawn.";

class TeacherCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("rwr-teacher-cli");
    std::ofstream(dir_ / "token.txt") << "cli-token\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<testing::Subprocess> Serve(const std::string& listen,
                                             const std::string& log_name) {
    return std::make_unique<testing::Subprocess>(
        std::vector<std::string>{RWR_BINARY, "teacher", "serve", "--listen", listen,
                                 "--auth-token-file", (dir_ / "token.txt").string(),
                                 "--stats-interval", "0.2"},
        (dir_ / log_name).string());
  }
  // The port the server printed ("rwr teacher serve: port N"), waiting up to 20 s.
  int WaitForPort(const std::string& log_name) {
    std::regex pattern("rwr teacher serve: port ([0-9]+)");
    for (int i = 0; i < 2000; ++i) {
      std::smatch match;
      std::string log = testing::ReadFile(dir_ / log_name);
      if (std::regex_search(log, match, pattern)) return std::stoi(match[1]);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return 0;
  }
  TeacherClientOptions Options() const {
    TeacherClientOptions options;
    options.bearer_token = "cli-token";
    options.connect_timeout_s = 20;
    options.concurrency = 8;
    options.max_attempts = 100;
    options.initial_backoff_s = 0.02;
    options.max_backoff_s = 0.3;
    return options;
  }

  fs::path dir_;
};

TEST_F(TeacherCliTest, ServesCountsCallsAndStopsCleanlyOnSigterm) {
  auto server = Serve("127.0.0.1:0", "serve.log");
  ASSERT_TRUE(server->started());
  int port = WaitForPort("serve.log");
  ASSERT_GT(port, 0) << testing::ReadFile(dir_ / "serve.log");
  auto teacher = MakeTeacher("rwr://127.0.0.1:" + std::to_string(port), Options());
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  Results<Note> notes;
  for (int i = 0; i < 25; ++i)
    (*teacher)->ExtractNote({.context = kContext, .question = "What code opens the vault?"},
                            notes.Callback());
  ASSERT_TRUE(notes.WaitFor(25));
  for (const auto& note : notes.Take()) {
    ASSERT_TRUE(note.ok()) << note.status();
    EXPECT_EQ(note->text, "The vault under the bank opens with the code 4417.");
  }

  // `rwr teacher info --json` reads the counter over RPC.
  testing::Subprocess info(
      {RWR_BINARY, "teacher", "info", "--teacher", "rwr://127.0.0.1:" + std::to_string(port),
       "--auth-token-file", (dir_ / "token.txt").string(), "--json"},
      (dir_ / "info.json").string());
  ASSERT_EQ(info.Wait(30), 0) << testing::ReadFile(dir_ / "info.json");
  std::string info_json = testing::ReadFile(dir_ / "info.json");
  EXPECT_NE(info_json.find("\"calls_served\": 25"), std::string::npos) << info_json;
  EXPECT_NE(info_json.find("\"teacher_id\": \"extractive-bm25\""), std::string::npos) << info_json;

  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // one stats line
  server->Signal(SIGTERM);
  EXPECT_EQ(server->Wait(30), 0);
  std::string log = testing::ReadFile(dir_ / "serve.log");
  EXPECT_NE(log.find("calls served 25"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped; calls served 25, failed 0"), std::string::npos) << log;

  // A wrong token file is refused by the server.
  std::ofstream(dir_ / "wrong.txt") << "nope";
  testing::Subprocess wrong(
      {RWR_BINARY, "teacher", "info", "--teacher", "rwr://127.0.0.1:1", "--auth-token-file",
       (dir_ / "wrong.txt").string(), "--timeout", "0.2"},
      (dir_ / "wrong.log").string());
  EXPECT_EQ(wrong.Wait(30), 1);
}

// Flag values that would make the server useless or crash it, and token files no client can send,
// are one-line errors before anything listens; `rwr teacher info` with such a token file exits 1
// (it aborted inside gRPC).
TEST_F(TeacherCliTest, BadFlagValuesAndTokenFilesAreOneLineErrors) {
  std::ofstream(dir_ / "two-lines.txt") << "first\nsecond\n";
  std::ofstream(dir_ / "blank.txt") << "\n\n";
  const std::string two_lines = (dir_ / "two-lines.txt").string();
  struct Case {
    std::vector<std::string> args;
    int exit_code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"serve", "--max-request-bytes", "0"}, 2, "--max-request-bytes"},
      {{"serve", "--max-request-bytes", "-1"}, 2, "--max-request-bytes"},
      {{"serve", "--workers", "100000"}, 2, "--workers"},
      {{"serve", "--workers", "0"}, 2, "--workers"},
      {{"serve", "--queue-capacity", "0"}, 2, "--queue-capacity"},
      {{"serve", "--stats-interval", "0"}, 2, "--stats-interval"},
      {{"serve", "--auth-token-file", two_lines}, 1, "line break"},
      {{"serve", "--auth-token-file", (dir_ / "blank.txt").string()}, 1, "empty"},
      {{"info", "--teacher", "rwr://127.0.0.1:1", "--auth-token-file", two_lines}, 1, "line break"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {RWR_BINARY, "teacher"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    if (c.args[0] == "serve") argv.insert(argv.end(), {"--listen", "127.0.0.1:0"});
    testing::Subprocess run(argv, (dir_ / "run.log").string());
    const int code = run.Wait(30);
    if (code == -1) run.Signal(SIGKILL);
    const std::string log = testing::ReadFile(dir_ / "run.log");
    EXPECT_EQ(code, c.exit_code) << c.args[1] << " " << c.args[2] << ": " << log;
    EXPECT_NE(log.find(c.says), std::string::npos) << log;
    EXPECT_EQ(log.find("port "), std::string::npos) << "it started: " << log;
  }
}

TEST_F(TeacherCliTest, ClientRunSurvivesTheServerKilledAndRestarted) {
  const int port = testing::FreePort();
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  auto server = Serve(listen, "first.log");
  ASSERT_EQ(WaitForPort("first.log"), port) << testing::ReadFile(dir_ / "first.log");
  auto teacher = MakeTeacher("rwr://" + listen, Options());
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  // Long contexts so the run lasts long enough to be interrupted.
  std::string context;
  for (int i = 0; i < 400; ++i)
    context += "Paragraph " + std::to_string(i) + " is about boats and nets.\n\n";
  context += kContext;
  const int kCalls = 3000;
  Results<Note> notes;
  for (int i = 0; i < kCalls; ++i)
    (*teacher)->ExtractNote({.context = context, .question = "What code opens the vault?"},
                            notes.Callback());
  while (notes.size() < 100) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  server->Signal(SIGKILL);
  ASSERT_EQ(server->Wait(10), 128 + SIGKILL);
  const size_t at_kill = notes.size();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto restarted = Serve(listen, "second.log");
  ASSERT_EQ(WaitForPort("second.log"), port) << testing::ReadFile(dir_ / "second.log");
  ASSERT_TRUE(notes.WaitFor(kCalls, 120));
  int ok = 0;
  for (const auto& note : notes.Take()) {
    if (note.ok())
      ++ok;
    else
      ADD_FAILURE() << note.status();
  }
  EXPECT_EQ(ok, kCalls);
  EXPECT_LT(at_kill, static_cast<size_t>(kCalls));
  EXPECT_GT(dynamic_cast<RemoteTeacher*>(teacher->get())->Stats().retries, 0u);
  restarted->Signal(SIGTERM);
  EXPECT_EQ(restarted->Wait(30), 0);
}

}  // namespace
}  // namespace rwr::teacher
