// rwr train end to end in-process on a tiny model and a tiny shard dataset: the loss falls;
// resume after an interruption is bit-exact; incomplete checkpoints are never picked up; a
// shutdown signal stops (checkpointing what was done); the run directory's rules (resume=false,
// metrics past the checkpoint, damaged checkpoints, finished runs, the data's tokenizer,
// init_from); non-finite steps are skipped then abort; export reads back (also with the PyPI
// safetensors library).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <thread>

#include "common/sha256.h"
#include "common/shutdown.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "storage/safetensors.h"
#include "storage/shard.h"
#include "tests/support/shard_dataset.h"
#include "tests/support/temp_dir.h"
#include "trainer/background_checkpoint.h"
#include "trainer/checkpoint.h"
#include "trainer/export.h"
#include "trainer/param_layout.h"
#include "trainer/rng.h"
#include "trainer/train_loop.h"

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;
constexpr int kVocab = 61;

std::string TempDir(const std::string& name) { return rwr::testing::FreshTempDir("train", name); }

// Rows of documents with a learnable pattern (each token predicts the next: t → (3t + 1) mod V),
// a prompt without loss and a target span with loss.
std::string MakeDataset(const std::string& name, int rows, uint64_t seed, uint32_t vocab = kVocab) {
  const std::string dir = TempDir(name);
  storage::ShardManifest manifest;
  manifest.vocab_size = vocab;
  manifest.seq_len = 24;
  manifest.pad_id = 0;
  storage::ShardWriter writer(dir + "/shard_0.rws", {.vocab_size = vocab, .seq_len = 24});
  Rng rng(seed);
  for (int r = 0; r < rows; ++r) {
    writer.BeginRow();
    for (int doc = 0; doc < 2; ++doc) {
      std::vector<uint32_t> tokens;
      std::vector<uint8_t> mask;
      uint32_t t = rng.Next() % vocab;
      for (int i = 0; i < 12; ++i) {
        tokens.push_back(t);
        mask.push_back(i >= 3);
        t = (3 * t + 1) % vocab;
      }
      EXPECT_TRUE(writer.AddDocument(tokens, mask).ok());
    }
  }
  rwr::testing::FinishOneShardDataset(writer, manifest, dir, "shard_0.rws");
  return dir;
}

Config MakeConfig(const std::string& data, const std::string& out,
                  const std::vector<std::string>& overrides = {}) {
  Config config = DefaultTrainConfig();
  auto model = Config::Parse(fmt::format(R"(
model: {{hidden_size: 16, num_hidden_layers: 2, vocab_size: {}, state_size: 4, expand: 2,
        conv_kernel: 4, time_step_rank: 2}}
data: {{dir: {}, eval_dir: {}, seed: 3}}
train: {{out_dir: {}, steps: 8, batch_size: 2, grad_accum: 2, lr: 0.01, min_lr: 0.001,
        warmup_steps: 2, checkpoint_every: 3, eval_every: 4, eval_batches: 2, log_every: 100,
        chunk_len: 10, device: cpu}}
)",
                                         kVocab, data, data, out),
                             "test");
  EXPECT_TRUE(model.ok()) << model.status();
  config.Merge(*model);
  EXPECT_TRUE(config.SetAll(overrides).ok());
  return config;
}

// step → the metrics line's loss, as written (last line per step wins).
std::map<int64_t, std::string> Losses(const std::string& out) {
  std::map<int64_t, std::string> losses;
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    losses[j["step"].get<int64_t>()] = j["loss"].dump();
  }
  return losses;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Ranks own equal ranges that tile the layout, each starting on a multiple of kAlign (the GPU
// optimizer's weight-decay words), in a buffer of Padded elements NCCL can gather in place.
TEST(ShardRange, RangesTileTheLayoutAlignedAndPadded) {
  for (const int64_t total : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{1000}, int64_t{591617}}) {
    for (const int world : {1, 2, 3, 8, 100}) {
      const int64_t per = ShardRange::PerRank(total, world);
      EXPECT_EQ(per % ShardRange::kAlign, 0);
      EXPECT_GE(ShardRange::Padded(total, world), total);
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const ShardRange range = ShardRange::For(total, r, world);
        EXPECT_EQ(range.begin, next) << total << " " << world << " " << r;
        EXPECT_LE(range.size(), per);
        if (range.size() > 0) EXPECT_EQ(range.begin % ShardRange::kAlign, 0);
        if (range.end < total) EXPECT_EQ(range.size(), per);
        next = range.end;
      }
      EXPECT_EQ(next, total) << total << " " << world;
    }
  }
}

TEST(Train, LossFallsOnALearnablePattern) {
  const std::string data = MakeDataset("learn", 48, 1);
  const std::string out = TempDir("learn_out");
  SingleRankCommunicator comm;
  auto result = Train(MakeConfig(data, out,
                                 {"train.steps=40", "train.lr=0.02", "train.checkpoint_every=0",
                                  "train.eval_every=20"}),
                      &comm);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->final_step, 40);
  EXPECT_LT(result->last_loss, 0.6 * result->first_loss)
      << result->first_loss << " -> " << result->last_loss;
  EXPECT_GT(result->last_eval_loss, 0);
  EXPECT_LT(result->last_eval_loss, result->first_loss);
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step_00000040/DONE"));
  EXPECT_EQ(Losses(out).size(), 40u);
}

