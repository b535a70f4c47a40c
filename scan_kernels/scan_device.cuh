// Device helpers shared by the selective-scan kernels (selective_scan.cu, the chunked kernels and
// the backward; selective_scan_single_pass.cu, the one-pass forward). Internal to scan_kernels/.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "scan_kernels/selective_scan.h"

namespace rwr::scan::device {

constexpr int kS = 16;     // states per channel (S); the CUDA kernels take S = 16 only
constexpr int kTile = 16;  // tokens per tile: the checkpoint spacing every kernel shares
constexpr unsigned kFull = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float Exp2(float v) { return exp2f(v); }  // ex2.approx under fast math
__device__ __forceinline__ float Sigmoid(float v) { return __fdividef(1.f, 1.f + __expf(-v)); }
__device__ __forceinline__ float Softplus(float v) {
  return v > 20.f ? v : __logf(1.f + __expf(v));
}

// Lanes q = 0..N−1 of one channel (adjacent lanes) each hold v[0..N−1], one value per token of a
// group of N; afterwards lane q's v[0] is the sum over the N lanes of v[q]. Fixed order: bitwise
// reproducible.
template <int N>
__device__ __forceinline__ float ReduceScatter(float (&v)[N], int q) {
#pragma unroll
  for (int m = N / 2; m >= 1; m /= 2) {
    const bool upper = q & m;
#pragma unroll
    for (int i = 0; i < m; ++i) {
      const float keep = upper ? v[i + m] : v[i];
      const float send = upper ? v[i] : v[i + m];
      v[i] = keep + __shfl_xor_sync(kFull, send, m);
    }
  }
  return v[0];
}

// Lane l < 16 reads the reset flag of token t0 + l; ResetMask turns them into a warp-uniform mask.
__device__ __forceinline__ bool LoadResetFlag(const SelectiveScanParams& p, int64_t b, int64_t t0) {
  const int lane = threadIdx.x & 31;
  if (p.resets != nullptr && lane < kTile && t0 + lane < p.seqlen) {
    return p.resets[b * p.resets_batch_stride + t0 + lane] != 0;
  }
  return false;
}
__device__ __forceinline__ unsigned ResetMask(bool flag) {
  return __ballot_sync(kFull, flag) & 0xffffu;
}

// Δ from Δraw (+ bias, softplus), and dΔ/dΔraw.
__device__ __forceinline__ float DeltaOf(const SelectiveScanParams& p, float raw, float bias,
                                         float* slope) {
  const float v = raw + bias;
  if (p.delta_softplus) {
    *slope = Sigmoid(v);
    return Softplus(v);
  }
  *slope = 1.f;
  return v;
}

// cp.async of 16 bytes into shared memory: src_bytes of them read from gmem (16-byte aligned),
// the rest zero-filled. gmem must be a valid address inside an allocation even when src_bytes
// is 0 (nothing is read then; pass the tensor's base).
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  CpAsync16(smem, gmem, valid ? 16 : 0);
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}
// Waits until at most kPending of this thread's most recent groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWaitGroup() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// A flag another block of the same kernel publishes: the acquire makes the data it wrote before
// its release visible to this thread (and, after a barrier, to its block).
__device__ __forceinline__ int LoadAcquire(const int* flag) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
  return v;
}
__device__ __forceinline__ void StoreRelease(int* flag, int v) {
  asm volatile("st.release.gpu.global.s32 [%0], %1;\n" ::"l"(flag), "r"(v) : "memory");
}

// A pointer the kernels read or write with 16-byte accesses, not 16-byte aligned (false for null).
inline bool Misaligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) != 0; }

// Every row of a (B, T, dim) tensor 16-byte aligned (what 16-byte cp.async copies need); true for
// a null tensor.
inline bool RowsAligned(const void* ptr, const TokenStrides& s, int64_t dim, size_t elem) {
  const auto a16 = [](int64_t v) { return v % 16 == 0; };
  return ptr == nullptr ||
         (reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && a16(s.batch * int64_t(elem)) &&
          a16(s.token * int64_t(elem)) && a16(dim * int64_t(elem)));
}

}  // namespace rwr::scan::device
