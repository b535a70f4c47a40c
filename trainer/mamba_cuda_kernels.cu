// The small CUDA kernels of the GPU Mamba LM; see mamba_cuda_kernels.h.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "common/call_status_cuda.h"
#include "common/cuda_dependent_launch.cuh"
#include "common/cuda_elements.cuh"
#include "trainer/mamba_cuda_kernels.h"

namespace rwr::trainer::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
}

using cuda_elements::FromFloat;

// Sum over the block in a fixed order (warp tree, then warps in index order).
template <typename F>
__device__ F BlockSum(F v, F* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  F total = 0;
  for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += shared[w];
  return total;
}

__device__ float BlockMax(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < (blockDim.x + 31) / 32; ++w) m = fmaxf(m, shared[w]);
  return m;
}

__global__ void EmbedKernel(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc,
                            const float* emb, float* h, int64_t D) {
  const int64_t row = blockIdx.x;  // b·Tc + t
  const int64_t b = row / Tc, t = row % Tc;
  const int64_t id = tokens[b * T + t0 + t];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) h[row * D + d] = emb[id * D + d];
}

// One block per distinct token id: its rows' gradients summed in the listed order.
__global__ void EmbedBackwardKernel(const int32_t* ids, const int32_t* offsets, const int32_t* rows,
                                    const float* dh, float* demb, int64_t D) {
  const int64_t i = blockIdx.x;
  const int64_t id = ids[i], begin = offsets[i], end = offsets[i + 1];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.f;
    for (int64_t k = begin; k < end; ++k) acc += dh[int64_t(rows[k]) * D + d];
    demb[id * D + d] += acc;
  }
}

template <typename T>
__global__ void RmsNormKernel(const float* x, const float* w, T* y, float* rstd, float* x_copy,
                              int64_t D, float eps, bool let_next_start) {
  if (let_next_start) cuda_dependent_launch::LetDependentsLaunch();
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * D;
  float ss = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += xr[d] * xr[d];
  const float r = rsqrtf(BlockSum(ss, shared) / D + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    y[row * D + d] = FromFloat<T>(xr[d] * r * w[d]);
    if (x_copy != nullptr) x_copy[row * D + d] = xr[d];
  }
}

// Where D is a multiple of 4 and at most 16·4·kNormVecThreads: a row held in registers, kV float4
// per thread, read once with 16-byte loads (the kernel above reads it twice with 4-byte loads:
// 1.8× its bytes' time at D 2560).
constexpr int kNormVecThreads = 128;
// v to y[4·i4 .. 4·i4 + 3] in one store: 16 bytes (fp32) or 8 (bf16, round to nearest even).
// The norm above and AdamW's bf16 weight copy write through it.
template <typename T>
__device__ __forceinline__ void Store4(T* y, int64_t i4, float4 v);
template <>
__device__ __forceinline__ void Store4(float* y, int64_t i4, float4 v) {
  reinterpret_cast<float4*>(y)[i4] = v;
}
template <>
__device__ __forceinline__ void Store4(__nv_bfloat16* y, int64_t i4, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 packed;
  packed.x = *reinterpret_cast<uint32_t*>(&lo);
  packed.y = *reinterpret_cast<uint32_t*>(&hi);
  reinterpret_cast<uint2*>(y)[i4] = packed;
}

