// `rwr export`, `rwr model init` and `rwr checkpoint inspect` as a user runs them (the real binary
// in a subprocess) on a checkpoint saved in-process: an output directory is written whole or not
// at all and never mixed with old files; inputs are checked before anything is written; the
// tokenizer is found through the run's recorded data dir from any working directory, and a missing
// one is an error; inspect reports a checkpoint whose files are missing or cut short; neither
// export nor inspect takes --config or --set (they read no config key, so passing one is a usage
// error rather than silently ignored).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "fmt/format.h"
#include "tests/support/run_rwr.h"
#include "tests/support/temp_dir.h"
#include "trainer/checkpoint.h"
#include "trainer/model_io.h"
#include "trainer/train_loop.h"

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;
using rwr::testing::CommandResult;
using rwr::testing::RunRwr;
using rwr::testing::RunShell;
const std::string kSource = RWR_SOURCE_DIR;

std::string TempDir(const std::string& name) {
  return rwr::testing::FreshTempDir("export_cli", name);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Entries of `dir`'s parent whose name starts with `dir`'s name and a dot (OUT.tmp-<pid>, ...).
std::vector<std::string> Leftovers(const std::string& dir) {
  std::vector<std::string> found;
  const std::string prefix = fs::path(dir).filename().string() + ".";
  for (const auto& entry : fs::directory_iterator(fs::path(dir).parent_path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) found.push_back(name);
  }
  return found;
}

int Lines(const std::string& text) { return std::count(text.begin(), text.end(), '\n'); }

// A checkpoint of the tiny model as `rwr train` saves it, under RUN/checkpoints/step_00000001.
// The resolved config's data.dir is relative (as a user types it), `data_dir` the absolute path
// the trainer records (empty: a checkpoint from before that key).
std::string SaveTinyCheckpoint(const std::string& run, const std::string& data_dir) {
  auto config = Config::LoadFile(kSource + "/configs/models/tiny.yaml");
  EXPECT_TRUE(config.ok()) << config.status();
  auto model = ModelConfigFromRunConfig(*config);
  EXPECT_TRUE(model.ok()) << model.status();
  CheckpointData data;
  data.config = *model;
  data.params = InitParams(*model, 1);
  data.opt_end = static_cast<int64_t>(data.params.size());
  data.exp_avg.assign(data.params.size(), 0.f);
  data.exp_avg_sq.assign(data.params.size(), 0.f);
  data.state.step = 1;
  data.state.resolved_config_yaml = "data:\n  dir: data\n";
  data.state.data_dir = data_dir;
  auto saved = SaveCheckpoint(run + "/checkpoints", data);
  EXPECT_TRUE(saved.ok()) << saved.status();
  return saved.ok() ? *saved : "";
}

// --log-level error: what is left of the output is the result or the one error line.
CommandResult Export(const std::string& args) { return RunRwr("export --log-level error " + args); }

TEST(ExportCli, ANonEmptyOutIsRefusedUnlessOverwriteWhichReplacesItEntirely) {
  const std::string run = TempDir("foreign_run");
  SaveTinyCheckpoint(run, "");
  const std::string out = TempDir("foreign_out");
  WriteText(out + "/notes.txt", "someone else's file\n");

  CommandResult refused = Export(fmt::format("--checkpoint {} --out {} --no-tokenizer", run, out));
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_EQ(Lines(refused.output), 1) << refused.output;
  EXPECT_NE(refused.output.find("--overwrite"), std::string::npos) << refused.output;
  EXPECT_EQ(Listing(out), std::vector<std::string>{"notes.txt"});

  CommandResult replaced =
      Export(fmt::format("--checkpoint {} --out {} --no-tokenizer --overwrite", run, out));
  ASSERT_EQ(replaced.exit_code, 0) << replaced.output;
  EXPECT_EQ(replaced.output.find("notes.txt"), std::string::npos) << replaced.output;
  EXPECT_EQ(Listing(out), (std::vector<std::string>{"config.json", "model.safetensors"}));
  EXPECT_TRUE(Leftovers(out).empty());
}

TEST(ExportCli, ReexportWithShardsLeavesNoStaleSingleFile) {
  const std::string run = TempDir("reshard_run");
  SaveTinyCheckpoint(run, "");
  const std::string out = TempDir("reshard_out");
  ASSERT_EQ(Export(fmt::format("--checkpoint {} --out {} --no-tokenizer", run, out)).exit_code, 0);
  ASSERT_TRUE(fs::exists(out + "/model.safetensors"));

  // 0.0005 GiB ≈ 0.5 MiB: the tiny model's 1 MiB of bf16 weights become several shards.
  CommandResult sharded = Export(fmt::format(
      "--checkpoint {} --out {} --no-tokenizer --overwrite --max-shard-gib 0.0005", run, out));
  ASSERT_EQ(sharded.exit_code, 0) << sharded.output;
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors")) << "a stale file HF would load instead";
  auto loaded = LoadModelDir(out);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
}

TEST(ExportCli, AFailedExportLeavesNoOutDirectory) {
  const std::string run = TempDir("failed_run");
  SaveTinyCheckpoint(run, "");
  const std::string out = TempDir("failed_out") + "/export";

  CommandResult bad_tokenizer =
      Export(fmt::format("--checkpoint {} --out {} --tokenizer nope.json", run, out));
  EXPECT_EQ(bad_tokenizer.exit_code, 1);
  EXPECT_EQ(Lines(bad_tokenizer.output), 1) << bad_tokenizer.output;
  EXPECT_NE(bad_tokenizer.output.find("nope.json"), std::string::npos) << bad_tokenizer.output;
  EXPECT_FALSE(fs::exists(out));

  fs::resize_file(run + "/checkpoints/step_00000001/model.safetensors", 100);
  CommandResult bad_checkpoint =
      Export(fmt::format("--checkpoint {} --out {} --no-tokenizer", run, out));
  EXPECT_EQ(bad_checkpoint.exit_code, 1);
  EXPECT_NE(bad_checkpoint.output.find("model.safetensors"), std::string::npos)
      << bad_checkpoint.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(Leftovers(out).empty());
}

// An export killed midway (kill -9) leaves OUT.tmp-<pid>; the next write of OUT removes the
// leftovers of processes that are gone, and not those of a live one.
TEST(ExportCli, LeftoversOfADeadExportAreRemoved) {
  const std::string run = TempDir("leftover_run");
  SaveTinyCheckpoint(run, "");
  const std::string out = TempDir("leftover_out") + "/export";
  // A pid that is not running: a child that has exited and been reaped.
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_GT(dead, 0);
  ::waitpid(dead, nullptr, 0);
  fs::create_directories(fmt::format("{}.tmp-{}", out, dead));
  WriteText(fmt::format("{}.tmp-{}/model.safetensors", out, dead), "half");
  fs::create_directories(fmt::format("{}.old-{}", out, dead));
  const std::string live = fmt::format("{}.tmp-{}", out, ::getpid());  // this test's: alive
  fs::create_directories(live);
  CommandResult ok = Export(fmt::format("--checkpoint {} --out {} --no-tokenizer", run, out));
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_EQ(Leftovers(out), std::vector<std::string>{fs::path(live).filename().string()});
  fs::remove_all(live);
}

TEST(ExportCli, MaxShardGibMustBePositive) {
  const std::string run = TempDir("shardsize_run");
  SaveTinyCheckpoint(run, "");
  const std::string out = TempDir("shardsize_out") + "/export";
  for (const char* size : {"0", "-1"}) {
    CommandResult r = Export(
        fmt::format("--checkpoint {} --out {} --no-tokenizer --max-shard-gib {}", run, out, size));
    EXPECT_EQ(r.exit_code, 1) << size << ": " << r.output;
    EXPECT_EQ(Lines(r.output), 1) << r.output;
    EXPECT_NE(r.output.find("--max-shard-gib"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out));
  }
}

TEST(ExportCli, FindsTheTokenizerThroughTheRecordedDataDirFromAnotherDirectory) {
  const std::string data = TempDir("tokenizer_data");
  WriteText(data + "/tokenizer.json", "{\"model\": {\"type\": \"BPE\"}}\n");
  const std::string run = TempDir("tokenizer_run");
  SaveTinyCheckpoint(run, data);  // the config's data.dir ("data") means nothing in cwd
  const std::string out = TempDir("tokenizer_out") + "/export";

  CommandResult r =
      RunShell(fmt::format("cd {} && '{}' export --log-level error --checkpoint {} "
                           "--out {} 2>&1",
                           TempDir("elsewhere"), RWR_BINARY, run, out));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ReadAll(out + "/tokenizer.json"), ReadAll(data + "/tokenizer.json"));
}

