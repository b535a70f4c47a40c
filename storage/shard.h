// Writing and reading token shards (format in storage/shard_format.h and docs/formats.md), and the
// manifest.json that lists a dataset directory's shards.
//
//   ShardWriter writer("out/shard_00000.rws", {.vocab_size = 50280, .seq_len = 2048});
//   writer.BeginRow();
//   RWR_RETURN_IF_ERROR(writer.AddDocument(tokens, loss_mask));   // as many as fit in the row
//   RWR_RETURN_IF_ERROR(writer.Finish());   // path.tmp, fsync, rename, fsync directory
//
//   RWR_ASSIGN_OR_RETURN(auto reader, ShardReader::Open("out/shard_00000.rws"));
//   reader->ReadRow(r, tokens, loss_mask);   // mmap'd; checksum verified at Open
//
// Durability: a shard appears under its final name only once complete and synced; a crash leaves
// at most a `.tmp` file behind. The manifest is written the same way, after every shard.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/shard_format.h"

namespace rwr::storage {

struct ShardWriterOptions {
  uint64_t vocab_size = 0;  // required; token ids must be below it
  uint64_t seq_len = 0;     // required (T); a packed row holds at most seq_len + 1 tokens
  RowLayout row_layout = RowLayout::kPacked;
};

class ShardWriter {
 public:
  ShardWriter(std::string path, ShardWriterOptions options);

  // Starts a new row; AddDocument before any BeginRow starts one implicitly.
  void BeginRow();
  // Appends one document (tokens and a same-length 0/1 loss mask) to the current row. Errors: ids
  // out of the vocabulary, mask length or values wrong, a packed row over seq_len + 1 tokens, a
  // second document in a one-per-row row, an empty document.
  absl::Status AddDocument(std::span<const uint32_t> tokens, std::span<const uint8_t> loss_mask);
  // Tokens the current row can still take in the packed layout (seq_len + 1 - used).
  uint64_t RowSpaceLeft() const;

  uint64_t num_rows() const;
  uint64_t num_documents() const { return doc_starts_.size(); }
  uint64_t num_tokens() const { return num_tokens_; }
  uint64_t num_loss_tokens() const { return num_loss_tokens_; }
  const std::string& path() const { return path_; }
  const std::string& payload_sha256_hex() const { return payload_sha256_hex_; }  // after Finish

  // Writes the file atomically. Empty rows are dropped; a shard with no rows is an error.
  absl::Status Finish();

 private:
  std::string path_;
  ShardWriterOptions options_;
  std::vector<uint64_t> row_offsets_;  // starts of rows; num_tokens appended at Finish
  std::vector<uint64_t> doc_starts_;
  std::vector<uint32_t> tokens_;
  std::vector<uint8_t> loss_mask_;
  uint64_t num_tokens_ = 0;
  uint64_t num_loss_tokens_ = 0;
  std::string payload_sha256_hex_;
  bool finished_ = false;
};

struct ShardOpenOptions {
  // Hash the whole payload at Open (reads every byte once). Off only where the caller has just
  // verified the file, e.g. in a benchmark loop.
  bool verify_checksum = true;
};

// Read-only view of one shard file through mmap. Thread-safe for concurrent reads.
class ShardReader {
 public:
  // Every error is DataLoss (or NotFound) and names `path`: "shard out/x.rws: truncated: ...".
  static absl::StatusOr<std::unique_ptr<ShardReader>> Open(const std::string& path,
                                                           ShardOpenOptions options = {});
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const ShardHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  uint64_t num_rows() const { return header_.num_rows; }
  uint64_t RowLength(uint64_t row) const { return row_offsets_[row + 1] - row_offsets_[row]; }
  std::span<const uint64_t> row_offsets() const { return {row_offsets_, header_.num_rows + 1}; }
  std::span<const uint64_t> doc_starts() const { return {doc_starts_, header_.num_documents}; }

  // Copies row `row` (RowLength(row) entries) into the outputs; doc_starts_in_row gets the row's
  // document starts relative to the row (first is 0). Token ids are checked against vocab_size:
  // an id out of range is DataLoss naming the file and row.
  absl::Status ReadRow(uint64_t row, std::span<int32_t> tokens, std::span<uint8_t> loss_mask,
                       std::vector<uint64_t>* doc_starts_in_row = nullptr) const;
  // Token i of the shard (no range check); for tools.
  uint32_t TokenAt(uint64_t i) const;
  uint8_t LossAt(uint64_t i) const { return loss_mask_[i]; }

 private:
  ShardReader() = default;
  std::string path_;
  ShardHeader header_{};
  const uint8_t* base_ = nullptr;
  uint64_t mapped_size_ = 0;
  const uint64_t* row_offsets_ = nullptr;
  const uint64_t* doc_starts_ = nullptr;
  const uint8_t* tokens_ = nullptr;
  const uint8_t* loss_mask_ = nullptr;
};

// manifest.json of a dataset directory (docs/formats.md). Written last by `rwr data build`.
struct ShardManifestEntry {
  std::string file;  // relative to the directory
  uint64_t rows = 0, documents = 0, tokens = 0, loss_tokens = 0;
  std::string payload_sha256;  // hex
};

struct ShardManifest {
  uint64_t vocab_size = 0;
  uint64_t seq_len = 0;
  RowLayout row_layout = RowLayout::kPacked;
  int64_t eos_id = -1;
  int64_t pad_id = 0;
  std::vector<ShardManifestEntry> shards;
  std::string extra_json = "{}";  // build details (tokenizer, template, recipe counts), free-form

  uint64_t TotalRows() const;
  uint64_t TotalTokens() const;
  uint64_t TotalDocuments() const;
  uint64_t TotalLossTokens() const;

  static absl::StatusOr<ShardManifest> Load(const std::string& dir);
  absl::Status Save(const std::string& dir) const;  // atomic
};

// A shard is the one its manifest entry names only if its header agrees with the entry — payload
// SHA-256, counts, vocab, seq_len, layout — and the manifest: a shard copied in from another build,
// or two shards swapped, each pass their own checksum. Comparing the header's SHA-256 (the one
// verify_checksum recomputes) costs nothing. DataLoss naming the file and the first difference.
absl::Status CheckShardMatchesManifest(const std::string& path, const ShardHeader& header,
                                       const ShardManifestEntry& entry,
                                       const ShardManifest& manifest);

}  // namespace rwr::storage
