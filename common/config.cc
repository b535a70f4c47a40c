#include "common/config.h"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace rwr {

Config::Config() : root_(YAML::NodeType::Map) {}

absl::StatusOr<Config> Config::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(fmt::format("{}: cannot open config file", path));
  std::stringstream text;
  text << in.rdbuf();
  return Parse(text.str(), path);
}

absl::StatusOr<Config> Config::Parse(std::string_view yaml_text, std::string_view source) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(fmt::format("{}:{}:{}: invalid YAML: {}", source,
                                                   e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  if (root.IsNull() || !root.IsDefined()) return Config();
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: a config must be a mapping of keys to values, got {}", source, TypeName(root)));
  }
  return Config(root);
}

namespace {
std::vector<std::string> SplitKey(std::string_view key) {
  std::vector<std::string> parts(1);
  for (char c : key) {
    if (c == '.') parts.emplace_back();
    else parts.back() += c;
  }
  return parts;
}

void MergeInto(YAML::Node base, const YAML::Node& overlay) {
  for (const auto& entry : overlay) {
    const std::string key = entry.first.as<std::string>();
    if (entry.second.IsMap() && base[key].IsMap()) {
      MergeInto(base[key], entry.second);
    } else {
      base[key] = YAML::Clone(entry.second);
    }
  }
}
}  // namespace

void Config::Merge(const Config& overlay) { MergeInto(root_, overlay.root_); }

absl::Status Config::Set(std::string_view assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    return absl::InvalidArgumentError(
        fmt::format("--set '{}': expected key=value, e.g. train.lr=3e-4", assignment));
  }
  const std::string_view key = assignment.substr(0, eq);
  const std::string value_text(assignment.substr(eq + 1));
  YAML::Node value;
  try {
    value = YAML::Load(value_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        fmt::format("--set '{}': value is not valid YAML: {}", assignment, e.msg));
  }
  if (!value.IsDefined()) value = YAML::Node(YAML::NodeType::Null);

  const std::vector<std::string> parts = SplitKey(key);
  YAML::Node node = root_;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (parts[i].empty()) {
      return absl::InvalidArgumentError(fmt::format("--set '{}': empty key part", assignment));
    }
    YAML::Node child = node[parts[i]];
    if (!child.IsDefined() || child.IsNull()) {
      node[parts[i]] = YAML::Node(YAML::NodeType::Map);
      child = node[parts[i]];
    } else if (!child.IsMap()) {
      return absl::InvalidArgumentError(fmt::format(
          "--set '{}': '{}' is {}, not a section", assignment, parts[i], TypeName(child)));
    }
    node.reset(child);
  }
  if (parts.back().empty()) {
    return absl::InvalidArgumentError(fmt::format("--set '{}': empty key part", assignment));
  }
  node[parts.back()] = value;
  return absl::OkStatus();
}

absl::Status Config::SetAll(const std::vector<std::string>& assignments) {
  for (const std::string& a : assignments) {
    if (absl::Status s = Set(a); !s.ok()) return s;
  }
  return absl::OkStatus();
}

YAML::Node Config::Find(std::string_view key) const {
  const YAML::Node& croot = root_;
  YAML::Node current = croot;
  for (const std::string& part : SplitKey(key)) {
    if (!current.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
    const YAML::Node& const_current = current;
    YAML::Node child = const_current[part];
    if (!child.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
    current.reset(child);
  }
  return current;
}

bool Config::Has(std::string_view key) const {
  const YAML::Node node = Find(key);
  return node.IsDefined() && !node.IsNull();
}

namespace {

void CollectLeaves(const YAML::Node& node, const std::string& prefix,
                   std::vector<std::string>* out) {
  if (!node.IsMap()) {
    if (!prefix.empty()) out->push_back(prefix);
    return;
  }
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    CollectLeaves(kv.second, prefix.empty() ? key : prefix + "." + key, out);
  }
}

// Levenshtein distance, for "did you mean".
size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::vector<std::string> Config::LeafKeys() const {
  std::vector<std::string> keys;
  CollectLeaves(root_, "", &keys);
  return keys;
}

absl::Status Config::CheckKeys(const std::function<bool(const std::string&)>& known,
                               const std::vector<std::string>& candidates,
                               std::string_view command) const {
  for (const std::string& key : LeafKeys()) {
    if (known(key)) continue;
    std::string nearest;
    size_t best = key.size() / 3 + 1;  // suggest only what is close
    for (const std::string& c : candidates) {
      if (const size_t d = EditDistance(key, c); d < best) {
        best = d;
        nearest = c;
      }
    }
    return absl::InvalidArgumentError(
        fmt::format("unknown config key '{}' for rwr {}{}", key, command,
                    nearest.empty() ? "" : fmt::format(" (did you mean '{}'?)", nearest)));
  }
  return absl::OkStatus();
}

std::string Config::ToYaml() const {
  YAML::Emitter out;
  out << root_;
  return out.c_str();
}

std::string Config::TypeName(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "a value";
    case YAML::NodeType::Null: return "null";
    default: return "undefined";
  }
}

}  // namespace rwr
