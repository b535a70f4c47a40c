// The trainer's commands as a user runs them (the real `rwr` binary in a subprocess):
// model init, train (a second run into the same directory refused while the first runs; SIGTERM →
// checkpoint + exit 0, then resume), checkpoint inspect, export, and one-line errors.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "fmt/format.h"
#include "tests/support/run_rwr.h"
#include "tests/support/shard_dataset.h"
#include "tests/support/temp_dir.h"
#include "trainer/checkpoint.h"
#include "trainer/model_io.h"
#include "trainer/train_loop.h"

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;
const std::string kRwr = RWR_BINARY;
const std::string kSource = RWR_SOURCE_DIR;

std::string TempDir(const std::string& name) { return rwr::testing::FreshTempDir("cli", name); }

using rwr::testing::CommandResult;

// `rwr ARGS` with `env` (NAME=VALUE ...) set for it.
CommandResult Sh(const std::string& args, const std::string& env = "") {
  return rwr::testing::RunShell(fmt::format("{} {} {} 2>&1", env, kRwr, args));
}

std::string MakeDataset(int rows) {
  return rwr::testing::MakeTinyDataset(
      TempDir("data"), rows, [](int r, int i) { return uint32_t(r * 31 + i * 7); }, 31);
}

TEST(ModelInit, WritesEveryConfigSizeInHfLayout) {
  const std::string out = TempDir("init");
  CommandResult r =
      Sh(fmt::format("model init --config {}/configs/models/tiny.yaml --out {} --seed 3 "
                     "--log-level warn",
                     kSource, out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto model = LoadModelDir(out);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->config.d_model, 64);
  EXPECT_EQ(model->config.vocab_size, 8192);
  // Mamba init: A_log = log(1..S), D = 1, softplus(dt bias) within [dt_min, dt_max].
  const ParamLayout layout = ParamLayout::ForMamba(model->config);
  const LayerOffsets& o = layout.layer(1);
  EXPECT_FLOAT_EQ(model->params[o.A_log + 3], std::log(4.f));
  EXPECT_FLOAT_EQ(model->params[o.D + 5], 1.f);
  for (int64_t i = 0; i < model->config.d_inner; ++i) {
    const double dt = std::log1p(std::exp(model->params[o.dt_proj_bias + i]));
    EXPECT_GE(dt, 0.001 * 0.999);
    EXPECT_LE(dt, 0.1 * 1.001);
  }
}

// As in `rwr train`, inline model keys beside model.config must agree with that config.json: the
// command logged hidden_size 32 and wrote a model of 64.
TEST(ModelInit, InlineKeysThatDisagreeWithModelConfigAreAnError) {
  const std::string base = TempDir("init_base");
  ASSERT_EQ(Sh(fmt::format("model init --config {}/configs/models/tiny.yaml --out {} --log-level "
                           "warn",
                           kSource, base))
                .exit_code,
            0);
  const std::string out = TempDir("init_differ") + "/model";
  CommandResult differ = Sh(fmt::format(
      "model init --config {}/configs/models/tiny.yaml --set model.config={}/config.json --set "
      "model.hidden_size=32 --out {} --log-level warn",
      kSource, base, out));
  EXPECT_EQ(differ.exit_code, 1) << differ.output;
  EXPECT_NE(differ.output.find("model.hidden_size is 32"), std::string::npos) << differ.output;
  EXPECT_FALSE(fs::exists(out));
  CommandResult agree = Sh(fmt::format(
      "model init --config {}/configs/models/tiny.yaml --set model.config={}/config.json --out {} "
      "--log-level warn",
      kSource, base, out));
  EXPECT_EQ(agree.exit_code, 0) << agree.output;
}

// A negative seed is a usage error, not a wrap-around to 2^64 - 1.
TEST(ModelInit, ANegativeSeedIsRefused) {
  const std::string out = TempDir("init_seed") + "/model";
  CommandResult r = Sh(fmt::format(
      "model init --config {}/configs/models/tiny.yaml --out {} --seed -1", kSource, out));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--seed"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
}

TEST(ModelInit, Mamba28bConfigHasThePublishedParameterCount) {
  auto config = Config::LoadFile(kSource + "/configs/models/mamba-2.8b.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  auto model = ModelConfigFromRunConfig(*config);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->NumParameters(), 2768345600);  // RWR_METHOD.md
  EXPECT_EQ(model->d_inner, 5120);
  EXPECT_EQ(model->dt_rank, 160);
}

TEST(TrainCli, SigtermCheckpointsExitsZeroAndResumes) {
  const std::string data = MakeDataset(16);
  const std::string out = TempDir("run");
  const std::string args = fmt::format(
      "train --config {}/configs/train_tiny.yaml --set data.dir={} --set train.out_dir={} "
      "--set train.steps=100000 --set train.batch_size=2 --set train.checkpoint_every=0 "
      "--set train.log_every=1000",
      kSource, data, out);
  // The batch script's marker (deploy/slurm/rwr-job.sbatch): made by a run a signal stopped early.
  const std::string marker = TempDir("marker") + "/stopped_early";
  rwr::testing::Launched train(fmt::format(
      "RWR_STOPPED_EARLY_FILE={} exec {} {} > {}/train.log 2>&1", marker, kRwr, args, out));
  ASSERT_GT(train.pid(), 0);
  // Wait for a few steps in the metrics file, then SIGTERM.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int lines = 0;
  while (lines < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    lines = 0;
    while (std::getline(in, line)) ++lines;
  }
  ASSERT_GE(lines, 2) << "training did not start";
  // A second run into the same directory is refused, naming the one that holds it.
  CommandResult second = Sh(args + " --set train.max_steps_this_run=1");  // bounded if let in
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_NE(second.output.find(fmt::format("train.out_dir {} is in use by another rwr train", out)),
            std::string::npos)
      << second.output;
  EXPECT_NE(second.output.find(fmt::format("pid {}", train.pid())), std::string::npos)
      << second.output;
  ASSERT_EQ(kill(train.pid(), SIGTERM), 0);
  const std::optional<int> status = train.Wait(std::chrono::seconds(60));
  ASSERT_TRUE(status.has_value()) << "still training 60 s after SIGTERM";
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0) << rwr::testing::ReadLog(out + "/train.log");
  EXPECT_TRUE(fs::exists(marker));
  fs::remove(marker);
  auto latest = LatestCheckpoint(out + "/checkpoints");
  ASSERT_TRUE(latest.has_value());
  auto ckpt = LoadCheckpoint(*latest);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const int64_t stopped_at = ckpt->state.step;
  EXPECT_GE(stopped_at, 2);

  // Resume and run two more steps: a run that finishes makes no marker.
  CommandResult resumed =
      Sh(fmt::format("{} --set train.steps={} --log-level warn", args, stopped_at + 2),
         "RWR_STOPPED_EARLY_FILE=" + marker);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_FALSE(fs::exists(marker));
  EXPECT_NE(resumed.output.find(fmt::format("steps {} -> {}", stopped_at, stopped_at + 2)),
            std::string::npos)
      << resumed.output;

  CommandResult inspect = Sh(fmt::format("checkpoint inspect {} --tensors", out));
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find(fmt::format("step        {}", stopped_at + 2)), std::string::npos)
      << inspect.output;
  EXPECT_NE(inspect.output.find("backbone.layers.1.mixer.A_log"), std::string::npos);

  const std::string exported = TempDir("export");
  CommandResult exp =
      Sh(fmt::format("export --checkpoint {} --out {} --dtype bf16 --tokenizer "
                     "{}/configs/tokenizer/tokenizer.json --log-level warn",
                     out, exported, kSource));
  ASSERT_EQ(exp.exit_code, 0) << exp.output;
  EXPECT_TRUE(fs::exists(exported + "/tokenizer.json"));
  auto loaded = LoadModelDir(exported);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
}