TEST(ExportCli, NoTokenizerFoundIsAnErrorUnlessNoTokenizerIsGiven) {
  const std::string run = TempDir("notok_run");
  SaveTinyCheckpoint(run, "");  // an older checkpoint: no data_dir, and data.dir doesn't exist
  const std::string out = TempDir("notok_out") + "/export";

  CommandResult missing = Export(fmt::format("--checkpoint {} --out {}", run, out));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(Lines(missing.output), 1) << missing.output;
  EXPECT_NE(missing.output.find("--tokenizer FILE"), std::string::npos) << missing.output;
  EXPECT_NE(missing.output.find("--no-tokenizer"), std::string::npos) << missing.output;
  EXPECT_FALSE(fs::exists(out));

  CommandResult weights_only =
      Export(fmt::format("--checkpoint {} --out {} --no-tokenizer", run, out));
  ASSERT_EQ(weights_only.exit_code, 0) << weights_only.output;
  EXPECT_EQ(Listing(out), (std::vector<std::string>{"config.json", "model.safetensors"}));
}

// Export reads no config: a --config file or --set of a known key (train.lr) was once accepted
// and ignored, and --set export.dtype=fp32 refused only as an unknown key, as if some key were
// read. Now each is a one-line usage error (exit 2) naming the flag, and nothing is written;
// --dtype is the way to ask for fp32.
TEST(ExportCli, ConfigAndSetAreAUsageErrorNotSilentlyIgnored) {
  const std::string run = TempDir("config_run");
  SaveTinyCheckpoint(run, "");
  const std::string out = TempDir("config_out") + "/export";
  const std::string base = fmt::format("--checkpoint {} --out {} --no-tokenizer", run, out);
  for (const std::string& extra :
       {std::string("--set export.dtype=fp32"), std::string("--set foo.bar=1"),
        std::string("--set train.lr=0.5"),
        fmt::format("--config {}/configs/train_tiny.yaml", kSource)}) {
    const std::string flag = extra.substr(0, extra.find(' '));
    for (const std::string& args : {base + " " + extra, extra + " " + base}) {
      CommandResult r = Export(args);
      EXPECT_EQ(r.exit_code, 2) << args << ": " << r.output;
      EXPECT_EQ(Lines(r.output), 1) << args << ": " << r.output;
      EXPECT_NE(r.output.find(flag), std::string::npos) << args << ": " << r.output;
      EXPECT_NE(r.output.find("rwr export --help"), std::string::npos) << r.output;
      EXPECT_FALSE(fs::exists(out)) << args;
    }
  }
  CommandResult help = RunRwr("export --help");
  ASSERT_EQ(help.exit_code, 0) << help.output;
  EXPECT_EQ(help.output.find("Override a config key"), std::string::npos) << help.output;
  EXPECT_EQ(help.output.find("YAML config file"), std::string::npos) << help.output;
  EXPECT_NE(help.output.find("--log-level"), std::string::npos) << help.output;

  CommandResult fp32 = Export(base + " --dtype fp32");
  ASSERT_EQ(fp32.exit_code, 0) << fp32.output;
  EXPECT_NE(fp32.output.find("(fp32)"), std::string::npos) << fp32.output;
}