TEST(Train, ResumeAfterInterruptionIsBitExact) {
  const std::string data = MakeDataset("resume", 20, 2);
  const std::string straight = TempDir("straight");
  const std::string resumed = TempDir("resumed");
  SingleRankCommunicator comm;
  auto a = Train(MakeConfig(data, straight), &comm);
  ASSERT_TRUE(a.ok()) << a.status();
  // Stop after 5 steps (as a job killed at its time limit would, through max_steps_this_run),
  // then run the same command again.
  auto b1 = Train(MakeConfig(data, resumed, {"train.max_steps_this_run=5"}), &comm);
  ASSERT_TRUE(b1.ok()) << b1.status();
  EXPECT_TRUE(b1->interrupted);
  EXPECT_EQ(b1->final_step, 5);
  auto b2 = Train(MakeConfig(data, resumed), &comm);
  ASSERT_TRUE(b2.ok()) << b2.status();
  EXPECT_EQ(b2->start_step, 5);
  EXPECT_EQ(b2->final_step, 8);
  const auto la = Losses(straight), lb = Losses(resumed);
  ASSERT_EQ(la.size(), 8u);
  ASSERT_EQ(lb.size(), 8u);
  for (int64_t step = 1; step <= 8; ++step) EXPECT_EQ(la.at(step), lb.at(step)) << "step " << step;
  EXPECT_EQ(ReadAll(straight + "/checkpoints/step_00000008/model.safetensors"),
            ReadAll(resumed + "/checkpoints/step_00000008/model.safetensors"));
  EXPECT_EQ(ReadAll(straight + "/checkpoints/step_00000008/optimizer_rank00000.safetensors"),
            ReadAll(resumed + "/checkpoints/step_00000008/optimizer_rank00000.safetensors"));
}

// A checkpoint is written beside the steps that follow it (BackgroundCheckpoint): what it holds
// is the state of its own step, not of a later one, so a run resumed from it goes on bit for bit
// as the run that wrote it; and the next checkpoint, copied into the same buffers, holds its own.
TEST(Train, ACheckpointWrittenBesideTheStepsHoldsItsOwnStep) {
  const std::string data = MakeDataset("beside", 20, 2);
  const std::string straight = TempDir("beside_straight");
  const std::string resumed = TempDir("beside_resumed");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, straight, {"train.keep_checkpoints=0"}), &comm).ok());
  // Step 3's was started before step 4 and published no earlier than step 4's start.
  fs::create_directories(resumed + "/checkpoints");
  fs::copy(straight + "/checkpoints/step_00000003", resumed + "/checkpoints/step_00000003",
           fs::copy_options::recursive);
  auto b = Train(MakeConfig(data, resumed), &comm);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->start_step, 3);
  const auto la = Losses(straight), lb = Losses(resumed);
  for (int64_t step = 4; step <= 8; ++step) EXPECT_EQ(la.at(step), lb.at(step)) << "step " << step;
  // Step 6's: the straight run copied it into step 3's buffers, the resumed run into fresh ones.
  for (const char* step : {"step_00000006", "step_00000008"}) {
    for (const char* file : {"model.safetensors", "optimizer_rank00000.safetensors"}) {
      EXPECT_EQ(ReadAll(fmt::format("{}/checkpoints/{}/{}", straight, step, file)),
                ReadAll(fmt::format("{}/checkpoints/{}/{}", resumed, step, file)))
          << step << "/" << file;
    }
  }
}

// train.checkpoint_every_s: a checkpoint once that long has passed since the last began (rank 0's
// clock, agreed with the stop flag), besides train.checkpoint_every's and the run's last.
TEST(Train, CheckpointsComeByTimeToo) {
  const std::string data = MakeDataset("by_time", 20, 2);
  SingleRankCommunicator comm;
  // The steps a 4-step run checkpoints with train.checkpoint_every_s `every_s` (and by steps
  // never).
  auto checkpointed = [&](const std::string& name, const std::string& every_s) {
    const std::string out = TempDir(name);
    EXPECT_TRUE(
        Train(MakeConfig(data, out,
                         {"train.steps=4", "train.checkpoint_every=0",
                          "train.checkpoint_every_s=" + every_s, "train.keep_checkpoints=0"}),
              &comm)
            .ok());
    std::vector<std::string> steps;
    for (const std::string& c : ListCheckpoints(out + "/checkpoints")) {
      steps.push_back(fs::path(c).filename().string());
    }
    return steps;
  };
  EXPECT_EQ(checkpointed("by_time_every_step", "1e-9"),
            (std::vector<std::string>{"step_00000001", "step_00000002", "step_00000003",
                                      "step_00000004"}));
  EXPECT_EQ(checkpointed("by_time_hourly", "3600"), std::vector<std::string>{"step_00000004"});
}

// The step after a checkpoint began says how long the steps paused for it (its tokens/s counts
// the pause); no other step has the key.
TEST(Train, TheStepAfterACheckpointSaysHowLongTheStepsPaused) {
  const std::string data = MakeDataset("pause", 20, 2);
  const std::string out = TempDir("pause_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out), &comm).ok());  // checkpoint_every 3, 8 steps
  std::ifstream in(out + "/metrics.jsonl");
  std::vector<int64_t> paused;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("checkpoint_pause_s")) continue;
    paused.push_back(j["step"].get<int64_t>());
    EXPECT_GT(j["checkpoint_pause_s"].get<double>(), 0) << line;
  }
  EXPECT_EQ(paused, (std::vector<int64_t>{4, 7}));
}