template <typename T, int kV>
__global__ void __launch_bounds__(kNormVecThreads)
    RmsNormVecKernel(const float* x, const float* w, T* y, float* rstd, float* x_copy, int64_t D,
                     float eps, bool let_next_start) {
  if (let_next_start) cuda_dependent_launch::LetDependentsLaunch();
  __shared__ float shared[32];
  const int64_t D4 = D / 4, base = blockIdx.x * D4;
  const float4* x4 = reinterpret_cast<const float4*>(x) + base;
  float4 xv[kV];
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kV; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * kNormVecThreads;
    xv[k] = i < D4 ? x4[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += xv[k].x * xv[k].x + xv[k].y * xv[k].y + xv[k].z * xv[k].z + xv[k].w * xv[k].w;
  }
  const float r = rsqrtf(BlockSum(ss, shared) / D + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  const float4* w4 = reinterpret_cast<const float4*>(w);
#pragma unroll
  for (int k = 0; k < kV; ++k) {
    const int64_t i = threadIdx.x + int64_t(k) * kNormVecThreads;
    if (i >= D4) continue;
    const float4 wv = w4[i], v = xv[k];
    Store4(y, base + i,
           make_float4(v.x * r * wv.x, v.y * r * wv.y, v.z * r * wv.z, v.w * r * wv.w));
    if (x_copy != nullptr) reinterpret_cast<float4*>(x_copy)[base + i] = v;
  }
}

// float4s per thread of the vector kernel for D (0: use the scalar kernel).
int NormVecs(int64_t D) {
  if (D % 4 != 0) return 0;
  for (int v : {1, 2, 3, 4, 5, 6, 8, 12, 16}) {
    if (D / 4 <= int64_t(v) * kNormVecThreads) return v;
  }
  return 0;
}

template <typename T>
void LaunchNorm(const float* x, const float* w, T* y, float* rstd, float* x_copy, int64_t rows,
                int64_t D, float eps, cudaStream_t stream, bool let_next_start) {
  const unsigned nb = static_cast<unsigned>(rows);
  switch (NormVecs(D)) {
#define RWR_NORM_VEC_CASE(V)                                                                 \
  case V:                                                                                    \
    RmsNormVecKernel<T, V>                                                                   \
        <<<nb, kNormVecThreads, 0, stream>>>(x, w, y, rstd, x_copy, D, eps, let_next_start); \
    break;
    RWR_NORM_VEC_CASE(1)
    RWR_NORM_VEC_CASE(2)
    RWR_NORM_VEC_CASE(3)
    RWR_NORM_VEC_CASE(4)
    RWR_NORM_VEC_CASE(5)
    RWR_NORM_VEC_CASE(6)
    RWR_NORM_VEC_CASE(8)
    RWR_NORM_VEC_CASE(12)
    RWR_NORM_VEC_CASE(16)
#undef RWR_NORM_VEC_CASE
    default:
      RmsNormKernel<<<nb, kThreads, 0, stream>>>(x, w, y, rstd, x_copy, D, eps, let_next_start);
  }
}

// Rows per block of the norm backward: each block writes one partial of dw (D floats).
constexpr int kNormRowsPerBlock = 16;
constexpr int kNormThreads = 256;

// kCols columns per thread (D <= kCols·256) kept in registers: the weight, the row's x̂ and dy,
// and the dw partial.
template <typename T, int kCols>
__global__ void __launch_bounds__(kNormThreads)
    RmsNormBackwardKernel(const float* x, const float* w, const float* rstd, const float* dy,
                          float* dx, T* dx_act, float* dw_part, int64_t rows, int64_t D) {
  __shared__ float shared[32];
  float wr[kCols], acc[kCols];
#pragma unroll
  for (int k = 0; k < kCols; ++k) {
    const int64_t d = threadIdx.x + int64_t(k) * kNormThreads;
    wr[k] = d < D ? w[d] : 0.f;
    acc[k] = 0.f;
  }
  const int64_t first = int64_t(blockIdx.x) * kNormRowsPerBlock;
  const int64_t last = min(rows, first + kNormRowsPerBlock);
  for (int64_t row = first; row < last; ++row) {
    const float r = rstd[row];
    // dx is loaded with x and dy, before the block sum, so its latency hides behind the sum's.
    float xh[kCols], g[kCols], dx0[kCols];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const int64_t d = threadIdx.x + int64_t(k) * kNormThreads;
      xh[k] = d < D ? x[row * D + d] * r : 0.f;
      g[k] = d < D ? dy[row * D + d] : 0.f;
      dx0[k] = d < D ? dx[row * D + d] : 0.f;
      dot += g[k] * wr[k] * xh[k];
    }
    const float mean = BlockSum(dot, shared) / D;
#pragma unroll
    for (int k = 0; k < kCols; ++k) {
      const int64_t d = threadIdx.x + int64_t(k) * kNormThreads;
      if (d >= D) continue;
      const float v = dx0[k] + r * (g[k] * wr[k] - xh[k] * mean);
      dx[row * D + d] = v;
      if (dx_act != nullptr) dx_act[row * D + d] = FromFloat<T>(v);
      acc[k] += g[k] * xh[k];
    }
  }
#pragma unroll
  for (int k = 0; k < kCols; ++k) {
    const int64_t d = threadIdx.x + int64_t(k) * kNormThreads;
    if (d < D) dw_part[int64_t(blockIdx.x) * D + d] = acc[k];
  }
}

