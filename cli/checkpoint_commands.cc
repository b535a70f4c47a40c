// `rwr checkpoint inspect DIR`: what a checkpoint holds (step, data position, model, optimizer,
// tensors, metrics) and whether it is complete.
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/command.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "storage/safetensors.h"
#include "trainer/checkpoint.h"
#include "trainer/model_config.h"

namespace rwr::cli {

void RegisterCheckpointCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand("checkpoint", "Inspect training checkpoints");
  group->require_subcommand(1);
  struct Options {
    CommonOptions common;
    std::string dir;
    bool tensors = false;
  };
  auto* options = NewFlags<Options>();
  options->common.log_level = "warn";
  CLI::App* inspect = group->add_subcommand(
      "inspect",
      "Describe a checkpoint: DIR is a step_NNNNNNNN directory, a checkpoints/ directory or a run\n"
      "directory (its newest complete checkpoint is shown, and every checkpoint is listed)");
  AddCommonOptions(inspect, &options->common);
  inspect->add_option("dir", options->dir, "Checkpoint, checkpoints or run directory")->required();
  inspect->add_flag("--tensors", options->tensors, "List every tensor with dtype and shape");
  SetAction(inspect, [options]() -> absl::Status {
    namespace fs = std::filesystem;
    RWR_ASSIGN_OR_RETURN(Config config,
                         ResolveConfig(options->common, Config(), "checkpoint inspect"));
    for (const fs::path& d : {fs::path(options->dir), fs::path(options->dir) / "checkpoints"}) {
      auto all = trainer::ListCheckpoints(d.string());
      if (!all.empty()) {
        std::cout << "complete checkpoints in " << d.string() << ":\n";
        for (const auto& c : all) std::cout << "  " << fs::path(c).filename().string() << "\n";
      }
    }
    RWR_ASSIGN_OR_RETURN(std::string dir, trainer::ResolveCheckpointDir(options->dir));
    RWR_ASSIGN_OR_RETURN(trainer::MambaConfig model, trainer::MambaConfig::FromJsonFile(
                                                         (fs::path(dir) / "config.json").string()));
    std::ifstream in(fs::path(dir) / "trainer_state.json");
    nlohmann::json state;
    try {
      in >> state;
    } catch (const std::exception& e) {
      return absl::DataLossError(fmt::format("{}/trainer_state.json: {}", dir, e.what()));
    }
    std::cout << "checkpoint  " << dir << " (complete: DONE present)\n";
    std::cout << "step        " << state.value("step", 0) << "\n";
    std::cout << "tokens seen " << state.value("tokens_seen", 0) << "\n";
    std::cout << "world size  " << state.value("world_size", 1) << "\n";
    std::cout << "data        " << state["data_position"].dump() << "\n";
    std::cout << "model       " << model.Summary() << "\n";
    std::cout << "metrics     " << state["last_metrics"].dump() << "\n";
    uint64_t bytes = 0;
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_regular_file()) bytes += entry.file_size();
    }
    std::cout << fmt::format("files       {:.1f} MiB\n", bytes / 1048576.0);
    RWR_ASSIGN_OR_RETURN(auto weights, storage::SafetensorsModel::Open(dir));
    std::cout << "tensors     " << weights->TensorNames().size() << " in model weights\n";
    if (options->tensors) {
      for (const auto& name : weights->TensorNames()) {
        const storage::TensorInfo* t = weights->Find(name);
        std::cout << fmt::format("  {:<50} {:<5} {}\n", name, storage::DTypeName(t->dtype),
                                 storage::ShapeString(t->shape));
      }
    }
    return absl::OkStatus();
  });
}

}  // namespace rwr::cli
