// The one-pass CUDA forward of the selective scan (selective_scan_single_pass.cu), internal to
// scan_kernels/: selective_scan.cu picks it for a forward whose tensors it can copy with 16-byte
// cp.async (SinglePassApplies) and whose channels fill the GPU (SinglePassStatesPerLane), and runs
// the chunked kernels otherwise.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "scan_kernels/selective_scan.h"

struct CUstream_st;

namespace rwr::scan::single_pass {

// Every per-token tensor's rows 16-byte aligned (x, Δ, z, B, C), S = 16.
bool SinglePassApplies(const SelectiveScanParams& p);

// The states per lane at which the one-pass forward fills the GPU with warps: 8 for the largest
// batches, 4 for the next (B 3–4 at Di 5120), 0 where neither does (the chunked forwards run).
int SinglePassStatesPerLane(const SelectiveScanParams& p, int sms);

// Runs the forward: out, final_state, and (ckpt non-null) the state before every 16-token tile,
// ckpt[((b · n_tiles + j) · Di + d) · 16 + s], the layout the backward reads.
absl::Status LaunchSinglePass(const SelectiveScanParams& p, float* ckpt, int states_per_lane,
                              CUstream_st* stream);

}  // namespace rwr::scan::single_pass
