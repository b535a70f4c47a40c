// The few-rows linear of a decode step; see few_rows_linear.h.
//
// A block computes 4 adjacent outputs (rows of w) for every row of x. Its threads split k: each
// thread issues the loads of 2 chunks of 16 bytes (8 weights) of each of the 4 weight rows before
// it multiplies any, holds its partial sums for rows × 4 outputs in registers, and the block adds
// them up in a fixed order (a warp's butterfly, then the warps in index order). The warps per
// block grow with k so that one such pass covers k (up to 16 warps): every load of a block is in
// flight at once, for the thin x_proj (192 outputs, 48 blocks) as for in_proj (10,240 outputs);
// dt_proj's 20 chunks take one warp.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "common/call_status_cuda.h"
#include "common/cuda_dependent_launch.cuh"
#include "fmt/format.h"
#include "trainer/few_rows_linear.h"

namespace rwr::trainer::cuda {
namespace {

constexpr int kOutputs = 4;  // weight rows (outputs) per block
constexpr int kChunk = 8;    // bf16 weights per 16-byte load

__device__ __forceinline__ void Unpack(const uint4& v, float (&f)[kChunk]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < kChunk / 2; ++i) {
    const float2 two = __bfloat1622float2(h[i]);
    f[2 * i] = two.x;
    f[2 * i + 1] = two.y;
  }
}

constexpr int kMaxWarps = 16;
constexpr int kPerThread = 2;  // chunks of each weight row a thread loads before it computes

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

template <int kRows>
__global__ void __launch_bounds__(kMaxWarps * 32) FewRowsLinearKernel(FewRowsLinear p) {
  const int64_t n0 = blockIdx.x * int64_t{kOutputs};
  const int64_t chunks = p.k / kChunk;
  const int stride = blockDim.x;
  const uint4* w = static_cast<const uint4*>(p.w);
  if (p.let_next_start) cuda_dependent_launch::LetDependentsLaunch();
  // Every weight load of a pass in flight before the first multiply.
  uint4 wv[kPerThread][kOutputs];
  auto load_weights = [&](int64_t c0) {
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const int64_t c = c0 + u * stride;
#pragma unroll
      for (int o = 0; o < kOutputs; ++o) {
        // The weights are read once a step: streamed past the caches.
        wv[u][o] =
            c < chunks && n0 + o < p.n ? __ldcs(w + (n0 + o) * chunks + c) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  // x comes from the kernels before, so the first pass's weight loads are issued before this
  // kernel waits for them (it may have started early); x's loads come after the wait.
  load_weights(threadIdx.x);
  cuda_dependent_launch::AwaitPrerequisites();
  float acc[kRows][kOutputs] = {};
  for (int64_t c0 = threadIdx.x; c0 < chunks;) {
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const int64_t c = c0 + u * stride;
      if (c >= chunks) break;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float xf[kChunk];
        Unpack(LoadAfterWait(reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.x) +
                                                            r * p.ldx) +
                             c),
               xf);
#pragma unroll
        for (int o = 0; o < kOutputs; ++o) {
          float wf[kChunk];
          Unpack(wv[u][o], wf);
#pragma unroll
          for (int j = 0; j < kChunk; ++j) acc[r][o] = fmaf(xf[j], wf[j], acc[r][o]);
        }
      }
    }
    c0 += kPerThread * stride;
    if (c0 < chunks) load_weights(c0);
  }
  __shared__ float parts[kMaxWarps][kRows * kOutputs];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int o = 0; o < kOutputs; ++o) {
      float v = acc[r][o];
#pragma unroll
      for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
      if (lane == 0) parts[warp][r * kOutputs + o] = v;
    }
  }
  __syncthreads();
  if (threadIdx.x >= kRows * kOutputs) return;
  const int r = threadIdx.x / kOutputs, o = threadIdx.x % kOutputs;
  if (n0 + o >= p.n) return;
  float sum = 0.f;
  for (int k = 0; k < stride / 32; ++k) sum += parts[k][threadIdx.x];
  const int64_t at = r * p.ldy + n0 + o;
  if (p.y_f32) {
    float* y = static_cast<float*>(p.y);
    y[at] = p.beta != 0.f ? sum + p.beta * y[at] : sum;
  } else {
    static_cast<__nv_bfloat16*>(p.y)[at] = __float2bfloat16_rn(sum);
  }
}

// Enough warps that each thread loads kPerThread chunks of each row once (one pass), up to
// kMaxWarps: in_proj (k 2,560: 320 chunks) 5 warps, out_proj and x_proj (640 chunks) 10, dt_proj
// (20 chunks) one warp.
template <int kRows>
absl::Status Launch(const FewRowsLinear& p, cudaStream_t stream) {
  const int64_t chunks = p.k / kChunk;
  const int warps = static_cast<int>(
      std::clamp<int64_t>((chunks + 32 * kPerThread - 1) / (32 * kPerThread), 1, kMaxWarps));
  // A programmatic dependent launch: the kernel may start before the one before it ends, and
  // waits for it only once its first weight loads are issued — where its code has the wait: PTX
  // for an architecture before sm_90 has none (cuda_dependent_launch.cuh), and run on a newer GPU
  // it must then start after the kernel before, as any launch does.
  static const bool has_wait = [] {
    cudaFuncAttributes attributes{};
    return cudaFuncGetAttributes(&attributes, FewRowsLinearKernel<kRows>) == cudaSuccess &&
           attributes.ptxVersion >= 90;
  }();
  cudaLaunchAttribute dependent{};
  dependent.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  dependent.val.programmaticStreamSerializationAllowed = has_wait ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>((p.n + kOutputs - 1) / kOutputs));
  config.blockDim = dim3(warps * 32);
  config.stream = stream;
  config.attrs = &dependent;
  config.numAttrs = 1;
  RWR_CUDA(cudaLaunchKernelEx(&config, FewRowsLinearKernel<kRows>, p));
  return absl::OkStatus();
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

bool FewRowsLinearApplies(const FewRowsLinear& p) {
  return p.rows >= 1 && p.rows <= kFewRowsMax && p.n >= 1 && p.k >= kChunk && p.k % kChunk == 0 &&
         p.ldx >= p.k && p.ldx % kChunk == 0 && Aligned16(p.x) && Aligned16(p.w) &&
         (p.y_f32 || p.beta == 0.f) && p.n < (int64_t{1} << 31) * kOutputs;
}

absl::Status RunFewRowsLinear(const FewRowsLinear& p, CUstream_st* stream) {
  if (!FewRowsLinearApplies(p)) {
    return absl::InvalidArgumentError(fmt::format(
        "few-rows linear: rows {} (1..{}), n {}, k {} and x row stride {} (multiples of {}, "
        "stride >= k), x and w {}16-byte aligned, beta {} (0 unless y is fp32): not a problem it "
        "takes",
        p.rows, kFewRowsMax, p.n, p.k, p.ldx, kChunk,
        Aligned16(p.x) && Aligned16(p.w) ? "" : "not ", p.beta));
  }
  switch (p.rows) {
    case 1:
      return Launch<1>(p, stream);
    case 2:
      return Launch<2>(p, stream);
    case 3:
      return Launch<3>(p, stream);
    default:
      return Launch<4>(p, stream);
  }
}

}  // namespace rwr::trainer::cuda
