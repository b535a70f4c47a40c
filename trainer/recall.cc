// Recall with Reasoning at inference; see trainer/recall.h.
#include "trainer/recall.h"

#include <algorithm>

#include "common/status.h"
#include "fmt/format.h"

namespace rwr::trainer {

Recaller::Recaller(Decoder& decoder, distill::Tokenizer tokenizer, distill::RecallFormat format,
                   RecallOptions options)
    : decoder_(decoder),
      tokenizer_(std::move(tokenizer)),
      format_(std::move(format)),
      options_(options) {
  if (auto eos = tokenizer_.eos_id()) stop_ids_.push_back(*eos);
}

std::vector<int32_t> Recaller::PromptIds(std::span<const int32_t> context_ids,
                                         std::string_view question) {
  std::vector<int32_t> ids;
  for (const distill::RenderedPiece& piece : format_.Prompt(question)) {
    if (piece.is_context) {
      ids.insert(ids.end(), context_ids.begin(), context_ids.end());
    } else if (piece.is_eos) {
      ids.insert(ids.end(), stop_ids_.begin(), stop_ids_.end());
    } else {
      tokenizer_.EncodeInto(piece.text, &ids);
    }
  }
  return ids;
}

absl::StatusOr<Recaller::Written> Recaller::Write(std::span<const int32_t> prompt, bool note_only) {
  GenerateOptions generate;
  generate.stop_ids = stop_ids_;
  generate.max_new_tokens = options_.max_note_tokens + (note_only ? 0 : options_.max_answer_tokens);
  // The note ends where the model writes the literal that leads to the answer; the answer may
  // use what is left of the budget, and ends at end of text.
  int64_t note_done_at = -1;
  generate.stop = [&](std::span<const int32_t> ids) {
    const int64_t n = static_cast<int64_t>(ids.size());
    if (note_done_at < 0) {
      if (tokenizer_.Decode(ids).find(format_.note_end()) != std::string::npos) {
        note_done_at = n;
        return note_only;
      }
      return n >= options_.max_note_tokens && note_only;
    }
    return n - note_done_at >= options_.max_answer_tokens;
  };
  RWR_RETURN_IF_ERROR(decoder_.Reset());
  TokenSampler sampler(options_.sampling);
  RWR_ASSIGN_OR_RETURN(Generated generated, GenerateTokens(decoder_, prompt, sampler, generate));
  Written written;
  written.tokens = static_cast<int64_t>(generated.ids.size());
  written.reading = format_.Read(tokenizer_.Decode(generated.ids, /*skip_special_tokens=*/true));
  return written;
}

absl::StatusOr<RecallResult> Recaller::Answer(std::string_view context, std::string_view question,
                                              const Progress& progress) {
  RecallResult result;
  const std::vector<int32_t> context_ids = tokenizer_.Encode(context);
  result.context_tokens = static_cast<int64_t>(context_ids.size());
  const int64_t segment = options_.segment_tokens;
  std::vector<int32_t> last_context;
  if (segment <= 0 || result.context_tokens <= segment) {
    last_context = context_ids;
  } else {
    const size_t count = static_cast<size_t>((result.context_tokens + segment - 1) / segment);
    std::vector<std::string> kept;
    for (size_t k = 0; k < count; ++k) {
      SegmentNote note;
      note.first_token = static_cast<int64_t>(k) * segment;
      note.tokens = std::min(segment, result.context_tokens - note.first_token);
      const std::span<const int32_t> ids(context_ids.data() + note.first_token, note.tokens);
      RWR_ASSIGN_OR_RETURN(Written written, Write(PromptIds(ids, question), /*note_only=*/true));
      result.generated_tokens += written.tokens;
      note.note = written.reading.note;
      note.empty = format_.IsEmptyNote(note.note);
      if (!note.empty) kept.push_back(note.note);
      result.segments.push_back(note);
      if (progress) progress(result.segments.back(), k, count);
    }
    // The notes are the last pass's context; with none, the model answers from the empty note,
    // as the `empty` negatives taught it.
    std::string joined;
    for (const std::string& note : kept) joined += (joined.empty() ? "" : "\n") + note;
    last_context = tokenizer_.Encode(joined.empty() ? format_.empty_note() : joined);
  }
  RWR_ASSIGN_OR_RETURN(Written written,
                       Write(PromptIds(last_context, question), /*note_only=*/false));
  result.generated_tokens += written.tokens;
  result.note = written.reading.note;
  result.answer = written.reading.answer;
  return result;
}

}  // namespace rwr::trainer