constexpr int64_t kLargeMoments = 64 << 20;  // 512 MB of moments: tenths of a second to write

// A small model's checkpoint of `step` with `moments` AdamW moments of each kind.
CheckpointData CheckpointOf(int64_t step, int64_t moments) {
  auto config = MambaConfig::FromJson(nlohmann::json{{"hidden_size", 16},
                                                     {"num_hidden_layers", 2},
                                                     {"vocab_size", kVocab},
                                                     {"state_size", 4},
                                                     {"expand", 2},
                                                     {"conv_kernel", 4},
                                                     {"time_step_rank", 2}},
                                      "test");
  EXPECT_TRUE(config.ok()) << config.status();
  CheckpointData data{*config,
                      std::vector<float>(ParamLayout::ForMamba(*config).total(), 0.5f),
                      0,
                      moments,
                      std::vector<float>(moments, 0.25f),
                      std::vector<float>(moments, 0.125f),
                      step,
                      {}};
  data.state.step = step;
  return data;
}

// A small model with 512 MB of moments, long enough to write that a test sees it under way.
CheckpointData LargeCheckpointOfStep7() { return CheckpointOf(7, kLargeMoments); }

// Start returns while the files are still being written (LargeCheckpointOfStep7), and nothing is
// published before Finish, even once this rank's files are all written: the other ranks' may not
// be.
TEST(BackgroundCheckpoint, StartReturnsBeforeTheWriteAndOnlyFinishPublishes) {
  const std::string dir = TempDir("background") + "/checkpoints";
  auto writing = BackgroundCheckpoint::Start(dir, LargeCheckpointOfStep7(), 0, nullptr);
  ASSERT_TRUE(writing.ok()) << writing.status();
  EXPECT_FALSE((*writing)->Written());
  EXPECT_TRUE(fs::exists(dir + "/step_00000007.tmp"));
  while (!(*writing)->Written()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(ListCheckpoints(dir).empty());
  auto published = (*writing)->Finish();
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(*published, dir + "/step_00000007");
  EXPECT_EQ(ListCheckpoints(dir), std::vector<std::string>{*published});
  EXPECT_FALSE(fs::exists(dir + "/step_00000007.tmp"));
  EXPECT_GT(fs::file_size(*published + "/optimizer_rank00000.safetensors"), 2 * 4 * kLargeMoments);
  EXPECT_GT((*writing)->write_seconds(), 0);
}

// A stop's checkpoint gives up an older one still being written: Abandon stops the write within
// 64 MiB, and Finish removes what it wrote and says Cancelled.
TEST(BackgroundCheckpoint, AnAbandonedWriteStopsAndLeavesNothing) {
  const std::string dir = TempDir("abandoned") + "/checkpoints";
  auto writing = BackgroundCheckpoint::Start(dir, LargeCheckpointOfStep7(), 0, nullptr);
  ASSERT_TRUE(writing.ok()) << writing.status();
  (*writing)->Abandon();
  auto finished = (*writing)->Finish();
  EXPECT_EQ(finished.status().code(), absl::StatusCode::kCancelled) << finished.status();
  EXPECT_TRUE(fs::is_empty(dir)) << "left behind: " << fs::directory_iterator(dir)->path();
  EXPECT_TRUE(ListCheckpoints(dir).empty());
}

// Past step 99,999,999 a checkpoint's name has more than 8 digits; it is still found, and in step
// order. Names CheckpointName would not write (step_7, step_000000007) are not checkpoints.
TEST(Checkpoint, NamesPastEightDigitsAreFoundInStepOrder) {
  const std::string ckpts = TempDir("long_steps") + "/checkpoints";
  for (const char* name : {"step_99999999", "step_100000000", "step_7", "step_000000007"}) {
    fs::create_directories(ckpts + "/" + name);
    std::ofstream(ckpts + "/" + name + "/DONE");
  }
  fs::create_directories(ckpts + "/step_100000001.tmp");
  EXPECT_EQ(CheckpointName(100000000), "step_100000000");
  EXPECT_EQ(ListCheckpoints(ckpts),
            (std::vector<std::string>{ckpts + "/step_99999999", ckpts + "/step_100000000"}));
  EXPECT_EQ(UnpublishedCheckpoints(ckpts), std::vector<std::string>{ckpts + "/step_100000001.tmp"});
}

// Where no thread can be started (a pids limit on a cluster; here an address-space limit that a
// new thread's 8 MiB stack does not fit under), Start writes the checkpoint itself before it
// returns, and Finish publishes it as it would one written beside the steps. In a child process,
// whose limit the test sets.
TEST(BackgroundCheckpoint, WithoutAThreadItIsWrittenBeforeStartReturns) {
  const std::string dir = TempDir("no_thread") + "/checkpoints";
  CheckpointData data = CheckpointOf(3, 1 << 20);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // What the child maps now, plus room for the write's small allocations, not for a stack.
    std::ifstream statm("/proc/self/statm");
    long pages = 0;
    statm >> pages;
    const rlim_t mapped = static_cast<rlim_t>(pages) * sysconf(_SC_PAGESIZE);
    const rlimit limit{mapped + (rlim_t{6} << 20), mapped + (rlim_t{6} << 20)};
    if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(11);
    // Threads that hold on until the end take the stacks glibc keeps from ended threads (which a
    // new thread would reuse, limit or not), until a new stack does not fit.
    std::promise<void> release;
    std::shared_future<void> end = release.get_future().share();
    std::vector<std::thread> holders;
    try {
      for (int i = 0; i < 64; ++i) holders.emplace_back([end] { end.wait(); });
    } catch (const std::system_error&) {
    }
    if (holders.size() == 64) _exit(10);  // threads still fit: nothing to test here
    auto writing = BackgroundCheckpoint::Start(dir, std::move(data), 0, nullptr);
    const int code = !writing.ok()                                            ? 2
                     : (*writing)->written_beside() || !(*writing)->Written() ? 3
                     : !(*writing)->Finish().ok()                             ? 4
                                                                              : 0;
    release.set_value();
    for (std::thread& holder : holders) holder.join();
    _exit(code);
  }
  int status = 0;
  for (int waited_ms = 0; waitpid(child, &status, WNOHANG) == 0; waited_ms += 10) {
    if (waited_ms > 60'000) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      FAIL() << "the child did not finish in 60 s";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status;
  if (WEXITSTATUS(status) == 10) GTEST_SKIP() << "a thread could still be started under the limit";
  ASSERT_EQ(WEXITSTATUS(status), 0) << "2: Start failed, 3: written beside, 4: Finish failed";
  EXPECT_EQ(ListCheckpoints(dir), std::vector<std::string>{dir + "/step_00000003"});
}

TEST(Train, IncompleteCheckpointsAreNeverPickedUp) {
  const std::string data = MakeDataset("incomplete", 20, 3);
  const std::string out = TempDir("incomplete_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out, {"train.steps=3"}), &comm).ok());
  const std::string ckpts = out + "/checkpoints";
  // A save interrupted mid-write (.tmp) and a directory without DONE.
  fs::create_directories(ckpts + "/step_00000099.tmp");
  fs::copy(ckpts + "/step_00000003", ckpts + "/step_00000050", fs::copy_options::recursive);
  fs::remove(ckpts + "/step_00000050/DONE");
  EXPECT_EQ(LatestCheckpoint(ckpts), ckpts + "/step_00000003");
  fs::create_directories(ckpts + "/step_00000002.removing.tmp");  // a removal's: not a checkpoint
  EXPECT_EQ(UnpublishedCheckpoints(ckpts), std::vector<std::string>{ckpts + "/step_00000099.tmp"});
  EXPECT_EQ(ResolveCheckpointDir(ckpts + "/step_00000050").status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto resumed = Train(MakeConfig(data, out, {"train.steps=4"}), &comm);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->start_step, 3);
  EXPECT_FALSE(fs::exists(ckpts + "/step_00000099.tmp"));  // cleaned by the next save
}

// A signal before the first step stops at once: nothing new to checkpoint (a 2.8B checkpoint of
// the starting weights would cost minutes of a job that was just cancelled).
TEST(Train, ShutdownSignalBeforeTheFirstStepStopsWithoutACheckpoint) {
  const std::string data = MakeDataset("signal", 20, 4);
  const std::string out = TempDir("signal_out");
  SingleRankCommunicator comm;
  ResetShutdownForTesting();
  RequestShutdown(SIGUSR1);
  auto result = Train(MakeConfig(data, out), &comm);
  ResetShutdownForTesting();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->interrupted);
  EXPECT_EQ(result->final_step, 0);
  EXPECT_TRUE(ListCheckpoints(out + "/checkpoints").empty());
}

TEST(Train, NonFiniteStepsAreSkippedThenAbort) {
  const std::string data = MakeDataset("nan", 20, 5);
  const std::string out = TempDir("nan_out");
  SingleRankCommunicator comm;
  auto result = Train(MakeConfig(data, out,
                                 {"train.lr=1e30", "train.min_lr=1e30", "train.warmup_steps=0",
                                  "train.max_nonfinite=2", "train.checkpoint_every=0"}),
                      &comm);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kAborted) << result.status();
  auto losses = Losses(out);
  ASSERT_GE(losses.size(), 2u);  // step 1 updated, then non-finite steps were logged as skipped
}

// A run that ends on an error every rank shares publishes the checkpoint still being written
// first: here the non-finite abort at step 3 keeps step 2's, started beside step 3. Step 2's write
// is held back for 0.5 s, so that it is still under way at the abort (a step of this model takes
// milliseconds); were it done sooner, the step's own check would publish it instead.
TEST(Train, AnAgreedErrorPublishesTheCheckpointBeingWritten) {
  const std::string data = MakeDataset("nan_kept", 20, 5);
  const std::string out = TempDir("nan_kept_out");
  SingleRankCommunicator comm;
  SetCheckpointWriteHookForTesting([](int64_t step, const std::atomic<bool>&) {
    if (step == 2) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  });
  auto result = Train(
      MakeConfig(data, out,
                 {"train.lr=1e30", "train.min_lr=1e30", "train.warmup_steps=0",
                  "train.max_nonfinite=2", "train.checkpoint_every=1", "train.keep_checkpoints=0"}),
      &comm);
  SetCheckpointWriteHookForTesting(nullptr);
  ASSERT_EQ(result.status().code(), absl::StatusCode::kAborted) << result.status();
  const std::string ckpts = out + "/checkpoints";
  EXPECT_EQ(ListCheckpoints(ckpts),
            (std::vector<std::string>{ckpts + "/step_00000001", ckpts + "/step_00000002"}));
  for (const auto& entry : fs::directory_iterator(ckpts)) {
    EXPECT_NE(entry.path().extension(), ".tmp") << entry.path();
  }
}

// A stop (here max_steps_this_run) while an older checkpoint is still being written gives that
// one up and writes its own, so that a stop writes one checkpoint in Slurm's grace, not two: step
// 2's write is held until the stop at step 3 abandons it, and only step 3's is published, with no
// .tmp left behind. The run resumes from it.
TEST(Train, AStopGivesUpTheCheckpointStillBeingWritten) {
  const std::string data = MakeDataset("give_up", 20, 5);
  const std::string out = TempDir("give_up_out");
  SingleRankCommunicator comm;
  std::atomic<bool> abandoned{false};
  SetCheckpointWriteHookForTesting([&](int64_t step, const std::atomic<bool>& abandon) {
    if (step != 2) return;
    const auto give_up_at = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!abandon.load() && std::chrono::steady_clock::now() < give_up_at) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    abandoned = abandon.load();
  });
  auto stopped = Train(MakeConfig(data, out,
                                  {"train.steps=8", "train.checkpoint_every=2",
                                   "train.max_steps_this_run=3", "train.keep_checkpoints=0"}),
                       &comm);
  SetCheckpointWriteHookForTesting(nullptr);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_TRUE(abandoned);
  EXPECT_TRUE(stopped->interrupted);
  EXPECT_EQ(stopped->final_step, 3);
  const std::string ckpts = out + "/checkpoints";
  EXPECT_EQ(ListCheckpoints(ckpts), std::vector<std::string>{ckpts + "/step_00000003"});
  EXPECT_EQ(stopped->last_checkpoint, ckpts + "/step_00000003");
  for (const auto& entry : fs::directory_iterator(ckpts)) {
    EXPECT_NE(entry.path().extension(), ".tmp") << entry.path();
  }
  auto resumed = Train(MakeConfig(data, out, {"train.steps=4", "train.checkpoint_every=2"}), &comm);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->start_step, 3);
  EXPECT_EQ(resumed->final_step, 4);
}

