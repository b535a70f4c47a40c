// The `rwr` binary as a user meets it: --help, --version, config resolution, one-line errors.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
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

}  // namespace
