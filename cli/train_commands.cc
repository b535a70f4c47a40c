// `rwr train`: train a Mamba model on token shards (trainer/train_loop.h). Checkpoints every
// train.checkpoint_every steps and on SIGTERM/SIGUSR1 (then exits 0 so Slurm can requeue);
// resumes from the newest complete checkpoint in train.out_dir.
#include <iostream>
#include <memory>

#include "cli/command.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "spdlog/spdlog.h"
#include "trainer/communicator.h"
#include "trainer/train_loop.h"

namespace rwr::cli {

void RegisterTrainCommands(CLI::App& app) {
  auto* options = NewFlags<CommonOptions>();
  CLI::App* train = app.add_subcommand("train", "Train a Mamba model on token shards");
  train->footer(
      "Needs data.dir (from `rwr data build`), train.out_dir and a model: section (inline HF keys\n"
      "as in configs/models/tiny.yaml, model.config: config.json, or model.init_from: DIR).\n"
      "Writes metrics.jsonl and checkpoints/step_NNNNNNNN/ under train.out_dir; rerunning the "
      "same\n"
      "command resumes from the newest complete checkpoint. Example:\n"
      "  rwr train --config configs/train_tiny.yaml --set data.dir=runs/data --set "
      "train.steps=200\n"
      "Keys: docs/training.md (an unknown key is an error). SIGTERM/SIGUSR1/SIGINT: checkpoint,\n"
      "exit 0. One run at a time per train.out_dir: a second is refused (exit 1), naming the run\n"
      "that holds it.\n"
      "Data parallel: start one process per GPU (or per CPU rank) with mpirun or srun, e.g.\n"
      "  mpirun -np 4 rwr train --config C.yaml\n"
      "Each rank reads its own rows of every batch; the gradients are summed over the ranks and\n"
      "each rank updates 1/N of the parameters (ZeRO-1). To checkpoint and stop, send SIGUSR1\n"
      "to any rank (they stop together at one step) and to mpirun; not every mpirun forwards it.");
  AddCommonOptions(train, options);
  SetAction(train, [options]() -> absl::Status {
    // First: the rank is known before anything logs (only rank 0 logs info lines).
    RWR_ASSIGN_OR_RETURN(std::unique_ptr<trainer::Communicator> comm,
                         trainer::CommunicatorForThisProcess());
    absl::StatusOr<Config> config = ResolveConfig(*options, trainer::DefaultTrainConfig(), "train",
                                                  trainer::CheckTrainSettings);
    // Maybe this rank alone (a file its node cannot read): the ranks stop together.
    RWR_RETURN_IF_ERROR(trainer::AgreeOnStatus(config.status(), *comm));
    // Train ends the whole job itself where a rank fails in it.
    RWR_ASSIGN_OR_RETURN(trainer::TrainResult result, trainer::Train(*config, comm.get()));
    if (comm->rank() == 0 && result.interrupted) RecordStoppedEarly();  // rank 0 speaks for the job
    if (comm->rank() != 0) return absl::OkStatus();  // rank 0 reports for the job
    if (result.nothing_to_do || result.final_step == result.start_step) {
      std::cout << fmt::format("train: no step run{}; at step {}, checkpoint {}\n",
                               result.nothing_to_do ? " (already at train.steps)" : "",
                               result.final_step,
                               result.last_checkpoint.empty() ? "none" : result.last_checkpoint);
      return absl::OkStatus();
    }
    std::cout << fmt::format(
        "train: steps {} -> {}{}, loss {:.4f} -> {:.4f}{}, {:.0f} s ({:.0f} tokens/s), "
        "checkpoint {}\n",
        result.start_step, result.final_step,
        result.interrupted ? " (stopped early, resumable)" : "", result.first_loss,
        result.last_loss,
        result.last_eval_loss >= 0 ? fmt::format(", eval loss {:.4f}", result.last_eval_loss) : "",
        result.seconds, result.seconds > 0 ? result.tokens / result.seconds : 0.0,
        result.last_checkpoint);
    return absl::OkStatus();
  });
}

}  // namespace rwr::cli