// A signal during an evaluation abandons it and checkpoints at once: an evaluation of many
// batches would otherwise spend the grace Slurm gives between SIGTERM and SIGKILL.
TEST(TrainCli, SigtermDuringAnEvaluationCheckpointsWithoutFinishingIt) {
  const std::string data = MakeDataset(16);
  const std::string out = TempDir("eval_signal");
  rwr::testing::Launched train(fmt::format(
      "exec {} train --config {}/configs/train_tiny.yaml --set data.dir={} --set "
      "data.eval_dir={} "
      "--set train.out_dir={} --set train.batch_size=2 --set train.eval_every=2 "
      "--set train.eval_batches=1000000 --set train.checkpoint_every=0 > {}/train.log 2>&1",
      kRwr, kSource, data, data, out, out));
  ASSERT_GT(train.pid(), 0);
  // Once step 1 is logged, the signal comes during step 2 or its evaluation (hours of it); either
  // way that evaluation must not run to its end.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool step_logged = false;
  while (!step_logged && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::ifstream in(out + "/metrics.jsonl");
    std::string line;
    step_logged = static_cast<bool>(std::getline(in, line));
  }
  ASSERT_TRUE(step_logged) << "training did not start";
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_EQ(kill(train.pid(), SIGTERM), 0);
  const std::optional<int> status = train.Wait(std::chrono::seconds(60));
  ASSERT_TRUE(status.has_value()) << "still evaluating 60 s after SIGTERM";
  ASSERT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0) << rwr::testing::ReadLog(out + "/train.log");
  auto latest = LatestCheckpoint(out + "/checkpoints");
  ASSERT_TRUE(latest.has_value());
  EXPECT_TRUE(LoadCheckpoint(*latest).ok());
  std::ifstream metrics(out + "/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    EXPECT_EQ(line.find("eval_loss"), std::string::npos) << line;  // no half-done evaluation
  }
}

