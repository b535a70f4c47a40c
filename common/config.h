// Run configuration: a YAML document (see docs/configuration.md) plus `--set key=value`
// overrides, with typed access by dotted key ("train.lr"). Every command resolves its config the
// same way — file, then overrides in order — and logs the result (ToYaml) at start.
#pragma once

#include <functional>
#include <string>
#include <type_traits>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "fmt/format.h"
#include "yaml-cpp/yaml.h"

namespace rwr {

class Config {
 public:
  Config();  // empty mapping

  static absl::StatusOr<Config> LoadFile(const std::string& path);
  // `source` names the text in error messages (a file name, "--set", "defaults").
  static absl::StatusOr<Config> Parse(std::string_view yaml_text, std::string_view source);

  // Deep merge: mappings merge key by key, anything else in `overlay` replaces.
  void Merge(const Config& overlay);
  // "a.b.c=value": value is parsed as YAML (so 3, 1e-4, true, [1, 2], {k: v} all work); creates
  // missing intermediate mappings; an error if a prefix of the key is not a mapping.
  absl::Status Set(std::string_view assignment);
  absl::Status SetAll(const std::vector<std::string>& assignments);

  bool Has(std::string_view key) const;
  // Required value; error names the key and what was wrong ("missing", "expected an integer").
  template <typename T>
  absl::StatusOr<T> Get(std::string_view key) const;
  // Value if present, `fallback` if absent; still an error if present with the wrong type.
  template <typename T>
  absl::StatusOr<T> GetOr(std::string_view key, T fallback) const;

  std::string ToYaml() const;
  const YAML::Node& root() const { return root_; }

  // Dotted keys of every value (non-mapping node), in document order: "train.lr", "model.x".
  std::vector<std::string> LeafKeys() const;
  // An error naming the first key `known` rejects, with the nearest key of `candidates` as a
  // suggestion ("unknown config key 'train.stpes' (did you mean 'train.steps'?)"): a typo must
  // not silently leave a default in place.
  absl::Status CheckKeys(const std::function<bool(const std::string&)>& known,
                         const std::vector<std::string>& candidates,
                         std::string_view command) const;

 private:
  explicit Config(YAML::Node root) : root_(std::move(root)) {}
  YAML::Node Find(std::string_view key) const;  // undefined node if absent
  static std::string TypeName(const YAML::Node& node);

  YAML::Node root_;
};

template <typename T>
constexpr std::string_view ExpectedTypeName() {
  if constexpr (std::is_same_v<T, bool>) return "a boolean (true/false)";
  else if constexpr (std::is_integral_v<T>) return "an integer";
  else if constexpr (std::is_floating_point_v<T>) return "a number";
  else if constexpr (std::is_same_v<T, std::string>) return "a string";
  else return "of the expected type";
}

template <typename T>
absl::StatusOr<T> Config::Get(std::string_view key) const {
  YAML::Node node = Find(key);
  if (!node.IsDefined() || node.IsNull()) {
    return absl::InvalidArgumentError(fmt::format("config key '{}' is missing", key));
  }
  T value;
  if (!node.IsScalar() && !node.IsSequence()) {
    return absl::InvalidArgumentError(
        fmt::format("config key '{}': expected a value, got {}", key, TypeName(node)));
  }
  if (!YAML::convert<T>::decode(node, value)) {
    return absl::InvalidArgumentError(fmt::format("config key '{}': '{}' is not {}", key,
                                                   YAML::Dump(node), ExpectedTypeName<T>()));
  }
  return value;
}

template <typename T>
absl::StatusOr<T> Config::GetOr(std::string_view key, T fallback) const {
  if (!Has(key)) return fallback;
  return Get<T>(key);
}

}  // namespace rwr
