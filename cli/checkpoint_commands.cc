// `rwr checkpoint inspect DIR`: what a checkpoint holds (step, data position, model, optimizer,
// tensors, metrics) and whether it is complete: every file resume reads is there and whole.
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/command.h"
#include "common/logging.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "storage/safetensors.h"
#include "trainer/checkpoint.h"
#include "trainer/model_config.h"

namespace rwr::cli {
namespace {

namespace fs = std::filesystem;

// What is wrong with checkpoint `dir`, one line per problem, each naming its file (empty: nothing).
// Its DONE marker (ResolveCheckpointDir found one) says the save finished, not that the files are
// still whole (a copy cut short, a file deleted since). So every file
// `rwr train` reads to resume is checked: config.json and trainer_state.json parse, and each
// .safetensors file (weights, or the shards of their index; one optimizer file per rank) has a
// header that parses and a size that matches the header's data extent. SafetensorsFile::Open
// checks both from the header and maps the file without reading the tensors.
std::vector<std::string> CheckpointProblems(const fs::path& dir) {
  std::vector<std::string> problems;
  auto note = [&problems](const absl::Status& status) {
    if (!status.ok()) problems.emplace_back(status.message());
  };
  note(trainer::MambaConfig::FromJsonFile((dir / "config.json").string()).status());
  auto state = trainer::ReadTrainerState(dir.string());
  note(state.status());
  note(storage::SafetensorsModel::Open(dir.string()).status());
  // Without a readable trainer_state.json (already reported) rank 0's file is still checked.
  const int world_size = state.ok() ? state->world_size : 1;
  for (int rank = 0; rank < world_size; ++rank) {
    const fs::path path = dir / trainer::OptimizerFileName(rank);
    const absl::Status opened = storage::SafetensorsFile::Open(path.string()).status();
    if (!opened.ok()) {
      note(opened);
      break;  // one rank's file is enough to report (and a corrupt world_size stays one line)
    }
  }
  return problems;
}

}  // namespace

void RegisterCheckpointCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand("checkpoint", "Inspect training checkpoints");
  group->require_subcommand(1);
  struct Options {
    std::string log_level = "warn";
    std::string dir;
    bool tensors = false;
  };
  auto* options = NewFlags<Options>();
  CLI::App* inspect = group->add_subcommand(
      "inspect",
      "Describe a checkpoint: DIR is a step_NNNNNNNN directory, a checkpoints/ directory or a run\n"
      "directory (its newest complete checkpoint is shown, and every checkpoint is listed).\n"
      "Checks that every file resume reads is present and whole (safetensors headers and sizes);\n"
      "a damaged checkpoint is an error naming the file");
  inspect->footer("Reads no config file (no --config/--set): everything shown comes from DIR.");
  AddLogLevelOption(inspect, &options->log_level);
  inspect->add_option("dir", options->dir, "Checkpoint, checkpoints or run directory")->required();
  inspect->add_flag("--tensors", options->tensors, "List every tensor with dtype and shape");
  SetAction(inspect, [options]() -> absl::Status {
    RWR_RETURN_IF_ERROR(InitLogging({.level = options->log_level}));
    for (const fs::path& d : {fs::path(options->dir), fs::path(options->dir) / "checkpoints"}) {
      auto all = trainer::ListCheckpoints(d.string());
      if (!all.empty()) {
        std::cout << "complete checkpoints in " << d.string() << ":\n";
        for (const auto& c : all) std::cout << "  " << fs::path(c).filename().string() << "\n";
      }
      for (const auto& c : trainer::UnpublishedCheckpoints(d.string())) {
        std::cout << "not published: " << fs::path(c).filename().string()
                  << " (being written, or left by a run that was killed; never resumed from "
                     "until published, and the next save clears a leftover)\n";
      }
    }
    RWR_ASSIGN_OR_RETURN(std::string dir, trainer::ResolveCheckpointDir(options->dir));
    const std::vector<std::string> problems = CheckpointProblems(dir);
    if (!problems.empty()) {
      std::cout << "checkpoint  " << dir << " (DAMAGED: DONE present, files not whole)\n";
      for (const auto& p : problems) std::cout << "  problem   " << p << "\n";
      return absl::DataLossError(fmt::format(
          "damaged checkpoint: {}{}", problems.front(),
          problems.size() > 1 ? fmt::format(" (and {} more problems)", problems.size() - 1) : ""));
    }
    RWR_ASSIGN_OR_RETURN(trainer::MambaConfig model, trainer::MambaConfig::FromJsonFile(
                                                         (fs::path(dir) / "config.json").string()));
    RWR_ASSIGN_OR_RETURN(trainer::TrainerState state, trainer::ReadTrainerState(dir));
    std::cout << "checkpoint  " << dir << " (complete: DONE present, every file whole)\n";
    std::cout << "step        " << state.step << "\n";
    std::cout << "tokens seen " << state.tokens_seen << "\n";
    std::cout << "world size  " << state.world_size << "\n";
    std::cout << "data        "
              << (state.loader_position_json.empty() ? "null" : state.loader_position_json) << "\n";
    std::cout << "model       " << model.Summary() << "\n";
    std::cout << "metrics     " << state.last_metrics.dump() << "\n";
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
