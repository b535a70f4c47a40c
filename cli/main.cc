// The one `rwr` binary: `rwr <group> <verb> [options]`. Each group lives in its own cli/*.cc and
// registers itself below.
#include <iostream>
#include <string>

#include "cli/command.h"
#include "common/shutdown.h"
#include "common/version.h"

int main(int argc, char** argv) {
  // Before anything else: a SIGTERM while the binary starts up (a Slurm job cancelled at once)
  // must reach the commands' checks, not kill the process with a non-zero status.
  rwr::InstallShutdownHandlers();
  CLI::App app("rwr: Recall-with-Reasoning distillation and training for Mamba language models.\n"
               "Run `rwr <group> --help` for a group's commands.",
               "rwr");
  app.set_version_flag("--version", rwr::VersionString());
  app.require_subcommand(1);
  app.fallthrough(false);

  rwr::cli::RegisterConfigCommands(app);
#if RWR_CLI_TEACHER
  rwr::cli::RegisterTeacherCommands(app);
#else
  rwr::cli::RegisterUnavailableGroup(app, "teacher");
#endif
  rwr::cli::RegisterModelCommands(app);
  rwr::cli::RegisterTrainCommands(app);
  rwr::cli::RegisterCheckpointCommands(app);
  rwr::cli::RegisterExportCommands(app);
  rwr::cli::RegisterGenerateCommands(app);
  rwr::cli::RegisterDataCommands(app);
  rwr::cli::RegisterTokenizerCommands(app);
#if RWR_CLI_DISTILL_AND_CACHE
  rwr::cli::RegisterDistillCommands(app);
  rwr::cli::RegisterCacheCommands(app);
#else
  rwr::cli::RegisterUnavailableGroup(app, "distill");
  rwr::cli::RegisterUnavailableGroup(app, "cache");
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
      // One write: the ranks of a data-parallel run share a terminal, lines must not interleave.
      if (*e.what() != '\0') std::cerr << std::string("rwr: error: ") + e.what() + "\n";
      return 1;
    }
    // Point at the help of the command the user was typing: the subcommands among its words.
    std::string command = "rwr";
    CLI::App* current = &app;
    for (int i = 1; i < argc; ++i) {
      const auto subs =
          current->get_subcommands([&](CLI::App* sub) { return sub->check_name(argv[i]); });
      if (subs.empty()) break;
      command += std::string(" ") + argv[i];
      current = subs.front();
    }
    std::cerr << "rwr: " << e.what() << " (see " << command << " --help)\n";
    return 2;
  }
  return 0;
}