TEST(ModelInitCli, ANonEmptyOutIsRefusedUnlessOverwrite) {
  const std::string out = TempDir("init_out");
  WriteText(out + "/model.safetensors.index.json", "{\"weight_map\": {}}\n");
  const std::string init = fmt::format(
      "model init --config {}/configs/models/tiny.yaml --out {} --log-level error", kSource, out);

  CommandResult refused = RunRwr(init);
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(Lines(refused.output), 1) << refused.output;
  EXPECT_NE(refused.output.find("--overwrite"), std::string::npos) << refused.output;
  EXPECT_EQ(Listing(out), std::vector<std::string>{"model.safetensors.index.json"});

  CommandResult replaced = RunRwr(init + " --overwrite");
  ASSERT_EQ(replaced.exit_code, 0) << replaced.output;
  // The stale index would have won over the new model.safetensors.
  EXPECT_EQ(Listing(out), (std::vector<std::string>{"config.json", "model.safetensors"}));
  auto loaded = LoadModelDir(out);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
}

// model.init_from names weights to start training from; model init wrote random weights of that
// shape, silently. The shape alone is model.config.
TEST(ModelInitCli, InitFromIsRefusedForModelConfigIsTheWayToTheShape) {
  const std::string from = TempDir("init_from_src");
  const std::string source_init = fmt::format(
      "model init --config {}/configs/models/tiny.yaml --out {} --log-level error", kSource, from);
  ASSERT_EQ(RunRwr(source_init).exit_code, 0);
  const std::string out = TempDir("init_from_out");
  CommandResult refused = RunRwr(fmt::format(
      "model init --set model.init_from={} --out {} --log-level error", from, out));
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_EQ(Lines(refused.output), 1) << refused.output;
  EXPECT_NE(refused.output.find("model.config"), std::string::npos) << refused.output;
  EXPECT_TRUE(Listing(out).empty());
  CommandResult shaped = RunRwr(fmt::format("model init --set model.config={}/config.json --out {} "
                                            "--log-level error",
                                            from, out));
  EXPECT_EQ(shaped.exit_code, 0) << shaped.output;
}