TEST(Train, BadConfigIsAClearError) {
  const std::string data = MakeDataset("badcfg", 8, 6);
  SingleRankCommunicator comm;
  auto missing = Train(MakeConfig(data, TempDir("bad1"), {"train.steps=0"}), &comm);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  auto small_vocab = Train(MakeConfig(data, TempDir("bad2"), {"model.vocab_size=10"}), &comm);
  EXPECT_EQ(small_vocab.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(small_vocab.status().message()).find("vocab"), std::string::npos);
}

// Every step's line of metrics.jsonl, in file order.
std::vector<int64_t> MetricSteps(const std::string& out) {
  std::vector<int64_t> steps;
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line))
    steps.push_back(nlohmann::json::parse(line)["step"].get<int64_t>());
  return steps;
}

std::vector<int64_t> Range(int64_t first, int64_t last) {
  std::vector<int64_t> v;
  for (int64_t i = first; i <= last; ++i) v.push_back(i);
  return v;
}

// The dataset's manifest says which tokenizer built it (as `rwr data build` records it).
void SetDataTokenizer(const std::string& data, const std::string& sha) {
  auto manifest = storage::ShardManifest::Load(data);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  manifest->extra_json = nlohmann::json({{"tokenizer", {{"sha256", sha}}}}).dump();
  ASSERT_TRUE(manifest->Save(data).ok());
}

