// `rwr export --checkpoint DIR --out DIR`: a checkpoint in the Hugging Face layout for serving.
#include <iostream>

#include "cli/command.h"
#include "common/status.h"
#include "trainer/export.h"

namespace rwr::cli {

void RegisterExportCommands(CLI::App& app) {
  struct Options {
    CommonOptions common;
    trainer::ExportOptions exp;
    double max_shard_gib = 5;
  };
  auto* options = NewFlags<Options>();
  CLI::App* cmd = app.add_subcommand("export", "Export a checkpoint in the Hugging Face layout");
  cmd->footer(
      "Writes config.json, model.safetensors (bf16 or\n"
      "fp32; model-0000i-of-0000K.safetensors + index above --max-shard-gib), tokenizer.json.\n"
      "Loads with transformers' MambaForCausalLM.from_pretrained(DIR).");
  AddCommonOptions(cmd, &options->common);
  cmd->add_option("--checkpoint", options->exp.checkpoint,
                  "step_NNNNNNNN dir, checkpoints/ dir or run dir (newest complete checkpoint)")
      ->required();
  cmd->add_option("--out", options->exp.out, "Output directory (created)")->required();
  cmd->add_option("--dtype", options->exp.dtype, "bf16 or fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--max-shard-gib", options->max_shard_gib, "Shard the weights above this size")
      ->capture_default_str();
  cmd->add_option("--tokenizer", options->exp.tokenizer,
                  "tokenizer.json to copy (default: found through the run's config / data dir)");
  cmd->add_flag("--write-check", options->exp.write_check,
                "Also write rwr_check.safetensors (ids + rwr logits) for an HF parity check");
  SetAction(cmd, [options]() -> absl::Status {
    RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(options->common, Config(), "export"));
    options->exp.max_shard_bytes = static_cast<uint64_t>(options->max_shard_gib * (1ULL << 30));
    RWR_ASSIGN_OR_RETURN(trainer::ExportResult result, trainer::ExportCheckpoint(options->exp));
    std::cout << "exported " << result.checkpoint << " -> " << options->exp.out << " ("
              << options->exp.dtype << "):";
    for (const auto& f : result.files) std::cout << " " << f;
    std::cout << "\n";
    return absl::OkStatus();
  });
}

}  // namespace rwr::cli