// A key no rwr command reads is an error naming the nearest known one, before anything runs; a
// pipeline config's sections for other stages (distill:, build:, teacher:) pass.
TEST(TrainCli, UnknownKeysAreErrorsAndOtherStagesSectionsPass) {
  const std::string data = MakeDataset(16);
  for (const auto& [set, suggestion] :
       std::vector<std::pair<std::string, std::string>>{{"train.stpes=3", "train.steps"},
                                                        {"trian.steps=3", "train.steps"},
                                                        {"model.state_szie=4", "model.state_size"},
                                                        {"data.shufle=false", "data.shuffle"}}) {
    const std::string out = TempDir("typo") + "/run";
    CommandResult typo = Sh(fmt::format(
        "train --config {}/configs/train_tiny.yaml --set data.dir={} --set train.out_dir={} "
        "--set {} --log-level error",
        kSource, data, out, set));
    EXPECT_EQ(typo.exit_code, 1) << set;
    EXPECT_NE(typo.output.find("(did you mean '" + suggestion + "'?)"), std::string::npos)
        << typo.output;
    EXPECT_FALSE(fs::exists(out));  // refused before anything was written
  }
  // One file for the whole pipeline: the tiny run config plus other stages' sections.
  const std::string pipeline = TempDir("pipeline") + "/pipeline.yaml";
  {
    std::ifstream tiny(kSource + "/configs/train_tiny.yaml");
    std::ofstream out(pipeline);
    out << tiny.rdbuf() << "distill: {concurrency: 8}\nbuild: {seq_len: 64}\n"
        << "teacher: {extractive: {min_coverage: 0.4}}\nrecipe: {seed: 3}\n";
  }
  CommandResult shared = Sh(
      fmt::format("train --config {} --set data.dir={} --set train.out_dir={} --set train.steps=2 "
                  "--set data.count=10 --log-level error",
                  pipeline, data, TempDir("pipeline_run")));
  EXPECT_EQ(shared.exit_code, 0) << shared.output;
}

// `rwr train` under a file-size limit, as on a full disk or quota (`ulimit -f` counts 512-byte
// blocks in /bin/sh; SIGXFSZ ignored, so a write past it fails with EFBIG as ENOSPC would fail).
CommandResult TrainWithFileSizeLimit(int blocks, const std::string& args) {
  return rwr::testing::RunShell(
      fmt::format("trap '' XFSZ; ulimit -f {}; {} {} 2>&1", blocks, kRwr, args));
}

