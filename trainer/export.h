// `rwr export`: a checkpoint to the Hugging Face layout for serving — config.json (the keys in
// RWR_METHOD.md), model.safetensors in bf16 or fp32 (sharded with an index above a size), and
// tokenizer.json copied from the run's data.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace rwr::trainer {

struct ExportOptions {
  std::string checkpoint;      // step dir, checkpoints dir or run dir
  std::string out;             // created
  std::string dtype = "bf16";  // bf16 | fp32
  uint64_t max_shard_bytes = 5ULL << 30;
  std::string tokenizer;  // tokenizer.json; empty: found through the checkpoint's config
  // Also write rwr_check.safetensors: input_ids (1, T) and rwr's logits (1, T, V) from the
  // exported weights, for scripts/make_hf_fixtures.py --check-export.
  bool write_check = false;
};

struct ExportResult {
  std::string checkpoint;
  std::vector<std::string> files;
  std::string tokenizer_source;  // empty when none was found
};

absl::StatusOr<ExportResult> ExportCheckpoint(const ExportOptions& options);

}  // namespace rwr::trainer
