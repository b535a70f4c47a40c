// Data-parallel `rwr train` as a user starts it: the real binary under the real `mpirun`.
// Built twice: on the CPU (label mpi, CI: the MPI communicator) and on the GPUs (label multigpu,
// the device machine: NCCL, ZeRO-1 on the device), RWR_TEST_DEVICE saying which.
//
// What must hold: N ranks of batch B train as one rank of batch B accumulating N micro-batches
// (the same global rows), each rank writes its optimizer range into the checkpoint, a run resumes
// on another number of ranks, and SIGUSR1 to one rank stops every rank at the same step.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <thread>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "tests/support/run_rwr.h"
#include "tests/support/shard_dataset.h"
#include "tests/support/temp_dir.h"
#include "trainer/checkpoint.h"
#include "trainer/communicator.h"
#ifdef RWR_TEST_CUDA
#include <cuda_runtime_api.h>
#endif

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;
const std::string kRwr = RWR_BINARY;
const std::string kMpirun = RWR_MPIRUN;
const std::string kSource = RWR_SOURCE_DIR;
const std::string kDevice = RWR_TEST_DEVICE;  // cpu | cuda

std::string TempDir(const std::string& name) {
  return rwr::testing::FreshTempDir("mpi_" + kDevice, name);
}

using rwr::testing::CommandResult;

// mpirun may run as root in CI containers only when told so; more ranks than cores is asked for.
std::string Launcher(int ranks, const std::string& binary = kRwr) {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  // Under the asan preset LeakSanitizer reports what Open MPI leaves allocated at exit (its
  // components, unloaded by MPI_Finalize, leave no frame to suppress by) and fails every rank: the
  // ranks run without leak detection (rwr's own leaks are the single-process tests' to find).
  // Ignored by builds without ASan. (`env`, not an assignment prefix: some callers `exec` this.)
  return ranks == 0 ? binary
                    : fmt::format(
                          "env ASAN_OPTIONS=\"${{ASAN_OPTIONS:+$ASAN_OPTIONS:}}detect_leaks=0\" "
                          "{} -np {} --oversubscribe {}",
                          kMpirun, ranks, binary);
}

// `ranks` 0: the plain binary (one rank, no launcher).
CommandResult RunRwr(int ranks, const std::string& args) {
  return rwr::testing::RunShell(fmt::format("{} {} 2>&1", Launcher(ranks), args));
}

std::string MakeDataset(int rows) {
  return rwr::testing::MakeTinyDataset(
      TempDir("data"), rows, [](int r, int i) { return uint32_t(r * 131 + i * 17 + i * i); }, 21);
}

// fp32 GEMMs on the GPU: the comparison below is of summation order, not of bf16 rounding.
std::string TrainArgs(const std::string& data, const std::string& out, int batch, int accum,
                      int steps) {
  return fmt::format(
      "train --config {}/configs/train_tiny.yaml --set data.dir={} --set train.out_dir={} "
      "--set train.steps={} --set train.batch_size={} --set train.grad_accum={} "
      "--set train.warmup_steps=2 --set train.checkpoint_every=2 --set train.keep_checkpoints=0 "
      "--set train.log_every=1 --set train.device={} --set train.gemm_precision=fp32",
      kSource, data, out, steps, batch, accum, kDevice);
}

// DataParallelTrainCpu or DataParallelTrainCuda (RWR_TEST_SUITE). On the GPUs every test needs
// two (skipped where fewer: CI, one-GPU machines).
class RWR_TEST_SUITE : public ::testing::Test {
 protected:
  void SetUp() override {
#ifdef RWR_TEST_CUDA
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    if (count < 2) GTEST_SKIP() << "needs 2 GPUs, found " << count;
#endif
  }
};

#ifdef RWR_TEST_CUDA
// More ranks than GPUs: on a host with one GPU both ranks see it (and would share it), on one with
// several the last rank finds none of its own. Either way every rank stops with rwr's line, not
// NCCL's error about a duplicate GPU.
TEST(DataParallelTrainCudaLaunch, MoreRanksThanGpusSaysOneRankPerGpu) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1) GTEST_SKIP() << "needs a GPU";
  const std::string data = MakeDataset(8);
  CommandResult r = RunRwr(count + 1, TrainArgs(data, TempDir("too_many"), 2, 1, 2));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(count == 1 ? "ranks 0 and 1 share one GPU" : "which has"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("start one rank per GPU"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("ncclInvalidUsage"), std::string::npos) << r.output;
}
#endif