// Settings that contradict each other or are out of range are refused before anything is
// written, naming the key: each would otherwise run with a silent meaning (no evaluation, an eval
// loss of 0, NaN weights after the first AdamW step, a negative count read as "off").
TEST(Train, OutOfRangeOrContradictorySettingsAreErrorsNamingTheKey) {
  const std::string data = MakeDataset("settings", 8, 6);
  SingleRankCommunicator comm;
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"data.eval_dir=''", "data.eval_dir"},  // eval_every 4 with nothing to evaluate on
      {"train.eval_batches=0", "train.eval_batches"},
      {"train.eval_every=-1", "train.eval_every"},
      {"train.checkpoint_every=-3", "train.checkpoint_every"},
      {"train.checkpoint_every_s=-1", "train.checkpoint_every_s"},
      {"train.checkpoint_every_s=-0.5", "train.checkpoint_every_s"},
      {"train.keep_checkpoints=-1", "train.keep_checkpoints"},
      {"train.warmup_steps=-2", "train.warmup_steps"},
      {"train.max_steps_this_run=-1", "train.max_steps_this_run"},
      {"train.seq_len=-5", "train.seq_len"},
      {"train.chunk_len=-4", "train.chunk_len"},
      {"train.beta1=1.5", "train.beta1"},
      {"train.beta2=1", "train.beta2"},
      {"train.eps=0", "train.eps"},
      {"train.weight_decay=-0.1", "train.weight_decay"},
      {"train.clip_norm=-1", "train.clip_norm"},
      {"train.min_lr=0.5", "min_lr 0.5"},  // above lr 0.01: the message shows the values
  };
  for (const auto& [set, key] : refused) {
    const std::string out = TempDir("settings_out") + "/run";
    auto result = Train(MakeConfig(data, out, {set}), &comm);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << set;
    EXPECT_NE(std::string(result.status().message()).find(key), std::string::npos)
        << set << ": " << result.status();
    EXPECT_FALSE(fs::exists(out)) << set;  // refused before anything was written
  }
}

