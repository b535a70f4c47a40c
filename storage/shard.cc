// Shard writer/reader and dataset manifest (see storage/shard.h, docs/formats.md).
#include "storage/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/sha256.h"
#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "storage/atomic_file.h"
#include "storage/mapped_pages.h"

namespace rwr::storage {
namespace {

absl::Status ErrnoError(std::string_view what, const std::string& path) {
  return absl::UnavailableError(fmt::format("{} {}: {}", what, path, std::strerror(errno)));
}

uint64_t HeaderCheck(const ShardHeader& header) {
  ShardHeader copy = header;
  copy.header_check = 0;
  Sha256Digest digest = Sha256Of(std::string_view(reinterpret_cast<const char*>(&copy), sizeof(copy)));
  uint64_t check = 0;
  std::memcpy(&check, digest.data(), sizeof(check));
  return check;
}

}  // namespace

absl::Status CheckShardMatchesManifest(const std::string& path, const ShardHeader& h,
                                       const ShardManifestEntry& entry,
                                       const ShardManifest& manifest) {
  Sha256Digest digest;
  std::copy(std::begin(h.payload_sha256), std::end(h.payload_sha256), digest.begin());
  std::string mismatch;
  if (!entry.payload_sha256.empty() && ToHex(digest) != entry.payload_sha256) {
    mismatch = fmt::format("payload SHA-256 {}…, manifest says {}…",
                           ToHex(digest).substr(0, 12), entry.payload_sha256.substr(0, 12));
  } else if (h.num_rows != entry.rows || h.num_documents != entry.documents ||
             h.num_tokens != entry.tokens || h.num_loss_tokens != entry.loss_tokens) {
    mismatch = fmt::format("rows {} vs {}, tokens {} vs {}", h.num_rows, entry.rows, h.num_tokens,
                           entry.tokens);
  } else if (h.vocab_size != manifest.vocab_size || h.seq_len != manifest.seq_len ||
             h.row_layout != static_cast<uint32_t>(manifest.row_layout)) {
    mismatch = fmt::format("vocab {} vs {}, seq_len {} vs {}", h.vocab_size, manifest.vocab_size,
                           h.seq_len, manifest.seq_len);
  }
  if (mismatch.empty()) return absl::OkStatus();
  return absl::DataLossError(fmt::format(
      "shard {}: not the shard {} names ({}); it was replaced or mixed in from another build — "
      "rebuild the dataset with `rwr data build`",
      path, kShardManifestName, mismatch));
}

// ---------------------------------------------------------------------------------------------
// Writer

ShardWriter::ShardWriter(std::string path, ShardWriterOptions options)
    : path_(std::move(path)), options_(options) {}

void ShardWriter::BeginRow() {
  if (!row_offsets_.empty() && row_offsets_.back() == tokens_.size()) return;  // current is empty
  row_offsets_.push_back(tokens_.size());
}

uint64_t ShardWriter::RowSpaceLeft() const {
  uint64_t used = row_offsets_.empty() ? 0 : tokens_.size() - row_offsets_.back();
  uint64_t capacity = options_.seq_len + 1;
  return used >= capacity ? 0 : capacity - used;
}

uint64_t ShardWriter::num_rows() const {
  if (row_offsets_.empty()) return 0;
  if (finished_) return row_offsets_.size() - 1;  // Finish appended the end offset
  return row_offsets_.back() == tokens_.size() ? row_offsets_.size() - 1 : row_offsets_.size();
}

absl::Status ShardWriter::AddDocument(std::span<const uint32_t> tokens,
                                      std::span<const uint8_t> loss_mask) {
  if (finished_) return absl::FailedPreconditionError(fmt::format("shard {}: already finished", path_));
  if (options_.vocab_size == 0 || options_.seq_len == 0) {
    return absl::InvalidArgumentError(
        fmt::format("shard {}: vocab_size and seq_len must be set", path_));
  }
  if (tokens.empty()) {
    return absl::InvalidArgumentError(fmt::format("shard {}: empty document", path_));
  }
  if (tokens.size() != loss_mask.size()) {
    return absl::InvalidArgumentError(fmt::format(
        "shard {}: document has {} tokens but {} loss-mask entries", path_, tokens.size(),
        loss_mask.size()));
  }
  if (row_offsets_.empty()) row_offsets_.push_back(0);
  const uint64_t row_used = tokens_.size() - row_offsets_.back();
  if (options_.row_layout == RowLayout::kPacked) {
    if (row_used + tokens.size() > options_.seq_len + 1) {
      return absl::InvalidArgumentError(fmt::format(
          "shard {}: document of {} tokens does not fit the row ({} used of {})", path_,
          tokens.size(), row_used, options_.seq_len + 1));
    }
  } else if (row_used != 0) {
    return absl::InvalidArgumentError(
        fmt::format("shard {}: one-per-row layout takes one document per row", path_));
  }
  uint64_t loss = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= options_.vocab_size) {
      return absl::InvalidArgumentError(fmt::format("shard {}: token id {} outside vocabulary of {}",
                                                    path_, tokens[i], options_.vocab_size));
    }
    if (loss_mask[i] > 1) {
      return absl::InvalidArgumentError(
          fmt::format("shard {}: loss-mask value {} (expected 0 or 1)", path_, loss_mask[i]));
    }
    loss += loss_mask[i];
  }
  doc_starts_.push_back(tokens_.size());
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  loss_mask_.insert(loss_mask_.end(), loss_mask.begin(), loss_mask.end());
  num_loss_tokens_ += loss;
  num_tokens_ += tokens.size();
  return absl::OkStatus();
}

