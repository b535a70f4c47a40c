// The wide chunked CUDA forward of the selective scan (selective_scan_wide.cu), internal to
// scan_kernels/: selective_scan.cu picks it for a forward whose tensors it can copy with 16-byte
// cp.async (single_pass::SinglePassApplies) where the one-pass forward does not fill the GPU
// (B 1–2 at Di 5120), and runs its other kernels otherwise.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "scan_kernels/selective_scan.h"

struct CUstream_st;

namespace rwr::scan::wide {

// T in K chunks of tiles_per_chunk 16-token tiles (the last one shorter); hloc and hdecay hold
// (B, K, Di, S) floats each (the chunk-local end states and decays, K > 1), ckpt (optional) the
// state before every tile, ckpt[((b · n_tiles + j) · Di + d) · 16 + s], the layout the backward
// reads.
struct Chunks {
  int K = 1;
  int tiles_per_chunk = 1;
  float* ckpt = nullptr;
  float* hloc = nullptr;
  float* hdecay = nullptr;
};

// The chunk count that gives about two waves of resident blocks for these sizes (at least 1, at
// most `most`, chunks of at least 10 tiles).
int WideChunks(int64_t batch, int64_t seqlen, int64_t dim, int sms, int most);

// Runs the forward: the chunk-local pass over chunks 0..K−2, then the real pass (out, final
// state, checkpoints).
absl::Status LaunchWide(const SelectiveScanParams& p, const Chunks& chunks, CUstream_st* stream);

}  // namespace rwr::scan::wide