// The held-out data is checked like the training data: tokens past the model's vocabulary would
// index past the embeddings, and another tokenizer's tokens make the eval loss meaningless.
TEST(Train, EvalDataMustFitTheModelAndTheTokenizer) {
  const std::string data = MakeDataset("eval_data", 20, 15);
  const std::string wide = MakeDataset("eval_wide", 20, 15, /*vocab=*/4 * kVocab);
  SingleRankCommunicator comm;
  auto too_wide =
      Train(MakeConfig(data, TempDir("eval_wide_out"), {"data.eval_dir=" + wide}), &comm);
  EXPECT_EQ(too_wide.status().code(), absl::StatusCode::kInvalidArgument) << too_wide.status();
  EXPECT_NE(std::string(too_wide.status().message()).find("data.eval_dir"), std::string::npos)
      << too_wide.status();

  const std::string other = MakeDataset("eval_other", 20, 16);
  SetDataTokenizer(data, std::string(64, 'a'));
  SetDataTokenizer(other, std::string(64, 'b'));
  auto other_tokenizer =
      Train(MakeConfig(data, TempDir("eval_tok_out"), {"data.eval_dir=" + other}), &comm);
  EXPECT_EQ(other_tokenizer.status().code(), absl::StatusCode::kInvalidArgument)
      << other_tokenizer.status();
  SetDataTokenizer(other, std::string(64, 'a'));
  EXPECT_TRUE(
      Train(MakeConfig(data, TempDir("eval_same_out"), {"data.eval_dir=" + other, "train.steps=2"}),
            &comm)
          .ok());
}

TEST(Train, ResumeFalseRefusesADirectoryThatHoldsARun) {
  const std::string data = MakeDataset("fresh", 20, 9);
  const std::string out = TempDir("fresh_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out, {"train.steps=3"}), &comm).ok());
  auto again = Train(MakeConfig(data, out, {"train.steps=3", "train.resume=false"}), &comm);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition) << again.status();
  EXPECT_EQ(MetricSteps(out), Range(1, 3));  // the run is untouched
  EXPECT_TRUE(Train(MakeConfig(data, TempDir("fresh_new"), {"train.resume=false"}), &comm).ok());
}

// A run killed after its checkpoint at step 6 had logged steps 7 and 8 (and half a line): the
// rerun drops them before it logs them again, so every step appears once.
TEST(Train, MetricsPastTheCheckpointAreDroppedOnResume) {
  const std::string data = MakeDataset("metrics", 20, 10);
  const std::string out = TempDir("metrics_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out), &comm).ok());  // checkpoints 3, 6, 8
  fs::remove_all(out + "/checkpoints/step_00000008");
  std::ofstream(out + "/metrics.jsonl", std::ios::app) << "{\"step\": 9, \"lo";
  auto resumed = Train(MakeConfig(data, out), &comm);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->start_step, 6);
  EXPECT_EQ(MetricSteps(out), Range(1, 8));
}

// A checkpoint completed and then damaged (a file cut short) is passed over for the one before;
// when none can be read the run stops with an error instead of starting afresh.
TEST(Train, ADamagedNewestCheckpointFallsBackToTheOneBefore) {
  const std::string data = MakeDataset("damaged", 20, 11);
  const std::string out = TempDir("damaged_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out), &comm).ok());  // checkpoints 3, 6, 8
  const std::string ckpts = out + "/checkpoints/";
  fs::resize_file(ckpts + "step_00000008/model.safetensors", 100);
  auto resumed = Train(MakeConfig(data, out), &comm);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->start_step, 6);
  EXPECT_EQ(resumed->final_step, 8);
  for (const char* step : {"step_00000003", "step_00000006", "step_00000008"}) {
    fs::remove(ckpts + step + "/optimizer_rank00000.safetensors");
  }
  auto none = Train(MakeConfig(data, out, {"train.steps=9"}), &comm);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kDataLoss) << none.status();
}

// A resume that passed over a damaged newest checkpoint (step 8) writes older steps again; with
// train.keep_checkpoints lowered to 1, pruning counted the damaged one as the newest to keep and
// deleted the checkpoint it had just written, leaving nothing a rerun could load.
TEST(Train, PruningNeverCountsCheckpointsPastTheOneJustWritten) {
  const std::string data = MakeDataset("prune", 20, 17);
  const std::string out = TempDir("prune_out");
  const std::string ckpts = out + "/checkpoints/";
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out, {"train.keep_checkpoints=2"}), &comm).ok());  // 6, 8
  fs::resize_file(ckpts + "step_00000008/model.safetensors", 100);
  auto stopped = Train(
      MakeConfig(data, out, {"train.keep_checkpoints=1", "train.max_steps_this_run=1"}), &comm);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->start_step, 6);
  EXPECT_EQ(stopped->last_checkpoint, ckpts + "step_00000007");
  EXPECT_TRUE(LoadCheckpoint(ckpts + "step_00000007").ok());
  EXPECT_FALSE(fs::exists(ckpts + "step_00000006"));  // older than the one kept

  auto rerun = Train(MakeConfig(data, out, {"train.keep_checkpoints=1"}), &comm);
  ASSERT_TRUE(rerun.ok()) << rerun.status();
  EXPECT_EQ(rerun->start_step, 7);
  EXPECT_EQ(ListCheckpoints(ckpts), std::vector<std::string>{ckpts + "step_00000008"});
  EXPECT_TRUE(LoadCheckpoint(ckpts + "step_00000008").ok());  // the damaged one was replaced
  EXPECT_EQ(MetricSteps(out), Range(1, 8));
}