// A write that fails for lack of room stops the run at once with one line naming the file: a
// metrics line that cannot be written (the run went on, logging nothing, until its checkpoint
// failed hours later), and a checkpoint that cannot be written (its half-written .tmp, as large
// as the disk allowed, was left behind).
TEST(TrainCli, AFullDiskStopsTheRunAtTheWriteThatFailed) {
  const std::string data = MakeDataset(16);
  // On the CPU: a GPU run's first write is its gemm_algos.json.
  const std::string common = fmt::format(
      "train --config {}/configs/train_tiny.yaml --set data.dir={} --set train.batch_size=2 "
      "--set train.log_every=1000 --set train.device=cpu --log-level error",
      kSource, data);
  const std::string metrics_run = TempDir("full_metrics");
  CommandResult metrics = TrainWithFileSizeLimit(
      4, fmt::format("{} --set train.out_dir={} --set train.steps=40 --set "
                     "train.checkpoint_every=0",
                     common, metrics_run));  // 2 KiB: config.yaml, then ~9 metrics lines
  EXPECT_EQ(metrics.exit_code, 1) << metrics.output;
  EXPECT_NE(metrics.output.find(metrics_run + "/metrics.jsonl"), std::string::npos)
      << metrics.output;
  EXPECT_EQ(std::count(metrics.output.begin(), metrics.output.end(), '\n'), 1) << metrics.output;

  const std::string checkpoint_run = TempDir("full_checkpoint");
  CommandResult checkpoint = TrainWithFileSizeLimit(
      64, fmt::format("{} --set train.out_dir={} --set train.steps=4 --set "
                      "train.checkpoint_every=2",
                      common, checkpoint_run));  // 32 KiB: the 2 MiB weights do not fit
  EXPECT_EQ(checkpoint.exit_code, 1) << checkpoint.output;
  EXPECT_NE(checkpoint.output.find("model.safetensors"), std::string::npos) << checkpoint.output;
  EXPECT_EQ(std::count(checkpoint.output.begin(), checkpoint.output.end(), '\n'), 1)
      << checkpoint.output;
  for (const auto& entry : fs::directory_iterator(checkpoint_run + "/checkpoints")) {
    ADD_FAILURE() << "left behind: " << entry.path();
  }
}

// Each console line says the time left at the pace since the last line; the last step's none.
TEST(TrainCli, EachLineSaysTheTimeLeft) {
  const std::string data = MakeDataset(8);
  const std::string out = TempDir("eta");
  CommandResult r = Sh(fmt::format(
      "train --config {}/configs/train_tiny.yaml --set data.dir={} --set train.out_dir={} "
      "--set train.steps=3 --set train.batch_size=2 --set train.log_every=1",
      kSource, data, out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* step : {"step 1/3 ", "step 2/3 ", "step 3/3 "}) {
    const size_t at = r.output.find(step);
    ASSERT_NE(at, std::string::npos) << r.output;
    const std::string line = r.output.substr(at, r.output.find('\n', at) - at);
    EXPECT_EQ(line.find("  ETA ") != std::string::npos, std::string(step) != "step 3/3 ") << line;
  }
}

TEST(TrainCli, ErrorsAreOneLine) {
  CommandResult no_data =
      Sh(fmt::format("train --config {}/configs/train_tiny.yaml --set data.dir=/nonexistent "
                     "--set train.out_dir={} --log-level error",
                     kSource, TempDir("err")));
  EXPECT_EQ(no_data.exit_code, 1);
  EXPECT_NE(no_data.output.find("rwr: error:"), std::string::npos) << no_data.output;
  CommandResult bad_ckpt = Sh("checkpoint inspect /nonexistent");
  EXPECT_EQ(bad_ckpt.exit_code, 1);
  EXPECT_NE(bad_ckpt.output.find("no such directory"), std::string::npos) << bad_ckpt.output;
  CommandResult bad_export =
      Sh(fmt::format("export --checkpoint {} --out {}", TempDir("empty"), TempDir("x")));
  EXPECT_EQ(bad_export.exit_code, 1);
  EXPECT_NE(bad_export.output.find("no complete checkpoint"), std::string::npos)
      << bad_export.output;
}

}  // namespace
}  // namespace rwr::trainer
