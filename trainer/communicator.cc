#include "trainer/communicator.h"

#include <cstdlib>

#include "common/process.h"
#include "common/status.h"
#ifdef RWR_TRAINER_HAVE_MPI
#include "trainer/mpi_communicator.h"
#endif

namespace rwr::trainer {

bool LaunchedByMpi() {
  auto number = [](const char* name) {
    const char* value = std::getenv(name);
    return value != nullptr ? std::atoi(value) : 0;
  };
  if (const int size = number("OMPI_COMM_WORLD_SIZE"); size > 0) return size > 1;
  if (std::getenv("PMI_RANK") != nullptr) return number("PMI_SIZE") > 1;
  // srun --mpi=pmix: PMIx names no size; Slurm does.
  if (std::getenv("PMIX_RANK") != nullptr) return number("SLURM_NTASKS") > 1;
  return false;
}

absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorForThisProcess() {
  std::unique_ptr<Communicator> comm;
  if (LaunchedByMpi()) {
#ifdef RWR_TRAINER_HAVE_MPI
    RWR_ASSIGN_OR_RETURN(comm, MpiCommunicator::Create());
#else
    return absl::FailedPreconditionError(
        "started by an MPI launcher, but this rwr was built without MPI (install "
        "libopenmpi-dev and reconfigure)");
#endif
  } else {
    comm = std::make_unique<SingleRankCommunicator>();
  }
  SetProcessRank(comm->rank(), comm->world_size());
  return comm;
}

}  // namespace rwr::trainer
