// `rwr train`: the training loop over token shards (storage/shard_loader.h) with the CPU Mamba
// model, AdamW, evaluation, JSONL metrics, atomic checkpoints and exact resume.
//
// Config keys (docs/configuration.md; defaults in DefaultTrainConfig()):
//   model.init_from   HF model directory to start from (config.json + safetensors), or
//   model.config      a config.json (HF or original mamba) to initialise from, or
//   model.<hf key>    the model's HF config keys inline (configs/models/*.yaml)
//   data.dir          dataset directory (manifest.json + shards); data.eval_dir optional
//   data.seed, data.shuffle
//   train.out_dir     run directory: checkpoints/, metrics.jsonl, config.yaml
//   train.steps, batch_size, grad_accum, seq_len (0: the dataset's),
//   chunk_len (0: whole rows; on the GPU whole rows if they fit, else the largest halving that
//   does),
//   lr, min_lr, warmup_steps, weight_decay, beta1, beta2, eps, clip_norm, seed, threads,
//   log_every, eval_every, eval_batches, checkpoint_every, keep_checkpoints, max_nonfinite,
//   max_steps_this_run (stop, checkpoint and exit 0 after this many steps; 0: no limit), resume
//   (false: start afresh, refused where train.out_dir already holds a run)
// `rwr` refuses any key no command reads (cli/config_keys.h) before it calls Train.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "trainer/communicator.h"
#include "trainer/model_config.h"

namespace rwr::trainer {

Config DefaultTrainConfig();

// The model described by a run config's `model:` section (init_from, config, or inline keys).
// Beside model.init_from or model.config, an inline key that disagrees with that config.json is
// an error naming it.
absl::StatusOr<MambaConfig> ModelConfigFromRunConfig(const Config& config);

struct TrainResult {
  int64_t start_step = 0;
  int64_t final_step = 0;
  double first_loss = 0;  // of the first step this run
  double last_loss = 0;
  double last_eval_loss = -1;
  std::string last_checkpoint;
  bool interrupted = false;    // stopped by a signal or max_steps_this_run
  bool nothing_to_do = false;  // the run was already at train.steps
  double seconds = 0;          // this run's wall time (the loop, after loading)
  int64_t tokens = 0;          // input positions this run processed (all ranks)
};

absl::StatusOr<TrainResult> Train(const Config& config, Communicator* comm);

// The data.* and train.* settings of a run config read as Train reads them, types and ranges
// checked: a bad value is an error before anything else is done or logged.
absl::Status CheckTrainSettings(const Config& config);

}  // namespace rwr::trainer
