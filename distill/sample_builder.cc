// RwR sample recipe: items → mix → tokenized samples with loss masks (see distill/sample_builder.h).
#include "distill/sample_builder.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>

#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace rwr::distill {
namespace {

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Stable 64-bit hash of (seed, salt, text): FNV-1a then a finalizer.
uint64_t StableHash(uint64_t seed, uint64_t salt, std::string_view text) {
  uint64_t h = 0xCBF29CE484222325ULL ^ Mix64(seed + 0x9E3779B97F4A7C15ULL * (salt + 1));
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001B3ULL;
  }
  return Mix64(h);
}

}  // namespace

std::string_view SampleKindName(SampleKind kind) {
  switch (kind) {
    case SampleKind::kNote: return "note";
    case SampleKind::kEmpty: return "empty";
    case SampleKind::kPlain: return "plain";
  }
  return "?";
}

// Why a line is not JSON, in nlohmann's words ("invalid string: ill-formed UTF-8 byte"), without
// its "[json.exception…] parse error at line 1, column N: " prefix and its "; last read: '…'"
// suffix, which quotes the token read so far: a whole context, and raw invalid bytes.
std::string ParseErrorReason(const nlohmann::json::parse_error& e) {
  std::string_view reason = e.what();
  if (size_t colon = reason.find(": "); colon != std::string_view::npos) {
    reason.remove_prefix(colon + 2);
  }
  if (size_t last = reason.find("; last read:"); last != std::string_view::npos) {
    reason = reason.substr(0, last);
  }
  return std::string(reason);
}

absl::StatusOr<RecipeItem> ParseRecipeLine(std::string_view line, std::string_view where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    return absl::InvalidArgumentError(fmt::format("{}: not valid JSON at byte {} of the line ({})",
                                                  where, e.byte, ParseErrorReason(e)));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(fmt::format("{}: not a JSON object", where));
  RecipeItem item;
  for (auto [key, field] : {std::pair{"id", &item.id}, std::pair{"context", &item.context},
                            std::pair{"question", &item.question}, std::pair{"answer", &item.answer}}) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(
          fmt::format("{}: '{}' missing or not a non-empty string", where, key));
    }
    *field = it->get<std::string>();
  }
  if (auto it = j.find("note"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) return absl::InvalidArgumentError(fmt::format("{}: 'note' is not a string", where));
    item.note = it->get<std::string>();
  }
  if (auto it = j.find("note_verified"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return absl::InvalidArgumentError(fmt::format("{}: 'note_verified' is not true/false", where));
    }
    item.note_verified = it->get<bool>();
    if (item.note_verified && item.note.empty()) {
      return absl::InvalidArgumentError(fmt::format("{}: 'note_verified' is true but 'note' is empty", where));
    }
  }
  if (auto it = j.find("negative_context"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) {
      return absl::InvalidArgumentError(fmt::format("{}: 'negative_context' is not a string", where));
    }
    item.negative_context = it->get<std::string>();
  }
  return item;
}

absl::Status JsonlRecipeSource::ForEach(const std::function<absl::Status(const RecipeItem&)>& visit) {
  return ForEachWithPosition([&](const RecipeItem& item, const Position&) { return visit(item); });
}

absl::Status JsonlRecipeSource::ForEachWithPosition(
    const std::function<absl::Status(const RecipeItem&, const Position&)>& visit) {
  std::ifstream in(path_, std::ios::binary);
  if (!in) return absl::NotFoundError(fmt::format("{}: cannot read the dataset file", path_));
  std::string line;
  int64_t number = 0;
  int64_t offset = 0;
  while (std::getline(in, line)) {
    ++number;
    const int64_t line_offset = offset;
    offset += static_cast<int64_t>(line.size()) + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    RWR_ASSIGN_OR_RETURN(RecipeItem item, ParseRecipeLine(line, fmt::format("{}:{}", path_, number)));
    RWR_RETURN_IF_ERROR(visit(item, Position{.line = number, .offset = line_offset}));
  }
  return absl::OkStatus();
}

absl::StatusOr<RecipeItem> JsonlRecipeSource::ReadAt(int64_t offset) {
  if (random_access_ == nullptr) {
    random_access_ = std::make_unique<std::ifstream>(path_, std::ios::binary);
    if (!*random_access_) {
      return absl::NotFoundError(fmt::format("{}: cannot read the dataset file", path_));
    }
  }
  random_access_->clear();
  random_access_->seekg(offset);
  std::string line;
  if (!std::getline(*random_access_, line)) {
    return absl::DataLossError(fmt::format(
        "{}: no line at byte {}; the file changed while the build was reading it", path_, offset));
  }
  return ParseRecipeLine(line, fmt::format("{}@{}", path_, offset));
}

