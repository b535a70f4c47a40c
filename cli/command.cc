#include "cli/command.h"

#include <memory>
#include <vector>

#include "cli/config_keys.h"
#include "common/bundled_file.h"
#include "common/logging.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

namespace rwr::cli {

// Thrown out of a CLI11 callback to carry a command's failure to main without CLI11 formatting it.
struct CommandFailed : CLI::Error {
  explicit CommandFailed(const std::string& message) : CLI::Error("CommandFailed", message, 1) {}
};

void AddCommonOptions(CLI::App* command, CommonOptions* options) {
  command->add_option("--config", options->config_path, "YAML config file (see docs/configuration.md)")
      ->check(CLI::ExistingFile);
  command->add_option("--set", options->overrides,
                      "Override a config key, e.g. --set train.lr=3e-4 (repeatable)")
      ->take_all()
      ->allow_extra_args(false);
  AddLogLevelOption(command, &options->log_level);
}

void AddLogLevelOption(CLI::App* command, std::string* log_level) {
  command->add_option("--log-level", *log_level, "trace, debug, info, warn or error")
      ->capture_default_str();
}

absl::StatusOr<Config> ResolveConfig(const CommonOptions& options, const Config& defaults,
                                     std::string_view command_name,
                                     const std::function<absl::Status(const Config&)>& check) {
  if (absl::Status s = InitLogging({.level = options.log_level}); !s.ok()) return s;
  Config config = defaults;
  if (!options.config_path.empty()) {
    absl::StatusOr<Config> file = Config::LoadFile(options.config_path);
    if (!file.ok()) return file.status();
    config.Merge(*file);
  }
  if (absl::Status s = config.SetAll(options.overrides); !s.ok()) return s;
  RWR_RETURN_IF_ERROR(CheckConfigKeys(config, command_name));
  if (check) RWR_RETURN_IF_ERROR(check(config));
  // Nothing to show for a command given no file, no --set and no defaults ("{}" on every call of
  // a client command such as `rwr distill status`).
  if (!config.LeafKeys().empty()) {
    spdlog::info("rwr {}: resolved config:\n{}", command_name, config.ToYaml());
  }
  return config;
}

absl::StatusOr<std::string> TokenizerPath(const Config& config, std::string_view key) {
  if (config.Has(key)) return config.Get<std::string>(key);
  RWR_ASSIGN_OR_RETURN(std::string path,
                       FindBundledFile(kBundledTokenizer, "give --tokenizer FILE"));
  spdlog::info("tokenizer: {} (the default)", path);
  return path;
}

void KeepForProcess(std::shared_ptr<void> object) {
  // Destroyed after main returns, when the CLI::App that points into these objects is gone.
  static std::vector<std::shared_ptr<void>> kept;
  kept.push_back(std::move(object));
}

void SetAction(CLI::App* command, std::function<absl::Status()> action) {
  command->callback([action = std::move(action)] {
    InstallShutdownHandlers();
    absl::Status status = action();
    if (IsReportedElsewhere(status)) throw CommandFailed("");  // exit 1, printed by another rank
    if (!status.ok()) throw CommandFailed(std::string(status.message()));
  });
}

void RegisterUnavailableGroup(CLI::App& app, const std::string& name) {
  CLI::App* group = app.add_subcommand(
      name, "(not in this build: rwr was built with RWR_SERVICES=OFF, without gRPC and RocksDB)");
  group->prefix_command();  // the words after the group are not parsed: the group is not here
  SetAction(group, [name] {
    return absl::FailedPreconditionError(fmt::format(
        "rwr {} is not in this build (RWR_SERVICES=OFF: no gRPC or RocksDB, as on GPU nodes); "
        "run it with an rwr built with services",
        name));
  });
}

}  // namespace rwr::cli
