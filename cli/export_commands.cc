// `rwr export --checkpoint DIR --out DIR`: a checkpoint in the Hugging Face layout for serving.
#include <algorithm>
#include <cmath>
#include <iostream>

#include "cli/command.h"
#include "common/logging.h"
#include "common/status.h"
#include "trainer/export.h"

namespace rwr::cli {

void RegisterExportCommands(CLI::App& app) {
  struct Options {
    std::string log_level = "info";
    trainer::ExportOptions exp;
    double max_shard_gib = 5;
  };
  auto* options = NewFlags<Options>();
  CLI::App* cmd = app.add_subcommand("export", "Export a checkpoint in the Hugging Face layout");
  cmd->footer(
      "Writes config.json, model.safetensors (bf16 or\n"
      "fp32; model-0000i-of-0000K.safetensors + index above --max-shard-gib), tokenizer.json.\n"
      "Loads with transformers' MambaForCausalLM.from_pretrained(DIR). The export is written to\n"
      "DIR.tmp-<pid> and moved into place when complete; a failed export leaves no DIR.\n"
      "Reads no config file (no --config/--set): the model and the run's config come from the\n"
      "checkpoint, every other setting from the flags above.");
  AddLogLevelOption(cmd, &options->log_level);
  cmd->add_option("--checkpoint", options->exp.checkpoint,
                  "step_NNNNNNNN dir, checkpoints/ dir or run dir (newest complete checkpoint)")
      ->required();
  cmd->add_option("--out", options->exp.out, "Output directory (created; must be empty)")
      ->required();
  cmd->add_flag("--overwrite", options->exp.overwrite,
                "Replace a non-empty --out entirely (none of its old files is kept)");
  cmd->add_option("--dtype", options->exp.dtype, "bf16 or fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--max-shard-gib", options->max_shard_gib,
                  "Shard the weights above this size (GiB, > 0)")
      ->capture_default_str();
  CLI::Option* tokenizer = cmd->add_option(
      "--tokenizer", options->exp.tokenizer,
      "tokenizer.json to copy (default: found through the run's data dir or the config the "
      "checkpoint recorded; none found is an error)");
  cmd->add_flag("--no-tokenizer", options->exp.without_tokenizer,
                "Export the weights alone, without tokenizer.json")
      ->excludes(tokenizer);
  cmd->add_flag("--write-check", options->exp.write_check,
                "Also write rwr_check.safetensors (ids + rwr logits) for an HF parity check");
  SetAction(cmd, [options]() -> absl::Status {
    RWR_RETURN_IF_ERROR(InitLogging({.level = options->log_level}));
    const double gib = options->max_shard_gib;
    if (!std::isfinite(gib) || gib <= 0) {
      return absl::InvalidArgumentError(
          fmt::format("--max-shard-gib {}: expected a positive size in GiB, e.g. 5", gib));
    }
    // Clamped to [1 byte, 1e18 bytes]: a tiny size still shards, a huge one stays a uint64.
    const double bytes = std::clamp(gib * static_cast<double>(1ULL << 30), 1.0, 1e18);
    options->exp.max_shard_bytes = static_cast<uint64_t>(bytes);
    RWR_ASSIGN_OR_RETURN(trainer::ExportResult result, trainer::ExportCheckpoint(options->exp));
    std::cout << "exported " << result.checkpoint << " -> " << options->exp.out << " ("
              << options->exp.dtype << "):";
    for (const auto& f : result.files) std::cout << " " << f;
    std::cout << "\n";
    return absl::OkStatus();
  });
}

}  // namespace rwr::cli