// The smallest compiled column count that covers D (0: none, D too large).
int NormCols(int64_t D) {
  for (int cols : {4, 8, 12, 16, 24, 32, 48, 64}) {
    if (D <= int64_t(cols) * kNormThreads) return cols;
  }
  return 0;
}

template <typename T>
void LaunchNormBackward(int cols, int64_t nb, cudaStream_t stream, const float* x, const float* w,
                        const float* rstd, const float* dy, float* dx, T* dx_act, float* part,
                        int64_t rows, int64_t D) {
  switch (cols) {
#define RWR_NORM_CASE(C)                                                              \
  case C:                                                                             \
    RmsNormBackwardKernel<T, C>                                                       \
        <<<nb, kNormThreads, 0, stream>>>(x, w, rstd, dy, dx, dx_act, part, rows, D); \
    break;
    RWR_NORM_CASE(4)
    RWR_NORM_CASE(8)
    RWR_NORM_CASE(12)
    RWR_NORM_CASE(16)
    RWR_NORM_CASE(24)
    RWR_NORM_CASE(32)
    RWR_NORM_CASE(48)
    RWR_NORM_CASE(64)
#undef RWR_NORM_CASE
  }
}

// out[d] (+)= Σ_b part[b·D + d] in a fixed order (added to out where `add`, else overwriting
// it): a block of (32 columns × kSumSlices) threads, slice y summing partials b ≡ y
// (mod kSumSlices) in order, then the slices in order. (One thread
// per column walking all nb partials ran on D/256 blocks — 10 multiprocessors at D 2560 — and
// took most of the norm backward's time.)
constexpr int kSumSlices = 8;
__global__ void AddColumnSumsKernel(const float* part, int64_t nb, int64_t D, float* out,
                                    bool add) {
  __shared__ float slice_sum[kSumSlices][32];
  const int64_t d = blockIdx.x * int64_t(32) + threadIdx.x;
  float s = 0.f;
  if (d < D) {
    for (int64_t b = threadIdx.y; b < nb; b += kSumSlices) s += part[b * D + d];
  }
  slice_sum[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && d < D) {
    float total = 0.f;
#pragma unroll
    for (int y = 0; y < kSumSlices; ++y) total += slice_sum[y][threadIdx.x];
    out[d] = add ? out[d] + total : total;
  }
}

__global__ void AccumulateKernel(float* out, const float* v, int64_t n, bool add) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = add ? out[i] + v[i] : v[i];
}

__global__ void NegExpKernel(const float* a, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = -expf(a[i]);
}

// g_A_log (+)= dA·A
__global__ void ALogGradKernel(const float* dA, const float* A, float* g, int64_t n, bool add) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    g[i] = add ? g[i] + dA[i] * A[i] : dA[i] * A[i];
}

__global__ void ToBf16Kernel(const float* src, __nv_bfloat16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}

template <typename T>
__global__ void GatherRowsKernel(const T* src, const int32_t* rows, T* dst, int64_t D,
                                 bool let_next_start) {
  if (let_next_start) cuda_dependent_launch::LetDependentsLaunch();
  const int64_t r = blockIdx.x;
  const int64_t s = rows[r];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[r * D + d] = src[s * D + d];
}

