// Y = X·Wᵀ (+ beta·Y) for a few rows of X: the GEMMs of a decode step (one token for each of a
// few sequences), which only read the weights. cuBLASLt runs them as split-K tensor-core GEMMs
// with a second kernel to add the parts; at one row of Mamba-2.8B its GEMMs took 2.0× the time to
// read the weights once. This kernel reads each weight once with 16-byte loads, multiplies it with
// every row in fp32 and sums in a fixed order (the same bits every run), in one launch.
//
// C++17 and plain pointers, so the .cu file needs nothing of the trainer.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

struct CUstream_st;

namespace rwr::trainer::cuda {

// The most rows of X one call takes: each weight is multiplied on the FMA pipe once per row, and
// past a few rows that, not the weights' bytes, is the time (tensor cores win there).
inline constexpr int64_t kFewRowsMax = 4;

struct FewRowsLinear {
  const void* x = nullptr;  // (rows, k) bf16, row stride ldx
  int64_t ldx = 0;
  const void* w = nullptr;  // (n, k) bf16, contiguous rows (a Linear's weight, out × in)
  void* y = nullptr;        // (rows, n), row stride ldy: fp32 where y_f32, else bf16
  int64_t ldy = 0;
  bool y_f32 = false;
  float beta = 0.f;  // y = x·wᵀ + beta·y (fp32 y only)
  int64_t rows = 0, n = 0, k = 0;
  // The next kernel is a programmatic dependent launch that waits for this one (another few-rows
  // linear, common/cuda_dependent_launch.cuh): let it start before this one ends. Only where it
  // is known to wait.
  bool let_next_start = false;
};

// The kernel is itself a programmatic dependent launch: it issues its first weight loads before it
// waits for the kernel before it, and overlaps that kernel's end where that kernel lets it.
//
// Whether the kernel takes these sizes and pointers: 1..kFewRowsMax rows, k a multiple of 8,
// x, its rows and w 16-byte aligned (16-byte loads), beta only with an fp32 y.
bool FewRowsLinearApplies(const FewRowsLinear& p);
absl::Status RunFewRowsLinear(const FewRowsLinear& p, CUstream_st* stream);

}  // namespace rwr::trainer::cuda
