// Sample templates (see distill/template.h).
#include "distill/template.h"

#include <algorithm>
#include <fstream>
#include <initializer_list>
#include <sstream>

#include "common/status.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "yaml-cpp/yaml.h"

namespace rwr::distill {
namespace {

constexpr std::string_view kSlots[] = {"{context}", "{question}", "{note}", "{answer}", "{eos}"};

int CountOf(const std::vector<TemplatePart>& parts, std::string_view slot, bool* in_loss = nullptr) {
  int n = 0;
  for (const auto& part : parts) {
    for (size_t at = part.text.find(slot); at != std::string::npos;
         at = part.text.find(slot, at + 1)) {
      ++n;
      if (in_loss != nullptr && part.loss) *in_loss = true;
    }
  }
  return n;
}

absl::Status ValidateParts(const std::vector<TemplatePart>& parts, bool with_note,
                           std::string_view origin, std::string_view key) {
  if (parts.empty()) {
    return absl::InvalidArgumentError(fmt::format("{}: '{}' has no parts", origin, key));
  }
  bool any_loss = false;
  for (const auto& part : parts) {
    any_loss |= part.loss;
    for (size_t at = part.text.find('{'); at != std::string::npos; at = part.text.find('{', at + 1)) {
      bool known = false;
      for (std::string_view slot : kSlots) known |= part.text.compare(at, slot.size(), slot) == 0;
      if (!known) {
        return absl::InvalidArgumentError(fmt::format(
            "{}: '{}' has an unknown slot at '{}'; slots are {{context}} {{question}} {{note}} "
            "{{answer}} {{eos}}",
            origin, key, part.text.substr(at, 12)));
      }
    }
  }
  bool context_in_loss = false;
  if (CountOf(parts, "{context}", &context_in_loss) != 1 || context_in_loss) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: '{}' must use {{context}} exactly once, in a part with loss: false", origin, key));
  }
  const int notes = CountOf(parts, "{note}");
  if (with_note ? notes != 1 : notes != 0) {
    return absl::InvalidArgumentError(fmt::format("{}: '{}' must use {{note}} {}", origin, key,
                                                  with_note ? "exactly once" : "not at all"));
  }
  if (CountOf(parts, "{answer}") != 1 || CountOf(parts, "{question}") != 1) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: '{}' must use {{question}} and {{answer}} exactly once each", origin, key));
  }
  if (!any_loss) {
    return absl::InvalidArgumentError(fmt::format("{}: '{}' has no part with loss: true", origin, key));
  }
  return absl::OkStatus();
}

// "FILE:LINE" of a node (yaml-cpp counts lines from 0).
std::string Where(std::string_view origin, const YAML::Node& node) {
  return node.Mark().is_null() ? std::string(origin)
                               : fmt::format("{}:{}", origin, node.Mark().line + 1);
}

