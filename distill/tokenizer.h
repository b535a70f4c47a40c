// Byte-level BPE tokenizer that loads a Hugging Face `tokenizer.json` in GPT-NeoX-20B's format
// (the tokenizer Mamba uses) and gives the same ids as the `tokenizers` library (PyPI) on it.
//
//   RWR_ASSIGN_OR_RETURN(rwr::distill::Tokenizer tok,
//                        rwr::distill::Tokenizer::Load("configs/tokenizer/tokenizer.json"));
//   std::vector<int32_t> ids = tok.Encode("Hello world<|endoftext|>");
//   std::string text = tok.Decode(ids);
//
// Supported tokenizer.json (anything else is a one-line error from Load naming the field):
//   model          BPE (vocab + merges, merges as "a b" strings or ["a", "b"] pairs; unk_token,
//                  fuse_unk, ignore_merges honoured; no dropout, no subword prefix/suffix)
//   pre_tokenizer  ByteLevel (add_prefix_space, trim_offsets, use_regex) with the GPT-2 split
//                  pattern, implemented by hand with Unicode letter/number/space classes
//   normalizer     null, NFC, NFD, NFKC, NFKD, or a Sequence of those
//   decoder        ByteLevel or null; post_processor null or ByteLevel (neither changes ids)
//   added_tokens   matched before pre-tokenization as HF does (leftmost-longest), honouring
//                  special, normalized, single_word, lstrip and rstrip
//   truncation / padding must be null.
//
// Invalid UTF-8 (HF only accepts valid strings): Encode never fails. Each byte that is not part of
// a well-formed UTF-8 sequence is treated as a one-byte character of its own that is neither
// letter, number nor space, and is byte-level encoded like any other byte, so
// DecodeBytes(Encode(x)) == x for every byte string x. Normalizers leave such bytes in place.
// Decode() returns valid UTF-8 as HF does: each maximal ill-formed subsequence of the decoded
// bytes becomes U+FFFD (Unicode "substitution of maximal subparts", Rust's from_utf8_lossy).
//
// Threads: the vocabulary is immutable and shared; each Tokenizer object keeps its own word cache,
// so use one object per thread (copies are cheap and share the vocabulary). Encode on one object
// from two threads at once is a data race.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rwr::distill {

struct TokenizerModel;  // immutable vocabulary, merges, added tokens (tokenizer.cc)
class WordCache;        // per-object cache word bytes → ids (tokenizer.cc)

class Tokenizer {
 public:
  // Reads and validates a tokenizer.json. Errors name the file and the unsupported field.
  static absl::StatusOr<Tokenizer> Load(const std::string& path);
  // Same, from the JSON text; `origin` names it in errors.
  static absl::StatusOr<Tokenizer> FromJson(std::string_view json_text,
                                            std::string_view origin = "tokenizer.json");

  Tokenizer(const Tokenizer& other);  // shares the vocabulary, starts an empty cache
  Tokenizer& operator=(const Tokenizer& other);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Ids of `text`, as HF's `Tokenizer.encode(text).ids` (added and special tokens in the text
  // are recognised). Never fails; see the invalid UTF-8 policy above.
  std::vector<int32_t> Encode(std::string_view text);
  // Appends the ids of `text` to `out` (no reallocation when `out` has the capacity).
  void EncodeInto(std::string_view text, std::vector<int32_t>* out);

  // Text of `ids`, as HF's `Tokenizer.decode(ids, skip_special_tokens=...)`. Ids with no token
  // are skipped, as HF does. Note HF's Python default is skip_special_tokens=True; ours is false
  // so that Decode(Encode(s)) == s.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;
  // The raw bytes of `ids` before the UTF-8 repair of Decode (lossless for any input of Encode).
  std::string DecodeBytes(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // One more than the largest id of the model vocab and the added tokens: the embedding rows a
  // model needs. (HF's get_vocab_size(with_added_tokens=True) counts tokens, which is the same
  // for files whose ids are contiguous, as every file Load accepts is.)
  int32_t vocab_size() const;
  // Id of a token string as it appears in tokenizer.json (added token content, or the model
  // vocab entry in its byte-level form, e.g. "Ġthe"); nullopt when absent.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token string of `id` as in tokenizer.json; nullopt when no token has that id.
  std::optional<std::string> id_to_token(int32_t id) const;
  // Id of "<|endoftext|>" (GPT-NeoX's end of text); nullopt when the file has no such token.
  std::optional<int32_t> eos_id() const;
  bool is_special(int32_t id) const;
  // One line about the file: "BPE, 8192 ids (8190 model tokens, 2 added of which 2 special),
  // 7934 merges; normalizer none; ByteLevel pre-tokenizer (add_prefix_space false, use_regex
  // true); decoder ByteLevel".
  std::string Describe() const;

 private:
  explicit Tokenizer(std::shared_ptr<const TokenizerModel> model);

  std::shared_ptr<const TokenizerModel> model_;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace rwr::distill
