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

}  // namespace rwr
