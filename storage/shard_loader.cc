// Shard loader for the trainer (see storage/shard_loader.h for order, resume and batch layout).
#include "storage/shard_loader.h"

#include <algorithm>
#include <filesystem>

#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace rwr::storage {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::string LoaderPosition::ToJson() const {
  nlohmann::json j = {{"seed", seed},
                      {"epoch", epoch},
                      {"rows_consumed", rows_consumed},
                      {"dataset_rows", dataset_rows}};
  return j.dump();
}

absl::StatusOr<LoaderPosition> LoaderPosition::FromJson(std::string_view json) {
  nlohmann::json j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("loader position: not a JSON object");
  }
  try {
    LoaderPosition p;
    p.seed = j.at("seed").get<uint64_t>();
    p.epoch = j.at("epoch").get<uint64_t>();
    p.rows_consumed = j.at("rows_consumed").get<uint64_t>();
    p.dataset_rows = j.at("dataset_rows").get<uint64_t>();
    return p;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(fmt::format("loader position: {}", e.what()));
  }
}

std::vector<uint64_t> ShardLoader::EpochOrder(uint64_t rows, uint64_t seed, uint64_t epoch,
                                              bool shuffle) {
  std::vector<uint64_t> order(rows);
  for (uint64_t i = 0; i < rows; ++i) order[i] = i;
  if (!shuffle || rows < 2) return order;
  uint64_t state = seed ^ (0xD1B54A32D192ED03ULL * (epoch + 1));
  SplitMix64(state);
  for (uint64_t i = rows - 1; i > 0; --i) {
    // Multiply-shift maps 64 random bits onto [0, i]; deterministic everywhere.
    const uint64_t j = static_cast<uint64_t>(
        (static_cast<unsigned __int128>(SplitMix64(state)) * (i + 1)) >> 64);
    std::swap(order[i], order[j]);
  }
  return order;
}

absl::StatusOr<std::unique_ptr<ShardLoader>> ShardLoader::Open(const LoaderOptions& options) {
  if (options.batch_size < 1) return absl::InvalidArgumentError("loader: batch_size must be >= 1");
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(fmt::format("loader: rank {} outside world size {}",
                                                  options.rank, options.world_size));
  }
  std::unique_ptr<ShardLoader> loader(new ShardLoader());
  loader->options_ = options;
  RWR_ASSIGN_OR_RETURN(loader->manifest_, ShardManifest::Load(options.dir));
  const ShardManifest& m = loader->manifest_;
  if (m.shards.empty()) {
    return absl::InvalidArgumentError(fmt::format("dataset {}: manifest lists no shards", options.dir));
  }
  if (loader->options_.seq_len == 0) loader->options_.seq_len = static_cast<int64_t>(m.seq_len);
  if (m.row_layout == RowLayout::kPacked &&
      loader->options_.seq_len < static_cast<int64_t>(m.seq_len)) {
    return absl::InvalidArgumentError(fmt::format(
        "dataset {} was packed for seq_len {}, longer than the requested {}; rebuild it with "
        "`rwr data build --seq-len {}` or train with seq_len >= {}",
        options.dir, m.seq_len, loader->options_.seq_len, loader->options_.seq_len, m.seq_len));
  }
  // Packed rows hold at most the dataset's seq_len positions: a longer T would be padding only,
  // computed and counted as tokens for nothing.
  if (m.row_layout == RowLayout::kPacked &&
      loader->options_.seq_len > static_cast<int64_t>(m.seq_len)) {
    return absl::InvalidArgumentError(fmt::format(
        "dataset {} was packed for seq_len {}, shorter than the requested {}: the rest of every "
        "row would be padding; train with seq_len {} (or 0), or rebuild it with `rwr data build "
        "--seq-len {}`",
        options.dir, m.seq_len, loader->options_.seq_len, m.seq_len, loader->options_.seq_len));
  }
  uint64_t first_row = 0;
  for (const ShardManifestEntry& entry : m.shards) {
    const std::string path = (std::filesystem::path(options.dir) / entry.file).string();
    RWR_ASSIGN_OR_RETURN(auto reader,
                         ShardReader::Open(path, {.verify_checksum = options.verify_checksums}));
    const ShardHeader& h = reader->header();
    RWR_RETURN_IF_ERROR(CheckShardMatchesManifest(path, h, entry, m));
    loader->shard_first_row_.push_back(first_row);
    first_row += h.num_rows;
    loader->shards_.push_back(std::move(reader));
  }
  loader->shard_first_row_.push_back(first_row);
  loader->total_rows_ = first_row;
  const uint64_t rows_per_step =
      static_cast<uint64_t>(options.batch_size) * static_cast<uint64_t>(options.world_size);
  if (rows_per_step > loader->total_rows_) {
    return absl::InvalidArgumentError(fmt::format(
        "dataset {}: {} rows, fewer than batch_size {} x world_size {}; build more data or use a "
        "smaller batch",
        options.dir, loader->total_rows_, options.batch_size, options.world_size));
  }
  loader->position_ = {.seed = options.seed, .epoch = 0, .rows_consumed = 0,
                       .dataset_rows = loader->total_rows_};
  return loader;
}

