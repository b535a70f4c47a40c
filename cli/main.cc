// The one `rwr` binary: `rwr <group> <verb> [options]`. Each group lives in its own cli/*.cc and
// registers itself below.
#include <iostream>

#include "cli/command.h"
#include "common/version.h"

int main(int argc, char** argv) {
  CLI::App app("rwr: Recall-with-Reasoning distillation and training for Mamba language models.\n"
               "Run `rwr <group> --help` for a group's commands.",
               "rwr");
  app.set_version_flag("--version", rwr::VersionString());
  app.require_subcommand(1);
  app.fallthrough(false);

  rwr::cli::RegisterConfigCommands(app);
#if RWR_CLI_TEACHER
  rwr::cli::RegisterTeacherCommands(app);
#endif
  rwr::cli::RegisterModelCommands(app);
  rwr::cli::RegisterTrainCommands(app);
  rwr::cli::RegisterCheckpointCommands(app);
  rwr::cli::RegisterExportCommands(app);
  rwr::cli::RegisterDataCommands(app);
  rwr::cli::RegisterTokenizerCommands(app);
#if RWR_CLI_DISTILL_AND_CACHE
  rwr::cli::RegisterDistillCommands(app);
  rwr::cli::RegisterCacheCommands(app);
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::Error& e) {
    if (e.get_name() == "CommandFailed") {
      std::cerr << "rwr: error: " << e.what() << "\n";
      return 1;
    }
    std::cerr << "rwr: " << e.what() << " (see rwr --help)\n";
    return 2;
  }
  return 0;
}
