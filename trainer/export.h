// `rwr export`: a checkpoint to the Hugging Face layout for serving — config.json (the keys in
// RWR_METHOD.md), model.safetensors in bf16 or fp32 (sharded with an index above a size), and
// tokenizer.json copied from the run's data. The output directory is written whole or not at all
// (WriteWholeDirectory), which `rwr model init` shares.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rwr::trainer {

struct ExportOptions {
  std::string checkpoint;                 // step dir, checkpoints dir or run dir
  std::string out;                        // created; must be missing or empty unless `overwrite`
  std::string dtype = "bf16";             // bf16 | fp32
  uint64_t max_shard_bytes = 5ULL << 30;  // > 0
  // tokenizer.json; empty: found through the checkpoint (run's data dir, config); not found is an
  // error unless `without_tokenizer`.
  std::string tokenizer;
  bool without_tokenizer = false;  // no tokenizer.json at all (when `tokenizer` is empty)
  bool overwrite = false;          // replace a non-empty `out`, none of its files kept
  // Also write rwr_check.safetensors: input_ids (1, T) and rwr's logits (1, T, V) from the
  // exported weights, for scripts/make_hf_fixtures.py --check-export.
  bool write_check = false;
};

struct ExportResult {
  std::string checkpoint;
  std::vector<std::string> files;
  std::string tokenizer_source;  // empty with without_tokenizer
};

// Inputs (checkpoint, tokenizer, output directory) are checked before anything is written.
absl::StatusOr<ExportResult> ExportCheckpoint(const ExportOptions& options);

// OK when `out` is missing or an empty directory, or a non-empty one and `overwrite`; otherwise a
// one-line error that points at --overwrite.
absl::Status CheckOutputDir(const std::string& out, bool overwrite);

// Writes a directory whole or not at all: `fill` writes into a temporary sibling (OUT.tmp-<pid>),
// which takes the place of `out` only once `fill` succeeded (and is removed if it failed). With
// `overwrite` the old directory is replaced entirely, so no stale file (a model.safetensors
// beside new shards) survives next to the new ones.
absl::Status WriteWholeDirectory(const std::string& out, bool overwrite,
                                 const std::function<absl::Status(const std::string& dir)>& fill);

}  // namespace rwr::trainer
