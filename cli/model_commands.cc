// `rwr model init`: write a randomly initialised Mamba model (Mamba's init scheme) in the Hugging
// Face layout, from a model config (configs/models/*.yaml, or model.config: config.json).
#include <iostream>

#include "cli/command.h"
#include "common/status.h"
#include "spdlog/spdlog.h"
#include "trainer/export.h"
#include "trainer/model_io.h"
#include "trainer/train_loop.h"

namespace rwr::cli {

void RegisterModelCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand("model", "Create Mamba models");
  group->require_subcommand(1);
  struct Options {
    CommonOptions common;
    std::string out;
    uint64_t seed = 0;
    std::string dtype = "fp32";
    bool overwrite = false;
  };
  auto* options = NewFlags<Options>();
  CLI::App* init = group->add_subcommand(
      "init",
      "Write a randomly initialised model (config.json + model.safetensors, HF layout).\n"
      "The model comes from the config's model: section, e.g. --config configs/models/tiny.yaml");
  AddCommonOptions(init, &options->common);
  init->add_option("--out", options->out, "Output directory (created; must be empty)")->required();
  init->add_flag("--overwrite", options->overwrite,
                 "Replace a non-empty --out entirely (none of its old files is kept)");
  init->add_option("--seed", options->seed, "Initialisation seed (0 or more)")
      ->capture_default_str()
      ->check(NonNegative());  // "-1" would otherwise wrap to 2^64 - 1
  init->add_option("--dtype", options->dtype, "fp32 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
  SetAction(init, [options]() -> absl::Status {
    RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(options->common, Config(), "model init"));
    if (config.Has("model.init_from")) {  // it names weights to keep; this writes random ones
      return absl::InvalidArgumentError(
          "model.init_from names trained weights, which `rwr model init` would replace with "
          "random ones: to initialise that shape afresh, give model.config: DIR/config.json");
    }
    RWR_ASSIGN_OR_RETURN(trainer::MambaConfig model, trainer::ModelConfigFromRunConfig(config));
    // Before the initialisation, which takes seconds for the large configs.
    RWR_RETURN_IF_ERROR(trainer::CheckOutputDir(options->out, options->overwrite));
    spdlog::info("model init: {}", model.Summary());
    const std::vector<float> params = trainer::InitParams(model, options->seed);
    trainer::SaveModelDirOptions save;
    save.dtype = options->dtype == "bf16" ? storage::DType::kBF16 : storage::DType::kF32;
    // Whole or not at all, as `rwr export` writes: no half-written model, no stale file (an old
    // shard index would win over the new model.safetensors) left beside the new weights.
    RWR_RETURN_IF_ERROR(trainer::WriteWholeDirectory(
        options->out, options->overwrite,
        [&](const std::string& dir) { return trainer::SaveModelDir(dir, model, params, save); }));
    std::cout << "wrote " << options->out << " (" << model.Summary() << ")\n";
    return absl::OkStatus();
  });
}

}  // namespace rwr::cli
