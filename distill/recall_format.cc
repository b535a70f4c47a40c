// How a sample template reads at inference; see distill/recall_format.h.
#include "distill/recall_format.h"

#include <algorithm>
#include <cctype>

#include "common/status.h"
#include "fmt/format.h"

namespace rwr::distill {
namespace {

// Markers no template text holds (Validate allows only printable slots and text).
constexpr std::string_view kNoteMark = "\x01";
constexpr std::string_view kAnswerMark = "\x02";

std::string_view Trim(std::string_view s) {
  const size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(" \t\r\n") - begin + 1);
}

std::string_view TrimEnd(std::string_view s) {
  const size_t end = s.find_last_not_of(" \t\r\n");
  return end == std::string_view::npos ? std::string_view() : s.substr(0, end + 1);
}

}  // namespace

absl::StatusOr<RecallFormat> RecallFormat::From(const SampleTemplate& sample_template) {
  RWR_RETURN_IF_ERROR(sample_template.Validate(sample_template.name));
  const std::vector<RenderedPiece> pieces = sample_template.Render(
      {.context = "", .question = "", .note = kNoteMark, .answer = kAnswerMark}, true);
  // What the model writes: every piece from the first with loss on, all of them with loss.
  std::string written;
  bool in_loss = false;
  for (const RenderedPiece& piece : pieces) {
    if (!piece.loss && in_loss) {
      return absl::InvalidArgumentError(fmt::format(
          "template {}: a part without loss follows one with loss in with_note; generation needs "
          "the model to write everything after the prompt",
          sample_template.name));
    }
    in_loss |= piece.loss;
    if (!in_loss) continue;
    if (piece.is_eos) break;  // generation ends there
    written += piece.text;
  }
  const size_t note = written.find(kNoteMark), answer = written.find(kAnswerMark);
  if (note == std::string::npos || answer == std::string::npos || answer < note) {
    return absl::InvalidArgumentError(fmt::format(
        "template {}: generation needs {{note}} and then {{answer}} in the parts with loss of "
        "with_note",
        sample_template.name));
  }
  RecallFormat format;
  format.template_ = sample_template;
  format.note_start_ = std::string(Trim(written.substr(0, note)));
  format.note_end_ = std::string(TrimEnd(written.substr(note + 1, answer - note - 1)));
  format.answer_end_ = std::string(Trim(written.substr(answer + 1)));
  format.empty_note_ = sample_template.empty_note;
  if (format.note_end_.empty()) {
    return absl::InvalidArgumentError(fmt::format(
        "template {}: nothing but blanks between {{note}} and {{answer}}; the note's end could "
        "not be told from the answer",
        sample_template.name));
  }
  return format;
}

std::vector<RenderedPiece> RecallFormat::Prompt(std::string_view question) const {
  std::vector<RenderedPiece> prompt;
  for (RenderedPiece& piece :
       template_.Render({.context = "", .question = question, .note = "", .answer = ""}, true)) {
    if (piece.loss) break;
    prompt.push_back(std::move(piece));
  }
  return prompt;
}

RecallFormat::Reading RecallFormat::Read(std::string_view written) const {
  Reading reading;
  // Found before anything is trimmed: the literal may begin with a blank ("\nAnswer:" after an
  // empty note).
  const size_t end = written.find(note_end_);
  std::string_view note = written.substr(0, end);
  if (end == std::string_view::npos) {
    // A note the budget cut inside the literal: its beginning is not part of the note.
    for (size_t n = std::min(note_end_.size() - 1, note.size()); n > 0; --n) {
      if (note.ends_with(std::string_view(note_end_).substr(0, n))) {
        note.remove_suffix(n);
        break;
      }
    }
  }
  note = Trim(note);
  if (!note_start_.empty() && note.starts_with(note_start_)) {
    note = Trim(note.substr(note_start_.size()));
  }
  reading.note = std::string(note);
  if (end == std::string_view::npos) return reading;
  std::string_view answer = written.substr(end + note_end_.size());
  if (!answer_end_.empty()) answer = answer.substr(0, answer.find(answer_end_));
  reading.answer = std::string(Trim(answer));
  reading.has_answer = true;
  return reading;
}

bool RecallFormat::IsEmptyNote(std::string_view note) const {
  note = Trim(note);
  // "Empty." is the same answer as "empty" from a small model.
  if (!note.empty() && (note.back() == '.' || note.back() == '!')) note.remove_suffix(1);
  if (note.empty()) return true;
  if (note.size() != empty_note_.size()) return false;
  for (size_t i = 0; i < note.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(note[i])) !=
        std::tolower(static_cast<unsigned char>(empty_note_[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace rwr::distill
