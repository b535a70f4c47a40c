// Token shard file format (docs/formats.md is the reader's guide): what `rwr data build` writes
// and the trainer's loader mmaps. One shard file holds rows (training sequences); each row holds
// one or more whole documents (samples) packed back to back, with the token at which each document
// starts recorded so the model resets its scan and conv state there.
//
// Layout, little-endian, every section starting at a 64-byte aligned offset:
//
//   ShardHeader (192 bytes)
//   row_offsets   uint64 [num_rows + 1]   token index where row r starts; last = num_tokens
//   doc_starts    uint64 [num_documents]  token index where each document starts (ascending;
//                                         every row's first token starts a document)
//   tokens        uint16|uint32 [num_tokens]   (uint16 when vocab_size <= 65536)
//   loss_mask     uint8 [num_tokens]       1 where the token is a training target with loss
//
// payload_sha256 covers every byte after the header (padding included); header_check is the
// first 8 bytes of the SHA-256 of the header with header_check zeroed. A reader checks the magic,
// version, header_check, that the section sizes add up to the file size and (unless told not to)
// the payload checksum; any mismatch is a DataLoss error naming the file.
#pragma once

#include <cstdint>
#include <string_view>

namespace rwr::storage {

inline constexpr char kShardMagic[8] = {'R', 'W', 'R', 'S', 'H', 'R', 'D', '1'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint64_t kShardAlignment = 64;
inline constexpr std::string_view kShardExtension = ".rws";
// Written last by `rwr data build`; a dataset directory without it is incomplete.
inline constexpr std::string_view kShardManifestName = "manifest.json";

enum class TokenDtype : uint32_t { kUint16 = 2, kUint32 = 4 };  // value = bytes per token

inline TokenDtype TokenDtypeForVocab(uint64_t vocab_size) {
  return vocab_size <= 65536 ? TokenDtype::kUint16 : TokenDtype::kUint32;
}

// How rows were formed; recorded so the loader and `rwr data inspect` can say what they hold.
enum class RowLayout : uint32_t {
  kPacked = 1,     // several documents per row, each row at most seq_len + 1 tokens
  kOnePerRow = 2,  // one document per row, any length (long samples kept whole)
};

#pragma pack(push, 1)
struct ShardHeader {
  char magic[8];             // kShardMagic
  uint32_t version;          // kShardVersion
  uint32_t header_size;      // sizeof(ShardHeader) = 192
  uint32_t token_dtype;      // TokenDtype
  uint32_t row_layout;       // RowLayout
  uint64_t vocab_size;       // every token id < vocab_size
  uint64_t seq_len;          // training positions per row the data was built for (T)
  uint64_t num_rows;
  uint64_t num_documents;
  uint64_t num_tokens;
  uint64_t num_loss_tokens;  // tokens with loss_mask == 1
  uint64_t row_offsets_offset;  // byte offsets of the sections from the start of the file
  uint64_t doc_starts_offset;
  uint64_t tokens_offset;
  uint64_t loss_mask_offset;
  uint64_t file_size;
  uint8_t payload_sha256[32];
  uint8_t reserved[40];      // zero
  uint64_t header_check;
};
#pragma pack(pop)
static_assert(sizeof(ShardHeader) == 192, "ShardHeader must stay 192 bytes");

inline constexpr uint64_t AlignUp(uint64_t n, uint64_t alignment = kShardAlignment) {
  return (n + alignment - 1) / alignment * alignment;
}

}  // namespace rwr::storage
