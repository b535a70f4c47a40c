// Internal knobs of the CUDA selective scan, for bench/scan_bench and tests only (not part of the
// API the trainer uses). The scan splits T into K chunks processed in parallel (a chunk-local
// pass, then the real pass starting from the carried state); K is picked from the sizes unless
// overridden here.
#pragma once

#include <cstdint>

namespace rwr::scan {

// 0 = automatic (default). Any other value forces K (clamped to [1, number of 16-token tiles]).
void SetScanChunksOverride(int chunks);
// Kernel variant for measurements: 1 = default (forward registers capped for 4 blocks per
// multiprocessor, backward for 2; a tile's global loads issued just before it is committed to
// shared memory), 2 = forward capped for 3 blocks, 3 = as 1 with the next tile's loads issued
// before the current tile's arithmetic (more registers, spills).
void SetScanVariant(int variant);
// The K the CUDA scan would use for these sizes (after the override).
int ScanChunks(int64_t batch, int64_t seqlen, int64_t dim);

}  // namespace rwr::scan