// Pruning moves a checkpoint out of the listing in one rename before removing it, so a kill during
// the removal never leaves a step directory whose DONE outlived its weights; what such a kill does
// leave is never listed and the next save clears it.
TEST(Train, ARemovalInterruptedMidwayIsNeverListedAndIsCleared) {
  const std::string data = MakeDataset("prune_kill", 20, 19);
  const std::string out = TempDir("prune_kill_out");
  const std::string ckpts = out + "/checkpoints/";
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out, {"train.keep_checkpoints=1", "train.steps=6"}), &comm)
                  .ok());
  for (const auto& entry : fs::directory_iterator(ckpts)) {
    EXPECT_EQ(entry.path().filename(), "step_00000006");  // pruned ones are gone, no leftovers
  }
  // What a kill in the middle of removing step 3 leaves: the renamed directory, part-emptied.
  fs::create_directories(ckpts + "step_00000003.removing.tmp");
  std::ofstream(ckpts + "step_00000003.removing.tmp/DONE") << "step 3\n";
  EXPECT_EQ(ListCheckpoints(ckpts), std::vector<std::string>{ckpts + "step_00000006"});
  auto resumed = Train(MakeConfig(data, out, {"train.keep_checkpoints=1"}), &comm);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->start_step, 6);
  EXPECT_FALSE(fs::exists(ckpts + "step_00000003.removing.tmp"));
  EXPECT_EQ(ListCheckpoints(ckpts), std::vector<std::string>{ckpts + "step_00000008"});
}

// A checkpoints/ that cannot be listed (here: not a directory; on a cluster an I/O error or lost
// permission) read as "no checkpoint": the run restarted at step 0 and dropped the metrics.
TEST(Train, AnUnlistableCheckpointsDirectoryIsAnErrorNotAFreshStart) {
  const std::string data = MakeDataset("unlistable", 20, 18);
  const std::string out = TempDir("unlistable_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out, {"train.steps=3"}), &comm).ok());
  const std::string metrics = ReadAll(out + "/metrics.jsonl");
  fs::rename(out + "/checkpoints", out + "/checkpoints.moved");
  std::ofstream(out + "/checkpoints") << "not a directory";
  // (Another lr, so that steps run afresh would log other losses.)
  auto again = Train(MakeConfig(data, out, {"train.steps=6", "train.lr=0.02"}), &comm);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable) << again.status();
  EXPECT_NE(std::string(again.status().message()).find("cannot list " + out + "/checkpoints"),
            std::string::npos)
      << again.status();
  EXPECT_EQ(ReadAll(out + "/metrics.jsonl"), metrics);  // the run is untouched
}

TEST(Train, AFinishedRunHasNothingToDo) {
  const std::string data = MakeDataset("finished", 20, 12);
  const std::string out = TempDir("finished_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out), &comm).ok());
  const std::string weights = out + "/checkpoints/step_00000008/model.safetensors";
  const auto written = fs::last_write_time(weights);
  for (const char* steps : {"train.steps=8", "train.steps=5"}) {
    auto again = Train(MakeConfig(data, out, {steps}), &comm);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_TRUE(again->nothing_to_do);
    EXPECT_EQ(again->final_step, 8);
  }
  EXPECT_EQ(fs::last_write_time(weights), written);  // not rewritten
  EXPECT_EQ(MetricSteps(out), Range(1, 8));
}

// The checkpoint records data.dir as an absolute path (export finds the tokenizer through it from
// any directory) and the data's tokenizer: resuming on data of another tokenizer is an error.
TEST(Train, ResumeNeedsDataOfTheSameTokenizer) {
  const std::string data = MakeDataset("tok_a", 20, 13);
  const std::string other = MakeDataset("tok_b", 20, 13);
  SetDataTokenizer(data, std::string(64, 'a'));
  SetDataTokenizer(other, std::string(64, 'b'));
  const std::string out = TempDir("tok_out");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out, {"train.steps=3"}), &comm).ok());
  const auto state =
      nlohmann::json::parse(ReadAll(out + "/checkpoints/step_00000003/trainer_state.json"));
  EXPECT_EQ(state["data_dir"], fs::absolute(data).lexically_normal().string());
  EXPECT_EQ(state["tokenizer_sha256"], std::string(64, 'a'));
  auto switched = Train(MakeConfig(other, out, {"train.steps=6"}), &comm);
  EXPECT_EQ(switched.status().code(), absl::StatusCode::kFailedPrecondition) << switched.status();
  EXPECT_TRUE(Train(MakeConfig(data, out, {"train.steps=6"}), &comm).ok());
}

