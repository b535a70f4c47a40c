#include "trainer/communicator.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/cord.h"
#include "common/process.h"
#include "common/status.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
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

namespace {
constexpr char kAgreedUrl[] = "rwr/agreed-failure";
}  // namespace

absl::Status AgreeOnStatus(absl::Status own, Communicator& comm) {
  const int world = comm.world_size(), rank = comm.rank();
  if (world == 1) return own;
  std::vector<double> failed(world, 0.0);  // each rank's own slot: every rank learns which failed
  failed[rank] = own.ok() ? 0.0 : 1.0;
  RWR_RETURN_IF_ERROR(comm.AllReduceSum(std::span<double>(failed)));
  std::vector<int> failed_ranks;
  for (int r = 0; r < world; ++r) {
    if (failed[r] != 0) failed_ranks.push_back(r);
  }
  if (failed_ranks.empty()) return absl::OkStatus();
  absl::Status agreed;
  if (!own.ok()) {
    const std::string message(own.message());
    agreed =
        absl::Status(own.code(), rank == 0 ? message : fmt::format("rank {}: {}", rank, message));
  } else {
    const bool one = failed_ranks.size() == 1;
    agreed = absl::AbortedError(fmt::format(
        "{} of {} ranks failed (rank{} {}, {} above); every rank stopped", failed_ranks.size(),
        world, one ? "" : "s", fmt::join(failed_ranks, ", "), one ? "its error" : "their errors"));
  }
  agreed.SetPayload(kAgreedUrl, absl::Cord("1"));
  // Rank 0 speaks for the job: its own error, or the count of those that failed.
  if (rank != 0 && (failed[0] != 0 || own.ok())) return ReportedElsewhere(std::move(agreed));
  return agreed;
}

bool IsAgreedFailure(const absl::Status& status) {
  return status.GetPayload(kAgreedUrl).has_value();
}

}  // namespace rwr::trainer
