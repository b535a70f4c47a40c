// The small CUDA kernels of the GPU Mamba LM; see mamba_cuda_kernels.h.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "common/call_status_cuda.h"
#include "trainer/mamba_cuda_kernels.h"

namespace rwr::trainer::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 4096));
}

__device__ float BlockSum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.f;
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

// h (B, Tc, D) = emb[tokens[b, t0 + t]]
__global__ void EmbedKernel(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc,
                            const float* emb, float* h, int64_t D) {
  const int64_t row = blockIdx.x;  // b·Tc + t
  const int64_t b = row / Tc, t = row % Tc;
  const int64_t id = tokens[b * T + t0 + t];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) h[row * D + d] = emb[id * D + d];
}

__global__ void EmbedBackwardKernel(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc,
                                    const float* dh, float* demb, int64_t D) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / Tc, t = row % Tc;
  const int64_t id = tokens[b * T + t0 + t];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    atomicAdd(&demb[id * D + d], dh[row * D + d]);
}

__global__ void RmsNormKernel(const float* x, const float* w, float* y, float* rstd, int64_t D,
                              float eps) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * D;
  float ss = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) ss += xr[d] * xr[d];
  const float r = rsqrtf(BlockSum(ss, shared) / D + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) y[row * D + d] = xr[d] * r * w[d];
}

// dx += RMSNorm backward of dy; dw += Σ_rows dy·x·rstd (atomics).
__global__ void RmsNormBackwardKernel(const float* x, const float* w, const float* rstd,
                                      const float* dy, float* dx, float* dw, int64_t D) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * D;
  const float* dyr = dy + row * D;
  const float r = rstd[row];
  float dot = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dot += dyr[d] * w[d] * xr[d] * r;
  const float mean = BlockSum(dot, shared) / D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    dx[row * D + d] += r * (dyr[d] * w[d] - xr[d] * r * mean);
    atomicAdd(&dw[d], dyr[d] * xr[d] * r);
  }
}

__global__ void AddKernel(float* a, const float* b, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    a[i] += b[i];
}

__global__ void NegExpKernel(const float* a, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = -expf(a[i]);
}

// g_A_log += dA·A
__global__ void ALogGradKernel(const float* dA, const float* A, float* g, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    g[i] += dA[i] * A[i];
}

__global__ void GatherRowsKernel(const float* src, const int32_t* rows, float* dst, int64_t D) {
  const int64_t r = blockIdx.x;
  const int64_t s = rows[r];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[r * D + d] = src[s * D + d];
}

__global__ void ScatterRowsKernel(const float* src, const int32_t* rows, float* dst, int64_t D) {
  const int64_t r = blockIdx.x;
  const int64_t s = rows[r];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[s * D + d] = src[r * D + d];
}

// One block per row of logits (V): loss = lse − z[target]; with `grad`, z ← (softmax −
// onehot)·scale where weight is 1, and 0 where the row carries no loss.
__global__ void CrossEntropyKernel(float* logits, int64_t V, const int32_t* targets,
                                   const uint8_t* weight, float* loss, float scale, bool grad) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  float* z = logits + row * V;
  if (!weight[row]) {
    if (grad) {
      for (int64_t v = threadIdx.x; v < V; v += blockDim.x) z[v] = 0.f;
    }
    if (threadIdx.x == 0) loss[row] = 0.f;
    return;
  }
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, z[v]);
  m = BlockMax(m, shared);
  float s = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += expf(z[v] - m);
  s = BlockSum(s, shared);
  const int32_t target = targets[row];
  const float lse = m + logf(s);
  const float zt = z[target];
  __syncthreads();
  if (threadIdx.x == 0) loss[row] = lse - zt;
  if (grad) {
    const float inv = 1.f / s;
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
      z[v] = (expf(z[v] - m) * inv - (v == target ? 1.f : 0.f)) * scale;
    }
  }
}

__global__ void AdamWKernel(float* p, const float* g, float* m, float* v, const uint8_t* decay,
                            int64_t n, float b1, float b2, float step_size, float decay_factor,
                            float inv_bc2_sqrt, float eps, float grad_scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i] * grad_scale;
    float pi = p[i];
    if (decay[i]) pi *= decay_factor;
    const float mi = b1 * m[i] + (1 - b1) * gi;
    const float vi = b2 * v[i] + (1 - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
  }
}

__global__ void SumSquaresKernel(const float* g, int64_t n, double* out) {
  __shared__ float shared[32];
  float acc = 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    acc += g[i] * g[i];
  acc = BlockSum(acc, shared);
  if (threadIdx.x == 0) atomicAdd(out, static_cast<double>(acc));
}

}  // namespace

absl::Status Embed(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc, int64_t rows,
                   const float* emb, float* h, int64_t D, Stream stream) {
  EmbedKernel<<<rows, kThreads, 0, stream>>>(tokens, T, t0, Tc, emb, h, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status EmbedBackward(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc, int64_t rows,
                           const float* dh, float* demb, int64_t D, Stream stream) {
  EmbedBackwardKernel<<<rows, kThreads, 0, stream>>>(tokens, T, t0, Tc, dh, demb, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status RmsNorm(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t D,
                     float eps, Stream stream) {
  RmsNormKernel<<<rows, kThreads, 0, stream>>>(x, w, y, rstd, D, eps);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status RmsNormBackward(const float* x, const float* w, const float* rstd, const float* dy,
                             float* dx, float* dw, int64_t rows, int64_t D, Stream stream) {
  RmsNormBackwardKernel<<<rows, kThreads, 0, stream>>>(x, w, rstd, dy, dx, dw, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status Add(float* a, const float* b, int64_t n, Stream stream) {
  AddKernel<<<Blocks(n), kThreads, 0, stream>>>(a, b, n);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status NegExp(const float* a, float* out, int64_t n, Stream stream) {
  NegExpKernel<<<Blocks(n), kThreads, 0, stream>>>(a, out, n);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status ALogGrad(const float* dA, const float* A, float* g, int64_t n, Stream stream) {
  ALogGradKernel<<<Blocks(n), kThreads, 0, stream>>>(dA, A, g, n);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status GatherRows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t D,
                        Stream stream) {
  GatherRowsKernel<<<n, kThreads, 0, stream>>>(src, rows, dst, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status ScatterRows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t D,
                         Stream stream) {
  ScatterRowsKernel<<<n, kThreads, 0, stream>>>(src, rows, dst, D);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status CrossEntropy(float* logits, int64_t rows, int64_t V, const int32_t* targets,
                          const uint8_t* weight, float* loss, float scale, bool grad,
                          Stream stream) {
  CrossEntropyKernel<<<rows, kThreads, 0, stream>>>(logits, V, targets, weight, loss, scale, grad);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status AdamW(float* p, const float* g, float* m, float* v, const uint8_t* decay, int64_t n,
                   float b1, float b2, float step_size, float decay_factor, float inv_bc2_sqrt,
                   float eps, float grad_scale, Stream stream) {
  AdamWKernel<<<Blocks(n), kThreads, 0, stream>>>(p, g, m, v, decay, n, b1, b2, step_size,
                                                  decay_factor, inv_bc2_sqrt, eps, grad_scale);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}
absl::Status SumSquares(const float* g, int64_t n, double* out, Stream stream) {
  SumSquaresKernel<<<Blocks(n), kThreads, 0, stream>>>(g, n, out);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace rwr::trainer::cuda
