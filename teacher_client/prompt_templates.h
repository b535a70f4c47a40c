// Versioned prompt templates for generative teachers (KServe client). The version string goes into
// every cache key, so changing a template's wording means adding a new version, never editing one.
// Placeholders: {context} {question} {answer} {note}, substituted in one pass (text that itself
// contains braces is left alone).
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rwr::teacher {

struct PromptTemplates {
  std::string version;
  std::string note;             // answer: the note, or exactly `empty`
  std::string verify;           // answer: yes | no
  std::string remove_evidence;  // answer: the remaining context
};

// Known versions: "rwr-prompts-v1" (the paper's note instruction, `Please extract a note relevant
// to the query:`).
absl::StatusOr<PromptTemplates> GetPromptTemplates(std::string_view version);

std::string RenderPrompt(std::string_view templ,
                         const std::map<std::string, std::string_view>& values);

}  // namespace rwr::teacher
