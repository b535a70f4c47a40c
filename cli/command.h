// What every `rwr <group> <verb>` shares: --config FILE, repeated --set key=value, --log-level
// (--log-level alone where a command reads no config); config resolution (defaults ← file ←
// overrides, logged at start); and the one way a command reports failure (a Status, printed by
// main as one line, exit code 1).
#pragma once

#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/config.h"
#include "fmt/format.h"

namespace rwr::cli {

struct CommonOptions {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string log_level = "info";
};

// Adds --config, --set and --log-level to `command`.
void AddCommonOptions(CLI::App* command, CommonOptions* options);

// Adds --log-level alone, for a command that reads no config key (`rwr export`, `rwr checkpoint
// inspect`): offered --config and --set, it would accept them and ignore them; without them,
// passing one is a usage error (exit 2). Its action calls InitLogging itself.
void AddLogLevelOption(CLI::App* command, std::string* log_level);

// A flag given on the command line wins over the config file: it becomes one more --set
// (key=value) after the file's. `option` may be null (a flag the command does not have here).
template <typename T>
void FlagToOverride(const CLI::Option* option, const T& value, std::string_view key,
                    CommonOptions* common) {
  if (option != nullptr && option->count() > 0) {
    common->overrides.push_back(fmt::format("{}={}", key, value));
  }
}

// Flag checks for numbers > 0 and >= 0 whose messages read "must be > 0 (got 0)" (CLI11's
// PositiveNumber and NonNegativeNumber print the whole range, up to 1.8e308 written out).
inline CLI::Validator NumberAtLeast(bool zero_allowed) {
  return CLI::Validator(
      [zero_allowed](std::string& value) -> std::string {
        char* end = nullptr;
        const double number = std::strtod(value.c_str(), &end);
        if (value.empty() || *end != '\0') return "expected a number, got " + value;
        if (zero_allowed ? number >= 0 : number > 0) return std::string();
        return std::string(zero_allowed ? "must be >= 0" : "must be > 0") + " (got " + value + ")";
      },
      zero_allowed ? "NONNEGATIVE" : "POSITIVE");
}
inline CLI::Validator Positive() { return NumberAtLeast(false); }
inline CLI::Validator NonNegative() { return NumberAtLeast(true); }

// defaults, then the --config file, then each --set in order; logs the resolved YAML once the
// keys are known and `check` (optional: the command's own reading of its settings) passes, so
// that a bad value is one line, not a page of YAML and then the line.
absl::StatusOr<Config> ResolveConfig(
    const CommonOptions& options, const Config& defaults, std::string_view command_name,
    const std::function<absl::Status(const Config&)>& check = nullptr);

// The tokenizer shipped in the repository, the default where neither a flag nor a config key names
// one. --help says where it is looked for with kBundledTokenizerHelp.
inline constexpr char kBundledTokenizer[] = "configs/tokenizer/tokenizer.json";
inline constexpr char kBundledTokenizerHelp[] =
    "default configs/tokenizer/tokenizer.json from the working directory, else from the rwr "
    "binary's directory or one above it";

// The tokenizer.json a command reads: config `key` where set (a --tokenizer flag is one more
// --set), used as given; else kBundledTokenizer, found from any working directory through
// FindBundledFile (common/bundled_file.h), or a one-line error naming where it looked.
absl::StatusOr<std::string> TokenizerPath(const Config& config, std::string_view key);

// Keeps `object` alive until the process exits (see NewFlags).
void KeepForProcess(std::shared_ptr<void> object);

// The flags a command's parsing fills and its action reads. CLI11 holds raw pointers into them,
// so they live as long as the process: owned by one process-wide list and freed at exit, so leak
// checkers have nothing to report.
template <typename Flags>
Flags* NewFlags() {
  auto owned = std::make_shared<Flags>();
  Flags* raw = owned.get();
  KeepForProcess(std::move(owned));
  return raw;
}

// Sets the subcommand's callback; a non-OK status becomes "rwr <cmd>: <message>" and exit 1.
void SetAction(CLI::App* command, std::function<absl::Status()> action);

// A group this build leaves out (`teacher`, `distill`, `cache` where RWR_SERVICES=OFF, as on GPU
// nodes): listed in --help as not built, and any use of it fails with one line saying so, instead
// of CLI11's "A subcommand is required".
void RegisterUnavailableGroup(CLI::App& app, const std::string& name);

// Every group registers itself here (one function per cli/*.cc file).
void RegisterConfigCommands(CLI::App& app);
void RegisterTeacherCommands(CLI::App& app);     // cli/teacher_commands.cc (RWR_SERVICES builds)
void RegisterModelCommands(CLI::App& app);       // cli/model_commands.cc
void RegisterTrainCommands(CLI::App& app);       // cli/train_commands.cc
void RegisterCheckpointCommands(CLI::App& app);  // cli/checkpoint_commands.cc
void RegisterExportCommands(CLI::App& app);      // cli/export_commands.cc
void RegisterGenerateCommands(CLI::App& app);    // cli/generate_commands.cc (generate, eval)
void RegisterDataCommands(CLI::App& app);        // cli/data_commands.cc
void RegisterTokenizerCommands(CLI::App& app);   // cli/tokenizer_commands.cc
void RegisterDistillCommands(CLI::App& app);     // cli/distill_commands.cc (RWR_SERVICES builds)
void RegisterCacheCommands(CLI::App& app);       // cli/cache_commands.cc (RWR_SERVICES builds)

}  // namespace rwr::cli