__global__ void ScatterRowsKernel(const float* src, const int32_t* rows, float* dst, int64_t D) {
  const int64_t r = blockIdx.x;
  const int64_t s = rows[r];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[s * D + d] = src[r * D + d];
}

// One block per row of logits (V). One read of the row gives each thread its running maximum and
// its sum of exp(z − maximum) (rescaled when the maximum grows); the block combines them, and a
// second read writes the gradient. With V a multiple of 4 the reads are 16-byte. The gradient is
// written after every read of the row, so it may overwrite the logits in place (fp32).
template <typename T>
__global__ void CrossEntropyKernel(const float* logits, int64_t V, const int32_t* targets,
                                   const uint8_t* weight, float* loss, float scale, T* grad) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const float* z = logits + row * V;
  T* dz = grad != nullptr ? grad + row * V : nullptr;
  if (!weight[row]) {
    if (dz != nullptr) {
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) dz[v] = FromFloat<T>(0.f);
    }
    if (threadIdx.x == 0) loss[row] = 0.f;
    return;
  }
  const bool vec = V % 4 == 0;  // rows then start 16-byte aligned (cudaMalloc'd logits)
  float m = -INFINITY, s = 0.f;
  auto see = [&](float zv) {
    if (zv > m) {
      s = s * expf(m - zv) + 1.f;
      m = zv;
    } else {
      s += expf(zv - m);
    }
  };
  if (vec) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    for (int64_t i = threadIdx.x; i < V / 4; i += blockDim.x) {
      const float4 q = z4[i];
      see(q.x);
      see(q.y);
      see(q.z);
      see(q.w);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) see(z[v]);
  }
  const float mx = BlockMax(m, shared);
  const float sum = BlockSum(m == -INFINITY ? 0.f : s * expf(m - mx), shared);
  const int32_t target = targets[row];
  const float lse = mx + logf(sum);
  const float zt = z[target];
  __syncthreads();  // every thread has read z[target] before the gradient overwrites it
  if (threadIdx.x == 0) loss[row] = lse - zt;
  if (dz == nullptr) return;
  const float inv = 1.f / sum;
  auto grad_of = [&](float zv, int64_t v) {
    return FromFloat<T>((expf(zv - mx) * inv - (v == target ? 1.f : 0.f)) * scale);
  };
  if (vec) {
    const float4* z4 = reinterpret_cast<const float4*>(z);
    for (int64_t i = threadIdx.x; i < V / 4; i += blockDim.x) {
      const float4 q = z4[i];
      const int64_t v = 4 * i;
      dz[v] = grad_of(q.x, v);
      dz[v + 1] = grad_of(q.y, v + 1);
      dz[v + 2] = grad_of(q.z, v + 2);
      dz[v + 3] = grad_of(q.w, v + 3);
    }
  } else {
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) dz[v] = grad_of(z[v], v);
  }
}

struct AdamWArgs {
  float b1, b2, step_size, decay_factor, inv_bc2_sqrt, eps, grad_scale;
};

// One parameter's update; returns the new parameter.
__device__ __forceinline__ float AdamWOne(float p, float g, float& m, float& v, bool decay,
                                          const AdamWArgs& a) {
  g *= a.grad_scale;
  if (decay) p *= a.decay_factor;
  m = a.b1 * m + (1 - a.b1) * g;
  v = a.b2 * v + (1 - a.b2) * g * g;
  return p - a.step_size * m / (sqrtf(v) * a.inv_bc2_sqrt + a.eps);
}