absl::Status ShardWriter::Finish() {
  if (finished_) return absl::FailedPreconditionError(fmt::format("shard {}: already finished", path_));
  finished_ = true;
  if (!row_offsets_.empty() && row_offsets_.back() == tokens_.size()) row_offsets_.pop_back();
  if (row_offsets_.empty()) {
    return absl::InvalidArgumentError(fmt::format("shard {}: no rows to write", path_));
  }
  row_offsets_.push_back(tokens_.size());

  const TokenDtype dtype = TokenDtypeForVocab(options_.vocab_size);
  const uint64_t token_bytes = static_cast<uint64_t>(dtype);
  ShardHeader header{};
  std::memcpy(header.magic, kShardMagic, sizeof(header.magic));
  header.version = kShardVersion;
  header.header_size = sizeof(ShardHeader);
  header.token_dtype = static_cast<uint32_t>(dtype);
  header.row_layout = static_cast<uint32_t>(options_.row_layout);
  header.vocab_size = options_.vocab_size;
  header.seq_len = options_.seq_len;
  header.num_rows = row_offsets_.size() - 1;
  header.num_documents = doc_starts_.size();
  header.num_tokens = tokens_.size();
  header.num_loss_tokens = num_loss_tokens_;
  header.row_offsets_offset = AlignUp(sizeof(ShardHeader));
  header.doc_starts_offset = AlignUp(header.row_offsets_offset + 8 * (header.num_rows + 1));
  header.tokens_offset = AlignUp(header.doc_starts_offset + 8 * header.num_documents);
  header.loss_mask_offset = AlignUp(header.tokens_offset + token_bytes * header.num_tokens);
  header.file_size = AlignUp(header.loss_mask_offset + header.num_tokens);

  // Payload in memory order; hashed as written.
  Sha256 hasher;
  AtomicFile file(path_);
  RWR_RETURN_IF_ERROR(file.Open());
  std::vector<char> zeros(kShardAlignment, 0);
  RWR_RETURN_IF_ERROR(file.Write(&header, sizeof(header)));  // rewritten with checksum below
  uint64_t written = sizeof(header);
  auto pad_to = [&](uint64_t offset) -> absl::Status {
    uint64_t n = offset - written;
    hasher.Update(zeros.data(), n);
    written = offset;
    return file.Write(zeros.data(), n);
  };
  auto put = [&](const void* data, uint64_t size) -> absl::Status {
    hasher.Update(data, size);
    written += size;
    return file.Write(data, size);
  };
  RWR_RETURN_IF_ERROR(pad_to(header.row_offsets_offset));
  RWR_RETURN_IF_ERROR(put(row_offsets_.data(), 8 * row_offsets_.size()));
  RWR_RETURN_IF_ERROR(pad_to(header.doc_starts_offset));
  RWR_RETURN_IF_ERROR(put(doc_starts_.data(), 8 * doc_starts_.size()));
  RWR_RETURN_IF_ERROR(pad_to(header.tokens_offset));
  if (dtype == TokenDtype::kUint16) {
    std::vector<uint16_t> narrow(tokens_.begin(), tokens_.end());
    RWR_RETURN_IF_ERROR(put(narrow.data(), 2 * narrow.size()));
  } else {
    RWR_RETURN_IF_ERROR(put(tokens_.data(), 4 * tokens_.size()));
  }
  RWR_RETURN_IF_ERROR(pad_to(header.loss_mask_offset));
  RWR_RETURN_IF_ERROR(put(loss_mask_.data(), loss_mask_.size()));
  RWR_RETURN_IF_ERROR(pad_to(header.file_size));

  Sha256Digest digest = hasher.Finish();
  std::memcpy(header.payload_sha256, digest.data(), digest.size());
  payload_sha256_hex_ = ToHex(digest);
  header.header_check = HeaderCheck(header);
  RWR_RETURN_IF_ERROR(file.PwriteAt(&header, sizeof(header), 0));
  RWR_RETURN_IF_ERROR(file.Commit());
  // Free the buffers; the writer is done.
  std::vector<uint32_t>().swap(tokens_);
  std::vector<uint8_t>().swap(loss_mask_);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Reader

ShardReader::~ShardReader() {
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), mapped_size_);
}

