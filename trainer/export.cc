// Checkpoint → Hugging Face layout; see export.h.
#include "trainer/export.h"

#include <filesystem>
#include <fstream>

#include "common/config.h"
#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
#include "storage/safetensors.h"
#include "trainer/checkpoint.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_io.h"
#include "trainer/rng.h"

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;

// tokenizer.json for a checkpoint: keys of the run's resolved config, then the data directory.
std::string FindTokenizer(const std::string& checkpoint_dir) {
  std::ifstream in(fs::path(checkpoint_dir) / "trainer_state.json");
  nlohmann::json state;
  try {
    in >> state;
  } catch (...) {
    return "";
  }
  auto config = Config::Parse(state.value("resolved_config", std::string()), "checkpoint config");
  if (!config.ok()) return "";
  for (const char* key : {"data.tokenizer", "tokenizer.path", "tokenizer"}) {
    auto value = config->GetOr<std::string>(key, "");
    if (value.ok() && !value->empty() && fs::is_regular_file(*value)) return *value;
  }
  auto data_dir = config->GetOr<std::string>("data.dir", "");
  if (data_dir.ok() && !data_dir->empty()) {
    if (fs::is_regular_file(fs::path(*data_dir) / "tokenizer.json")) {
      return (fs::path(*data_dir) / "tokenizer.json").string();
    }
    std::ifstream manifest(fs::path(*data_dir) / "manifest.json");
    nlohmann::json m;
    try {
      manifest >> m;
      // `rwr data build` records the tokenizer as build.tokenizer.path.
      const nlohmann::json path = m.value("build", nlohmann::json::object())
                                      .value("tokenizer", nlohmann::json::object())
                                      .value("path", nlohmann::json());
      if (path.is_string()) {
        for (const fs::path& p :
             {fs::path(path.get<std::string>()), fs::path(*data_dir) / path.get<std::string>()}) {
          if (fs::is_regular_file(p)) return p.string();
        }
      }
    } catch (...) {
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<ExportResult> ExportCheckpoint(const ExportOptions& options) {
  ExportResult result;
  RWR_ASSIGN_OR_RETURN(result.checkpoint, ResolveCheckpointDir(options.checkpoint));
  RWR_ASSIGN_OR_RETURN(LoadedModel model, LoadModelDir(result.checkpoint));
  SaveModelDirOptions save;
  if (options.dtype == "bf16") {
    save.dtype = storage::DType::kBF16;
  } else if (options.dtype == "fp32") {
    save.dtype = storage::DType::kF32;
  } else {
    return absl::InvalidArgumentError(
        fmt::format("--dtype {}: expected bf16 or fp32", options.dtype));
  }
  save.max_shard_bytes = options.max_shard_bytes;
  RWR_RETURN_IF_ERROR(SaveModelDir(options.out, model.config, model.params, save));

  result.tokenizer_source =
      options.tokenizer.empty() ? FindTokenizer(result.checkpoint) : options.tokenizer;
  if (!result.tokenizer_source.empty()) {
    std::error_code ec;
    fs::copy_file(result.tokenizer_source, fs::path(options.out) / "tokenizer.json",
                  fs::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::UnavailableError(
          fmt::format("cannot copy {}: {}", result.tokenizer_source, ec.message()));
    }
  } else {
    spdlog::warn("export: no tokenizer.json found (pass --tokenizer PATH); the export has none");
  }

  if (options.write_check) {
    // Logits of the exported weights (read back, so bf16 rounding is included).
    RWR_ASSIGN_OR_RETURN(LoadedModel exported, LoadModelDir(options.out));
    MambaCpu cpu(exported.config);
    const int64_t T = 23;
    Rng rng(7);
    std::vector<int32_t> tokens(T), targets(T, 0);
    std::vector<uint8_t> mask(T, 0), reset(T, 0);
    reset[0] = 1;
    for (auto& t : tokens) t = static_cast<int32_t>(rng.Next() % exported.config.vocab_size);
    std::vector<float> logits(T * exported.config.vocab_size);
    RWR_RETURN_IF_ERROR(
        cpu.Forward(exported.params,
                    {1, T, tokens.data(), targets.data(), mask.data(), reset.data()}, 0,
                    logits.data())
            .status());
    storage::SafetensorsWriter check;
    std::vector<int64_t> ids(tokens.begin(), tokens.end());
    RWR_RETURN_IF_ERROR(check.AddInt64("input_ids", {1, T}, ids));
    RWR_RETURN_IF_ERROR(check.AddFloat("logits", {1, T, exported.config.vocab_size}, logits));
    RWR_RETURN_IF_ERROR(
        check.WriteFile((fs::path(options.out) / "rwr_check.safetensors").string()));
  }
  for (const auto& entry : fs::directory_iterator(options.out)) {
    result.files.push_back(entry.path().filename().string());
  }
  std::sort(result.files.begin(), result.files.end());
  return result;
}

}  // namespace rwr::trainer
