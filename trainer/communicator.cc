#include "trainer/communicator.h"

#include <cstdlib>

#include "common/process.h"
#include "common/status.h"
#ifdef RWR_TRAINER_HAVE_MPI
#include "trainer/mpi_communicator.h"
#endif

namespace rwr::trainer {

bool LaunchedByMpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"}) {
    if (std::getenv(name) != nullptr) return true;
  }
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
