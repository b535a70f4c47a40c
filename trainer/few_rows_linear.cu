// The few-rows linear of a decode step; see few_rows_linear.h.
//
// Tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate) with the weights as the 16-row
// A operand and up to 16 rows of x as one or two 8-column B operands, so that a row of x costs
// no more weight traffic than a warp's share of one mma. Each thread loads 16 bytes (8 weights) of
// two weight rows and of its x row straight from global memory into registers, no shared-memory
// staging: the order of k inside a dot product is free, so a k-block of 32 is fed to two mmas in
// a permuted order that matches what each thread loaded (thread q of a quad holds k 8q … 8q + 7;
// the fragment's logical columns 2q, 2q + 1, 2q + 8, 2q + 9 are physical 8q … 8q + 3 for the
// first mma and 8q + 4 … 8q + 7 for the second, the same for A and for B).
//
// A block computes 16 adjacent outputs; its warps split k and add their partial tiles in a fixed
// order through shared memory, so the result is the same bits every run. Each warp keeps two
// k-blocks' loads in flight before it multiplies; the first pass's weight loads are issued before
// the kernel waits for the one before it (a programmatic dependent launch).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "common/call_status_cuda.h"
#include "common/cuda_dependent_launch.cuh"
#include "trainer/few_rows_linear.h"

namespace rwr::trainer::cuda {
namespace {

constexpr int kOutputs = 16;  // weight rows (outputs) per block: the mma's M
constexpr int kChunk = 8;     // bf16 weights per 16-byte load
constexpr int kKBlock = 32;   // k a warp covers per step: 4 threads × 8
constexpr int kPerPass = 2;   // k-blocks whose loads a warp issues before it multiplies
constexpr int kMaxWarps = 8;

// A 16-byte load that stays after AwaitPrerequisites: a volatile asm with a memory clobber, as the
// wait is. (The read-only path's __ldg counts as invariant, and __ldcg is an asm the compiler
// may move: either could be hoisted above the wait, before the kernel writing x has ended.)
__device__ __forceinline__ uint4 LoadAfterWait(const uint4* at) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(at)
               : "memory");
  return v;
}

