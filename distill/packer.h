// Packing samples into shard rows and rows into shard files, then the manifest: the writing end of
// `rwr data build`.
//
// Packed layout: each row holds up to seq_len + 1 tokens (seq_len training positions). A sample
// goes into the first open row with room (first fit over a window of `open_rows` rows, in
// arrival order); when no open row has room and the window is full, the fullest open row is
// written out. Samples are never split across rows; boundaries are recorded so the model resets
// state at each one. Deterministic: the same samples in the same order give the same rows.
// One-per-row layout: every sample is a row of its own, any length.
//
// Shards roll over at `shard_tokens` tokens; they are named shard_00000.rws, ... and each is
// written atomically; manifest.json is written last (see storage/shard.h).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "storage/shard.h"

namespace rwr::distill {

struct PackerOptions {
  std::string dir;  // created if missing; what it may hold: CheckDatasetDir
  uint64_t vocab_size = 0;
  uint64_t seq_len = 0;
  storage::RowLayout row_layout = storage::RowLayout::kPacked;
  uint64_t shard_tokens = uint64_t{16} << 20;  // roll to a new shard past this many tokens
  int open_rows = 32;
  int64_t eos_id = -1;
  int64_t pad_id = 0;
  bool overwrite = false;
};

// What a dataset directory may hold before a build writes into it: nothing; a dataset (a
// manifest: replaced only with `overwrite`); or what an interrupted build left (shard files and
// .tmp files, no manifest: cleared). The build's .lock (common/dir_lock.h) may be there and stays.
// Anything else is the user's, and a build never writes among the user's files. CheckDatasetDir
// only checks, so that a caller can refuse before long work; Packer::Create checks again and
// clears (the old manifest first, so a crash midway never leaves a manifest pointing at a mix of
// old and new shards).
absl::Status CheckDatasetDir(const std::string& dir, bool overwrite);

struct PackerStats {
  uint64_t samples = 0, rows = 0, tokens = 0, loss_tokens = 0, shards = 0;
  uint64_t padding = 0;  // positions left empty in packed rows: rows · (seq_len + 1) - tokens
};

class Packer {
 public:
  static absl::StatusOr<std::unique_ptr<Packer>> Create(PackerOptions options);

  absl::Status Add(std::span<const uint32_t> tokens, std::span<const uint8_t> loss_mask);
  // Writes the open rows, the last shard and manifest.json (with `build_json` as its "build").
  absl::Status Finish(const std::string& build_json);
  const PackerStats& stats() const { return stats_; }

 private:
  explicit Packer(PackerOptions options) : options_(std::move(options)) {}
  struct OpenRow {
    std::vector<uint32_t> tokens;
    std::vector<uint8_t> mask;
    std::vector<size_t> doc_starts;
  };
  absl::Status WriteRow(OpenRow& row);
  absl::Status RollShard();

  PackerOptions options_;
  PackerStats stats_;
  std::vector<OpenRow> open_;
  std::unique_ptr<storage::ShardWriter> writer_;
  storage::ShardManifest manifest_;
};

}  // namespace rwr::distill