// Four parameters per thread and iteration with 16-byte loads and stores (8-byte for the bf16
// copy): the step is bound by its 30 bytes per parameter, and scalar accesses reached 87% of the
// copy bandwidth. The n % 4 tail goes one per thread after.
__global__ void AdamWKernel(float* p, __nv_bfloat16* p16, const float* g, float* m, float* v,
                            const uint32_t* decay, int64_t n, AdamWArgs a) {
  const int64_t n4 = n / 4, stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < n4; i += stride) {
    float4 pp = reinterpret_cast<float4*>(p)[i];
    const float4 gg = reinterpret_cast<const float4*>(g)[i];
    float4 mm = reinterpret_cast<float4*>(m)[i];
    float4 vv = reinterpret_cast<float4*>(v)[i];
    const uint32_t bits = decay[i >> 3] >> ((4 * i) & 31);  // parameters 4i .. 4i + 3
    pp.x = AdamWOne(pp.x, gg.x, mm.x, vv.x, bits & 1u, a);
    pp.y = AdamWOne(pp.y, gg.y, mm.y, vv.y, bits & 2u, a);
    pp.z = AdamWOne(pp.z, gg.z, mm.z, vv.z, bits & 4u, a);
    pp.w = AdamWOne(pp.w, gg.w, mm.w, vv.w, bits & 8u, a);
    reinterpret_cast<float4*>(p)[i] = pp;
    reinterpret_cast<float4*>(m)[i] = mm;
    reinterpret_cast<float4*>(v)[i] = vv;
    if (p16 != nullptr) Store4(p16, i, pp);
  }
  for (int64_t i = 4 * n4 + first; i < n; i += stride) {
    p[i] = AdamWOne(p[i], g[i], m[i], v[i], (decay[i >> 5] >> (i & 31)) & 1u, a);
    if (p16 != nullptr) p16[i] = __float2bfloat16_rn(p[i]);
  }
}

constexpr int kSumBlocks = 1024;

