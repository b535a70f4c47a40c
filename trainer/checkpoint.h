// Training checkpoints: `<run>/checkpoints/step_NNNNNNNN/` holding
//   config.json + model.safetensors   fp32 master weights in the HF layout (loadable as a model)
//   optimizer_rankNNNNN.safetensors   AdamW moments of the range rank N owns (ZeRO-1), one per rank
//   trainer_state.json                step, tokens seen, data position, RNG, world size, resolved
//                                     config (YAML), metrics of the step
//   DONE                              written last
// A checkpoint is written as step_NNNNNNNN.tmp/ and renamed once DONE is in it and every file is
// synced, so a crash mid-write leaves only a .tmp directory, which resume never picks up (and the
// next save removes). Resume takes the highest step with a DONE marker.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "trainer/communicator.h"
#include "trainer/model_config.h"

namespace rwr::trainer {

struct TrainerState {
  int64_t step = 0;         // optimizer updates done
  int64_t tokens_seen = 0;  // input positions processed (all ranks)
  int64_t nonfinite_in_a_row = 0;
  std::string loader_position_json;  // storage::LoaderPosition::ToJson()
  uint64_t rng_state = 0;
  int world_size = 1;
  std::string resolved_config_yaml;
  // data.dir as an absolute path: `rwr export` finds the tokenizer through it from any directory.
  std::string data_dir;
  // sha256 of the tokenizer the data was built with (its manifest's build.tokenizer.sha256; empty
  // where the manifest has none): a resumed run must read data of the same tokenizer.
  std::string tokenizer_sha256;
  nlohmann::json last_metrics = nlohmann::json::object();

  nlohmann::json ToJson() const;
  static absl::StatusOr<TrainerState> FromJson(const nlohmann::json& j, const std::string& source);
};

struct CheckpointData {
  MambaConfig config;
  std::vector<float> params;           // flat layout
  int64_t opt_begin = 0, opt_end = 0;  // range the moments cover
  std::vector<float> exp_avg, exp_avg_sq;
  int64_t opt_step = 0;
  TrainerState state;
};

std::string CheckpointName(int64_t step);  // "step_00000042"
std::string OptimizerFileName(int rank);   // "optimizer_rank00003.safetensors"

// A checkpoint's trainer_state.json; an error names the file (missing, not JSON, bad fields).
absl::StatusOr<TrainerState> ReadTrainerState(const std::string& dir);

// Writes `data` as checkpoints_dir/step_NNNNNNNN atomically (a failed write removes its .tmp);
// keeps the newest `keep` complete checkpoints up to this step (0: keep all; later steps, which
// only a resume that passed them over as unreadable leaves, are not counted). Returns the final
// directory. With `comm`, every rank calls it with its own optimizer range (the checkpoints
// directory on a file system they share): rank 0 writes the model and the state, each rank its
// optimizer file, and rank 0 publishes once every rank's file is synced; every rank returns the
// directory, or an error where any rank failed.
absl::StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir,
                                           const CheckpointData& data, int keep = 0,
                                           Communicator* comm = nullptr);

// SaveCheckpoint in its three parts, for a caller that writes the files on a thread of its own
// while training goes on (BackgroundCheckpoint). BeginCheckpoint and FinishCheckpoint are
// collective with `comm` (every rank calls them at the same point); WriteCheckpointFiles is this
// rank's part alone and may run on any thread.
//   BeginCheckpoint: leftovers cleared and an empty step_NNNNNNNN.tmp made (rank 0), agreed.
absl::Status BeginCheckpoint(const std::string& checkpoints_dir, int64_t step,
                             Communicator* comm = nullptr);
//   WriteCheckpointFiles: this rank's files into the .tmp, each synced; Cancelled once `abandon`
//   is set.
absl::Status WriteCheckpointFiles(const std::string& checkpoints_dir, const CheckpointData& data,
                                  int rank, const std::atomic<bool>* abandon = nullptr);
//   FinishCheckpoint: every rank's `written` agreed; then published (rank 0) and pruned, or, where
//   any rank failed, the .tmp removed and the failure returned on every rank.
absl::StatusOr<std::string> FinishCheckpoint(const std::string& checkpoints_dir, int64_t step,
                                             int keep, absl::Status written,
                                             Communicator* comm = nullptr);

// Complete checkpoints (DONE present) in checkpoints_dir, ascending by step.
std::vector<std::string> ListCheckpoints(const std::string& checkpoints_dir);
// Checkpoints begun and not published in checkpoints_dir (`step_NNNNNNNN.tmp`, ascending): one
// being written beside the steps, or left by a run killed mid-write. Never resumed from; the next
// save clears a leftover.
std::vector<std::string> UnpublishedCheckpoints(const std::string& checkpoints_dir);
// The newest complete checkpoint, or nullopt.
std::optional<std::string> LatestCheckpoint(const std::string& checkpoints_dir);

// Reads a checkpoint with the AdamW moments of `range` (default: the whole layout), taken from
// whichever rank files cover it: any number of ranks may have written it (only the slice is read
// from each). A missing rank file or a part not covered is an error. Without `weights`,
// `params` stays empty (a rank that gets them from rank 0) and only config.json is read of the
// model.
absl::StatusOr<CheckpointData> LoadCheckpoint(const std::string& dir,
                                              std::optional<ShardRange> range = std::nullopt,
                                              bool weights = true);

// Resolves what a user passes to `rwr checkpoint inspect` / `rwr export`: a step directory, a
// checkpoints directory or a run directory (→ its newest complete checkpoint).
absl::StatusOr<std::string> ResolveCheckpointDir(const std::string& path);

}  // namespace rwr::trainer
