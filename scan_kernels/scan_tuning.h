// Internal knobs of the CUDA selective scan, for bench/scan_bench and tests only (not part of the
// API the trainer uses). The scan splits T into K chunks processed in parallel (a chunk-local
// pass, then the real pass starting from the carried state); K is picked from the sizes unless
// overridden here.
#pragma once

#include <cstdint>

namespace rwr::scan {

// 0 = automatic (default). Any other value forces K (clamped to [1, number of 16-token tiles])
// for both the forward and the backward.
void SetScanChunksOverride(int chunks);

// Kernel variants for measurements (docs/scan_kernels_notes.md has each one's numbers):
//   1  default: x, Δ, z, dout tiles copied into shared memory asynchronously (cp.async) where
//      their rows are 16-byte aligned; forward exps all on the special-function unit; backward
//      in 8-token segments, exps recomputed in the reverse pass, 2 blocks per multiprocessor
//   2  as 1 with each lane loading its own elements (the v7 kernels)
//   4  as 2, the backward keeping the recompute's exps in registers for the reverse (spills)
//   5  as 4, registers capped for 1 block per multiprocessor
//   6  as 2, backward in one 16-token segment (no re-walk), exps kept, 1 block
//   7  as 2, one state of four (25% of the forward's exps) on the FMA pipe (polynomial 2^x)
//   9, 10, 11  as 2 with forward blocks of 8, 2, 1 warps (default: from the grid size)
//   14 as 1 with forward blocks of 8 warps
inline constexpr int kScanVariants[] = {1, 2, 4, 5, 6, 7, 9, 10, 11, 14};
void SetScanVariant(int variant);

// The K the CUDA scan would use for these sizes (after the override), forward or backward.
int ScanChunks(int64_t batch, int64_t seqlen, int64_t dim, bool backward = false);

}  // namespace rwr::scan
