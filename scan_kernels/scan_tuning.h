// Internal knobs of the CUDA selective scan, for bench/scan_bench and tests only (not part of the
// API the trainer uses). The scan splits T into K chunks processed in parallel (a chunk-local
// pass, then the real pass starting from the carried state); K is picked from the sizes unless
// overridden here.
#pragma once

#include <cstdint>

#include "scan_kernels/selective_scan.h"

namespace rwr::scan {

// 0 = automatic (default). Any other value forces K (clamped to [1, number of 16-token tiles])
// for both the forward and the backward.
void SetScanChunksOverride(int chunks);

// Kernel variants for measurements (docs/scan_kernels_notes.md has each one's numbers):
//   1  default: the one-pass forward (selective_scan_single_pass.cu, 4 states per lane at B 3–4,
//      8 from B 5 at Di 5120) where the rows are 16-byte aligned and the channels fill the GPU,
//      else the wide chunked forward (selective_scan_wide.cu) where they are aligned, else the
//      4-lane chunked forward; x, Δ, z, dout tiles copied into shared memory asynchronously
//      (cp.async) where their rows are aligned; forward exps all on the special-function unit;
//      backward in 8-token segments, exps recomputed in the reverse pass, 2 blocks per
//      multiprocessor, B and C kept as fp32 in shared memory (bf16 tensors); chunks chained
//      (v17: each hands its state gradient to the previous one's block) where the channel blocks
//      fill the GPU (B 4 at Di 5120), in segments that chain independently where they do not
//      (v24: B 1–2; a chunk-local gradient pass over the segments after the first carries the
//      gradient into each segment), the two-pass backward where segments would be under 2 chunks
//   2  the v7 kernels: chunked forward, each lane loading its own elements
//   4  as 2, the backward keeping the recompute's exps in registers for the reverse (spills)
//   5  as 4, registers capped for 1 block per multiprocessor
//   6  as 2, backward in one 16-token segment (no re-walk), exps kept, 1 block
//   7  as 2, one state of four (25% of the forward's exps) on the FMA pipe (polynomial 2^x)
//   9, 10, 11  as 2 with forward blocks of 8, 2, 1 warps (default: from the grid size)
//   12 the v12 default: as 1 with the chunked forward everywhere and bf16 B/C backward tiles
//   14 as 12 with forward blocks of 8 warps
//   15, 16 as 1 with the one-pass forward at 2 / 4 states per lane wherever the rows are aligned
//   22 as 1 with the two-pass backward everywhere (a chunk-local gradient pass first)
//   23 as 1 with the chained backward, one chain, wherever there are chunks
//   29 as 1 with the chained backward in segments of 2 chunks wherever there are 3 or more
//   25 as 1 with the 4-lane chunked forward where the one-pass forward does not run (the v19
//      default; 1 runs the wide chunked forward there, selective_scan_wide.cu)
//   26 as 1 with the wide chunked forward wherever the rows are aligned
//   28 as 1 with the one-pass forward at 8 states per lane wherever the rows are aligned
inline constexpr int kScanVariants[] = {1,  2,  4,  5,  6,  7,  9,  10, 11, 12,
                                        14, 15, 16, 22, 23, 25, 26, 28, 29};
void SetScanVariant(int variant);

// The K the CUDA scan would use for these sizes (after the override), forward or backward; the
// forward's K matters only where it does not run the one-pass kernel.
int ScanChunks(int64_t batch, int64_t seqlen, int64_t dim, bool backward = false);

// Whether the CUDA forward of these params runs the one-pass kernel under the current variant.
bool ScanForwardIsOnePass(const SelectiveScanParams& params);

// Whether it runs the wide chunked kernel (a lane per channel, selective_scan_wide.cu).
bool ScanForwardIsWide(const SelectiveScanParams& params);

// The forward's chunk count under the current variant and override (0: the one-pass forward).
int ScanForwardChunks(const SelectiveScanParams& params);

// How many chains the CUDA backward of these params forms from its chunks (each chunk's block
// waits for the gradient the next chunk's block of its chain publishes), or 0 where it runs a
// chunk-local gradient pass for every chunk first (the two-pass backward).
int ScanBackwardChains(const SelectiveScanParams& params);

}  // namespace rwr::scan
