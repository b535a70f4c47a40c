// Byte-level BPE tokenizer: tokenizer.json loading, added-token matching, normalization, GPT-2
// pre-tokenization, BPE merges with a per-object word cache, and decoding. The order of steps is
// Hugging Face `tokenizers`' (Tokenizer::encode_single_sequence):
//   1. split the raw text on added tokens with normalized=false (leftmost-longest),
//   2. normalize each remaining piece, split it on added tokens with normalized=true,
//   3. ByteLevel pre-tokenizer on each remaining piece (prefix space, GPT-2 split),
//   4. BPE on the bytes of each word.
#include "distill/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "distill/tokenizer_split.h"
#include "distill/unicode.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace rwr::distill {
namespace {

using json = nlohmann::json;

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 bytes get the code
// points 256, 257, ... in byte order.
struct ByteLevelAlphabet {
  std::array<int32_t, 256> byte_to_code_point{};
  std::array<int16_t, 324> code_point_to_byte{};  // -1 where no byte maps there

  ByteLevelAlphabet() {
    code_point_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      byte_to_code_point[b] = printable ? b : 256 + extra++;
      code_point_to_byte[byte_to_code_point[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteLevelAlphabet& Alphabet() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

// The bytes a byte-level token string stands for ("Ġthe" → " the"); nullopt when a character
// is outside the 256-symbol alphabet.
std::optional<std::string> ByteLevelToBytes(std::string_view token) {
  std::string bytes;
  const auto* p = reinterpret_cast<const unsigned char*>(token.data());
  const auto* end = p + token.size();
  while (p < end) {
    const unicode::Utf8Char c = unicode::DecodeUtf8(p, end);
    if (c.code_point < 0 || c.code_point >= 324) return std::nullopt;
    const int16_t b = Alphabet().code_point_to_byte[c.code_point];
    if (b < 0) return std::nullopt;
    bytes.push_back(static_cast<char>(b));
    p += c.size;
  }
  return bytes;
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Merge {
  int32_t rank;
  int32_t id;  // id of the merged token
};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool normalized = true;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
};

// Leftmost-longest matcher over added-token contents (HF: Aho-Corasick, MatchKind::LeftmostLongest;
// for a pattern set this small a byte trie walked from each candidate start is as fast).
class TokenTrie {
 public:
  TokenTrie() { nodes_.emplace_back(); }
  bool empty() const { return nodes_.size() == 1; }

  void Add(std::string_view pattern, int32_t token_index) {
    if (pattern.empty()) return;
    int32_t node = 0;
    for (unsigned char b : pattern) {
      int32_t child = Child(node, b);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(b, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[node].token < 0) nodes_[node].token = token_index;  // first pattern wins
    const unsigned char first = static_cast<unsigned char>(pattern[0]);
    if (!first_byte_[first]) ++distinct_first_bytes_;
    first_byte_[first] = true;
    only_first_byte_ = distinct_first_bytes_ == 1 ? first : -1;
  }

  bool MayStartAt(unsigned char b) const { return first_byte_[b]; }

  // First position >= pos where a pattern may start (text.size() when none).
  size_t NextCandidate(std::string_view text, size_t pos) const {
    if (only_first_byte_ >= 0) {  // the usual case: every special token starts with '<'
      const void* hit = std::memchr(text.data() + pos, only_first_byte_, text.size() - pos);
      return hit ? static_cast<const char*>(hit) - text.data() : text.size();
    }
    while (pos < text.size() && !first_byte_[static_cast<unsigned char>(text[pos])]) ++pos;
    return pos;
  }

  // Index of the longest pattern starting at text[pos] (and its length), or -1.
  int32_t LongestAt(std::string_view text, size_t pos, size_t* length) const {
    int32_t node = 0;
    int32_t found = -1;
    for (size_t i = pos; i < text.size(); ++i) {
      node = Child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        found = nodes_[node].token;
        *length = i + 1 - pos;
      }
    }
    return found;
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;
  };
  int32_t Child(int32_t node, unsigned char b) const {
    for (const auto& [byte, child] : nodes_[node].children) {
      if (byte == b) return child;
    }
    return -1;
  }
  std::vector<Node> nodes_;
  std::array<bool, 256> first_byte_{};
  int distinct_first_bytes_ = 0;
  int only_first_byte_ = -1;
};

enum class DecoderKind { kByteLevel, kNone };

}  // namespace

struct TokenizerModel {
  std::string origin;

  // BPE model.
  absl::flat_hash_map<std::string, int32_t> vocab;        // token string as in the file → id
  absl::flat_hash_map<std::string, int32_t> byte_vocab;   // the bytes a token stands for → id
  std::array<int32_t, 256> byte_ids{};                    // single-byte tokens, -1 where absent
  absl::flat_hash_map<uint64_t, Merge> merges;            // PairKey(left, right) → merge
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool ignore_merges = false;

  // Added tokens; tries index into `added`.
  std::vector<AddedToken> added;
  TokenTrie raw_trie;         // normalized == false, matched on the raw text
  TokenTrie normalized_trie;  // normalized == true, matched after normalization

  std::vector<unicode::NormalizationForm> normalizers;
  bool add_prefix_space = false;
  bool use_regex = true;
  DecoderKind decoder = DecoderKind::kByteLevel;

  // Per id: the token string as in the file and the bytes the decoder turns it into.
  int32_t vocab_size = 0;
  std::vector<std::string> id_to_token;
  std::vector<uint8_t> id_flags;  // kHasToken | kSpecial
  std::string decoded;            // concatenated decoder bytes
  std::vector<uint32_t> decoded_offsets;  // vocab_size + 1
  std::optional<int32_t> eos_id;

  static constexpr uint8_t kHasToken = 1;
  static constexpr uint8_t kSpecial = 2;
};

// Per-object cache word bytes → ids (open addressing; cleared wholesale when full) and the scratch
// buffers of Encode, so that steady-state encoding allocates nothing. A slot holds its word's ids
// (up to 4) and, for words of up to 8 bytes, the word itself, so a hit costs one cache line.
class WordCache {
 public:
  static constexpr size_t kMaxWordBytes = 255;

  WordCache() { slots_.resize(kSlots); }

  struct Key {
    uint64_t bits;
    size_t slot;
  };
  static Key KeyOf(std::string_view word) {
    uint64_t bits = 0;
    if (word.size() <= 8) {
      for (size_t i = 0; i < word.size(); ++i) {
        bits |= uint64_t{static_cast<unsigned char>(word[i])} << (8 * i);
      }
    } else {
      bits = XXH3_64bits(word.data(), word.size());
    }
    const uint64_t mixed = (bits ^ (uint64_t{word.size()} << 58)) * 0x9E3779B97F4A7C15ull;
    return {bits, static_cast<size_t>(mixed >> (64 - kSlotBits))};
  }

  // Lookups miss the CPU caches for rare words; Encode prefetches the slots of a batch of words.
  void Prefetch(const Key& key) const { __builtin_prefetch(&slots_[key.slot]); }

  // Appends the cached ids of `word` (2..255 bytes, key KeyOf(word)) to `out`; false when absent.
  bool Find(std::string_view word, const Key& key, std::vector<int32_t>* out) {
    for (size_t i = key.slot;; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots_[i];
      if (s.size == 0) return false;
      if (s.key != key.bits || s.size != word.size()) continue;
      if (word.size() > 8 && std::memcmp(arena_.data() + s.offset, word.data(), word.size()) != 0) {
        continue;
      }
      if (s.count <= kInline) {
        out->insert(out->end(), s.ids, s.ids + s.count);
      } else {
        const size_t at = s.offset + (word.size() > 8 ? word.size() : 0);
        const size_t old = out->size();
        out->resize(old + s.count);
        std::memcpy(out->data() + old, arena_.data() + at, s.count * sizeof(int32_t));
      }
      return true;
    }
  }

  void Insert(std::string_view word, const Key& key, const int32_t* ids, size_t count) {
    if (word.size() < 2 || word.size() > kMaxWordBytes || count > 255) return;
    if (entries_ >= kSlots / 2 || arena_.size() > (size_t{64} << 20)) Clear();
    size_t i = key.slot;
    while (slots_[i].size != 0) i = (i + 1) & (kSlots - 1);
    Slot& s = slots_[i];
    s.key = key.bits;
    s.size = static_cast<uint8_t>(word.size());
    s.count = static_cast<uint8_t>(count);
    s.offset = static_cast<uint32_t>(arena_.size());
    if (word.size() > 8) arena_.insert(arena_.end(), word.begin(), word.end());
    if (count <= kInline) {
      std::copy(ids, ids + count, s.ids);
    } else {
      const char* bytes = reinterpret_cast<const char*>(ids);
      arena_.insert(arena_.end(), bytes, bytes + count * sizeof(int32_t));
    }
    ++entries_;
  }

  // Scratch for Encode.
  std::string normalized, normalized_step, prefixed;
  std::vector<int32_t> symbols, prev, next;
  struct QueuedMerge {
    int32_t rank, pos, id;
  };
  std::vector<QueuedMerge> queue;

 private:
  static constexpr size_t kSlots = size_t{1} << 16;
  static constexpr int kSlotBits = 16;
  static constexpr uint8_t kInline = 4;
  struct Slot {
    uint64_t key = 0;     // words of <= 8 bytes: the bytes themselves; longer: their XXH3 hash
    uint8_t size = 0;     // word bytes; 0 marks an empty slot
    uint8_t count = 0;    // ids
    uint32_t offset = 0;  // arena: the word's bytes (> 8 bytes), then its ids (> kInline ids)
    int32_t ids[kInline] = {};
  };
  void Clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    arena_.clear();
    entries_ = 0;
  }
  std::vector<Slot> slots_;
  std::vector<char> arena_;
  size_t entries_ = 0;
};

namespace {

// ---- loading -------------------------------------------------------------------------------

absl::Status Unsupported(const TokenizerModel& m, std::string_view what) {
  return absl::InvalidArgumentError(fmt::format("{}: {}", m.origin, what));
}

// A JSON "type" field ("" when absent or not a string).
std::string TypeOf(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

bool BoolField(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

absl::Status LoadNormalizer(const json& j, TokenizerModel* m) {
  if (j.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    auto it = j.find("normalizers");
    if (it == j.end() || !it->is_array()) return Unsupported(*m, "normalizer Sequence without a normalizers list");
    for (const json& inner : *it) RWR_RETURN_IF_ERROR(LoadNormalizer(inner, m));
    return absl::OkStatus();
  }
  if (type == "NFC") m->normalizers.push_back(unicode::NormalizationForm::kNfc);
  else if (type == "NFD") m->normalizers.push_back(unicode::NormalizationForm::kNfd);
  else if (type == "NFKC") m->normalizers.push_back(unicode::NormalizationForm::kNfkc);
  else if (type == "NFKD") m->normalizers.push_back(unicode::NormalizationForm::kNfkd);
  else {
    return Unsupported(*m, fmt::format("normalizer \"{}\" is not supported (supported: NFC, NFD, "
                                       "NFKC, NFKD, Sequence of those)", type));
  }
  return absl::OkStatus();
}

absl::Status LoadPreTokenizer(const json& j, TokenizerModel* m) {
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    auto it = j.find("pretokenizers");
    if (it != j.end() && it->is_array() && it->size() == 1) return LoadPreTokenizer((*it)[0], m);
  }
  if (type != "ByteLevel") {
    return Unsupported(*m, fmt::format("pre_tokenizer \"{}\" is not supported; expected ByteLevel "
                                       "(GPT-2 / GPT-NeoX byte-level BPE)",
                                       j.is_null() ? "null" : type));
  }
  m->add_prefix_space = BoolField(j, "add_prefix_space", false);
  m->use_regex = BoolField(j, "use_regex", true);
  return absl::OkStatus();
}

absl::Status LoadModel(const json& j, TokenizerModel* m) {
  if (TypeOf(j) != "BPE") {
    return Unsupported(*m, fmt::format("model type \"{}\" is not supported; expected BPE",
                                       TypeOf(j)));
  }
  auto null_or_absent = [&](const char* key) {
    auto it = j.find(key);
    return it == j.end() || it->is_null();
  };
  if (!null_or_absent("dropout")) return Unsupported(*m, "model.dropout must be null (BPE dropout is random)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty())) {
      return Unsupported(*m, fmt::format("model.{} is not supported (byte-level BPE has none)", key));
    }
  }
  if (BoolField(j, "byte_fallback", false)) {
    return Unsupported(*m, "model.byte_fallback is not supported (not a byte-level BPE setting)");
  }
  m->fuse_unk = BoolField(j, "fuse_unk", false);
  m->ignore_merges = BoolField(j, "ignore_merges", false);

  auto vocab_it = j.find("vocab");
  if (vocab_it == j.end() || !vocab_it->is_object()) {
    return Unsupported(*m, "model.vocab missing; expected a BPE vocab object");
  }
  m->byte_ids.fill(-1);
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() >= (int64_t{1} << 30)) {
      return Unsupported(*m, fmt::format("model.vocab[\"{}\"] is not a valid id", it.key()));
    }
    const int32_t id = it.value().get<int32_t>();
    m->vocab.emplace(it.key(), id);
    m->vocab_size = std::max(m->vocab_size, id + 1);
    if (std::optional<std::string> bytes = ByteLevelToBytes(it.key())) {
      if (bytes->size() == 1) m->byte_ids[static_cast<unsigned char>((*bytes)[0])] = id;
      m->byte_vocab.emplace(std::move(*bytes), id);
    }
  }

  auto merges_it = j.find("merges");
  if (merges_it == j.end() || !merges_it->is_array()) {
    return Unsupported(*m, "model.merges missing; expected a BPE model");
  }
  m->merges.reserve(merges_it->size());
  int32_t rank = 0;
  for (const json& merge : *merges_it) {
    std::string left, right;
    if (merge.is_string()) {  // "a b"
      const std::string& s = merge.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Unsupported(*m, fmt::format("model.merges[{}] \"{}\" is not two tokens", rank, s));
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {  // ["a", "b"]
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return Unsupported(*m, fmt::format("model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]",
                                         rank));
    }
    auto l = m->vocab.find(left), r = m->vocab.find(right), lr = m->vocab.find(left + right);
    if (l == m->vocab.end() || r == m->vocab.end() || lr == m->vocab.end()) {
      return Unsupported(*m, fmt::format("model.merges[{}] (\"{}\", \"{}\") uses a token missing "
                                         "from model.vocab", rank, left, right));
    }
    m->merges[PairKey(l->second, r->second)] = Merge{rank, lr->second};  // a later duplicate wins, as in HF
    ++rank;
  }

  auto unk_it = j.find("unk_token");
  if (unk_it != j.end() && unk_it->is_string()) {
    auto id = m->vocab.find(unk_it->get<std::string>());
    if (id == m->vocab.end()) return Unsupported(*m, "model.unk_token is not in model.vocab");
    m->unk_id = id->second;
  }
  return absl::OkStatus();
}

absl::Status LoadAddedTokens(const json& j, TokenizerModel* m) {
  if (j.is_null()) return absl::OkStatus();
  if (!j.is_array()) return Unsupported(*m, "added_tokens is not a list");
  const int32_t model_tokens = static_cast<int32_t>(m->vocab.size());
  absl::flat_hash_map<std::string, int32_t> added_ids;
  int32_t max_added = -1;
  for (const json& t : j) {
    AddedToken token;
    auto content = t.find("content");
    auto id = t.find("id");
    if (content == t.end() || !content->is_string() || id == t.end() || !id->is_number_integer()) {
      return Unsupported(*m, "added_tokens entry without content and id");
    }
    token.content = content->get<std::string>();
    token.id = id->get<int32_t>();
    token.special = BoolField(t, "special", false);
    token.normalized = BoolField(t, "normalized", !token.special);
    token.single_word = BoolField(t, "single_word", false);
    token.lstrip = BoolField(t, "lstrip", false);
    token.rstrip = BoolField(t, "rstrip", false);
    if (token.content.empty()) continue;  // HF ignores empty added tokens
    // The id HF assigns when it re-adds the token on load; refuse files where it differs.
    int32_t expected;
    if (auto a = added_ids.find(token.content); a != added_ids.end()) {
      expected = a->second;
    } else if (auto v = m->vocab.find(token.content); v != m->vocab.end()) {
      expected = v->second;
    } else {
      expected = (max_added >= model_tokens || model_tokens == 0) ? max_added + 1 : model_tokens;
    }
    if (expected != token.id) {
      return Unsupported(*m, fmt::format("added token \"{}\" has id {} but Hugging Face tokenizers "
                                         "would give it id {}; ids of added tokens must follow the "
                                         "model vocab", token.content, token.id, expected));
    }
    if (added_ids.contains(token.content)) continue;
    added_ids.emplace(token.content, token.id);
    max_added = std::max(max_added, token.id);
    m->added.push_back(std::move(token));
  }
  return absl::OkStatus();
}

void NormalizeWith(const TokenizerModel& m, std::string_view text, WordCache* scratch,
                   std::string_view* out) {
  if (m.normalizers.empty()) {
    *out = text;
    return;
  }
  std::string_view current = text;
  for (unicode::NormalizationForm form : m.normalizers) {
    unicode::Normalize(form, current, &scratch->normalized_step);
    std::swap(scratch->normalized, scratch->normalized_step);
    current = scratch->normalized;
  }
  *out = current;
}

absl::Status Finish(TokenizerModel* m) {
  for (size_t i = 0; i < m->added.size(); ++i) {
    m->vocab_size = std::max(m->vocab_size, m->added[i].id + 1);
  }
  m->id_to_token.assign(m->vocab_size, std::string());
  m->id_flags.assign(m->vocab_size, 0);
  for (const auto& [token, id] : m->vocab) {
    if (m->id_flags[id] & TokenizerModel::kHasToken) {
      return Unsupported(*m, fmt::format("model.vocab gives id {} to two tokens", id));
    }
    m->id_to_token[id] = token;
    m->id_flags[id] = TokenizerModel::kHasToken;
  }
  // Added tokens: matched in the raw or the normalized text; their content decodes for their id.
  WordCache scratch;
  for (size_t i = 0; i < m->added.size(); ++i) {
    const AddedToken& t = m->added[i];
    m->id_flags[t.id] = TokenizerModel::kHasToken | (t.special ? TokenizerModel::kSpecial : 0);
    if (t.normalized) {
      // HF matches the normalized content, and its id_to_token and decode give that form too
      // ("ﬁre" under NFKC is "fire"); token_to_id still takes the content as written.
      std::string_view normalized;
      NormalizeWith(*m, t.content, &scratch, &normalized);
      m->normalized_trie.Add(normalized, static_cast<int32_t>(i));
      m->id_to_token[t.id] = std::string(normalized);
    } else {
      m->raw_trie.Add(t.content, static_cast<int32_t>(i));
      m->id_to_token[t.id] = t.content;
    }
  }
  // What HF's decoder makes of each token.
  m->decoded_offsets.assign(m->vocab_size + 1, 0);
  for (int32_t id = 0; id < m->vocab_size; ++id) {
    m->decoded_offsets[id] = static_cast<uint32_t>(m->decoded.size());
    const std::string& token = m->id_to_token[id];
    if (m->decoder == DecoderKind::kByteLevel) {
      // ByteLevel decoder: the byte each character stands for, or the token's own UTF-8 when a
      // character is outside the alphabet (HF's decode_chain).
      std::optional<std::string> bytes = ByteLevelToBytes(token);
      m->decoded += bytes ? *bytes : token;
    } else {
      m->decoded += token;
    }
  }
  m->decoded_offsets[m->vocab_size] = static_cast<uint32_t>(m->decoded.size());
  if (auto it = std::find_if(m->added.begin(), m->added.end(),
                             [](const AddedToken& t) { return t.content == "<|endoftext|>"; });
      it != m->added.end()) {
    m->eos_id = it->id;
  } else if (auto v = m->vocab.find("<|endoftext|>"); v != m->vocab.end()) {
    m->eos_id = v->second;
  }
  return absl::OkStatus();
}

// ---- encoding ------------------------------------------------------------------------------

// HF's AddedVocabulary::find_matches: split `text` on added tokens from `trie`, honouring
// single_word, lstrip and rstrip. on_text gets the pieces between tokens (once with "" for an empty
// text), on_token the ids.
template <typename OnText, typename OnToken>
void SplitOnAddedTokens(const TokenizerModel& m, const TokenTrie& trie, std::string_view text,
                        OnText&& on_text, OnToken&& on_token) {
  if (trie.empty() || text.empty()) {
    on_text(text);
    return;
  }
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const auto* bytes_end = bytes + text.size();
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    pos = trie.NextCandidate(text, pos);
    if (pos >= text.size()) break;
    size_t length = 0;
    const int32_t index = trie.LongestAt(text, pos, &length);
    if (index < 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + length;
    pos = stop;  // the search resumes after the match, whatever the flags do with it
    const AddedToken& token = m.added[index];
    if (token.single_word) {
      // A word character right before or after the match disqualifies it.
      bool word_before = false;
      if (start > 0) {
        size_t i = start - 1;
        while (i > 0 && (bytes[i] & 0xC0) == 0x80) --i;
        word_before = unicode::IsWordChar(unicode::DecodeUtf8(bytes + i, bytes_end).code_point);
      }
      const bool word_after =
          stop < text.size() &&
          unicode::IsWordChar(unicode::DecodeUtf8(bytes + stop, bytes_end).code_point);
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {  // absorb the whitespace before the token (not before start_offset)
      size_t new_start = start;
      while (new_start > start_offset) {
        size_t i = new_start - 1;
        while (i > 0 && (bytes[i] & 0xC0) == 0x80) --i;
        if (!unicode::IsWhitespace(unicode::DecodeUtf8(bytes + i, bytes_end).code_point)) break;
        new_start = i;
      }
      start = new_start;
    }
    if (token.rstrip) {  // absorb the whitespace after it
      while (stop < text.size()) {
        const unicode::Utf8Char c = unicode::DecodeUtf8(bytes + stop, bytes_end);
        if (!unicode::IsWhitespace(c.code_point)) break;
        stop += c.size;
      }
    }
    if (start_offset < start) on_text(text.substr(start_offset, start - start_offset));
    on_token(token.id);
    start_offset = stop;
  }
  if (start_offset < text.size()) on_text(text.substr(start_offset));
}

}  // namespace

// ---- Tokenizer -----------------------------------------------------------------------------

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(fmt::format("{}: cannot open tokenizer file", path));
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return FromJson(buffer.str(), path);
}

absl::StatusOr<Tokenizer> Tokenizer::FromJson(std::string_view json_text, std::string_view origin) {
  auto m = std::make_shared<TokenizerModel>();
  m->origin = std::string(origin);
  const json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Unsupported(*m, "not valid JSON; expected a Hugging Face tokenizer.json");
  }
  for (const char* key : {"truncation", "padding"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null()) {
      return Unsupported(*m, fmt::format("{} must be null (rwr does not truncate or pad in the "
                                         "tokenizer)", key));
    }
  }
  auto field = [&](const char* key) -> const json& {
    static const json null_json;
    auto it = j.find(key);
    return it == j.end() ? null_json : *it;
  };
  RWR_RETURN_IF_ERROR(LoadModel(field("model"), m.get()));
  RWR_RETURN_IF_ERROR(LoadNormalizer(field("normalizer"), m.get()));
  RWR_RETURN_IF_ERROR(LoadPreTokenizer(field("pre_tokenizer"), m.get()));
  const json& post = field("post_processor");
  if (!post.is_null() && TypeOf(post) != "ByteLevel") {
    return Unsupported(*m, fmt::format("post_processor \"{}\" is not supported (only null or "
                                       "ByteLevel, which add no tokens)", TypeOf(post)));
  }
  const json& decoder = field("decoder");
  if (decoder.is_null()) {
    m->decoder = DecoderKind::kNone;
  } else if (TypeOf(decoder) == "ByteLevel") {
    m->decoder = DecoderKind::kByteLevel;
  } else {
    return Unsupported(*m, fmt::format("decoder \"{}\" is not supported; expected ByteLevel",
                                       TypeOf(decoder)));
  }
  RWR_RETURN_IF_ERROR(LoadAddedTokens(field("added_tokens"), m.get()));
  RWR_RETURN_IF_ERROR(Finish(m.get()));
  return Tokenizer(std::move(m));
}

Tokenizer::Tokenizer(std::shared_ptr<const TokenizerModel> model)
    : model_(std::move(model)), cache_(std::make_unique<WordCache>()) {}
Tokenizer::Tokenizer(const Tokenizer& other)
    : model_(other.model_), cache_(std::make_unique<WordCache>()) {}
Tokenizer& Tokenizer::operator=(const Tokenizer& other) {
  if (this != &other) {
    model_ = other.model_;
    cache_ = std::make_unique<WordCache>();
  }
  return *this;
}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

// BPE on the bytes of one word: the lowest-ranked adjacent pair merges first, the leftmost among
// equals (HF's Word::merge_all, a priority queue with stale entries skipped).
void EncodeWord(const TokenizerModel& m, std::string_view word, const WordCache::Key& key,
                WordCache* cache, std::vector<int32_t>* out) {
  if (word.size() == 1) {
    const int32_t id = m.byte_ids[static_cast<unsigned char>(word[0])];
    if (id >= 0) {
      out->push_back(id);
    } else if (m.unk_id >= 0) {
      out->push_back(m.unk_id);
    }
    return;
  }
  const bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  if (cacheable && cache->Find(word, key, out)) return;

  std::vector<int32_t>& sym = cache->symbols;
  sym.clear();
  if (m.ignore_merges) {
    if (auto it = m.byte_vocab.find(absl::string_view(word.data(), word.size())); it != m.byte_vocab.end()) sym.push_back(it->second);
  }
  if (sym.empty()) {
    bool pending_unk = false;  // an unknown byte run not yet emitted (fuse_unk)
    for (unsigned char b : word) {
      const int32_t id = m.byte_ids[b];
      if (id >= 0) {
        if (pending_unk) sym.push_back(m.unk_id);
        pending_unk = false;
        sym.push_back(id);
      } else if (m.unk_id >= 0) {
        if (pending_unk && !m.fuse_unk) sym.push_back(m.unk_id);
        pending_unk = true;
      }
    }
    if (pending_unk) sym.push_back(m.unk_id);

    const int32_t n = static_cast<int32_t>(sym.size());
    if (n >= 2) {
      std::vector<int32_t>& prev = cache->prev;
      std::vector<int32_t>& next = cache->next;
      prev.resize(n);
      next.resize(n);
      auto& queue = cache->queue;
      queue.clear();
      // Min-heap on (rank, pos).
      auto later = [](const WordCache::QueuedMerge& a, const WordCache::QueuedMerge& b) {
        return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
      };
      for (int32_t i = 0; i < n; ++i) {
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
        if (i + 1 < n) {
          if (auto it = m.merges.find(PairKey(sym[i], sym[i + 1])); it != m.merges.end()) {
            queue.push_back({it->second.rank, i, it->second.id});
          }
        }
      }
      std::make_heap(queue.begin(), queue.end(), later);
      auto push = [&](int32_t pos) {
        const int32_t right = next[pos];
        if (auto it = m.merges.find(PairKey(sym[pos], sym[right])); it != m.merges.end()) {
          queue.push_back({it->second.rank, pos, it->second.id});
          std::push_heap(queue.begin(), queue.end(), later);
        }
      };
      while (!queue.empty()) {
        std::pop_heap(queue.begin(), queue.end(), later);
        const WordCache::QueuedMerge top = queue.back();
        queue.pop_back();
        if (sym[top.pos] < 0) continue;  // merged into its left neighbour
        const int32_t right = next[top.pos];
        if (right < 0) continue;
        auto it = m.merges.find(PairKey(sym[top.pos], sym[right]));
        if (it == m.merges.end() || it->second.id != top.id) continue;  // stale entry
        sym[top.pos] = top.id;
        sym[right] = -1;
        next[top.pos] = next[right];
        if (next[right] >= 0) prev[next[right]] = top.pos;
        if (prev[top.pos] >= 0) push(prev[top.pos]);
        if (next[top.pos] >= 0) push(top.pos);
      }
      sym.erase(std::remove(sym.begin(), sym.end(), -1), sym.end());
    }
  }
  out->insert(out->end(), sym.begin(), sym.end());
  if (cacheable) cache->Insert(word, key, sym.data(), sym.size());
}

// Step 3 and 4 on a piece with no added tokens in it.
void EncodePlain(const TokenizerModel& m, std::string_view text, WordCache* cache,
                 std::vector<int32_t>* out) {
  if (text.empty()) return;
  if (m.add_prefix_space && text[0] != ' ') {
    cache->prefixed.assign(1, ' ');
    cache->prefixed.append(text);
    text = cache->prefixed;
  }
  if (!m.use_regex) {
    EncodeWord(m, text, WordCache::KeyOf(text), cache, out);
    return;
  }
  // Words go through in batches: the cache slots of a batch are prefetched together, so their
  // memory latencies overlap instead of adding up.
  constexpr int kBatch = 16;
  std::string_view words[kBatch];
  WordCache::Key keys[kBatch];
  int n = 0;
  auto flush = [&] {
    for (int i = 0; i < n; ++i) EncodeWord(m, words[i], keys[i], cache, out);
    n = 0;
  };
  SplitGpt2(text, [&](std::string_view word) {
    words[n] = word;
    if (word.size() >= 2) {
      keys[n] = WordCache::KeyOf(word);
      cache->Prefetch(keys[n]);
    }
    if (++n == kBatch) flush();
  });
  flush();
}

}  // namespace

