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

absl::StatusOr<std::vector<Recaller::Written>> Recaller::Write(
    const std::vector<std::vector<int32_t>>& prompts, bool note_only) {
  const int64_t rows = static_cast<int64_t>(prompts.size());
  size_t width = 0;
  for (const std::vector<int32_t>& prompt : prompts) {
    if (prompt.empty()) {
      return absl::InvalidArgumentError(
          "nothing to prompt the model with: the context and the template's prompt are empty");
    }
    width = std::max(width, prompt.size());
  }
  std::vector<int32_t> tokens;
  std::vector<uint8_t> resets(rows * width, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<int32_t>& prompt = prompts[r];
    const size_t pad = width - prompt.size();
    tokens.insert(tokens.end(), pad, prompt.front());  // any id: the reset below erases it
    tokens.insert(tokens.end(), prompt.begin(), prompt.end());
    resets[r * width + pad] = 1;
  }
  GenerateOptions generate;
  generate.stop_ids = stop_ids_;
  generate.max_new_tokens = options_.max_note_tokens + (note_only ? 0 : options_.max_answer_tokens);
  // A row's note ends where the model writes the literal that leads to the answer; the answer
  // may use what is left of the budget, and ends at end of text.
  std::vector<int64_t> note_done_at(rows, -1);
  generate.stop = [&](int64_t row, std::span<const int32_t> ids) {
    const int64_t n = static_cast<int64_t>(ids.size());
    int64_t& done_at = note_done_at[row];
    if (done_at < 0) {
      if (tokenizer_.Decode(ids).find(format_.note_end()) != std::string::npos) {
        done_at = n;
        return note_only;
      }
      return n >= options_.max_note_tokens && note_only;
    }
    return n - done_at >= options_.max_answer_tokens;
  };
  RWR_RETURN_IF_ERROR(decoder_.Reset(rows));
  std::vector<TokenSampler> samplers(rows, TokenSampler(options_.sampling));
  RWR_ASSIGN_OR_RETURN(std::vector<Generated> generated,
                       GenerateRows(decoder_, tokens, resets, samplers, generate));
  std::vector<Written> written(rows);
  for (int64_t r = 0; r < rows; ++r) {
    written[r].tokens = static_cast<int64_t>(generated[r].ids.size());
    written[r].reading =
        format_.Read(tokenizer_.Decode(generated[r].ids, /*skip_special_tokens=*/true));
  }
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
    const size_t at_once = static_cast<size_t>(std::max<int64_t>(1, options_.segments_at_once));
    std::vector<std::string> kept;
    for (size_t first = 0; first < count; first += at_once) {
      std::vector<std::vector<int32_t>> prompts;
      for (size_t k = first; k < std::min(count, first + at_once); ++k) {
        SegmentNote note;
        note.first_token = static_cast<int64_t>(k) * segment;
        note.tokens = std::min(segment, result.context_tokens - note.first_token);
        prompts.push_back(
            PromptIds(std::span<const int32_t>(context_ids.data() + note.first_token, note.tokens),
                      question));
        result.segments.push_back(note);
      }
      RWR_ASSIGN_OR_RETURN(std::vector<Written> written, Write(prompts, /*note_only=*/true));
      for (size_t i = 0; i < written.size(); ++i) {
        SegmentNote& note = result.segments[first + i];
        result.generated_tokens += written[i].tokens;
        note.note = written[i].reading.note;
        note.empty = format_.IsEmptyNote(note.note);
        if (!note.empty) kept.push_back(note.note);
        if (progress) progress(note, first + i, count);
      }
    }
    // The notes are the last pass's context; with none, the model answers from the empty note,
    // as the `empty` negatives taught it.
    std::string joined;
    for (const std::string& note : kept) joined += (joined.empty() ? "" : "\n") + note;
    last_context = tokenizer_.Encode(joined.empty() ? format_.empty_note() : joined);
  }
  RWR_ASSIGN_OR_RETURN(std::vector<Written> written,
                       Write({PromptIds(last_context, question)}, /*note_only=*/false));
  result.generated_tokens += written[0].tokens;
  result.note = written[0].reading.note;
  result.answer = written[0].reading.answer;
  return result;
}

}  // namespace rwr::trainer
