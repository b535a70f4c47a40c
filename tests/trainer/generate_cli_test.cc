// `rwr generate` and `rwr eval` as a user runs them (the real binary in a subprocess) on a tiny
// model from `rwr model init` with rwr's tokenizer: a random model writes noise, so these check
// what the commands promise around it — the output's shape (text and JSON), segments, the
// predictions file, repeatable greedy answers, and one-line errors for bad input.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/dir_lock.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "tests/support/run_rwr.h"
#include "tests/support/temp_dir.h"

namespace rwr {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::CommandResult;
using testing::RunRwr;
const std::string kSource = RWR_SOURCE_DIR;

std::string TempDir(const std::string& name) { return testing::FreshTempDir("generate_cli", name); }

int Lines(const std::string& text) { return std::count(text.begin(), text.end(), '\n'); }

// A tiny random model with tokenizer.json beside it, as `rwr export` lays a model out.
const std::string& ModelDir() {
  static const std::string dir = [] {
    const std::string out = TempDir("model");
    CommandResult init = RunRwr(fmt::format(
        "model init --config {}/configs/models/tiny.yaml --out {} --seed 4 --log-level error",
        kSource, out));
    EXPECT_EQ(init.exit_code, 0) << init.output;
    fs::copy_file(kSource + "/configs/tokenizer/tokenizer.json", out + "/tokenizer.json");
    return out;
  }();
  return dir;
}

std::string Context(int sentences) {
  std::string text;
  for (int i = 0; i < sentences; ++i) {
    text += fmt::format("Entry {}: Ada moved to Oslo and Bo stayed in Rome. ", i);
  }
  return text;
}

TEST(GenerateCli, AnswersWithNotesPerSegmentAsTextOrJsonAndRepeatsItself) {
  const std::string dir = TempDir("answer");
  { std::ofstream(dir + "/ctx.txt") << Context(12); }
  const std::string base = fmt::format(
      "generate --model {} --context-file {}/ctx.txt --question 'Where did Ada move?' "
      "--segment-tokens 64 --max-note-tokens 6 --max-answer-tokens 4 --log-level error",
      ModelDir(), dir);
  CommandResult text = RunRwr(base);
  ASSERT_EQ(text.exit_code, 0) << text.output;
  EXPECT_NE(text.output.find("segment 1/"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("\nanswer: "), std::string::npos) << text.output;

  CommandResult as_json = RunRwr(base + " --json");
  ASSERT_EQ(as_json.exit_code, 0) << as_json.output;
  const json j = json::parse(as_json.output);
  const int64_t tokens = j["context_tokens"];
  EXPECT_GT(tokens, 64 * 3);
  EXPECT_EQ(static_cast<int64_t>(j["segments"].size()), (tokens + 63) / 64);
  EXPECT_LE(j["generated_tokens"].get<int64_t>(),
            static_cast<int64_t>(j["segments"].size()) * 6 + 6 + 4);
  // Greedy: the same answer every run.
  const json again = json::parse(RunRwr(base + " --json").output);
  EXPECT_EQ(again["answer"], j["answer"]);
  EXPECT_EQ(again["segments"], j["segments"]);

  // A context that fits one segment: no segment notes, one pass.
  const json one = json::parse(
      RunRwr(fmt::format(
                 "generate --model {} --context 'Ada moved to Oslo.' --question 'Where?' --json "
                 "--max-note-tokens 4 --max-answer-tokens 2 --log-level error",
                 ModelDir()))
          .output);
  EXPECT_TRUE(one["segments"].empty());
}

TEST(GenerateCli, BadInputIsOneLineNamingWhatIsWrong) {
  const std::string dir = TempDir("bad");
  const std::string model = ModelDir();
  struct Case {
    std::string args, expected;
    int exit_code;
  };
  const std::vector<Case> cases = {
      {fmt::format("--model {} --question q", model), "no context", 1},
      {fmt::format("--model {}/nope --question q --context c", dir), "nope", 1},
      {fmt::format("--model {} --question q --context-file {}/missing.txt", model, dir),
       "missing.txt", 1},
      {fmt::format("--model {} --question q --context-file {}", model, dir),
       "not a file that can be read", 1},
      {fmt::format("--model {} --question q --context c --template {}/t.yaml", model, dir),
       "t.yaml", 1},
      {fmt::format("--model {} --question q --context c --top-p 0", model), "--top-p", 1},
      {fmt::format("--model {} --question q --context c --tokenizer {}/none.json", model, dir),
       "none.json", 1},
  };
  for (const Case& c : cases) {
    CommandResult r = RunRwr("generate " + c.args + " --log-level error");
    EXPECT_EQ(r.exit_code, c.exit_code) << c.args << "\n" << r.output;
    EXPECT_EQ(Lines(r.output), 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.expected), std::string::npos) << c.args << "\n" << r.output;
  }
  // Usage errors (exit 2): both context flags, a negative budget.
  EXPECT_EQ(
      RunRwr(fmt::format("generate --model {} --question q --context c --context-file f", model))
          .exit_code,
      2);
  EXPECT_EQ(
      RunRwr(fmt::format("generate --model {} --question q --context c --max-note-tokens 0", model))
          .exit_code,
      2);
  // A model directory without tokenizer.json (a checkpoint) says what to pass.
  const std::string bare = TempDir("bare");
  fs::copy(model, bare, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  fs::remove(bare + "/tokenizer.json");
  CommandResult no_tok =
      RunRwr(fmt::format("generate --model {} --question q --context c --log-level error", bare));
  EXPECT_EQ(no_tok.exit_code, 1);
  EXPECT_NE(no_tok.output.find("--tokenizer"), std::string::npos) << no_tok.output;
}

// A stop signal reaches a generation in progress: it ends within a step, in one line.
TEST(GenerateCli, SigtermEndsALongGenerationWithinAStep) {
  const std::string dir = TempDir("generate_sigterm");
  { std::ofstream(dir + "/ctx.txt") << Context(400); }
  const auto started = std::chrono::steady_clock::now();
  CommandResult r = testing::RunShell(
      fmt::format("timeout --preserve-status -s TERM 1 '{}' generate --model {} --context-file "
                  "{}/ctx.txt --question q "
                  "--segment-tokens 8 --segments-at-once 1 --max-note-tokens 64 --threads 1 "
                  "--log-level error 2>&1",
                  RWR_BINARY, ModelDir(), dir));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("interrupted"), std::string::npos) << r.output;
  EXPECT_LT(seconds, 10) << "it ran on after the signal";
}

TEST(EvalCli, ScoresEveryItemAndWritesOnePredictionPerItem) {
  const std::string dir = TempDir("eval");
  {
    std::ofstream items(dir + "/items.jsonl");
    for (int i = 0; i < 3; ++i) {
      items << json{{"id", fmt::format("q{}", i)},
                    {"context", Context(2 + i)},
                    {"question", "Where did Ada move?"},
                    {"answer", "Oslo"}}
                   .dump()
            << "\n";
    }
  }
  CommandResult r = RunRwr(
      fmt::format("eval --model {} --input {}/items.jsonl --out {}/pred.jsonl --segment-tokens 16 "
                  "--max-note-tokens 3 --max-answer-tokens 3 --log-level error",
                  ModelDir(), dir, dir));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("eval: 3 items, exact "), std::string::npos) << r.output;
  std::ifstream pred(dir + "/pred.jsonl");
  std::vector<json> lines;
  for (std::string line; std::getline(pred, line);) lines.push_back(json::parse(line));
  ASSERT_EQ(lines.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(lines[i]["id"], fmt::format("q{}", i));
    EXPECT_EQ(lines[i]["reference"], "Oslo");
    EXPECT_FALSE(lines[i]["segments"].empty());  // 16-token segments: every context is longer
    // The score is the normalized comparison of the two strings written beside it.
    EXPECT_EQ(lines[i]["exact"].get<bool>(), lines[i]["answer"] == "Oslo" ||
                                                 lines[i]["answer"] == "oslo" ||
                                                 lines[i]["answer"] == "Oslo.")
        << lines[i];
  }
  CommandResult limited = RunRwr(fmt::format(
      "eval --model {} --input {}/items.jsonl --limit 1 --max-note-tokens 2 --max-answer-tokens 2 "
      "--log-level error",
      ModelDir(), dir));
  EXPECT_NE(limited.output.find("eval: 1 items"), std::string::npos) << limited.output;

