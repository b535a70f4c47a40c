// The RwR sample recipe (RWR_METHOD.md): from items with the teacher's verified notes and `empty`
// negatives to tokenized training samples with a loss mask.
//
//   D_f    (c,   q, note = s)       items whose note passed verification
//   D_e    (c_r, q, note = empty)   items whose answer evidence the teacher removed
//   plain  (c,   q, no note)        any item, the stand-in for the original instruction data
//
// Mixing (PlanMix): the three kinds are taken at the configured ratios. With a_k items available
// for kind k and ratio r_k (normalised to sum 1), the mix has N = min_k a_k / r_k samples over the
// kinds with r_k > 0, n_k = floor(N · r_k) of kind k, so the scarcest kind is used in full and the
// ratios hold exactly. Which items fill a kind is decided by a hash of (seed, kind, item id), so it
// is stable when items are added or reordered; the output order is a seeded shuffle of the mix.
//
// Long samples (LongSamplePolicy), for a rendered sample of more than max_tokens = seq_len + 1
// tokens:
//   truncate  drop context tokens from the START of the context (the end, next to the question,
//             stays) until the sample fits. Evidence in the dropped part is lost, so a D_f note
//             may no longer be supported; the count is reported.
//   drop      leave the sample out (counted).
//   keep      keep it whole, in a row of its own (needs the one_per_row layout), for chunked
//             long-sample training.
//
// The builder takes an abstract RecipeSource (so it is tested without RocksDB) and an encode
// function (so it is tested without a tokenizer); `rwr data build` passes the JSONL dataset, the
// note cache (RWR_SERVICES builds) and the byte-level BPE tokenizer.
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "distill/template.h"

namespace rwr::distill {

struct RecipeItem {
  std::string id;
  std::string context, question, answer;
  bool note_verified = false;  // note passed verification: a D_f candidate
  std::string note;
  std::optional<std::string> negative_context;  // c_r: a D_e candidate
};

// Where items come from: the dataset alone, the dataset joined with the cache, or the cache alone.
class RecipeSource {
 public:
  virtual ~RecipeSource() = default;
  virtual absl::Status ForEach(const std::function<absl::Status(const RecipeItem&)>& visit) = 0;
};

// JSONL with id, context, question, answer (required strings) and optionally note (string),
// note_verified (bool) and negative_context (string). Errors name FILE:LINE.
class JsonlRecipeSource final : public RecipeSource {
 public:
  explicit JsonlRecipeSource(std::string path) : path_(std::move(path)) {}
  absl::Status ForEach(const std::function<absl::Status(const RecipeItem&)>& visit) override;
  // Same, with where each item is: its line (from 1, for messages) and byte offset (for reading
  // the item again later with ReadAt, so a build can keep only an index of the items in memory,
  // not their text).
  struct Position {
    int64_t line = 0;
    int64_t offset = 0;
  };
  absl::Status ForEachWithPosition(
      const std::function<absl::Status(const RecipeItem&, const Position&)>& visit);
  absl::StatusOr<RecipeItem> ReadAt(int64_t offset);

 private:
  std::unique_ptr<std::ifstream> random_access_;
  std::string path_;
};

// Parses one JSONL line; `where` ("FILE:LINE") prefixes errors.
absl::StatusOr<RecipeItem> ParseRecipeLine(std::string_view line, std::string_view where);

enum class SampleKind { kNote = 0, kEmpty = 1, kPlain = 2 };
std::string_view SampleKindName(SampleKind kind);  // "note" | "empty" | "plain"

struct MixRatios {
  double note = 0.6, empty = 0.2, plain = 0.2;
};

struct PlannedSample {
  SampleKind kind;
  size_t item;  // index into the items vector
};

struct MixCounts {
  int64_t available[3] = {0, 0, 0};  // by SampleKind
  int64_t chosen[3] = {0, 0, 0};
};

// Errors: negative ratios, all ratios zero.
absl::StatusOr<std::vector<PlannedSample>> PlanMix(const std::vector<RecipeItem>& items,
                                                   const MixRatios& ratios, uint64_t seed,
                                                   MixCounts* counts);

enum class LongSamplePolicy { kTruncate, kDrop, kKeep };
absl::StatusOr<LongSamplePolicy> ParseLongSamplePolicy(std::string_view name);

// Appends the ids of a text to `out` (the tokenizer's EncodeInto).
using EncodeFn = std::function<void(std::string_view text, std::vector<int32_t>* out)>;

struct EncodedSample {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> loss_mask;  // 1 on the tokens of the loss parts (note + answer + eos)
  bool truncated = false;
};

class SampleEncoder {
 public:
  // max_tokens: seq_len + 1; eos_id: appended for {eos}.
  SampleEncoder(EncodeFn encode, int32_t eos_id, SampleTemplate sample_template,
                LongSamplePolicy policy, int64_t max_tokens);

  // nullopt when the policy drops the sample (too long, or truncation cannot make it fit).
  std::optional<EncodedSample> Encode(const RecipeItem& item, SampleKind kind);
  const SampleTemplate& sample_template() const { return template_; }

 private:
  EncodeFn encode_;
  int32_t eos_id_;
  SampleTemplate template_;
  LongSamplePolicy policy_;
  int64_t max_tokens_;
  std::vector<int32_t> scratch_;
};

}  // namespace rwr::distill