uint64_t ShardLoader::steps_per_epoch() const {
  return total_rows_ / (static_cast<uint64_t>(options_.batch_size) * options_.world_size);
}

absl::Status ShardLoader::Restore(const LoaderPosition& position) {
  if (position.seed != options_.seed) {
    return absl::InvalidArgumentError(fmt::format(
        "loader: saved position has seed {}, this run uses seed {}", position.seed, options_.seed));
  }
  if (position.dataset_rows != total_rows_) {
    return absl::InvalidArgumentError(fmt::format(
        "loader: saved position is for a dataset of {} rows, {} has {}; resume on the same data",
        position.dataset_rows, options_.dir, total_rows_));
  }
  if (position.rows_consumed > total_rows_) {
    return absl::InvalidArgumentError("loader: saved position is past the end of its epoch");
  }
  position_ = position;
  return absl::OkStatus();
}

absl::Status ShardLoader::StartEpoch(uint64_t epoch) {
  if (order_epoch_ == epoch) return absl::OkStatus();
  order_ = EpochOrder(total_rows_, options_.seed, epoch, options_.shuffle);
  order_epoch_ = epoch;
  return absl::OkStatus();
}

absl::Status ShardLoader::Next(Batch* batch) {
  const uint64_t B = static_cast<uint64_t>(options_.batch_size);
  const uint64_t rows_per_step = B * static_cast<uint64_t>(options_.world_size);
  if (position_.rows_consumed + rows_per_step > total_rows_) {
    ++position_.epoch;
    position_.rows_consumed = 0;
  }
  RWR_RETURN_IF_ERROR(StartEpoch(position_.epoch));
  const uint64_t base = position_.rows_consumed + static_cast<uint64_t>(options_.rank) * B;

  // T: the dataset's seq_len, or the longest row of this batch where rows are kept whole.
  int64_t T = options_.seq_len;
  batch->row_ids.resize(B);
  for (uint64_t b = 0; b < B; ++b) {
    const uint64_t row = order_[base + b];
    batch->row_ids[b] = row;
    const size_t s = std::upper_bound(shard_first_row_.begin(), shard_first_row_.end(), row) -
                     shard_first_row_.begin() - 1;
    const int64_t positions =
        static_cast<int64_t>(shards_[s]->RowLength(row - shard_first_row_[s])) - 1;
    if (positions > T) {
      if (!options_.allow_long_rows) {
        return absl::InvalidArgumentError(fmt::format(
            "shard {}: row {} has {} positions, more than seq_len {} (allow long rows to train it "
            "in chunks)",
            shards_[s]->path(), row - shard_first_row_[s], positions, options_.seq_len));
      }
      T = positions;
    }
  }
  batch->batch_size = static_cast<int64_t>(B);
  batch->seq_len = T;
  batch->epoch = position_.epoch;
  const size_t n = B * static_cast<size_t>(T);
  batch->tokens.assign(n, static_cast<int32_t>(manifest_.pad_id));
  batch->targets.assign(n, static_cast<int32_t>(manifest_.pad_id));
  batch->loss_mask.assign(n, 0);
  batch->reset.assign(n, 0);
  batch->lengths.assign(B, 0);
  batch->loss_tokens = 0;
  for (uint64_t b = 0; b < B; ++b) {
    RWR_RETURN_IF_ERROR(ReadGlobalRow(batch->row_ids[b], T, static_cast<int64_t>(b), batch));
  }
  position_.rows_consumed += rows_per_step;
  return absl::OkStatus();
}

absl::Status ShardLoader::ReadGlobalRow(uint64_t row, int64_t T, int64_t b, Batch* batch) const {
  const size_t s = std::upper_bound(shard_first_row_.begin(), shard_first_row_.end(), row) -
                   shard_first_row_.begin() - 1;
  const ShardReader& shard = *shards_[s];
  const uint64_t local = row - shard_first_row_[s];
  const uint64_t n = shard.RowLength(local);
  row_tokens_.resize(n);
  row_mask_.resize(n);
  RWR_RETURN_IF_ERROR(shard.ReadRow(local, row_tokens_, row_mask_, &doc_scratch_));
  const int64_t positions = static_cast<int64_t>(n) - 1;
  int32_t* tokens = batch->tokens.data() + b * T;
  int32_t* targets = batch->targets.data() + b * T;
  uint8_t* loss = batch->loss_mask.data() + b * T;
  uint8_t* reset = batch->reset.data() + b * T;
  int64_t loss_tokens = 0;
  for (int64_t t = 0; t < positions; ++t) {
    tokens[t] = row_tokens_[t];
    targets[t] = row_tokens_[t + 1];
    loss[t] = row_mask_[t + 1];
  }
  for (uint64_t start : doc_scratch_) {
    if (start > 0) loss[start - 1] = 0;  // never predict across a document boundary
    if (static_cast<int64_t>(start) < positions) reset[start] = 1;
  }
  reset[0] = 1;
  if (positions < T) reset[positions] = 1;  // padding starts fresh
  for (int64_t t = 0; t < positions; ++t) loss_tokens += loss[t];
  batch->lengths[b] = positions;
  batch->loss_tokens += loss_tokens;
  return absl::OkStatus();
}

}  // namespace rwr::storage
