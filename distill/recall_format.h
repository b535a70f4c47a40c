// How a sample template reads at inference (`rwr generate`, `rwr eval`): the with_note template up
// to its first part with loss is the prompt; the model writes the rest, from which the note and
// the answer are read back. For the default template the prompt is
//
//   {context}\n\nQuestion: {question}\nNote:
//
// and the model writes " {note}\nAnswer: {answer}<eos>": the note is what comes before
// "\nAnswer:", the answer what follows it. A template whose loss parts are followed by a part
// without loss, or that puts {answer} before {note}, cannot be read this way (an error at From).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "distill/template.h"

namespace rwr::distill {

class RecallFormat {
 public:
  static absl::StatusOr<RecallFormat> From(const SampleTemplate& sample_template);

  // The prompt's pieces (as Render gives them, so they tokenize as in training): before the
  // context, the context itself (`is_context`, text empty: the caller puts its ids there), after.
  std::vector<RenderedPiece> Prompt(std::string_view question) const;

  // The literal the model writes between the note and the answer, without trailing blanks
  // ("\nAnswer:"): once it appears, the note is complete.
  const std::string& note_end() const { return note_end_; }
  const std::string& empty_note() const { return empty_note_; }

  // The note and the answer in what the model wrote after the prompt. Without note_end in it,
  // all of it is the note (the model stopped or ran out of tokens inside the note).
  struct Reading {
    std::string note;
    std::string answer;
    bool has_answer = false;  // note_end was written
  };
  Reading Read(std::string_view written) const;
  // Whether a note says the context holds nothing for the question (the template's empty_note).
  bool IsEmptyNote(std::string_view note) const;

 private:
  RecallFormat() = default;
  SampleTemplate template_;
  std::string note_start_;  // literal the model writes before {note}, blanks removed ("")
  std::string note_end_;    // literal between {note} and {answer}, trailing blanks removed
  std::string answer_end_;  // literal after {answer} before {eos} ("" for the default)
  std::string empty_note_;
};

}  // namespace rwr::distill
