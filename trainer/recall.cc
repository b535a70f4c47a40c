// Recall with Reasoning at inference; see trainer/recall.h.
#include "trainer/recall.h"

#include <algorithm>
#include <cctype>

#include "common/status.h"
#include "distill/unicode.h"
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

absl::StatusOr<std::vector<Generated>> Recaller::WriteNotes(
    const std::vector<std::vector<int32_t>>& prompts, const std::vector<uint64_t>& seeds) {
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
  generate.max_new_tokens = options_.max_note_tokens;
  generate.cancelled = options_.cancelled;
  // A note ends where the model writes the literal that leads to the answer. Asked after every
  // token, so the literal, if there, ends with the last one; a token is at least a byte, so the
  // last literal-length tokens hold it, and only those are decoded.
  const size_t tail = format_.note_end().size();
  generate.stop = [&, tail](int64_t, std::span<const int32_t> ids) {
    return TextOf(ids.last(std::min(tail, ids.size()))).find(format_.note_end()) !=
           std::string::npos;
  };
  RWR_RETURN_IF_ERROR(decoder_.Reset(rows));
  std::vector<TokenSampler> samplers;
  for (uint64_t seed : seeds) {
    SamplingOptions sampling = options_.sampling;
    sampling.seed = seed;
    samplers.emplace_back(sampling);
  }
  return GenerateRows(decoder_, tokens, resets, samplers, generate);
}

absl::StatusOr<Recaller::Written> Recaller::WriteNoteAndAnswer(const std::vector<int32_t>& prompt) {
  RWR_ASSIGN_OR_RETURN(std::vector<Generated> notes,
                       WriteNotes({prompt}, {options_.sampling.seed}));
  const Generated& note = notes[0];
  // What the decoder has not run yet: the note's last token (unless end of text ended it, which
  // is not fed), then the literal if the model did not write it.
  std::vector<int32_t> lead_in;
  if (note.end != Generated::End::kStopId && !note.ids.empty()) lead_in.push_back(note.ids.back());
  std::string written = TextOf(note.ids);
  if (note.end != Generated::End::kStopCondition) {
    const std::string literal = format_.note_end();
    tokenizer_.EncodeInto(literal, &lead_in);
    written += literal;
  }
  GenerateOptions generate;
  generate.stop_ids = stop_ids_;
  generate.max_new_tokens = options_.max_answer_tokens;
  generate.cancelled = options_.cancelled;
  SamplingOptions sampling = options_.sampling;
  sampling.seed = options_.sampling.seed ^ 0x9e3779b97f4a7c15ULL;  // the answer's own stream
  TokenSampler sampler(sampling);
  RWR_ASSIGN_OR_RETURN(Generated answer, GenerateTokens(decoder_, lead_in, sampler, generate));
  Written out;
  out.tokens = static_cast<int64_t>(note.ids.size() + answer.ids.size());
  out.reading = format_.Read(written + TextOf(answer.ids));
  return out;
}

std::string Recaller::TextOf(std::span<const int32_t> ids) const {
  std::string bytes = tokenizer_.DecodeBytes(ids, /*skip_special_tokens=*/true);
  // A character whose last bytes the budget cut off: drop its first ones.
  size_t lead = bytes.size();
  while (lead > 0 && bytes.size() - lead < 4 &&
         (static_cast<unsigned char>(bytes[lead - 1]) & 0xC0) == 0x80) {
    --lead;
  }
  if (lead > 0) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + lead - 1;
    const auto* end = reinterpret_cast<const unsigned char*>(bytes.data()) + bytes.size();
    if (*p >= 0xC0 &&
        distill::unicode::DecodeUtf8(p, end).code_point == distill::unicode::kInvalid &&
        distill::unicode::InvalidSubpartSize(p, end) == end - p) {
      bytes.resize(lead - 1);
    }
  }
  std::string text;
  distill::unicode::AppendUtf8Lossy(bytes, &text);
  return text;
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
      std::vector<uint64_t> seeds;
      for (size_t k = first; k < first + prompts.size(); ++k)
        seeds.push_back(options_.sampling.seed + 1 + k);
      RWR_ASSIGN_OR_RETURN(std::vector<Generated> written, WriteNotes(prompts, seeds));
      for (size_t i = 0; i < written.size(); ++i) {
        SegmentNote& note = result.segments[first + i];
        result.generated_tokens += static_cast<int64_t>(written[i].ids.size());
        note.note = format_.Read(TextOf(written[i].ids)).note;
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
  RWR_ASSIGN_OR_RETURN(Written written, WriteNoteAndAnswer(PromptIds(last_context, question)));
  result.generated_tokens += written.tokens;
  result.note = written.reading.note;
  result.answer = written.reading.answer;
  return result;
}

namespace {

std::string NormalizeAnswer(std::string_view text) {
  std::string words;
  std::string word;
  auto flush = [&] {
    if (!word.empty() && word != "a" && word != "an" && word != "the") {
      words += (words.empty() ? "" : " ") + word;
    }
    word.clear();
  };
  for (unsigned char c : text) {
    if (std::isalnum(c) || c >= 0x80) {
      word += static_cast<char>(std::tolower(c));
    } else if (std::isspace(c)) {
      flush();
    }  // punctuation: dropped, inside a word too ("U.S." → "us")
  }
  flush();
  return words;
}

std::string LoweredAndTrimmed(std::string_view text) {
  const size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return "";
  std::string out(text.substr(begin, text.find_last_not_of(" \t\r\n") - begin + 1));
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

AnswerScore ScoreAnswer(std::string_view answer, std::string_view reference) {
  const std::string want = NormalizeAnswer(reference);
  if (want.empty()) {
    const std::string raw = LoweredAndTrimmed(reference);
    const bool same = !raw.empty() && LoweredAndTrimmed(answer) == raw;
    return {.exact = same, .contains = same};
  }
  const std::string got = NormalizeAnswer(answer);
  return {.exact = got == want,
          .contains = (" " + got + " ").find(" " + want + " ") != std::string::npos};
}

}  // namespace rwr::trainer