std::vector<nlohmann::json> Metrics(const std::string& out) {
  std::vector<nlohmann::json> records;
  std::ifstream in(out + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) records.push_back(nlohmann::json::parse(line));
  return records;
}

// Two runs' steps agree within the rounding of sums added in another order: loss, gradient norm,
// tokens.
void ExpectSameSteps(const std::vector<nlohmann::json>& ma, const std::vector<nlohmann::json>& mb) {
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    const double la = ma[i]["loss"], lb = mb[i]["loss"];
    EXPECT_NEAR(la, lb, 1e-5 * std::abs(la)) << "step " << i + 1;
    const double ga = ma[i]["grad_norm"], gb = mb[i]["grad_norm"];
    EXPECT_NEAR(ga, gb, 1e-4 * ga) << "step " << i + 1;
    EXPECT_EQ(ma[i]["tokens"], mb[i]["tokens"]);
  }
}

TEST_F(RWR_TEST_SUITE, TwoRanksTrainAsOneRankAccumulatingTwo) {
  const std::string data = MakeDataset(24);
  const std::string one = TempDir("one"), two = TempDir("two");
  CommandResult a = RunRwr(0, TrainArgs(data, one, 2, 2, 6));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  CommandResult b = RunRwr(2, TrainArgs(data, two, 2, 1, 6));
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("2 ranks"), std::string::npos) << b.output;

  const auto ma = Metrics(one), mb = Metrics(two);
  ASSERT_EQ(ma.size(), 6u);
  ASSERT_EQ(mb.size(), 6u);
  // Step 1 on the CPU: the same parameters and rows, the loss sums added in the same order. (On
  // the GPU each process times its own GEMM algorithms, which round differently.)
  if (kDevice == "cpu") EXPECT_EQ(ma[0]["loss"].get<double>(), mb[0]["loss"].get<double>());
  ExpectSameSteps(ma, mb);
  // Each rank wrote the moments of its range; together they cover the layout.
  auto latest = LatestCheckpoint(two + "/checkpoints");
  ASSERT_TRUE(latest.has_value());
  auto whole = LoadCheckpoint(*latest);
  ASSERT_TRUE(whole.ok()) << whole.status();
  const int64_t total = static_cast<int64_t>(whole->params.size());
  EXPECT_EQ(whole->state.world_size, 2);
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(fs::exists(fs::path(*latest) / OptimizerFileName(r))) << r;
  }
  EXPECT_FALSE(fs::exists(fs::path(*latest) / OptimizerFileName(2)));
  // Stitched for three ranks, the moments are the same values.
  std::vector<float> stitched;
  for (int r = 0; r < 3; ++r) {
    auto part = LoadCheckpoint(*latest, ShardRange::For(total, r, 3));
    ASSERT_TRUE(part.ok()) << part.status();
    stitched.insert(stitched.end(), part->exp_avg_sq.begin(), part->exp_avg_sq.end());
  }
  EXPECT_EQ(stitched, whole->exp_avg_sq);
  // A rank's file missing: the checkpoint is damaged for every reader, whatever range it reads.
  const std::string damaged = TempDir("damaged");
  fs::copy(*latest, damaged, fs::copy_options::recursive);
  fs::remove(fs::path(damaged) / OptimizerFileName(1));
  for (const std::optional<ShardRange> range :
       {std::optional<ShardRange>(), std::optional(ShardRange::For(total, 0, 2))}) {
    auto lacking = LoadCheckpoint(damaged, range);
    ASSERT_FALSE(lacking.ok());
    EXPECT_NE(lacking.status().message().find(
                  "written by 2 ranks but optimizer_rank00001.safetensors is missing"),
              std::string::npos)
        << lacking.status();
  }
  // And the parameters match the one-rank run's: within a few percent of one step's change (Adam
  // turns a rounding-sized gradient of either sign into a step of up to lr).
  auto other = LoadCheckpoint(*LatestCheckpoint(one + "/checkpoints"));
  ASSERT_TRUE(other.ok()) << other.status();
  double worst = 0;
  for (int64_t i = 0; i < total; ++i) {
    worst = std::max(worst, double(std::abs(other->params[i] - whole->params[i])));
  }
  EXPECT_LT(worst, 1e-4);
}