std::vector<int32_t> Tokenizer::Encode(std::string_view text) {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  EncodeInto(text, &ids);
  return ids;
}

void Tokenizer::EncodeInto(std::string_view text, std::vector<int32_t>* out) {
  const TokenizerModel& m = *model_;
  WordCache* cache = cache_.get();
  auto push_token = [out](int32_t id) { out->push_back(id); };
  SplitOnAddedTokens(m, m.raw_trie, text,
      [&](std::string_view piece) {
        std::string_view normalized;
        NormalizeWith(m, piece, cache, &normalized);
        SplitOnAddedTokens(m, m.normalized_trie, normalized,
            [&](std::string_view plain) { EncodePlain(m, plain, cache, out); }, push_token);
      },
      push_token);
}

std::string Tokenizer::DecodeBytes(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const TokenizerModel& m = *model_;
  std::string bytes;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= m.vocab_size) continue;
    const uint8_t flags = m.id_flags[id];
    if (!(flags & TokenizerModel::kHasToken)) continue;
    if (skip_special_tokens && (flags & TokenizerModel::kSpecial)) continue;
    if (m.decoder == DecoderKind::kNone && !first) bytes.push_back(' ');  // HF joins with " "
    first = false;
    bytes.append(m.decoded, m.decoded_offsets[id], m.decoded_offsets[id + 1] - m.decoded_offsets[id]);
  }
  return bytes;
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const std::string bytes = DecodeBytes(ids, skip_special_tokens);
  std::string text;
  text.reserve(bytes.size());
  unicode::AppendUtf8Lossy(bytes, &text);
  return text;
}

