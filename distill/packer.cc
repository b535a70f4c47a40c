// Packing samples into shard rows and shards (see distill/packer.h).
#include "distill/packer.h"

#include <algorithm>
#include <filesystem>

#include "common/dir_lock.h"
#include "common/status.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

namespace rwr::distill {

namespace {

namespace fs = std::filesystem;

// shard_NNNNN.rws, or it or the manifest with .tmp: a file a build writes.
bool IsBuildFile(std::string_view name) {
  if (name == std::string(storage::kShardManifestName) + ".tmp") return true;
  if (name.ends_with(".tmp")) name.remove_suffix(4);
  if (!name.starts_with("shard_") || !name.ends_with(storage::kShardExtension)) return false;
  name.remove_prefix(6);
  name.remove_suffix(storage::kShardExtension.size());
  return !name.empty() &&
         std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The build's lock (common/dir_lock.h): its own file, never removed (removing it would race a
// process taking it).
bool IsLockFile(std::string_view name) { return name == DirLock::kFileName; }

// The files a build into `dir` must remove first (see CheckDatasetDir), manifest first.
absl::StatusOr<std::vector<fs::path>> FilesToClear(const std::string& dir, bool overwrite) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return std::vector<fs::path>();
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(fmt::format("--out {}: not a directory", dir));
  }
  const fs::path manifest = fs::path(dir) / storage::kShardManifestName;
  const bool dataset = fs::exists(manifest, ec);
  if (dataset && !overwrite) {
    return absl::AlreadyExistsError(fmt::format(
        "{} already holds a dataset ({} exists); choose another --out or pass --overwrite", dir,
        manifest.string()));
  }
  std::vector<fs::path> files;
  if (dataset) files.push_back(manifest);
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.path() == manifest || IsLockFile(name)) continue;
    if (entry.is_regular_file() && IsBuildFile(name)) {
      files.push_back(entry.path());
    } else if (!dataset) {  // a dataset's directory may hold other files; they stay
      return absl::FailedPreconditionError(fmt::format(
          "--out {}: not empty ('{}') and holds no dataset ({}); choose a new or empty directory",
          dir, name, storage::kShardManifestName));
    }
  }
  if (ec) return absl::UnavailableError(fmt::format("--out {}: {}", dir, ec.message()));
  return files;
}

}  // namespace

absl::Status CheckDatasetDir(const std::string& dir, bool overwrite) {
  return FilesToClear(dir, overwrite).status();
}

absl::StatusOr<std::unique_ptr<Packer>> Packer::Create(PackerOptions options) {
  if (options.vocab_size == 0 || options.seq_len == 0) {
    return absl::InvalidArgumentError("packer: vocab_size and seq_len must be > 0");
  }
  if (options.open_rows < 1) options.open_rows = 1;
  RWR_ASSIGN_OR_RETURN(const std::vector<std::filesystem::path> stale,
                       FilesToClear(options.dir, options.overwrite));
  std::error_code ec;
  for (const std::filesystem::path& path : stale) {  // the manifest comes first
    if (!std::filesystem::remove(path, ec) && ec) {
      return absl::UnavailableError(
          fmt::format("cannot remove {}: {}", path.string(), ec.message()));
    }
  }
  if (!stale.empty()) {
    spdlog::info("data build: removed {} files of an earlier or interrupted build in {}",
                 stale.size(), options.dir);
  }
  std::filesystem::create_directories(options.dir, ec);
  if (ec) {
    return absl::UnavailableError(fmt::format("cannot create {}: {}", options.dir, ec.message()));
  }
  std::unique_ptr<Packer> packer(new Packer(std::move(options)));
  packer->manifest_.vocab_size = packer->options_.vocab_size;
  packer->manifest_.seq_len = packer->options_.seq_len;
  packer->manifest_.row_layout = packer->options_.row_layout;
  packer->manifest_.eos_id = packer->options_.eos_id;
  packer->manifest_.pad_id = packer->options_.pad_id;
  return packer;
}

absl::Status Packer::RollShard() {
  if (writer_ == nullptr) return absl::OkStatus();
  RWR_RETURN_IF_ERROR(writer_->Finish());
  const std::string file = std::filesystem::path(writer_->path()).filename().string();
  manifest_.shards.push_back({file, writer_->num_rows(), writer_->num_documents(),
                              writer_->num_tokens(), writer_->num_loss_tokens(),
                              writer_->payload_sha256_hex()});
  stats_.shards++;
  writer_.reset();
  return absl::OkStatus();
}

