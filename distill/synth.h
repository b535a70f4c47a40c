// Synthetic long-context question answering (`rwr data synth`), in the spirit of LongMemEval's
// information-extraction questions: a context of natural-looking paragraphs — chat sessions,
// records and reports about many people with attributes (badge numbers, cities, dates, salaries,
// cars, ...) — and a question whose answer is stated exactly once in it.
//
// Hard distractors look like the answer: the same attribute of another person (often one sharing
// the first or last name) and other attributes of the same person. The paragraph holding the
// answer sits at a controlled relative depth or a uniformly random one. No other paragraph
// contains the answer string, and no other paragraph states the asked (person, attribute) pair.
//
// Determinism: item i depends only on (seed, i) through the generator's own splitmix64/xoshiro
// stream (no std:: distributions), so the same options give the same bytes on every machine, and
// items can be generated in any order.
//
// Length: measured in estimated tokens, words × tokens_per_word (default 1.3: the shipped tokenizer,
// configs/tokenizer/tokenizer.json, measures 1.29 tokens per word on this generator's text; pass
// the ratio of another tokenizer to size contexts for it). Contexts from a few hundred to 128k+
// tokens; a 128k-token context takes a few milliseconds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace rwr::distill {

struct SynthOptions {
  int64_t count = 64;
  int64_t context_tokens = 2048;      // target context length (estimated tokens)
  int64_t min_context_tokens = 0;     // > 0: each item's length uniform in [min, context_tokens]
  uint64_t seed = 1;
  int distractors = 6;                // hard distractor paragraphs per item (both kinds alternate)
  double answer_position = -1;        // relative depth in [0, 1] of the answer; < 0: uniform
  double tokens_per_word = 1.3;
};

struct SynthItem {
  std::string id;        // "synth-<seed>-<index>"
  std::string context;
  std::string question;
  std::string answer;
  // Metadata written next to the four fields.
  double answer_position = 0;      // byte offset of the answer / context size
  int64_t answer_offset = 0;       // byte offset of the answer in the context
  int64_t context_tokens = 0;      // estimated tokens of the context
  int64_t paragraphs = 0;
  int distractors = 0;
  std::string entity;
  std::string attribute;
};

absl::Status ValidateSynthOptions(const SynthOptions& options);

// Item `index` of the dataset that `options` describes.
SynthItem GenerateSynthItem(const SynthOptions& options, int64_t index);

// One JSONL line (no trailing newline): id, context, question, answer, then the metadata.
std::string SynthItemToJson(const SynthItem& item);

// Estimated tokens of `text`: words × tokens_per_word, rounded up.
int64_t EstimateTokens(std::string_view text, double tokens_per_word = 1.3);

// Writes options.count items to `path` (`path`.tmp then rename), reporting progress.
absl::Status WriteSynthJsonl(const std::string& path, const SynthOptions& options);

}  // namespace rwr::distill