absl::StatusOr<std::unique_ptr<ShardReader>> ShardReader::Open(const std::string& path,
                                                               ShardOpenOptions options) {
  auto corrupt = [&path](std::string_view what) {
    return absl::DataLossError(fmt::format(
        "shard {}: {}; the file is damaged or not an rwr shard — rebuild it with `rwr data build`",
        path, what));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(fmt::format("shard {}: no such file", path));
    return ErrnoError("cannot open shard", path);
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return ErrnoError("cannot stat shard", path);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < sizeof(ShardHeader)) {
    ::close(fd);
    return corrupt(fmt::format("truncated: {} bytes, smaller than the {}-byte header", size,
                               sizeof(ShardHeader)));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return ErrnoError("cannot mmap shard", path);

  std::unique_ptr<ShardReader> reader(new ShardReader());
  reader->path_ = path;
  reader->base_ = static_cast<const uint8_t*>(map);
  reader->mapped_size_ = size;
  ShardHeader& h = reader->header_;
  std::memcpy(&h, reader->base_, sizeof(h));

  if (std::memcmp(h.magic, kShardMagic, sizeof(h.magic)) != 0) return corrupt("bad magic");
  if (h.version != kShardVersion) {
    return corrupt(fmt::format("format version {} (this rwr reads version {})", h.version,
                               kShardVersion));
  }
  if (h.header_size != sizeof(ShardHeader) || HeaderCheck(h) != h.header_check) {
    return corrupt("header check failed");
  }
  if (h.token_dtype != 2 && h.token_dtype != 4) return corrupt("unknown token dtype");
  if (h.row_layout != 1 && h.row_layout != 2) return corrupt("unknown row layout");
  if (h.num_rows == 0 || h.vocab_size == 0 || h.seq_len == 0) return corrupt("empty header fields");
  // Recompute the layout from the counts: it must match the recorded offsets and the file size.
  const uint64_t limit = uint64_t{1} << 48;
  if (h.num_rows > limit || h.num_documents > limit || h.num_tokens > limit) {
    return corrupt("counts out of range");
  }
  const uint64_t row_off = AlignUp(sizeof(ShardHeader));
  const uint64_t doc_off = AlignUp(row_off + 8 * (h.num_rows + 1));
  const uint64_t tok_off = AlignUp(doc_off + 8 * h.num_documents);
  const uint64_t mask_off = AlignUp(tok_off + uint64_t{h.token_dtype} * h.num_tokens);
  const uint64_t file_size = AlignUp(mask_off + h.num_tokens);
  if (h.row_offsets_offset != row_off || h.doc_starts_offset != doc_off ||
      h.tokens_offset != tok_off || h.loss_mask_offset != mask_off || h.file_size != file_size) {
    return corrupt("section offsets do not match the counts");
  }
  if (size < file_size) {
    return corrupt(fmt::format("truncated: {} bytes, expected {}", size, file_size));
  }
  if (size > file_size) {
    return corrupt(fmt::format("{} trailing bytes after the last section", size - file_size));
  }
  if (options.verify_checksum) {
    // In pieces, each released once hashed: a dataset's shards are all checked at open, and
    // would otherwise stay in every rank's RSS whole (mapped_pages.h).
    Sha256 hasher;
    for (uint64_t at = sizeof(ShardHeader); at < size; at += kReleaseBytes) {
      const uint64_t n = std::min<uint64_t>(kReleaseBytes, size - at);
      hasher.Update(reader->base_ + at, n);
      ReleaseMappedPages(reader->base_, size, reader->base_ + at, reader->base_ + at + n);
    }
    Sha256Digest digest = hasher.Finish();
    if (std::memcmp(digest.data(), h.payload_sha256, digest.size()) != 0) {
      return corrupt("payload checksum mismatch");
    }
  }
  reader->row_offsets_ = reinterpret_cast<const uint64_t*>(reader->base_ + row_off);
  reader->doc_starts_ = reinterpret_cast<const uint64_t*>(reader->base_ + doc_off);
  reader->tokens_ = reader->base_ + tok_off;
  reader->loss_mask_ = reader->base_ + mask_off;

  // Structure: rows ascending and ending at num_tokens; documents ascending, inside the data, and
  // every row starting with one. O(rows + documents), cheap next to the checksum.
  const uint64_t* rows = reader->row_offsets_;
  const uint64_t* docs = reader->doc_starts_;
  if (rows[0] != 0 || rows[h.num_rows] != h.num_tokens) return corrupt("row offsets out of range");
  uint64_t d = 0;
  for (uint64_t r = 0; r < h.num_rows; ++r) {
    if (rows[r + 1] <= rows[r]) return corrupt(fmt::format("row {} is empty or reversed", r));
    if (h.row_layout == static_cast<uint32_t>(RowLayout::kPacked) &&
        rows[r + 1] - rows[r] > h.seq_len + 1) {
      return corrupt(fmt::format("packed row {} longer than seq_len + 1", r));
    }
    if (d >= h.num_documents || docs[d] != rows[r]) {
      return corrupt(fmt::format("row {} does not start a document", r));
    }
    ++d;
    while (d < h.num_documents && docs[d] < rows[r + 1]) {
      if (docs[d] <= docs[d - 1]) return corrupt("document starts not ascending");
      ++d;
    }
  }
  if (d != h.num_documents) return corrupt("document starts beyond the last row");
  ::madvise(const_cast<uint8_t*>(reader->base_), size, MADV_RANDOM);
  return reader;
}

uint32_t ShardReader::TokenAt(uint64_t i) const {
  if (header_.token_dtype == 2) {
    uint16_t v;
    std::memcpy(&v, tokens_ + 2 * i, 2);
    return v;
  }
  uint32_t v;
  std::memcpy(&v, tokens_ + 4 * i, 4);
  return v;
}

absl::Status ShardReader::ReadRow(uint64_t row, std::span<int32_t> tokens,
                                  std::span<uint8_t> loss_mask,
                                  std::vector<uint64_t>* doc_starts_in_row) const {
  if (row >= header_.num_rows) {
    return absl::OutOfRangeError(
        fmt::format("shard {}: row {} of {}", path_, row, header_.num_rows));
  }
  const uint64_t begin = row_offsets_[row];
  const uint64_t n = row_offsets_[row + 1] - begin;
  if (tokens.size() < n || loss_mask.size() < n) {
    return absl::InvalidArgumentError(fmt::format("shard {}: row {} needs {} entries", path_, row, n));
  }
  uint32_t max_id = 0;
  if (header_.token_dtype == 2) {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(tokens_) + begin;
    for (uint64_t i = 0; i < n; ++i) {
      tokens[i] = src[i];
      max_id = std::max<uint32_t>(max_id, src[i]);
    }
  } else {
    const uint32_t* src = reinterpret_cast<const uint32_t*>(tokens_) + begin;
    for (uint64_t i = 0; i < n; ++i) {
      tokens[i] = static_cast<int32_t>(src[i]);
      max_id = std::max<uint32_t>(max_id, src[i]);
    }
  }
  if (max_id >= header_.vocab_size) {
    return absl::DataLossError(fmt::format("shard {}: row {} holds token id {} outside vocabulary of {}",
                                           path_, row, max_id, header_.vocab_size));
  }
  uint8_t bad = 0;
  for (uint64_t i = 0; i < n; ++i) {
    loss_mask[i] = loss_mask_[begin + i];
    bad |= loss_mask_[begin + i] & 0xFE;
  }
  // Copied: a training run reads its whole dataset, every epoch (mapped_pages.h).
  const uint64_t width = header_.token_dtype;
  ReleaseMappedPages(base_, mapped_size_, tokens_ + width * begin, tokens_ + width * (begin + n));
  ReleaseMappedPages(base_, mapped_size_, loss_mask_ + begin, loss_mask_ + begin + n);
  if (bad != 0) {
    return absl::DataLossError(fmt::format("shard {}: row {} has loss-mask values other than 0/1", path_, row));
  }
  if (doc_starts_in_row != nullptr) {
    doc_starts_in_row->clear();
    const uint64_t* first = std::lower_bound(doc_starts_, doc_starts_ + header_.num_documents, begin);
    for (const uint64_t* p = first; p < doc_starts_ + header_.num_documents && *p < begin + n; ++p) {
      doc_starts_in_row->push_back(*p - begin);
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Manifest

uint64_t ShardManifest::TotalRows() const {
  uint64_t n = 0;
  for (const auto& s : shards) n += s.rows;
  return n;
}
uint64_t ShardManifest::TotalTokens() const {
  uint64_t n = 0;
  for (const auto& s : shards) n += s.tokens;
  return n;
}
uint64_t ShardManifest::TotalDocuments() const {
  uint64_t n = 0;
  for (const auto& s : shards) n += s.documents;
  return n;
}
uint64_t ShardManifest::TotalLossTokens() const {
  uint64_t n = 0;
  for (const auto& s : shards) n += s.loss_tokens;
  return n;
}

absl::StatusOr<ShardManifest> ShardManifest::Load(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kShardManifestName).string();
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(fmt::format(
        "{}: not found; is {} a dataset directory written by `rwr data build`?", path, dir));
  }
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(fmt::format("{}: not valid JSON", path));
  }
  try {
    if (j.value("format", "") != "rwr-shards") {
      return absl::DataLossError(fmt::format("{}: 'format' is not \"rwr-shards\"", path));
    }
    ShardManifest m;
    m.vocab_size = j.at("vocab_size").get<uint64_t>();
    m.seq_len = j.at("seq_len").get<uint64_t>();
    const std::string layout = j.at("row_layout").get<std::string>();
    if (layout == "packed") m.row_layout = RowLayout::kPacked;
    else if (layout == "one_per_row") m.row_layout = RowLayout::kOnePerRow;
    else return absl::DataLossError(fmt::format("{}: unknown row_layout '{}'", path, layout));
    m.eos_id = j.value("eos_id", int64_t{-1});
    m.pad_id = j.value("pad_id", int64_t{0});
    for (const auto& s : j.at("shards")) {
      ShardManifestEntry e;
      e.file = s.at("file").get<std::string>();
      e.rows = s.at("rows").get<uint64_t>();
      e.documents = s.at("documents").get<uint64_t>();
      e.tokens = s.at("tokens").get<uint64_t>();
      e.loss_tokens = s.at("loss_tokens").get<uint64_t>();
      e.payload_sha256 = s.value("payload_sha256", "");
      m.shards.push_back(std::move(e));
    }
    if (j.contains("build")) m.extra_json = j["build"].dump();
    return m;
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(fmt::format("{}: {}", path, e.what()));
  }
}

absl::Status ShardManifest::Save(const std::string& dir) const {
  nlohmann::json j;
  j["format"] = "rwr-shards";
  j["version"] = 1;
  j["vocab_size"] = vocab_size;
  j["seq_len"] = seq_len;
  j["row_layout"] = row_layout == RowLayout::kPacked ? "packed" : "one_per_row";
  j["eos_id"] = eos_id;
  j["pad_id"] = pad_id;
  j["totals"] = {{"rows", TotalRows()},
                 {"documents", TotalDocuments()},
                 {"tokens", TotalTokens()},
                 {"loss_tokens", TotalLossTokens()}};
  nlohmann::json list = nlohmann::json::array();
  for (const auto& s : shards) {
    list.push_back({{"file", s.file},
                    {"rows", s.rows},
                    {"documents", s.documents},
                    {"tokens", s.tokens},
                    {"loss_tokens", s.loss_tokens},
                    {"payload_sha256", s.payload_sha256}});
  }
  j["shards"] = list;
  nlohmann::json extra = nlohmann::json::parse(extra_json, nullptr, false);
  j["build"] = extra.is_discarded() ? nlohmann::json::object() : extra;
  const std::string path = (std::filesystem::path(dir) / kShardManifestName).string();
  return WriteFileAtomically(path, j.dump(2) + "\n");
}

}  // namespace rwr::storage
