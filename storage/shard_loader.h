// The trainer's data loader: micro-batches of (tokens, targets, loss mask, reset flags) from a
// dataset directory of mmap'd token shards (storage/shard.h).
//
// Order. Every epoch visits the dataset's rows in a permutation fixed by (seed, epoch) — the same
// on every machine and every run (own Fisher–Yates over splitmix64; no std:: distributions, whose
// output differs between standard libraries). A global step takes the next B·W rows of the
// permutation (B = batch_size, W = world_size); rank r takes rows [r·B, r·B + B) of them, so ranks
// see disjoint rows and together cover the epoch. The last N mod (B·W) rows of each permutation
// are skipped so every rank runs the same number of steps (a different remainder each epoch).
//
// Resume. position() after a Next() is a small struct the trainer stores in its checkpoint;
// Restore(position) makes the next Next() return exactly what the uninterrupted run would have.
// The position counts global rows, so a run may resume with another world size or batch size
// (it then continues from the same place in the same permutation).
//
// Per micro-batch (shapes use B batch, T positions):
//   tokens[b, t]    = row[t]                  input token
//   targets[b, t]   = row[t + 1]              next token (pad_id past the row's end)
//   loss_mask[b, t] = mask[t + 1]             1 where targets[b, t] carries loss
//   reset[b, t]     = 1 where a document starts at t (t = 0 always; also the first padding
//                     position), so the scan and conv state must be zeroed before position t
// A row of n tokens fills n - 1 positions; T is the dataset's seq_len, or longer for a batch
// holding a row kept whole (RowLayout::kOnePerRow) that is longer than seq_len + 1 — then
// T = that row's n - 1, for the trainer to process chunk by chunk. A packed dataset must be read
// with seq_len >= the seq_len it was built for (Open refuses otherwise).
//
// Threads: one loader per rank, used from one thread (Next reuses internal buffers).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/shard.h"

namespace rwr::storage {

struct LoaderPosition {
  uint64_t seed = 0;
  uint64_t epoch = 0;
  uint64_t rows_consumed = 0;  // global rows (all ranks) taken so far in `epoch`
  uint64_t dataset_rows = 0;   // rows in the dataset, to catch resuming on other data

  std::string ToJson() const;  // {"seed":..,"epoch":..,"rows_consumed":..,"dataset_rows":..}
  static absl::StatusOr<LoaderPosition> FromJson(std::string_view json);
  bool operator==(const LoaderPosition&) const = default;
};

struct LoaderOptions {
  std::string dir;          // dataset directory with manifest.json
  int64_t batch_size = 1;   // B: rows per micro-batch on this rank
  int64_t seq_len = 0;      // T: 0 takes the dataset's seq_len
  int rank = 0;
  int world_size = 1;
  uint64_t seed = 0;
  bool shuffle = true;      // false: rows in shard order (still split across ranks)
  bool verify_checksums = true;
  // kOnePerRow rows longer than seq_len + 1: true yields them whole (T grows for that batch);
  // false makes such a row an error naming the file.
  bool allow_long_rows = true;
};

struct Batch {
  int64_t batch_size = 0;         // B
  int64_t seq_len = 0;            // T
  std::vector<int32_t> tokens;    // (B, T)
  std::vector<int32_t> targets;   // (B, T)
  std::vector<uint8_t> loss_mask; // (B, T)
  std::vector<uint8_t> reset;     // (B, T)
  std::vector<int64_t> lengths;   // (B) positions holding real tokens (row length - 1)
  std::vector<uint64_t> row_ids;  // (B) global row index in shard order
  int64_t loss_tokens = 0;        // sum of loss_mask
  uint64_t epoch = 0;             // epoch these rows came from
};

class ShardLoader {
 public:
  static absl::StatusOr<std::unique_ptr<ShardLoader>> Open(const LoaderOptions& options);

  // The next micro-batch of this rank; moves to the next epoch when the current one is used up.
  absl::Status Next(Batch* batch);

  LoaderPosition position() const { return position_; }
  // Continue from a position saved by any rank of an earlier run with the same seed and data.
  absl::Status Restore(const LoaderPosition& position);

  uint64_t dataset_rows() const { return total_rows_; }
  uint64_t steps_per_epoch() const;  // global steps, identical on every rank
  const ShardManifest& manifest() const { return manifest_; }
  int64_t pad_id() const { return manifest_.pad_id; }

  // The epoch's permutation of global row ids (exposed for tests and `rwr data inspect`).
  static std::vector<uint64_t> EpochOrder(uint64_t rows, uint64_t seed, uint64_t epoch,
                                          bool shuffle = true);

 private:
  ShardLoader() = default;
  absl::Status StartEpoch(uint64_t epoch);
  absl::Status ReadGlobalRow(uint64_t row, int64_t T, int64_t b, Batch* batch) const;

  LoaderOptions options_;
  ShardManifest manifest_;
  std::vector<std::unique_ptr<ShardReader>> shards_;
  std::vector<uint64_t> shard_first_row_;  // prefix sums of rows per shard (+ total)
  uint64_t total_rows_ = 0;
  LoaderPosition position_;
  uint64_t order_epoch_ = ~uint64_t{0};
  std::vector<uint64_t> order_;
  mutable std::vector<uint64_t> doc_scratch_;
  mutable std::vector<int32_t> row_tokens_;
  mutable std::vector<uint8_t> row_mask_;
};

}  // namespace rwr::storage