absl::Status Packer::WriteRow(OpenRow& row) {
  if (row.tokens.empty()) return absl::OkStatus();
  if (writer_ == nullptr) {
    const std::string path = (std::filesystem::path(options_.dir) /
                              fmt::format("shard_{:05d}{}", stats_.shards, storage::kShardExtension))
                                 .string();
    writer_ = std::make_unique<storage::ShardWriter>(
        path, storage::ShardWriterOptions{.vocab_size = options_.vocab_size,
                                          .seq_len = options_.seq_len,
                                          .row_layout = options_.row_layout});
  }
  writer_->BeginRow();
  for (size_t d = 0; d < row.doc_starts.size(); ++d) {
    const size_t begin = row.doc_starts[d];
    const size_t end = d + 1 < row.doc_starts.size() ? row.doc_starts[d + 1] : row.tokens.size();
    RWR_RETURN_IF_ERROR(writer_->AddDocument(
        std::span<const uint32_t>(row.tokens).subspan(begin, end - begin),
        std::span<const uint8_t>(row.mask).subspan(begin, end - begin)));
  }
  stats_.rows++;
  if (options_.row_layout == storage::RowLayout::kPacked) {
    stats_.padding += options_.seq_len + 1 - row.tokens.size();
  }
  if (writer_->num_tokens() >= options_.shard_tokens) RWR_RETURN_IF_ERROR(RollShard());
  return absl::OkStatus();
}

absl::Status Packer::Add(std::span<const uint32_t> tokens, std::span<const uint8_t> loss_mask) {
  if (tokens.empty()) return absl::InvalidArgumentError("packer: empty sample");
  if (tokens.size() != loss_mask.size()) {
    return absl::InvalidArgumentError("packer: tokens and loss mask differ in length");
  }
  const size_t capacity = options_.seq_len + 1;
  if (options_.row_layout == storage::RowLayout::kPacked && tokens.size() > capacity) {
    return absl::InvalidArgumentError(fmt::format(
        "packer: sample of {} tokens is longer than seq_len + 1 = {}; truncate or drop it, or use "
        "the one_per_row layout",
        tokens.size(), capacity));
  }
  stats_.samples++;
  stats_.tokens += tokens.size();
  for (uint8_t m : loss_mask) stats_.loss_tokens += m;
  if (options_.row_layout == storage::RowLayout::kOnePerRow) {
    OpenRow row;
    row.tokens.assign(tokens.begin(), tokens.end());
    row.mask.assign(loss_mask.begin(), loss_mask.end());
    row.doc_starts = {0};
    return WriteRow(row);
  }
  auto fits = [&](const OpenRow& row) { return row.tokens.size() + tokens.size() <= capacity; };
  auto it = std::find_if(open_.begin(), open_.end(), fits);
  if (it == open_.end()) {
    if (static_cast<int>(open_.size()) >= options_.open_rows) {
      auto fullest = std::max_element(open_.begin(), open_.end(), [](const auto& a, const auto& b) {
        return a.tokens.size() < b.tokens.size();
      });
      RWR_RETURN_IF_ERROR(WriteRow(*fullest));
      open_.erase(fullest);
    }
    open_.emplace_back();
    it = open_.end() - 1;
  }
  it->doc_starts.push_back(it->tokens.size());
  it->tokens.insert(it->tokens.end(), tokens.begin(), tokens.end());
  it->mask.insert(it->mask.end(), loss_mask.begin(), loss_mask.end());
  if (it->tokens.size() == capacity) {
    RWR_RETURN_IF_ERROR(WriteRow(*it));
    open_.erase(it);
  }
  return absl::OkStatus();
}

absl::Status Packer::Finish(const std::string& build_json) {
  for (OpenRow& row : open_) RWR_RETURN_IF_ERROR(WriteRow(row));
  open_.clear();
  RWR_RETURN_IF_ERROR(RollShard());
  if (manifest_.shards.empty()) {
    return absl::InvalidArgumentError(
        "no samples to write: every item was dropped or the input is empty");
  }
  manifest_.extra_json = build_json;
  return manifest_.Save(options_.dir);
}

}  // namespace rwr::distill