int32_t Tokenizer::vocab_size() const { return model_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const AddedToken& t : model_->added) {
    if (t.content == token) return t.id;
  }
  if (auto it = model_->vocab.find(absl::string_view(token.data(), token.size())); it != model_->vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= model_->vocab_size || !(model_->id_flags[id] & TokenizerModel::kHasToken)) {
    return std::nullopt;
  }
  return model_->id_to_token[id];
}

std::optional<int32_t> Tokenizer::eos_id() const { return model_->eos_id; }

std::string Tokenizer::Describe() const {
  const TokenizerModel& m = *model_;
  const auto specials = std::count_if(m.added.begin(), m.added.end(),
                                      [](const AddedToken& t) { return t.special; });
  std::string normalizer;
  for (unicode::NormalizationForm form : m.normalizers) {
    static constexpr const char* kNames[] = {"NFC", "NFD", "NFKC", "NFKD"};
    normalizer += (normalizer.empty() ? "" : "+") + std::string(kNames[static_cast<int>(form)]);
  }
  return fmt::format(
      "BPE, {} ids ({} model tokens, {} added of which {} special), {} merges{}; normalizer {}; "
      "ByteLevel pre-tokenizer (add_prefix_space {}, use_regex {}); decoder {}",
      m.vocab_size, m.vocab.size(), m.added.size(), specials, m.merges.size(),
      m.ignore_merges ? " (ignore_merges)" : "", normalizer.empty() ? "none" : normalizer,
      m.add_prefix_space, m.use_regex, m.decoder == DecoderKind::kByteLevel ? "ByteLevel" : "none");
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && id < model_->vocab_size && (model_->id_flags[id] & TokenizerModel::kSpecial);
}

}  // namespace rwr::distill