  {
    std::ofstream(dir + "/dup.jsonl") << R"({"id":"a","context":"c","question":"q","answer":"x"})"
                                      << "\n"
                                      << R"({"id":"a","context":"c","question":"q","answer":"y"})"
                                      << "\n";
  }
  CommandResult dup = RunRwr(
      fmt::format("eval --model {} --input {}/dup.jsonl --log-level error", ModelDir(), dir));
  EXPECT_EQ(dup.exit_code, 1);
  EXPECT_NE(dup.output.find("dup.jsonl:2: item id 'a' appears again"), std::string::npos)
      << dup.output;
}

// A killed or requeued eval goes on where it stopped: every answered item is in --out already,
// a torn last line is answered again, and a file of another eval is refused.
TEST(EvalCli, ARerunAnswersOnlyWhatTheOutFileLacks) {
  const std::string dir = TempDir("resume");
  {
    std::ofstream items(dir + "/items.jsonl");
    for (int i = 0; i < 4; ++i) {
      items << json{{"id", fmt::format("q{}", i)},
                    {"context", Context(1 + i)},
                    {"question", "Where did Ada move?"},
                    {"answer", "Oslo"}}
                   .dump()
            << "\n";
    }
  }
  const std::string eval = fmt::format(
      "eval --model {} --input {}/items.jsonl --out {}/pred.jsonl --segment-tokens 16 "
      "--max-note-tokens 2 --max-answer-tokens 2",
      ModelDir(), dir, dir);
  auto ids_in = [&](const std::string& path) {
    std::vector<std::string> ids;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) ids.push_back(json::parse(line)["id"]);
    return ids;
  };
  CommandResult first = RunRwr(eval + " --limit 2 --log-level error");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_EQ(ids_in(dir + "/pred.jsonl"), (std::vector<std::string>{"q0", "q1"}));
  const std::string q1_line = [&] {
    std::ifstream in(dir + "/pred.jsonl");
    std::string line;
    std::getline(in, line);
    std::getline(in, line);
    return line;
  }();
  // A kill in the middle of writing q1's line: half of it on disk.
  fs::resize_file(dir + "/pred.jsonl", fs::file_size(dir + "/pred.jsonl") - q1_line.size() / 2);
  CommandResult rest = RunRwr(eval + " --log-level info");
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  EXPECT_NE(rest.output.find("cut short"), std::string::npos) << rest.output;
  EXPECT_NE(rest.output.find("holds 1 of the 4 items answered"), std::string::npos) << rest.output;
  EXPECT_NE(rest.output.find("eval: 4 items"), std::string::npos) << rest.output;
  EXPECT_EQ(ids_in(dir + "/pred.jsonl"), (std::vector<std::string>{"q0", "q1", "q2", "q3"}));
  CommandResult again = RunRwr(eval + " --log-level info");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("holds 4 of the 4 items answered"), std::string::npos)
      << again.output;
  EXPECT_EQ(ids_in(dir + "/pred.jsonl").size(), 4u);  // nothing answered twice
  // The summary counts this run's items only.
  CommandResult first_two = RunRwr(eval + " --limit 2 --log-level error");
  EXPECT_NE(first_two.output.find("eval: 2 items"), std::string::npos) << first_two.output;

  // Other settings are not mixed in: the key that differs is named.
  CommandResult wider = RunRwr(
      fmt::format("eval --model {} --input {}/items.jsonl --out {}/pred.jsonl --segment-tokens 32 "
                  "--max-note-tokens 2 --max-answer-tokens 2 --log-level error",
                  ModelDir(), dir, dir));
  EXPECT_EQ(wider.exit_code, 1);
  EXPECT_NE(wider.output.find("answered with segment_tokens 16, this run has 32"),
            std::string::npos)
      << wider.output;

  // While another eval writes the file, a second is refused naming it.
  {
    // The lock is the test process's (as an eval holds it); a child (the eval) cannot take it.
    auto held = DirLock::AcquireForFile(
        dir + "/pred.jsonl", {.setting = "--out", .command = "rwr eval", .clash = "test"});
    ASSERT_TRUE(held.ok()) << held.status();
    CommandResult locked = RunRwr(eval + " --log-level error");
    EXPECT_EQ(locked.exit_code, 1);
    EXPECT_NE(locked.output.find("is in use by another rwr eval"), std::string::npos)
        << locked.output;
    EXPECT_NE(locked.output.find(fmt::format("pid {}", ::getpid())), std::string::npos)
        << locked.output;
  }

  // Another model's file, or one naming items the dataset lacks: refused, untouched.
  const std::string other_model = TempDir("other_model");
  fs::copy(ModelDir(), other_model,
           fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const std::string before = [&] {
    std::ifstream in(dir + "/pred.jsonl");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  const std::string same_settings =
      "--segment-tokens 16 --max-note-tokens 2 --max-answer-tokens 2 --log-level error";
  CommandResult other =
      RunRwr(fmt::format("eval --model {} --input {}/items.jsonl --out {}/pred.jsonl {}",
                         other_model, dir, dir, same_settings));
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_EQ(Lines(other.output), 1) << other.output;
  EXPECT_NE(other.output.find("answered with model"), std::string::npos) << other.output;
  {
    std::ofstream fewer(dir + "/fewer.jsonl");
    fewer << R"({"id":"q0","context":"c","question":"q","answer":"x"})"
          << "\n";
  }
  CommandResult foreign =
      RunRwr(fmt::format("eval --model {} --input {}/fewer.jsonl --out {}/pred.jsonl {}",
                         ModelDir(), dir, dir, same_settings));
  EXPECT_EQ(foreign.exit_code, 1);
  EXPECT_NE(foreign.output.find("item 'q1' is not in the dataset"), std::string::npos)
      << foreign.output;
  std::ifstream after_in(dir + "/pred.jsonl");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(after_in), {}), before);
}

