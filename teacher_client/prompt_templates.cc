// Prompt template versions and the one-pass renderer.
#include "teacher_client/prompt_templates.h"

#include "fmt/format.h"

namespace rwr::teacher {

absl::StatusOr<PromptTemplates> GetPromptTemplates(std::string_view version) {
  if (version == "rwr-prompts-v1") {
    return PromptTemplates{
        .version = "rwr-prompts-v1",
        .note =
            "{context}\n\n"
            "Please extract a note relevant to the query: {question}\n"
            "If nothing in the text above is relevant to the query, reply with exactly: empty\n"
            "Note:",
        .verify =
            "Question: {question}\n"
            "Reference answer: {answer}\n"
            "Note: {note}\n\n"
            "Does the note agree with the reference answer? Reply with exactly yes or no.\n"
            "Reply:",
        .remove_evidence =
            "Question: {question}\n"
            "Answer: {answer}\n\n"
            "Remove every paragraph of the text below that contains or implies the answer. Copy "
            "all "
            "other paragraphs unchanged, separated by blank lines, and output nothing else.\n\n"
            "Text:\n{context}\n\n"
            "Remaining text:",
    };
  }
  return absl::InvalidArgumentError(
      fmt::format("unknown prompt template version '{}'; known: rwr-prompts-v1", version));
}

std::string RenderPrompt(std::string_view templ,
                         const std::map<std::string, std::string_view>& values) {
  std::string out;
  out.reserve(templ.size() + 256);
  size_t i = 0;
  while (i < templ.size()) {
    if (templ[i] == '{') {
      size_t close = templ.find('}', i);
      if (close != std::string_view::npos) {
        auto it = values.find(std::string(templ.substr(i + 1, close - i - 1)));
        if (it != values.end()) {
          out.append(it->second);
          i = close + 1;
          continue;
        }
      }
    }
    out += templ[i++];
  }
  return out;
}

}  // namespace rwr::teacher
