// bench/kernel_trace: a timeline of the GPU for a machine without a timeline tool (the device
// machine has Nsight Compute, which runs kernels one at a time, but no Nsight Systems). Between
// Start and Stop, CUPTI's activity records give every kernel, copy and memset the GPU ran, with
// its start and end on the GPU clock, and every CUDA runtime call the host made; Summarise tells
// where the GPU sat idle and which host calls it was waiting on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rwr::bench {

struct TraceEvent {
  enum class Kind { kKernel, kCopy, kMemset, kRuntimeCall };
  Kind kind;
  std::string name;  // kernel name (base name, no template arguments) or runtime function
  uint64_t start_ns;
  uint64_t end_ns;
};

// Starts recording; false (with *error set) where CUPTI is unavailable or already in use
// (for example by a profiler the program runs under).
bool StartKernelTrace(std::string* error);

// Stops recording and returns the events since Start, GPU ones in start order.
std::vector<TraceEvent> StopKernelTrace();

// Prints the GPU's busy and idle time over the traced span, each kind of GPU work's total, the
// `top` longest idle gaps with the GPU work and the host call around them, and the host's time
// inside runtime calls that block it (synchronisations, copies, allocations).
void PrintTraceSummary(const std::vector<TraceEvent>& events, int top);

}  // namespace rwr::bench
