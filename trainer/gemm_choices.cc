// GemmChoices' file format (see gemm_choices.h).
#include "trainer/gemm_choices.h"

#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace rwr::trainer {
namespace {

constexpr std::string_view kFormat = "rwr.gemm_algos.v1";

std::string ToHex(const GemmAlgoBytes& algo) {
  std::string hex;
  for (uint64_t word : algo) hex += fmt::format("{:016x}", word);
  return hex;
}

bool FromHex(std::string_view hex, GemmAlgoBytes* algo) {
  if (hex.size() != algo->size() * 16) return false;
  for (size_t w = 0; w < algo->size(); ++w) {
    uint64_t word = 0;
    for (char ch : hex.substr(w * 16, 16)) {
      const int digit = ch >= '0' && ch <= '9'   ? ch - '0'
                        : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                                 : -1;
      if (digit < 0) return false;
      word = word << 4 | static_cast<uint64_t>(digit);
    }
    (*algo)[w] = word;
  }
  return true;
}

}  // namespace

std::string GemmChoices::ToJson() const {
  nlohmann::json j = {{"format", kFormat},
                      {"device", device},
                      {"cublaslt_version", cublaslt_version},
                      {"algos", nlohmann::json::object()}};
  for (const auto& [key, algo] : algos) j["algos"][key] = ToHex(algo);
  return j.dump(1) + "\n";
}

absl::StatusOr<GemmChoices> GemmChoices::FromJson(std::string_view text, std::string_view source) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  auto bad = [&](std::string_view what) {
    return absl::InvalidArgumentError(fmt::format("{}: {}", source, what));
  };
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (!j.contains("format") || !j["format"].is_string() || j["format"] != kFormat) {
    return bad(fmt::format("format is not \"{}\"", kFormat));
  }
  if (!j.contains("device") || !j["device"].is_string()) return bad("\"device\" missing");
  if (!j.contains("cublaslt_version") || !j["cublaslt_version"].is_number_integer()) {
    return bad("\"cublaslt_version\" missing");
  }
  if (!j.contains("algos") || !j["algos"].is_object()) return bad("\"algos\" missing");
  GemmChoices choices;
  choices.device = j["device"].get<std::string>();
  choices.cublaslt_version = j["cublaslt_version"].get<int64_t>();
  for (const auto& [key, value] : j["algos"].items()) {
    GemmAlgoBytes algo{};
    if (!value.is_string() || !FromHex(value.get<std::string>(), &algo)) {
      return bad(fmt::format("algorithm of \"{}\" is not 128 lowercase hex digits", key));
    }
    choices.algos[key] = algo;
  }
  return choices;
}

}  // namespace rwr::trainer