TEST(CheckpointInspectCli, MissingOrTruncatedFilesAreAnErrorNamingTheFile) {
  const std::string run = TempDir("inspect_run");
  const std::string ckpt = SaveTinyCheckpoint(run, "");
  CommandResult whole = RunRwr("checkpoint inspect " + ckpt);
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  EXPECT_NE(whole.output.find("every file whole"), std::string::npos) << whole.output;
  // A checkpoint being written beside the steps (or left by a stopped run) is named as such.
  fs::create_directories(run + "/checkpoints/step_00000009.tmp");
  CommandResult writing = RunRwr("checkpoint inspect " + run);
  ASSERT_EQ(writing.exit_code, 0) << writing.output;
  EXPECT_NE(writing.output.find("not published: step_00000009.tmp (being written"),
            std::string::npos)
      << writing.output;

  const std::string optimizer = ckpt + "/optimizer_rank00000.safetensors";
  fs::resize_file(optimizer, fs::file_size(optimizer) - 4);
  CommandResult truncated = RunRwr("checkpoint inspect " + run);
  EXPECT_EQ(truncated.exit_code, 1) << truncated.output;
  EXPECT_NE(truncated.output.find("DAMAGED"), std::string::npos) << truncated.output;
  EXPECT_NE(truncated.output.find("rwr: error: damaged checkpoint: safetensors " + optimizer),
            std::string::npos)
      << truncated.output;

  fs::remove(ckpt + "/model.safetensors");
  CommandResult missing = RunRwr("checkpoint inspect " + ckpt);
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
  EXPECT_NE(missing.output.find("model.safetensors"), std::string::npos) << missing.output;
  EXPECT_NE(missing.output.find("(and 1 more problems)"), std::string::npos) << missing.output;
}

// Inspect reads no config either: --config or --set (a known key like train.lr once passed
// without a word) is a one-line usage error (exit 2), whichever side of DIR it is on.
TEST(CheckpointInspectCli, ConfigAndSetAreAUsageErrorNotSilentlyIgnored) {
  const std::string run = TempDir("inspect_config_run");
  SaveTinyCheckpoint(run, "");
  for (const std::string& extra :
       {std::string("--set foo.bar=1"), std::string("--set train.lr=0.5"),
        fmt::format("--config {}/configs/train_tiny.yaml", kSource)}) {
    const std::string flag = extra.substr(0, extra.find(' '));
    for (const std::string& args :
         {"checkpoint inspect " + run + " " + extra, "checkpoint inspect " + extra + " " + run}) {
      CommandResult r = RunRwr(args);
      EXPECT_EQ(r.exit_code, 2) << args << ": " << r.output;
      EXPECT_EQ(Lines(r.output), 1) << args << ": " << r.output;
      EXPECT_NE(r.output.find(flag), std::string::npos) << args << ": " << r.output;
      EXPECT_NE(r.output.find("rwr checkpoint inspect --help"), std::string::npos) << r.output;
    }
  }
  CommandResult help = RunRwr("checkpoint inspect --help");
  ASSERT_EQ(help.exit_code, 0) << help.output;
  EXPECT_EQ(help.output.find("Override a config key"), std::string::npos) << help.output;
  EXPECT_EQ(help.output.find("YAML config file"), std::string::npos) << help.output;
  EXPECT_NE(help.output.find("--log-level"), std::string::npos) << help.output;
}

}  // namespace
}  // namespace rwr::trainer