// D (16 × 8, fp32) += A (16 × 16, bf16, row) · B (16 × 8, bf16, col).
__device__ __forceinline__ void Mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                    uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// kTiles: 8-row tiles of x (1: up to 8 rows, 2: up to 16).
template <int kTiles>
__global__ void __launch_bounds__(kMaxWarps * 32) FewRowsLinearKernel(FewRowsLinear p) {
  if (p.let_next_start) cuda_dependent_launch::LetDependentsLaunch();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, q = lane % 4;  // the mma fragments' group and thread in group
  const int64_t n0 = blockIdx.x * int64_t{kOutputs};
  const int64_t kblocks = (p.k + kKBlock - 1) / kKBlock;
  const uint4 zero = make_uint4(0, 0, 0, 0);
  // This thread's 16 bytes of k-block kb: weight rows n0 + g and n0 + g + 8, x rows g (+ 8).
  const uint4* w_lo = static_cast<const uint4*>(p.w) + (n0 + g) * (p.k / kChunk) + q;
  const uint4* w_hi = w_lo + 8 * (p.k / kChunk);
  const bool have_lo = n0 + g < p.n, have_hi = n0 + g + 8 < p.n;
  uint4 wv[kPerPass][2];
  auto load_weights = [&](int64_t kb0) {
#pragma unroll
    for (int u = 0; u < kPerPass; ++u) {
      const int64_t kb = kb0 + u * warps;
      const bool in_k = kb < kblocks && (kb * kKBlock + q * kChunk) < p.k;
      // The weights are read once a step: streamed past the caches.
      wv[u][0] = in_k && have_lo ? __ldcs(w_lo + kb * (kKBlock / kChunk)) : zero;
      wv[u][1] = in_k && have_hi ? __ldcs(w_hi + kb * (kKBlock / kChunk)) : zero;
    }
  };
  load_weights(warp);
  cuda_dependent_launch::AwaitPrerequisites();  // x comes from the kernels before
  float acc[kTiles][4] = {};
  for (int64_t kb0 = warp; kb0 < kblocks;) {
    uint4 xv[kPerPass][kTiles];
#pragma unroll
    for (int u = 0; u < kPerPass; ++u) {
      const int64_t kb = kb0 + u * warps;
      const int64_t k = kb * kKBlock + q * kChunk;
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        const int64_t row = g + 8 * t;
        xv[u][t] = kb < kblocks && k < p.k && row < p.rows
                       ? LoadAfterWait(reinterpret_cast<const uint4*>(
                             static_cast<const __nv_bfloat16*>(p.x) + row * p.ldx + k))
                       : zero;
      }
    }
#pragma unroll
    for (int u = 0; u < kPerPass; ++u) {
      const uint4 lo = wv[u][0], hi = wv[u][1];
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        Mma(acc[t], lo.x, hi.x, lo.y, hi.y, xv[u][t].x, xv[u][t].y);
        Mma(acc[t], lo.z, hi.z, lo.w, hi.w, xv[u][t].z, xv[u][t].w);
      }
    }
    kb0 += kPerPass * warps;
    if (kb0 < kblocks) load_weights(kb0);
  }
  // acc[t]: outputs n0 + g (0, 1) and n0 + g + 8 (2, 3), x rows 8t + 2q (0, 2) and + 1 (1, 3).
  __shared__ float parts[kMaxWarps][kOutputs][8 * kTiles];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
    parts[warp][g][8 * t + 2 * q] = acc[t][0];
    parts[warp][g][8 * t + 2 * q + 1] = acc[t][1];
    parts[warp][g + 8][8 * t + 2 * q] = acc[t][2];
    parts[warp][g + 8][8 * t + 2 * q + 1] = acc[t][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kOutputs * 8 * kTiles; i += blockDim.x) {
    const int o = i / (8 * kTiles), row = i % (8 * kTiles);
    if (row >= p.rows || n0 + o >= p.n) continue;
    float sum = 0.f;
    for (int k = 0; k < warps; ++k) sum += parts[k][o][row];
    const int64_t at = row * p.ldy + n0 + o;
    if (p.y_f32) {
      float* y = static_cast<float*>(p.y);
      y[at] = p.beta != 0.f ? sum + p.beta * y[at] : sum;
    } else {
      static_cast<__nv_bfloat16*>(p.y)[at] = __float2bfloat16_rn(sum);
    }
  }
}

// Warps per block: about 4 k-blocks each (in_proj's k of 2,560 is 80 k-blocks: 8 warps; dt_proj's
// 160 is 5: one warp).
int WarpsFor(int64_t k) {
  return static_cast<int>(std::clamp<int64_t>((k + kKBlock - 1) / kKBlock / 4, 1, kMaxWarps));
}

template <int kTiles>
absl::Status Launch(const FewRowsLinear& p, cudaStream_t stream) {
  // A programmatic dependent launch: the kernel may start before the one before it ends, and
  // waits for it only once its first weight loads are issued.
  cudaLaunchAttribute dependent{};
  dependent.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  dependent.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>((p.n + kOutputs - 1) / kOutputs));
  config.blockDim = dim3(WarpsFor(p.k) * 32);
  config.stream = stream;
  config.attrs = &dependent;
  config.numAttrs = 1;
  RWR_CUDA(cudaLaunchKernelEx(&config, FewRowsLinearKernel<kTiles>, p));
  return absl::OkStatus();
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

bool FewRowsLinearApplies(const FewRowsLinear& p) {
  return p.rows >= 1 && p.rows <= kFewRowsMax && p.n >= 1 && p.k >= kChunk && p.k % kChunk == 0 &&
         p.ldx % kChunk == 0 && Aligned16(p.x) && Aligned16(p.w) && (p.y_f32 || p.beta == 0.f) &&
         p.n <= (int64_t{1} << 31) * kOutputs;
}

absl::Status RunFewRowsLinear(const FewRowsLinear& p, CUstream_st* stream) {
  if (!FewRowsLinearApplies(p)) {
    return absl::InvalidArgumentError("few-rows linear: sizes or alignment it does not take");
  }
  return p.rows <= 8 ? Launch<1>(p, stream) : Launch<2>(p, stream);
}

}  // namespace rwr::trainer::cuda
