// Recall with Reasoning at inference (RWR_METHOD.md, "Inference on long inputs"): the context is
// split into segments of a fixed number of tokens; for each, the model writes a note for the
// question (or the template's empty note); the notes that are not empty are joined and become the
// context of a last pass, in which the model writes a note and the answer. A context that fits in
// one segment takes that last pass directly. Prompts are built and read by the sample template the
// model was trained with (distill/recall_format.h), tokenized piece by piece as in training.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "distill/recall_format.h"
#include "distill/tokenizer.h"
#include "trainer/generate.h"

namespace rwr::trainer {

struct RecallOptions {
  int64_t segment_tokens = 2048;  // context tokens per note pass; 0: the whole context at once
  int64_t max_note_tokens = 128;
  int64_t max_answer_tokens = 64;
  // Segment notes written together, one decoder row each: on a GPU a step of many rows costs
  // about one. The notes are the same at any value.
  int64_t segments_at_once = 16;
  // Segment k samples with seed sampling.seed + 1 + k, the last pass with sampling.seed, so the
  // passes do not share one random stream (and a segment's note does not depend on how many are
  // written together).
  SamplingOptions sampling;
  // Asked before every step of every pass; true ends Answer with Cancelled (a shutdown signal).
  std::function<bool()> cancelled;
};

struct SegmentNote {
  int64_t first_token = 0;  // where the segment starts in the context's tokens
  int64_t tokens = 0;
  std::string note;
  bool empty = false;  // the template's empty note: nothing for the question in this segment
};

struct RecallResult {
  int64_t context_tokens = 0;
  std::vector<SegmentNote> segments;  // one per segment; none when the context fit in one pass
  std::string note;                   // the last pass's note
  std::string answer;
  int64_t generated_tokens = 0;  // over every pass
};

class Recaller {
 public:
  // `decoder` must outlive the Recaller.
  Recaller(Decoder& decoder, distill::Tokenizer tokenizer, distill::RecallFormat format,
           RecallOptions options);

  // Called after each segment's note (in segment order), with its index and the count.
  using Progress = std::function<void(const SegmentNote&, size_t index, size_t count)>;
  absl::StatusOr<RecallResult> Answer(std::string_view context, std::string_view question,
                                      const Progress& progress = nullptr);

 private:
  struct Written {
    distill::RecallFormat::Reading reading;
    int64_t tokens = 0;
  };
  // Prompt ids for `context_ids` and the question, as training rendered them.
  std::vector<int32_t> PromptIds(std::span<const int32_t> context_ids, std::string_view question);
  // The notes after each prompt, one decoder row each, sampled with seeds[row] (prompts of
  // unequal length are left-padded with a reset at their first token). A row stops once its note
  // is complete, at end of text or at max_note_tokens.
  absl::StatusOr<std::vector<Generated>> WriteNotes(
      const std::vector<std::vector<int32_t>>& prompts, const std::vector<uint64_t>& seeds);
  // The last pass: the note as WriteNotes writes it, then the answer with its own budget. Where
  // the note ended without the literal that leads to the answer (its budget, or end of text),
  // that literal is fed to the model, so there is always an answer to read.
  absl::StatusOr<Written> WriteNoteAndAnswer(const std::vector<int32_t>& prompt);
  // The text of generated ids, less a character the budget cut in two.
  std::string TextOf(std::span<const int32_t> ids) const;

  Decoder& decoder_;
  distill::Tokenizer tokenizer_;
  distill::RecallFormat format_;
  RecallOptions options_;
  std::vector<int32_t> stop_ids_;
};

// An answer against its reference, the way QA benchmarks compare them: both normalized (lower
// case; punctuation and the articles a, an, the dropped; blanks collapsed). Exact: equal. Contains:
// the reference is a run of whole words of the answer. A reference that normalizes to nothing
// ("A", "—") is compared lower-cased and trimmed instead, so an empty answer never matches it.
struct AnswerScore {
  bool exact = false;
  bool contains = false;
};
AnswerScore ScoreAnswer(std::string_view answer, std::string_view reference);

}  // namespace rwr::trainer