// A key the template does not know is a mistake to report, not to skip: a misspelt `empty-note`
// or `with_notes` would otherwise build every sample with the defaults without a word.
absl::Status CheckKeys(const YAML::Node& map, std::initializer_list<std::string_view> known,
                       std::string_view origin, std::string_view what) {
  for (const auto& entry : map) {
    const std::string key = entry.first.Scalar();
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return absl::InvalidArgumentError(fmt::format("{}: unknown key '{}' in {}; expected {}",
                                                    Where(origin, entry.first), key, what,
                                                    fmt::join(known, ", ")));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> StringField(const YAML::Node& node, std::string_view origin,
                                        std::string_view what) {
  if (!node.IsScalar()) {
    return absl::InvalidArgumentError(
        fmt::format("{}: {} must be a string", Where(origin, node), what));
  }
  return node.Scalar();
}

absl::StatusOr<std::vector<TemplatePart>> PartsFromYaml(const YAML::Node& node,
                                                        std::string_view origin,
                                                        std::string_view key) {
  if (!node || !node.IsSequence()) {
    return absl::InvalidArgumentError(
        fmt::format("{}: '{}' missing; expected a list of {{text, loss}}", origin, key));
  }
  std::vector<TemplatePart> parts;
  for (const auto& item : node) {
    if (!item.IsMap() || !item["text"] || !item["loss"]) {
      return absl::InvalidArgumentError(
          fmt::format("{}: each part of '{}' needs 'text' and 'loss'", Where(origin, item), key));
    }
    RWR_RETURN_IF_ERROR(
        CheckKeys(item, {"text", "loss"}, origin, fmt::format("a part of '{}'", key)));
    TemplatePart part;
    RWR_ASSIGN_OR_RETURN(part.text, StringField(item["text"], origin,
                                                fmt::format("'text' of a part of '{}'", key)));
    if (!YAML::convert<bool>::decode(item["loss"], part.loss)) {
      return absl::InvalidArgumentError(
          fmt::format("{}: 'loss' of a part of '{}' must be true or false, not '{}'",
                      Where(origin, item["loss"]), key, item["loss"].Scalar()));
    }
    parts.push_back(std::move(part));
  }
  return parts;
}

}  // namespace

SampleTemplate SampleTemplate::Default() {
  SampleTemplate t;
  t.with_note = {{"{context}\n\nQuestion: {question}\nNote:", false},
                 {" {note}\nAnswer: {answer}{eos}", true}};
  t.without_note = {{"{context}\n\nQuestion: {question}\nAnswer:", false},
                    {" {answer}{eos}", true}};
  return t;
}

absl::Status SampleTemplate::Validate(std::string_view origin) const {
  RWR_RETURN_IF_ERROR(ValidateParts(with_note, true, origin, "with_note"));
  RWR_RETURN_IF_ERROR(ValidateParts(without_note, false, origin, "without_note"));
  if (empty_note.empty()) {
    return absl::InvalidArgumentError(fmt::format("{}: 'empty_note' must not be empty", origin));
  }
  return absl::OkStatus();
}

absl::StatusOr<SampleTemplate> SampleTemplate::FromYaml(std::string_view yaml,
                                                        std::string_view origin) {
  try {
    YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap()) {
      return absl::InvalidArgumentError(fmt::format("{}: expected a YAML mapping", origin));
    }
    RWR_RETURN_IF_ERROR(
        CheckKeys(root, {"name", "empty_note", "with_note", "without_note"}, origin, "a template"));
    SampleTemplate t;
    t.name = std::string(origin);
    if (root["name"]) {
      RWR_ASSIGN_OR_RETURN(t.name, StringField(root["name"], origin, "'name'"));
    }
    if (root["empty_note"]) {
      RWR_ASSIGN_OR_RETURN(t.empty_note, StringField(root["empty_note"], origin, "'empty_note'"));
    }
    RWR_ASSIGN_OR_RETURN(t.with_note, PartsFromYaml(root["with_note"], origin, "with_note"));
    RWR_ASSIGN_OR_RETURN(t.without_note, PartsFromYaml(root["without_note"], origin, "without_note"));
    RWR_RETURN_IF_ERROR(t.Validate(origin));
    return t;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(fmt::format("{}: {}", origin, e.what()));
  }
}

absl::StatusOr<SampleTemplate> SampleTemplate::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(fmt::format("template {}: cannot read the file", path));
  std::stringstream text;
  text << in.rdbuf();
  return FromYaml(text.str(), path);
}

std::vector<RenderedPiece> SampleTemplate::Render(const SampleFields& fields, bool note) const {
  std::vector<RenderedPiece> pieces;
  auto text_piece = [&](bool loss) -> RenderedPiece& {
    if (pieces.empty() || pieces.back().loss != loss || pieces.back().is_context ||
        pieces.back().is_eos) {
      pieces.push_back({.text = "", .loss = loss});
    }
    return pieces.back();
  };
  for (const TemplatePart& part : note ? with_note : without_note) {
    std::string_view text = part.text;
    while (!text.empty()) {
      const size_t brace = text.find('{');
      if (brace != 0) {
        text_piece(part.loss).text += text.substr(0, brace);
        if (brace == std::string_view::npos) break;
        text.remove_prefix(brace);
        continue;
      }
      if (text.starts_with("{context}")) {
        pieces.push_back({.text = std::string(fields.context), .loss = part.loss, .is_context = true});
        text.remove_prefix(9);
      } else if (text.starts_with("{question}")) {
        text_piece(part.loss).text += fields.question;
        text.remove_prefix(10);
      } else if (text.starts_with("{note}")) {
        text_piece(part.loss).text += fields.note;
        text.remove_prefix(6);
      } else if (text.starts_with("{answer}")) {
        text_piece(part.loss).text += fields.answer;
        text.remove_prefix(8);
      } else if (text.starts_with("{eos}")) {
        pieces.push_back({.text = "", .loss = part.loss, .is_eos = true});
        text.remove_prefix(5);
      } else {  // a literal brace (Validate rejects unknown slots, so only reachable unvalidated)
        text_piece(part.loss).text += '{';
        text.remove_prefix(1);
      }
    }
  }
  return pieces;
}

std::string SampleTemplate::ToYaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << name << YAML::Key << "empty_note"
      << YAML::Value << empty_note;
  for (const auto& [key, parts] : {std::pair{"with_note", &with_note},
                                   std::pair{"without_note", &without_note}}) {
    out << YAML::Key << key << YAML::Value << YAML::BeginSeq;
    for (const auto& part : *parts) {
      out << YAML::Flow << YAML::BeginMap << YAML::Key << "text" << YAML::Value
          << YAML::DoubleQuoted << part.text << YAML::Key << "loss" << YAML::Value << part.loss
          << YAML::EndMap;
    }
    out << YAML::EndSeq;
  }
  out << YAML::EndMap;
  return out.c_str();
}

}  // namespace rwr::distill