// Accumulating and in chunks: the ranks' last micro-batch sums the gradients over the ranks
// layer by layer as its backward goes (on the GPUs; the first chunk's backward, which runs last),
// and 2 ranks accumulating 2 rows of 4 chunks still train as 1 rank accumulating 4.
TEST_F(RWR_TEST_SUITE, TwoRanksAccumulatingChunkedRowsTrainAsOneRankAccumulatingFour) {
  const std::string data = MakeDataset(24);
  const std::string one = TempDir("one_chunked"), two = TempDir("two_chunked");
  const std::string chunks = " --set train.chunk_len=16 --set train.checkpoint_every=0";
  CommandResult a = RunRwr(0, TrainArgs(data, one, 1, 4, 4) + chunks);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  CommandResult b = RunRwr(2, TrainArgs(data, two, 1, 2, 4) + chunks);
  ASSERT_EQ(b.exit_code, 0) << b.output;
  const auto ma = Metrics(one), mb = Metrics(two);
  ASSERT_EQ(ma.size(), 4u);
  ExpectSameSteps(ma, mb);
}

// train.checkpoint_every_s runs on rank 0's clock, agreed with the stop flag: every rank takes
// each checkpoint at the same step (here every step), and each one is whole.
TEST_F(RWR_TEST_SUITE, CheckpointsByTimeAreTakenByEveryRankAtOneStep) {
  const std::string data = MakeDataset(8);
  const std::string out = TempDir("by_time");
  CommandResult r = RunRwr(2, TrainArgs(data, out, 1, 1, 3) +
                                  " --set train.checkpoint_every=0"
                                  " --set train.checkpoint_every_s=1e-9");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string ckpts = out + "/checkpoints/";
  const std::vector<std::string> all = ListCheckpoints(ckpts);
  EXPECT_EQ(all, (std::vector<std::string>{ckpts + "step_00000001", ckpts + "step_00000002",
                                           ckpts + "step_00000003"}));
  for (const std::string& c : all) {
    auto loaded = LoadCheckpoint(c);
    EXPECT_TRUE(loaded.ok()) << c << ": " << loaded.status();
  }
}

TEST_F(RWR_TEST_SUITE, ResumesBitForBitAndOnAnotherNumberOfRanks) {
  const std::string data = MakeDataset(24);
  const std::string straight = TempDir("straight"), split = TempDir("split");
  ASSERT_EQ(RunRwr(2, TrainArgs(data, straight, 3, 1, 4)).exit_code, 0);
  // Two steps, stop, two more: the same ranks give the same bits. On the GPU, with the same GEMM
  // algorithms: each rank keeps the ones it timed in its own file, which a resume adopts; here
  // the second run starts from the first's.
  for (const auto& entry : fs::directory_iterator(straight)) {
    if (entry.path().filename().string().rfind("gemm_algos", 0) == 0) {
      fs::copy_file(entry.path(), fs::path(split) / entry.path().filename());
    }
  }
  if (kDevice == "cuda") {
    EXPECT_TRUE(fs::exists(fs::path(split) / "gemm_algos.json"));
    EXPECT_TRUE(fs::exists(fs::path(split) / "gemm_algos.rank00001.json"));
  }
  CommandResult first =
      RunRwr(2, TrainArgs(data, split, 3, 1, 4) + " --set train.max_steps_this_run=2");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  CommandResult rest = RunRwr(2, TrainArgs(data, split, 3, 1, 4));
  ASSERT_EQ(rest.exit_code, 0) << rest.output;
  const auto ms = Metrics(straight), mp = Metrics(split);
  ASSERT_EQ(ms.size(), 4u);
  ASSERT_EQ(mp.size(), 4u);
  for (size_t i = 0; i < ms.size(); ++i) {
    EXPECT_EQ(ms[i]["loss"].get<double>(), mp[i]["loss"].get<double>()) << "step " << i + 1;
  }
  // On to step 6 with another number of ranks over the same 6 rows a step (3 ranks of 2 rows on
  // the CPU, 1 rank of 6 on two GPUs): the optimizer re-sharded, the steps those of 2 ranks
  // going on, within rounding.
  ASSERT_EQ(RunRwr(2, TrainArgs(data, straight, 3, 1, 6)).exit_code, 0);
  const int ranks = kDevice == "cpu" ? 3 : 1;
  CommandResult moved = RunRwr(ranks == 1 ? 0 : ranks, TrainArgs(data, split, 6 / ranks, 1, 6));
  ASSERT_EQ(moved.exit_code, 0) << moved.output;
  EXPECT_NE(moved.output.find(fmt::format("was written by 2 ranks; this run has {}", ranks)),
            std::string::npos)
      << moved.output;
  const auto m2 = Metrics(straight), mr = Metrics(split);
  ASSERT_EQ(m2.size(), 6u);
  ASSERT_EQ(mr.size(), 6u);
  for (size_t i = 4; i < 6; ++i) {
    const double l2 = m2[i]["loss"], lr = mr[i]["loss"];
    EXPECT_NEAR(l2, lr, 1e-5 * std::abs(l2)) << "step " << i + 1;
  }
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(fs::exists(fs::path(split) / "checkpoints/step_00000006" / OptimizerFileName(r)),
              r < ranks)
        << r;
  }
}

