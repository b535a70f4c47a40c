// Sample templates: how (context, question, note, answer) become one training sample's text, and
// which parts of it carry loss. RWR_METHOD.md's default order is
//
//   {context}\n\nQuestion: {question}\nNote:| {note}\nAnswer: {answer}<eos>      (loss after |)
//
// and, for plain samples without a note,
//
//   {context}\n\nQuestion: {question}\nAnswer:| {answer}<eos>
//
// so the model learns to write the note (or `empty`) and then the answer, and sees no loss on the
// context and question. A user template is a YAML file:
//
//   name: my-template
//   empty_note: empty                 # the literal note of `empty` negatives (D_e)
//   with_note:                        # D_f and D_e samples
//     - {text: "{context}\n\nQuestion: {question}\nNote:", loss: false}
//     - {text: " {note}\nAnswer: {answer}{eos}", loss: true}
//   without_note:                     # plain samples
//     - {text: "{context}\n\nQuestion: {question}\nAnswer:", loss: false}
//     - {text: " {answer}{eos}", loss: true}
//
// Slots: {context} {question} {note} {answer} {eos} (the tokenizer's end-of-text token, added as
// an id, never as text). with_note must use {note}; without_note must not. {context} must appear
// once, in a part without loss (so long contexts can be truncated).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace rwr::distill {

struct TemplatePart {
  std::string text;
  bool loss = false;
};

struct SampleFields {
  std::string_view context, question, note, answer;
};

// One piece of a rendered sample, tokenized on its own. Pieces break at loss changes, around the
// context and at {eos}, which are token boundaries in GPT-2-style pre-tokenization for the default
// template (so the ids equal those of the whole text).
struct RenderedPiece {
  std::string text;   // empty for eos
  bool loss = false;
  bool is_context = false;
  bool is_eos = false;
};

struct SampleTemplate {
  std::string name = "rwr-default-v1";
  std::string empty_note = "empty";
  std::vector<TemplatePart> with_note;
  std::vector<TemplatePart> without_note;

  static SampleTemplate Default();
  static absl::StatusOr<SampleTemplate> FromYaml(std::string_view yaml, std::string_view origin);
  static absl::StatusOr<SampleTemplate> LoadFile(const std::string& path);
  absl::Status Validate(std::string_view origin) const;

  // Fills the slots of with_note (when `with_note`) or without_note.
  std::vector<RenderedPiece> Render(const SampleFields& fields, bool with_note) const;
  std::string ToYaml() const;  // recorded in the shard manifest
};

}  // namespace rwr::distill