// SIGTERM (Slurm's stop, or its time-limit warning as SIGUSR1) ends an eval after the item in
// progress with exit 0; the run that follows answers the rest.
TEST(EvalCli, SigtermStopsBetweenItemsAndTheRerunFinishes) {
  const std::string dir = TempDir("sigterm");
  const int count = 40;
  {
    std::ofstream items(dir + "/items.jsonl");
    for (int i = 0; i < count; ++i) {
      items << json{{"id", fmt::format("q{:02d}", i)},
                    {"context", Context(3)},
                    {"question", "Where did Ada move?"},
                    {"answer", "Oslo"}}
                   .dump()
            << "\n";
    }
  }
  const std::string args = fmt::format(
      "eval --model {} --input {}/items.jsonl --out {}/pred.jsonl --segment-tokens 16 "
      "--max-note-tokens 24 --max-answer-tokens 8 --threads 1",
      ModelDir(), dir, dir);
  auto lines_in = [&] {
    std::ifstream in(dir + "/pred.jsonl");
    int lines = 0;
    for (std::string line; std::getline(in, line);) ++lines;
    return lines;
  };
  testing::Launched eval(fmt::format("exec {} {} > {}/eval.log 2>&1", RWR_BINARY, args, dir));
  ASSERT_GT(eval.pid(), 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (lines_in() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(kill(eval.pid(), SIGTERM), 0);
  const std::optional<int> status = eval.Wait(std::chrono::seconds(60));
  ASSERT_TRUE(status.has_value()) << "still answering 60 s after SIGTERM";
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  const int stopped = lines_in();
  EXPECT_GE(stopped, 2);
  std::ifstream log_in(dir + "/eval.log");
  const std::string log(std::istreambuf_iterator<char>(log_in), {});
  if (stopped < count) {  // a very fast machine may have finished first
    EXPECT_NE(log.find("interrupted with"), std::string::npos) << log;
  }
  CommandResult rest = RunRwr(args + " --log-level error");
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  EXPECT_NE(rest.output.find(fmt::format("eval: {} items", count)), std::string::npos)
      << rest.output;
  EXPECT_EQ(lines_in(), count);
}

}  // namespace
}  // namespace rwr
