// Sample templates (see distill/template.h).
#include "distill/template.h"

#include <fstream>
#include <sstream>

#include "common/status.h"
#include "fmt/format.h"
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
  if (!any_loss) {
    return absl::InvalidArgumentError(fmt::format("{}: '{}' has no part with loss: true", origin, key));
  }
  return absl::OkStatus();
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
          fmt::format("{}: each part of '{}' needs 'text' and 'loss'", origin, key));
    }
    TemplatePart part;
    part.text = item["text"].as<std::string>();
    part.loss = item["loss"].as<bool>();
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
    SampleTemplate t;
    t.name = root["name"] ? root["name"].as<std::string>() : std::string(origin);
    if (root["empty_note"]) t.empty_note = root["empty_note"].as<std::string>();
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
