// `rwr data synth|build|inspect`: generate the synthetic long-context QA set, turn a dataset (and
// the teacher's cached notes) into token shards, and look inside a shard directory.
#include <iostream>
#include <string>

#include "cli/command.h"
#include "common/status.h"
#include "distill/synth.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

namespace rwr::cli {
namespace {

// A flag given on the command line wins over the config file: it becomes one more --set.
template <typename T>
void FlagToOverride(CLI::Option* option, const T& value, std::string_view key,
                    CommonOptions* common) {
  if (option->count() > 0) common->overrides.push_back(fmt::format("{}={}", key, value));
}

struct SynthFlags {
  CommonOptions common;
  std::string out;
  int64_t count = 0, context_tokens = 0, min_context_tokens = 0, distractors = 0;
  uint64_t seed = 0;
  std::string answer_position;
  CLI::Option *count_opt, *tokens_opt, *min_opt, *distractors_opt, *seed_opt, *position_opt;
};

absl::Status RunSynth(SynthFlags& f) {
  FlagToOverride(f.count_opt, f.count, "data.count", &f.common);
  FlagToOverride(f.tokens_opt, f.context_tokens, "data.context_tokens", &f.common);
  FlagToOverride(f.min_opt, f.min_context_tokens, "data.min_context_tokens", &f.common);
  FlagToOverride(f.distractors_opt, f.distractors, "data.distractors", &f.common);
  FlagToOverride(f.seed_opt, f.seed, "data.seed", &f.common);
  FlagToOverride(f.position_opt, f.answer_position, "data.answer_position", &f.common);
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "data synth"));
  distill::SynthOptions options;
  RWR_ASSIGN_OR_RETURN(options.count, config.GetOr<int64_t>("data.count", options.count));
  RWR_ASSIGN_OR_RETURN(options.context_tokens,
                       config.GetOr<int64_t>("data.context_tokens", options.context_tokens));
  RWR_ASSIGN_OR_RETURN(options.min_context_tokens,
                       config.GetOr<int64_t>("data.min_context_tokens", 0));
  RWR_ASSIGN_OR_RETURN(options.distractors,
                       config.GetOr<int>("data.distractors", options.distractors));
  RWR_ASSIGN_OR_RETURN(options.seed, config.GetOr<uint64_t>("data.seed", options.seed));
  RWR_ASSIGN_OR_RETURN(std::string position,
                       config.GetOr<std::string>("data.answer_position", "uniform"));
  if (position == "uniform") {
    options.answer_position = -1;
  } else {
    char* end = nullptr;
    options.answer_position = std::strtod(position.c_str(), &end);
    if (end == position.c_str() || *end != '\0' || options.answer_position < 0) {
      return absl::InvalidArgumentError(fmt::format(
          "--answer-position '{}': expected 'uniform' or a depth in [0, 1]", position));
    }
  }
  RWR_RETURN_IF_ERROR(distill::ValidateSynthOptions(options));
  RWR_RETURN_IF_ERROR(distill::WriteSynthJsonl(f.out, options));
  spdlog::info("data synth: wrote {} items of ~{} tokens to {}", options.count,
               options.context_tokens, f.out);
  return absl::OkStatus();
}

void AddSynth(CLI::App* group) {
  auto* f = new SynthFlags();  // lives as long as the app (the process)
  CLI::App* cmd = group->add_subcommand(
      "synth",
      "Generate synthetic long-context QA (JSONL: id, context, question, answer + metadata): "
      "sessions, records and reports about many people, one question whose answer is stated "
      "once, hard distractors. Same seed, same file.");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("--out", f->out, "Output JSONL file")->required();
  f->count_opt = cmd->add_option("--count", f->count, "Items to generate (config data.count; default 64)");
  f->tokens_opt = cmd->add_option("--context-tokens", f->context_tokens,
                                  "Context length in estimated tokens, 100..4000000 "
                                  "(config data.context_tokens; default 2048)");
  f->min_opt = cmd->add_option("--min-context-tokens", f->min_context_tokens,
                               "If set, each item's length is uniform in [this, --context-tokens]");
  f->distractors_opt = cmd->add_option(
      "--distractors", f->distractors,
      "Hard distractor paragraphs per item: same attribute of another person, other attributes "
      "of the same person (default 6; fewer in very short contexts)");
  f->seed_opt = cmd->add_option("--seed", f->seed, "Random seed (config data.seed; default 1)");
  f->position_opt = cmd->add_option("--answer-position", f->answer_position,
                                    "Depth of the answer: 'uniform' (default) or a fraction in "
                                    "[0, 1] (0 = start of the context)");
  SetAction(cmd, [f] { return RunSynth(*f); });
}

}  // namespace

void RegisterDataCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand("data", "Synthetic data, token shards and their inspection");
  group->require_subcommand(1);
  AddSynth(group);
}

}  // namespace rwr::cli