// The newest checkpoint lacks rank 1's file: rank 0 could read its own part, but every rank goes
// back to the checkpoint before (mixing steps would train on mismatched state).
TEST_F(RWR_TEST_SUITE, ADamagedRankFileSendsEveryRankToTheCheckpointBefore) {
  const std::string data = MakeDataset(24);
  const std::string out = TempDir("damaged_run");
  ASSERT_EQ(RunRwr(2, TrainArgs(data, out, 1, 1, 4)).exit_code, 0);
  fs::remove(fs::path(out) / "checkpoints/step_00000004" / OptimizerFileName(1));
  CommandResult resumed = RunRwr(2, TrainArgs(data, out, 1, 1, 6));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming from " + out + "/checkpoints/step_00000002 (step 2)"),
            std::string::npos)
      << resumed.output;
  std::vector<int64_t> steps;
  for (const auto& record : Metrics(out)) steps.push_back(record["step"]);
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
}

// A script that runs rwr under a file-size limit of `blocks` × 512 bytes, as on a full disk or
// quota (SIGXFSZ ignored: a write past the limit fails with EFBIG as ENOSPC would fail).
std::string RwrUnderFileSizeLimit(const std::string& name, int blocks) {
  const std::string path = TempDir(name) + "/rwr-limited";
  {
    std::ofstream script(path);
    script << "#!/bin/sh\ntrap '' XFSZ\nulimit -f " << blocks << "\nexec " << kRwr << " \"$@\"\n";
  }
  fs::permissions(path, fs::perms::owner_all);
  return path;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// An error every rank meets alike (here: no dataset) ends the ranks together, in step: printed
// once (by rank 0), exit 1, and no MPI_Abort with its banner.
TEST_F(RWR_TEST_SUITE, AnErrorEveryRankMeetsIsPrintedOnceAndNoRankAborts) {
  const std::string out = TempDir("no_data");
  CommandResult r = RunRwr(2, TrainArgs("/nonexistent_rwr_data", out, 1, 1, 2));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(Count(r.output, "rwr: error: /nonexistent_rwr_data/manifest.json: not found"), 1u)
      << r.output;
  EXPECT_EQ(r.output.find("MPI_ABORT"), std::string::npos) << r.output;
}

// Non-finite steps (lr 1e30: step 1 blows the parameters up) are skipped by every rank, and the
// run ends on every rank at train.max_nonfinite in a row, printed once. On the GPUs a skipped step
// never reaches the optimizer, which waits for the backward's gradient sums: the next step's
// ZeroGrads must wait for them instead.
TEST_F(RWR_TEST_SUITE, NonFiniteStepsAreSkippedByEveryRankThenEndEveryRankInStep) {
  const std::string data = MakeDataset(24);
  const std::string out = TempDir("nonfinite");
  CommandResult r = RunRwr(2, TrainArgs(data, out, 2, 1, 6) +
                                  " --set train.lr=1e30 --set train.min_lr=1e30"
                                  " --set train.warmup_steps=0 --set train.max_nonfinite=2"
                                  " --set train.checkpoint_every=0");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(Count(r.output, "steps in a row had a non-finite loss or gradient"), 1u) << r.output;
  EXPECT_EQ(r.output.find("MPI_ABORT"), std::string::npos) << r.output;
  EXPECT_GE(Metrics(out).size(), 2u);  // step 1 updated, then the skipped steps were logged
}

// The same after the checkpoint is read: resuming a run with another model is refused by every
// rank at once, printed once.
TEST_F(RWR_TEST_SUITE, ACheckpointOfAnotherModelIsRefusedByEveryRankInStep) {
  const std::string data = MakeDataset(8);
  const std::string out = TempDir("other_model");
  ASSERT_EQ(RunRwr(2, TrainArgs(data, out, 1, 1, 2)).exit_code, 0);
  CommandResult r = RunRwr(2, TrainArgs(data, out, 1, 1, 4) +
                                  " --set model.hidden_size=32 --set model.intermediate_size=64");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(Count(r.output, "rwr: error: "), 1u) << r.output;
  EXPECT_NE(r.output.find("holds a different model"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("MPI_ABORT"), std::string::npos) << r.output;
}

// A checkpoint that cannot be written (a full disk or quota; here a file-size limit on each rank,
// whose writes past it fail with EFBIG as they would with ENOSPC) ends every rank in step at that
// save: printed once, no MPI_Abort, and the half-written checkpoint removed.
TEST_F(RWR_TEST_SUITE, AFullDiskAtACheckpointEndsEveryRankInStep) {
  // The limit would also stop NCCL's shared-memory files from growing: its setup would fail, not
  // the save. The CPU build checks the agreement, which is the same code on the GPUs.
  if (kDevice == "cuda") GTEST_SKIP() << "a file-size limit breaks NCCL's /dev/shm transport";
  const std::string data = MakeDataset(8);
  const std::string out = TempDir("full_disk");
  // The limit on the ranks only: mpirun's own files must still be written.
  const std::string limited = RwrUnderFileSizeLimit("full_disk_bin", 64);
  // 32 KiB: the config and metrics lines fit, the model (rank 0) and optimizer parts do not.
  CommandResult r = rwr::testing::RunShell(
      fmt::format("{} {} 2>&1", Launcher(2, limited), TrainArgs(data, out, 1, 1, 40)));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(Count(r.output, "rwr: error: "), 1u) << r.output;
  EXPECT_NE(r.output.find("model.safetensors"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("MPI_ABORT"), std::string::npos) << r.output;
  // The save of step 2 is written beside steps 3 and 4; its failure is agreed at the first stop
  // flag after it, and at step 4's save at the latest.
  EXPECT_GE(Metrics(out).size(), 2u);
  EXPECT_LE(Metrics(out).size(), 4u) << "the run stopped at its first save's failure";
  for (const auto& entry : fs::directory_iterator(out + "/checkpoints")) {
    ADD_FAILURE() << "left behind: " << entry.path();
  }
}

// A write that fails on one rank alone in the steps (here rank 0's metrics line, under a
// file-size limit on rank 0 only) ends every rank in step at the next step's start: printed once,
// no MPI_Abort (the other ranks would otherwise wait in a collective for the one that left).
TEST_F(RWR_TEST_SUITE, OneRankFailingInTheStepsEndsEveryRankInStep) {
  if (kDevice == "cuda") GTEST_SKIP() << "a file-size limit breaks NCCL's /dev/shm transport";
  const std::string data = MakeDataset(8);
  const std::string out = TempDir("one_fails_later");
  const std::string limited = RwrUnderFileSizeLimit("one_fails_later_bin", 4);
  // 2 KiB on rank 0: config.yaml, then a few metrics lines; no checkpoint before the end.
  const std::string args = TrainArgs(data, out, 1, 1, 40) + " --set train.checkpoint_every=0";
  CommandResult r = rwr::testing::RunShell(
      fmt::format("{} {} : -np 1 {} {} 2>&1", Launcher(1, limited), args, kRwr, args));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(Count(r.output, "rwr: error: "), 1u) << r.output;
  EXPECT_NE(r.output.find(out + "/metrics.jsonl"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("MPI_ABORT"), std::string::npos) << r.output;
  // Stopped early (its last line is cut short where the write failed; a resume drops it).
  std::ifstream metrics(out + "/metrics.jsonl");
  const std::string lines{std::istreambuf_iterator<char>(metrics), {}};
  EXPECT_LT(std::count(lines.begin(), lines.end(), '\n'), 40) << lines;
}

// One rank alone fails to start (here: its own dataset path; on a cluster, a file its node cannot
// read): every rank stops before the first collective of the run, the failed rank says why and
// rank 0 which rank failed; nothing is trained or written.
TEST_F(RWR_TEST_SUITE, OneRankFailingToStartStopsEveryRankWithItsReason) {
  const std::string data = MakeDataset(8);
  const std::string out = TempDir("one_fails");
  const std::string good = TrainArgs(data, out, 1, 1, 2);
  const std::string bad = TrainArgs("/nonexistent_rwr_data", out, 1, 1, 2);
  CommandResult r = rwr::testing::RunShell(
      fmt::format("{} : -np 1 {} {} 2>&1", Launcher(1) + " " + good, kRwr, bad));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(Count(r.output, "rwr: error: rank 1: /nonexistent_rwr_data/manifest.json: not found"),
            1u)
      << r.output;
  EXPECT_NE(r.output.find("rwr: error: 1 of 2 ranks failed (rank 1, its error above)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("MPI_ABORT"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(fs::path(out) / "checkpoints")) << r.output;
  EXPECT_TRUE(Metrics(out).empty());
}

using rwr::testing::Launched;
using rwr::testing::ReadLog;

TEST_F(RWR_TEST_SUITE, SigusrToOneRankStopsEveryRankAtOneStep) {
  const std::string data = MakeDataset(24);
  const std::string out = TempDir("signal");
  const std::string log = TempDir("signal_log") + "/log";
  Launched run(fmt::format(
      "exec {} {} --set train.steps=100000 --set train.checkpoint_every=0 > {} 2>&1",
      Launcher(2), TrainArgs(data, out, 1, 1, 100000), log));
  ASSERT_GT(run.pid(), 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (Metrics(out).size() < 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GE(Metrics(out).size(), 3u) << "training did not start:\n" << ReadLog(log);
  // One rank only, mpirun's first child, as rwr-job.sbatch does besides signalling mpirun: not
  // every mpirun forwards USR1 (Open MPI 4.1.6 on Ubuntu 24.04 does not), and one rank's signal
  // must stop them all at one step.
  const CommandResult child =
      rwr::testing::RunShell(fmt::format("pgrep -P {} | head -1", run.pid()));
  const pid_t rank = static_cast<pid_t>(std::atoi(child.output.c_str()));
  ASSERT_GT(rank, 0) << "no rank under mpirun " << run.pid();
  ASSERT_EQ(kill(rank, SIGUSR1), 0);
  const std::optional<int> status = run.Wait(std::chrono::seconds(120));
  ASSERT_TRUE(status.has_value()) << "still running 120 s after SIGUSR1:\n" << ReadLog(log);
  ASSERT_TRUE(WIFEXITED(*status)) << ReadLog(log);
  EXPECT_EQ(WEXITSTATUS(*status), 0) << ReadLog(log);
  auto latest = LatestCheckpoint(out + "/checkpoints");
  ASSERT_TRUE(latest.has_value());
  auto ckpt = LoadCheckpoint(*latest);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->state.step, static_cast<int64_t>(Metrics(out).size()));
  EXPECT_TRUE(fs::exists(fs::path(*latest) / OptimizerFileName(1)));
}

}  // namespace
}  // namespace rwr::trainer
