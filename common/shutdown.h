// Cooperative shutdown: SIGINT, SIGTERM and SIGUSR1 set a flag that long-running loops poll
// (checkpoint and exit 0 so Slurm can requeue, drain a queue, ...). A second SIGINT while the
// first is being handled kills the process the default way, so a stuck job can still be stopped.
#pragma once

namespace rwr {

void InstallShutdownHandlers();
bool ShutdownRequested();
int ShutdownSignal();  // the signal that asked for shutdown; 0 if none
void RequestShutdown(int signal_number);  // as if the signal arrived (tests, internal aborts)
void ResetShutdownForTesting();

// Tells the batch script that started this command (deploy/slurm/rwr-job.sbatch) that a signal
// stopped the work before its end and a rerun of the same command would continue it: creates the
// file RWR_STOPPED_EARLY_FILE names, where it is set. A command that finished its work says
// nothing, so a time-limit warning that comes as it finishes does not requeue it.
void RecordStoppedEarly();

}  // namespace rwr
