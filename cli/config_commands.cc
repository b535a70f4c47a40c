// `rwr config show`: resolve --config and --set exactly as every command does and print the
// result, so a user can check what a run will see before submitting it.
#include <iostream>

#include "cli/command.h"
#include "cli/config_keys.h"

namespace rwr::cli {

void RegisterConfigCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand("config", "Inspect run configuration");
  group->require_subcommand(1);
  auto* options = NewFlags<CommonOptions>();
  CLI::App* show = group->add_subcommand("show", "Print the resolved config (file + --set overrides) as YAML");
  AddCommonOptions(show, options);
  options->log_level = "warn";
  SetAction(show, [options]() -> absl::Status {
    absl::StatusOr<Config> config = ResolveConfig(*options, Config(), "config show");
    if (!config.ok()) return config.status();
    std::cout << config->ToYaml() << "\n";
    return absl::OkStatus();
  });
  CLI::App* keys = group->add_subcommand(
      "keys", "List every config key an rwr command reads (any other key is an error)");
  keys->callback([] {
    for (const std::string& key : KnownConfigKeys()) std::cout << key << "\n";
  });
}

}  // namespace rwr::cli