// model.init_from: inline model keys must agree with the directory's config.json, and a
// tokenizer.json there must be the one the data was built with.
TEST(Train, InitFromChecksTheModelKeysAndTheTokenizer) {
  const std::string data = MakeDataset("init", 20, 14);
  SetDataTokenizer(data, Sha256Hex("tokenizer of the data"));
  const std::string base = TempDir("init_base");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, base, {"train.steps=2"}), &comm).ok());
  const std::string model_dir = base + "/checkpoints/step_00000002";  // a loadable model
  auto agree = Train(MakeConfig(data, TempDir("init_ok"), {"model.init_from=" + model_dir}), &comm);
  ASSERT_TRUE(agree.ok()) << agree.status();
  auto differ = Train(MakeConfig(data, TempDir("init_differ"),
                                 {"model.init_from=" + model_dir, "model.hidden_size=32"}),
                      &comm);
  EXPECT_EQ(differ.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(differ.status().message()).find("model.hidden_size"), std::string::npos)
      << differ.status();
  std::ofstream(model_dir + "/tokenizer.json") << "another tokenizer";
  auto other =
      Train(MakeConfig(data, TempDir("init_tok"), {"model.init_from=" + model_dir}), &comm);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition) << other.status();
  std::ofstream(model_dir + "/tokenizer.json") << "tokenizer of the data";
  EXPECT_TRUE(
      Train(MakeConfig(data, TempDir("init_same"), {"model.init_from=" + model_dir}), &comm).ok());
}

TEST(Export, Fp32Bf16AndShardedExportsReadBackWithPypiSafetensors) {
  const std::string data = MakeDataset("export", 8, 7);
  const std::string out = TempDir("export_run");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(MakeConfig(data, out, {"train.steps=2"}), &comm).ok());
  {
    std::ofstream tok(data + "/tokenizer.json");
    tok << "{\"model\": {}}\n";
  }
  const std::string fp32 = TempDir("export_fp32"), bf16 = TempDir("export_bf16"),
                    sharded = TempDir("export_sharded");
  auto r1 =
      ExportCheckpoint({.checkpoint = out, .out = fp32, .dtype = "fp32", .write_check = true});
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->tokenizer_source, data + "/tokenizer.json");
  EXPECT_TRUE(fs::exists(fp32 + "/tokenizer.json"));
  ASSERT_TRUE(ExportCheckpoint({.checkpoint = out, .out = bf16, .dtype = "bf16"}).ok());
  ASSERT_TRUE(ExportCheckpoint(
                  {.checkpoint = out, .out = sharded, .dtype = "fp32", .max_shard_bytes = 8000})
                  .ok());
  EXPECT_TRUE(fs::exists(sharded + "/model.safetensors.index.json"));
  auto config = nlohmann::json::parse(ReadAll(bf16 + "/config.json"));
  EXPECT_EQ(config["model_type"], "mamba");
  EXPECT_EQ(config["torch_dtype"], "bfloat16");
  for (const char* key :
       {"hidden_size", "num_hidden_layers", "intermediate_size", "state_size", "conv_kernel",
        "time_step_rank", "use_bias", "use_conv_bias", "hidden_act", "layer_norm_epsilon",
        "residual_in_fp32", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id",
        "time_step_min", "time_step_max", "time_step_floor", "time_step_init_scheme"}) {
    EXPECT_TRUE(config.contains(key)) << key;
  }

  const std::string python = std::string(RWR_TEST_VENV) + "/bin/python";
  if (!fs::exists(python)) GTEST_SKIP() << "no test venv at " << RWR_TEST_VENV;
  const std::string script = fmt::format(R"PY(
import json, glob, numpy as np
from safetensors import safe_open
ckpt = "{}/checkpoints/step_00000002/model.safetensors"
with safe_open(ckpt, framework="numpy") as f:
    ref = {{k: f.get_tensor(k) for k in f.keys()}}
assert len(ref) == 1 + 2 * 10 + 1, sorted(ref)
with safe_open("{}/model.safetensors", framework="numpy") as f:
    for k in f.keys():
        assert np.array_equal(f.get_tensor(k), ref[k]), k
assert ref["backbone.layers.1.mixer.in_proj.weight"].shape == (64, 16)
assert ref["backbone.layers.0.mixer.conv1d.weight"].shape == (32, 1, 4)
# bf16 export: numpy has no bfloat16, so compare raw bits with round-to-nearest-even of fp32.
raw = open("{}/model.safetensors", "rb").read()
n = int.from_bytes(raw[:8], "little"); h = json.loads(raw[8:8 + n])
for k, v in h.items():
    if k == "__metadata__": continue
    assert v["dtype"] == "BF16" and tuple(v["shape"]) == ref[k].shape, k
    b, e = v["data_offsets"]
    bits = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=np.uint16).astype(np.uint32)
    u = ref[k].reshape(-1).view(np.uint32)
    assert np.array_equal(bits, (u + 0x7FFF + ((u >> 16) & 1)) >> 16), k
idx = json.load(open("{}/model.safetensors.index.json"))
seen = {{}}
for file in sorted(set(idx["weight_map"].values())):
    with safe_open("{}/" + file, framework="numpy") as f:
        for k in f.keys(): seen[k] = f.get_tensor(k)
assert set(seen) == set(ref) and all(np.array_equal(seen[k], ref[k]) for k in ref)
print("ok")
)PY",
                                         out, fp32, bf16, sharded, sharded);
  const std::string dir = TempDir("export_py");
  {
    std::ofstream s(dir + "/check.py");
    s << script;
  }
  const std::string command = fmt::format("{} {}/check.py > {}/log 2>&1", python, dir, dir);
  EXPECT_EQ(std::system(command.c_str()), 0) << ReadAll(dir + "/log");
}

}  // namespace
}  // namespace rwr::trainer