absl::StatusOr<std::vector<PlannedSample>> PlanMix(const std::vector<RecipeItem>& items,
                                                   const MixRatios& ratios, uint64_t seed,
                                                   MixCounts* counts) {
  const double r[3] = {ratios.note, ratios.empty, ratios.plain};
  if (r[0] < 0 || r[1] < 0 || r[2] < 0 || !std::isfinite(r[0] + r[1] + r[2])) {
    return absl::InvalidArgumentError("recipe ratios must be >= 0");
  }
  const double sum = r[0] + r[1] + r[2];
  if (sum <= 0) return absl::InvalidArgumentError("recipe ratios are all zero; nothing to build");
  std::vector<size_t> candidates[3];
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].note_verified) candidates[0].push_back(i);
    if (items[i].negative_context.has_value()) candidates[1].push_back(i);
    candidates[2].push_back(i);
  }
  double total = std::numeric_limits<double>::infinity();
  for (int k = 0; k < 3; ++k) {
    if (r[k] > 0) total = std::min(total, static_cast<double>(candidates[k].size()) / (r[k] / sum));
  }
  MixCounts local;
  std::vector<std::pair<uint64_t, PlannedSample>> mix;
  for (int k = 0; k < 3; ++k) {
    local.available[k] = static_cast<int64_t>(candidates[k].size());
    if (r[k] <= 0) continue;
    const size_t n = std::min(candidates[k].size(),
                              static_cast<size_t>(std::floor(total * (r[k] / sum) + 1e-9)));
    std::vector<std::pair<uint64_t, size_t>> ranked;
    ranked.reserve(candidates[k].size());
    for (size_t i : candidates[k]) ranked.emplace_back(StableHash(seed, k, items[i].id), i);
    std::sort(ranked.begin(), ranked.end());
    for (size_t j = 0; j < n; ++j) {
      const size_t i = ranked[j].second;
      mix.push_back({StableHash(seed, 3 + k, items[i].id), {static_cast<SampleKind>(k), i}});
    }
    local.chosen[k] = static_cast<int64_t>(n);
  }
  std::sort(mix.begin(), mix.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : a.second.item < b.second.item;
  });
  std::vector<PlannedSample> plan;
  plan.reserve(mix.size());
  for (const auto& entry : mix) plan.push_back(entry.second);
  if (counts != nullptr) *counts = local;
  return plan;
}

absl::StatusOr<LongSamplePolicy> ParseLongSamplePolicy(std::string_view name) {
  if (name == "truncate") return LongSamplePolicy::kTruncate;
  if (name == "drop") return LongSamplePolicy::kDrop;
  if (name == "keep") return LongSamplePolicy::kKeep;
  return absl::InvalidArgumentError(
      fmt::format("long-sample policy '{}': expected truncate, drop or keep", name));
}

SampleEncoder::SampleEncoder(EncodeFn encode, int32_t eos_id, SampleTemplate sample_template,
                             LongSamplePolicy policy, int64_t max_tokens)
    : encode_(std::move(encode)),
      eos_id_(eos_id),
      template_(std::move(sample_template)),
      policy_(policy),
      max_tokens_(max_tokens) {}

std::optional<EncodedSample> SampleEncoder::Encode(const RecipeItem& item, SampleKind kind) {
  SampleFields fields;
  fields.context = kind == SampleKind::kEmpty ? std::string_view(*item.negative_context)
                                              : std::string_view(item.context);
  fields.question = item.question;
  fields.note = kind == SampleKind::kNote ? std::string_view(item.note)
                                          : std::string_view(template_.empty_note);
  fields.answer = item.answer;
  const std::vector<RenderedPiece> pieces = template_.Render(fields, kind != SampleKind::kPlain);

  EncodedSample sample;
  int64_t context_begin = -1, context_end = -1;
  for (const RenderedPiece& piece : pieces) {
    scratch_.clear();
    if (piece.is_eos) {
      scratch_.push_back(eos_id_);
    } else {
      encode_(piece.text, &scratch_);
    }
    if (piece.is_context) context_begin = static_cast<int64_t>(sample.tokens.size());
    sample.tokens.insert(sample.tokens.end(), scratch_.begin(), scratch_.end());
    sample.loss_mask.insert(sample.loss_mask.end(), scratch_.size(), piece.loss ? 1 : 0);
    if (piece.is_context) context_end = static_cast<int64_t>(sample.tokens.size());
  }
  const int64_t total = static_cast<int64_t>(sample.tokens.size());
  if (total <= max_tokens_ || policy_ == LongSamplePolicy::kKeep) return sample;
  if (policy_ == LongSamplePolicy::kDrop) return std::nullopt;
  const int64_t excess = total - max_tokens_;
  if (context_begin < 0 || excess > context_end - context_begin) return std::nullopt;
  sample.tokens.erase(sample.tokens.begin() + context_begin,
                      sample.tokens.begin() + context_begin + excess);
  sample.loss_mask.erase(sample.loss_mask.begin() + context_begin,
                         sample.loss_mask.begin() + context_begin + excess);
  sample.truncated = true;
  return sample;
}

}  // namespace rwr::distill
