// Collective operations the trainer needs across data-parallel ranks. The trainer talks only to
// this interface; SingleRankCommunicator (here) serves one process, and an MPI/NCCL
// implementation plugs in later without touching the training loop. Gradients are all-reduced
// over the flat parameter layout (trainer/param_layout.h); with ZeRO-1 each rank updates the
// parameter range it owns (ShardRange) and AllGather brings the others' ranges back.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace rwr::trainer {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In place: every rank ends with the element-wise sum over ranks.
  virtual absl::Status AllReduceSum(std::span<float> data) = 0;
  virtual absl::Status AllReduceSum(std::span<double> data) = 0;
  virtual absl::Status Broadcast(std::span<float> data, int root) = 0;
  // `data` holds world_size equal ranges; range `rank()` is this rank's input, the others are
  // filled from their owners.
  virtual absl::Status AllGather(std::span<float> data) = 0;
  virtual absl::Status Barrier() = 0;
};

// [begin, end) of `total` elements owned by `rank` of `world` (equal ranges, last one shorter).
struct ShardRange {
  int64_t begin = 0, end = 0;
  static ShardRange For(int64_t total, int rank, int world) {
    const int64_t per = (total + world - 1) / world;
    const int64_t b = std::min<int64_t>(total, per * rank);
    return {b, std::min<int64_t>(total, b + per)};
  }
};

class SingleRankCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  absl::Status AllReduceSum(std::span<float>) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(std::span<double>) override { return absl::OkStatus(); }
  absl::Status Broadcast(std::span<float>, int) override { return absl::OkStatus(); }
  absl::Status AllGather(std::span<float>) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

}  // namespace rwr::trainer
