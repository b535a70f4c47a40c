// Large fresh host buffers made resident by several threads. The first touch of a page costs the
// kernel's zeroing of it, so one thread filling a new 11 GB vector spends about 6 s in page faults
// (measured, docs/benchmarks.md): the pause of the training steps at every checkpoint of
// Mamba-2.8B, whose copy from the GPU itself takes under a second.
#pragma once

#include <cstddef>
#include <vector>

namespace rwr {

// n zeros, the pages made resident first by up to 8 threads (MADV_POPULATE_WRITE; where the kernel
// lacks it, the zeroing touches them as std::vector would). std::vector then writes its zeros over
// the already-zero pages on one thread: a second pass over the memory, but without page faults
// (host_copy_bench's "populate" timings in docs/benchmarks.md include it). A vector that left
// them would need an allocator of its own in every signature that takes one.
std::vector<float> ZeroedFloats(size_t n);

}  // namespace rwr
