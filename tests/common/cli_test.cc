// The `rwr` binary as a user meets it: --help, --version, config resolution, one-line errors.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/support/run_rwr.h"

namespace {

using RunResult = ::rwr::testing::CommandResult;
using ::rwr::testing::RunRwr;

TEST(CliTest, VersionNamesTheBuildFeatures) {
  RunResult run = RunRwr("--version");
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_NE(run.output.find("rwr "), std::string::npos);
  EXPECT_NE(run.output.find("cuda: "), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("services: "), std::string::npos) << run.output;
}

TEST(CliTest, HelpListsCommandGroups) {
  RunResult run = RunRwr("--help");
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_NE(run.output.find("config"), std::string::npos) << run.output;
  EXPECT_EQ(RunRwr("config show --help").exit_code, 0);
}

TEST(CliTest, ConfigShowAppliesFileThenOverrides) {
  const std::string path = testing::TempDir() + "/cli_test.yaml";
  std::ofstream(path) << "train:\n  lr: 0.001\n  steps: 10\n";
  RunResult run = RunRwr("config show --config " + path + " --set train.lr=0.5 --set data.seed=3");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("lr: 0.5"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("steps: 10"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("seed: 3"), std::string::npos) << run.output;
}

// The resolved config is logged when there is one; a command given no file, no --set and no
// defaults logs no empty "{}" (every client call of `rwr distill status` did).
TEST(CliTest, ResolvedConfigIsLoggedOnlyWhenThereIsOne) {
  RunResult with = RunRwr("config show --set train.lr=0.5 --log-level info");
  ASSERT_EQ(with.exit_code, 0) << with.output;
  EXPECT_NE(with.output.find("resolved config"), std::string::npos) << with.output;
  RunResult without = RunRwr("config show --log-level info");
  ASSERT_EQ(without.exit_code, 0) << without.output;
  EXPECT_EQ(without.output.find("resolved config"), std::string::npos) << without.output;
}

// A train setting of the wrong type or range is one line: the resolved config (a page of YAML)
// is logged only once the settings read.
TEST(CliTest, ABadTrainSettingIsOneLineWithoutTheResolvedConfig) {
  for (const char* set : {"train.steps=abc", "train.steps=-3", "train.lr=fast"}) {
    RunResult run = RunRwr(std::string("train --set data.dir=/nonexistent --set ") +
                           "train.out_dir=/nonexistent --log-level info --set " + set);
    EXPECT_EQ(run.exit_code, 1) << run.output;
    EXPECT_NE(run.output.find("rwr: error: config key 'train."), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("resolved config"), std::string::npos) << run.output;
    EXPECT_EQ(std::count(run.output.begin(), run.output.end(), '\n'), 1) << run.output;
  }
}

TEST(CliTest, BadInputIsOneClearLineAndNonZeroExit) {
  RunResult bad_set = RunRwr("config show --set nonsense");
  EXPECT_EQ(bad_set.exit_code, 1);
  EXPECT_NE(bad_set.output.find("expected key=value"), std::string::npos) << bad_set.output;
  EXPECT_EQ(std::count(bad_set.output.begin(), bad_set.output.end(), '\n'), 1) << bad_set.output;

  RunResult missing_file = RunRwr("config show --config /nonexistent.yaml");
  EXPECT_NE(missing_file.exit_code, 0);
  RunResult unknown = RunRwr("frobnicate");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_EQ(RunRwr("").exit_code, 2) << "a group is required";
}

// A flag that must be positive says so in one short line (CLI11's own check printed its whole
// range, to 1.8e308 written out).
TEST(CliTest, PositiveFlagsSayWhatIsWrong) {
  // Without services, `rwr teacher info --help` prints the top-level help (and exits 0).
  if (RunRwr("teacher info --help").output.find("--timeout") == std::string::npos) {
    GTEST_SKIP() << "built without rwr teacher";
  }
  RunResult zero = RunRwr("teacher info --teacher rwr://127.0.0.1:7 --timeout 0");
  EXPECT_EQ(zero.exit_code, 2);
  EXPECT_NE(zero.output.find("--timeout: must be > 0 (got 0)"), std::string::npos) << zero.output;
  EXPECT_LT(zero.output.size(), 200u) << zero.output;
}

// A build without services (GPU nodes) lists the groups it leaves out as not built, and using one
// is one line that says so (CLI11 alone said "A subcommand is required").
TEST(CliTest, GroupsLeftOutOfTheBuildSaySo) {
  RunResult help = RunRwr("--help");
  ASSERT_EQ(help.exit_code, 0) << help.output;
  if (help.output.find("(not in this build") == std::string::npos) {
    GTEST_SKIP() << "built with services: every group is here";
  }
  for (const std::string group : {"teacher", "distill", "cache"}) {
    RunResult use = RunRwr(group + " run --teacher builtin:extractive --cache c --input in.jsonl");
    EXPECT_EQ(use.exit_code, 1) << use.output;
    EXPECT_NE(use.output.find("rwr " + group + " is not in this build (RWR_SERVICES=OFF"),
              std::string::npos)
        << use.output;
    EXPECT_EQ(std::count(use.output.begin(), use.output.end(), '\n'), 1) << use.output;
  }
}

// Every key the sources read by name (Get / GetOr / Has on a Config, FlagToOverride) is in the
// registry `rwr config keys` prints, which every command checks a config against: a key missing
// there would make a working config an error.
TEST(CliTest, ConfigKeysListsEveryKeyTheSourcesRead) {
  RunResult run = RunRwr("config keys");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::set<std::string> listed;
  std::istringstream lines(run.output);
  for (std::string line; std::getline(lines, line);) listed.insert(line);
  const std::regex read(
      R"re((?:GetOr|Get|Has)(?:<[^>]*>)?\("([a-z_0-9]+(?:\.[a-z_0-9]+)+)"|FlagToOverride\([^;]*?"([a-z_0-9]+(?:\.[a-z_0-9]+)+)")re");
  int found = 0;
  for (const char* dir : {"cli", "trainer", "teacher_client", "distill", "storage", "common"}) {
    for (const auto& entry :
         std::filesystem::recursive_directory_iterator(std::string(RWR_SOURCE_DIR) + "/" + dir)) {
      const std::string ext = entry.path().extension().string();
      if (ext != ".cc" && ext != ".h") continue;
      std::ifstream in(entry.path());
      const std::string text((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
      for (auto it = std::sregex_iterator(text.begin(), text.end(), read);
           it != std::sregex_iterator(); ++it) {
        const std::string key = (*it)[1].matched ? (*it)[1].str() : (*it)[2].str();
        ++found;
        // A section read whole (Has("recipe.ratio")) is listed by its keys.
        const auto next = listed.lower_bound(key + ".");
        const bool section = next != listed.end() && next->starts_with(key + ".");
        EXPECT_TRUE(listed.contains(key) || section) << key << " (read in " << entry.path() << ")";
      }
    }
  }
  EXPECT_GT(found, 50);  // the scan sees the sources
  RunResult typo = RunRwr("config show --set distill.concurency=3");
  EXPECT_EQ(typo.exit_code, 1);
  EXPECT_NE(typo.output.find("did you mean 'distill.concurrency'"), std::string::npos)
      << typo.output;
}

}  // namespace