__global__ void SumSquaresPartKernel(const float* g, int64_t n, double* part) {
  __shared__ double shared[32];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    acc += double(g[i]) * g[i];
  acc = BlockSum(acc, shared);
  if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

__global__ void SumPartsKernel(const double* part, int n, double* out) {
  __shared__ double shared[32];
  double acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += part[i];
  acc = BlockSum(acc, shared);
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

absl::Status Embed(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc, int64_t rows,
                   const float* emb, float* h, int64_t D, Stream stream) {
  EmbedKernel<<<rows, kThreads, 0, stream>>>(tokens, T, t0, Tc, emb, h, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status EmbedBackward(const int32_t* ids, const int32_t* offsets, const int32_t* rows,
                           int64_t n, const float* dh, float* demb, int64_t D, Stream stream) {
  if (n == 0) return absl::OkStatus();
  EmbedBackwardKernel<<<n, kThreads, 0, stream>>>(ids, offsets, rows, dh, demb, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status RmsNorm(const float* x, const float* w, void* y, Act act, float* rstd, int64_t rows,
                     int64_t D, float eps, Stream stream, float* x_copy, bool let_next_start) {
  if (rows == 0) return absl::OkStatus();
  if (act == Act::kF32) {
    LaunchNorm(x, w, static_cast<float*>(y), rstd, x_copy, rows, D, eps, stream, let_next_start);
  } else {
    LaunchNorm(x, w, static_cast<__nv_bfloat16*>(y), rstd, x_copy, rows, D, eps, stream,
               let_next_start);
  }
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
int64_t RmsNormBackwardScratch(int64_t rows, int64_t D) {
  return (rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock * D;
}
absl::Status RmsNormBackward(const float* x, const float* w, const float* rstd, const float* dy,
                             float* dx, void* dx_act, Act act, float* dw, bool dw_add,
                             float* scratch, int64_t rows, int64_t D, Stream stream) {
  const int cols = NormCols(D);
  if (cols == 0) {
    return absl::UnimplementedError("CUDA RMSNorm backward supports hidden sizes up to 16384");
  }
  if (rows == 0) {  // no rows: dw gets nothing (an overwrite is zeros)
    if (!dw_add) RWR_CUDA(cudaMemsetAsync(dw, 0, D * sizeof(float), stream));
    return absl::OkStatus();
  }
  const int64_t nb = (rows + kNormRowsPerBlock - 1) / kNormRowsPerBlock;
  if (act == Act::kF32) {
    LaunchNormBackward(cols, nb, stream, x, w, rstd, dy, dx, static_cast<float*>(dx_act), scratch,
                       rows, D);
  } else {
    LaunchNormBackward(cols, nb, stream, x, w, rstd, dy, dx, static_cast<__nv_bfloat16*>(dx_act),
                       scratch, rows, D);
  }
  RWR_CUDA_LAUNCH();
  AddColumnSumsKernel<<<static_cast<unsigned>((D + 31) / 32), dim3(32, kSumSlices), 0, stream>>>(
      scratch, nb, D, dw, dw_add);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status Accumulate(float* out, const float* v, int64_t n, bool add, Stream stream) {
  AccumulateKernel<<<Blocks(n), kThreads, 0, stream>>>(out, v, n, add);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status NegExp(const float* a, float* out, int64_t n, Stream stream) {
  NegExpKernel<<<Blocks(n), kThreads, 0, stream>>>(a, out, n);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status ALogGrad(const float* dA, const float* A, float* g, int64_t n, bool add,
                      Stream stream) {
  ALogGradKernel<<<Blocks(n), kThreads, 0, stream>>>(dA, A, g, n, add);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status ToBf16(const float* src, void* dst, int64_t n, Stream stream) {
  ToBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(src, static_cast<__nv_bfloat16*>(dst), n);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status GatherRows(const void* src, const int32_t* rows, void* dst, Act act, int64_t n,
                        int64_t D, Stream stream, bool let_next_start) {
  if (n == 0) return absl::OkStatus();
  if (act == Act::kF32) {
    GatherRowsKernel<<<n, kThreads, 0, stream>>>(static_cast<const float*>(src), rows,
                                                 static_cast<float*>(dst), D, let_next_start);
  } else {
    GatherRowsKernel<<<n, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(src), rows,
                                                 static_cast<__nv_bfloat16*>(dst), D,
                                                 let_next_start);
  }
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status ScatterRows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t D,
                         Stream stream) {
  if (n == 0) return absl::OkStatus();
  ScatterRowsKernel<<<n, kThreads, 0, stream>>>(src, rows, dst, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status CrossEntropy(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                          const uint8_t* weight, float* loss, float scale, void* grad, Act act,
                          Stream stream) {
  if (rows == 0) return absl::OkStatus();
  if (act == Act::kF32) {
    CrossEntropyKernel<<<rows, kThreads, 0, stream>>>(logits, V, targets, weight, loss, scale,
                                                      static_cast<float*>(grad));
  } else {
    CrossEntropyKernel<<<rows, kThreads, 0, stream>>>(logits, V, targets, weight, loss, scale,
                                                      static_cast<__nv_bfloat16*>(grad));
  }
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status AdamW(float* p, void* p16, const float* g, float* m, float* v, const uint32_t* decay,
                   int64_t n, float b1, float b2, float step_size, float decay_factor,
                   float inv_bc2_sqrt, float eps, float grad_scale, Stream stream) {
  const AdamWArgs args{b1, b2, step_size, decay_factor, inv_bc2_sqrt, eps, grad_scale};
  AdamWKernel<<<std::max(Blocks(n / 4), 1), kThreads, 0, stream>>>(
      p, static_cast<__nv_bfloat16*>(p16), g, m, v, decay, n, args);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
int64_t SumSquaresScratch() { return kSumBlocks; }
absl::Status SumSquares(const float* g, int64_t n, double* scratch, double* out, Stream stream) {
  const int blocks = static_cast<int>(std::min<int64_t>(kSumBlocks, (n + kThreads - 1) / kThreads));
  SumSquaresPartKernel<<<std::max(blocks, 1), kThreads, 0, stream>>>(g, n, scratch);
  RWR_CUDA_LAUNCH();
  SumPartsKernel<<<1, kThreads, 0, stream>>>(scratch, std::max(blocks, 1), out);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace rwr::trainer::cuda
