// The "wide" CUDA backward of the selective scan (selective_scan_wide_backward.cu), internal to
// scan_kernels/: one lane owns one channel and all 16 of its states. selective_scan.cu lays out
// the workspace, runs the chunk-local gradient pass where T is split into chunks, launches this
// kernel, then sums its dB/dC and parameter partials with the same kernels as its own backward.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "scan_kernels/selective_scan.h"

struct CUstream_st;

namespace rwr::scan::wide_backward {

// Channels per block: the channel blocks (and so the dB/dC partial layout) of the other kernels.
inline constexpr int kChannelsPerBlock = 64;

// The workspace regions the kernel reads and writes (floats; layouts as in selective_scan.cu).
struct WideWork {
  int K = 1;                      // chunks of T, walked by separate blocks
  int tiles_per_chunk = 1;        // 16-token tiles per chunk
  int nJ = 0;                     // tiles in T
  int nblk = 0;                   // channel blocks of kChannelsPerBlock
  const float* ckpt = nullptr;    // (B, nJ, Di, S) the state before each tile (the forward's)
  const float* gloc = nullptr;    // (B, K, Di, S) chunk-local state gradient at a chunk's start
  const float* gdecay = nullptr;  // (B, K, Di, S) a chunk's decay (0 where it holds a reset)
  float* dbc_part = nullptr;      // (B, T, nblk, 2S) per-block dB | dC partials
  float* dA_part = nullptr;       // (B, K, Di, S)
  float* dDb_part = nullptr;      // (B, K, Di, 2) dD, dbias partials
};

// Rows of x, Δ, z and dout 16-byte aligned (the kernel copies them with 16-byte cp.async), S 16.
bool WideBackwardApplies(const SelectiveScanParams& p, const SelectiveScanGrads& g);

// Writes dx, dΔraw, dz and the forward output (g.out) directly, and the partials of dB/dC, dA,
// dD and dbias into `w` for chunk blockIdx.y of every channel block and batch row; the initial
// state's gradient from chunk 0.
absl::Status LaunchWideBackward(const SelectiveScanParams& p, const SelectiveScanGrads& g,
                                const WideWork& w, CUstream_st* stream);

}  // namespace rwr::scan::wide_backward
