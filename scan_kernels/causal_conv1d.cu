// CUDA causal depthwise conv1d (sm_90), width 2–4, forward and backward, fp32 or bf16 tensors.
//
// One thread per (batch, channel, tile of 64 tokens); consecutive threads take consecutive
// channels, so every token row is read coalesced. A thread keeps the last W inputs in registers,
// masked at document starts (a reset at t hides every earlier input from t onwards). The backward
// recomputes the pre-activations up to W−1 tokens past its tile (their gradients reach the tile's
// inputs) and writes per-tile dweight/dbias partials that a second kernel sums in a fixed order:
// no atomics, bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/call_status_cuda.h"
#include "common/cuda_elements.cuh"
#include "fmt/format.h"
#include "scan_kernels/causal_conv1d.h"

namespace rwr::scan {
namespace {

constexpr int kConvTile = 64;
constexpr int kConvThreads = 128;

using cuda_elements::FromFloat;
using cuda_elements::ToFloat;

__device__ __forceinline__ float ConvSigmoid(float v) { return __fdividef(1.f, 1.f + __expf(-v)); }

template <typename E>
__device__ __forceinline__ float LoadX(const CausalConv1dParams& p, int64_t b, int64_t u, int64_t d) {
  return ToFloat<E>(static_cast<const E*>(p.x)[b * p.x_strides.batch + u * p.x_strides.token + d]);
}

__device__ __forceinline__ bool ResetAt(const CausalConv1dParams& p, int64_t b, int64_t t) {
  return p.resets != nullptr && p.resets[b * p.resets_batch_stride + t] != 0;
}

// Window before token t0: slots k = 0..W−2 hold inputs u = t0−(W−1)+k, masked at resets.
template <typename E, int W>
__device__ __forceinline__ void LoadWindow(const CausalConv1dParams& p, int64_t b, int64_t d,
                                           int64_t t0, float (&win)[W], bool (&vis)[W]) {
#pragma unroll
  for (int k = 0; k < W - 1; ++k) {
    const int64_t u = t0 - (W - 1) + k;
    float v = 0.f;
    if (u >= 0) {
      v = LoadX<E>(p, b, u, d);
    } else if (p.initial_state != nullptr) {
      v = p.initial_state[(b * p.dim + d) * (W - 1) + (u + W - 1)];
    }
    win[k] = v;
    vis[k] = true;
    if (u >= 0 && ResetAt(p, b, u)) {
#pragma unroll
      for (int k2 = 0; k2 < k; ++k2) {
        win[k2] = 0.f;
        vis[k2] = false;
      }
    }
  }
}

template <typename E, int W>
__global__ void __launch_bounds__(kConvThreads) ConvForwardKernel(CausalConv1dParams p) {
  const int64_t d = int64_t(blockIdx.x) * kConvThreads + threadIdx.x;
  if (d >= p.dim) return;
  const int64_t b = blockIdx.z, t0 = int64_t(blockIdx.y) * kConvTile;
  const int64_t t_end = min(p.seqlen, t0 + kConvTile);
  float wt[W];
#pragma unroll
  for (int k = 0; k < W; ++k) wt[k] = p.weight[d * W + k];
  const float bias = p.bias != nullptr ? p.bias[d] : 0.f;
  float win[W];
  bool vis[W];
  LoadWindow<E, W>(p, b, d, t0, win, vis);
  for (int64_t t = t0; t < t_end; ++t) {
    if (ResetAt(p, b, t)) {
#pragma unroll
      for (int k = 0; k < W - 1; ++k) win[k] = 0.f;
    }
    win[W - 1] = LoadX<E>(p, b, t, d);
    float acc = bias;
#pragma unroll
    for (int k = 0; k < W; ++k) acc += wt[k] * win[k];
    if (p.silu) acc *= ConvSigmoid(acc);
    static_cast<E*>(p.out)[b * p.out_strides.batch + t * p.out_strides.token + d] = FromFloat<E>(acc);
#pragma unroll
    for (int k = 0; k < W - 1; ++k) win[k] = win[k + 1];
  }
  if (t_end == p.seqlen && p.final_state != nullptr) {
#pragma unroll
    for (int k = 0; k < W - 1; ++k) p.final_state[(b * p.dim + d) * (W - 1) + k] = win[k];
  }
}

// Per-thread partials: part[((b·nTiles + tile)·Di + d)·(W+1) + k], k < W: dweight, k = W: dbias.
template <typename E, int W>
__global__ void __launch_bounds__(kConvThreads)
    ConvBackwardKernel(CausalConv1dParams p, CausalConv1dGrads g, float* part) {
  const int64_t d = int64_t(blockIdx.x) * kConvThreads + threadIdx.x;
  if (d >= p.dim) return;
  const int64_t b = blockIdx.z, tile = blockIdx.y, t0 = tile * kConvTile;
  const int64_t T = p.seqlen;
  const int64_t own_end = min(T, t0 + kConvTile);
  const int64_t t_stop = min(T, own_end + (W - 1));  // later tokens still reach own inputs
  float wt[W];
#pragma unroll
  for (int k = 0; k < W; ++k) wt[k] = p.weight[d * W + k];
  const float bias = p.bias != nullptr ? p.bias[d] : 0.f;
  float win[W], acc[W];
  bool vis[W];
  LoadWindow<E, W>(p, b, d, t0, win, vis);
#pragma unroll
  for (int k = 0; k < W; ++k) acc[k] = 0.f;
  float dw[W];
#pragma unroll
  for (int k = 0; k < W; ++k) dw[k] = 0.f;
  float dbias = 0.f;

  // The input at u gets its finished gradient v.
  auto finish = [&](int64_t u, float v) {
    if (u >= t0 && u < own_end) {
      static_cast<E*>(g.dx)[b * g.dx_strides.batch + u * g.dx_strides.token + d] = FromFloat<E>(v);
    } else if (tile == 0 && u < 0 && u >= -(W - 1) && g.dinitial_state != nullptr) {
      g.dinitial_state[(b * p.dim + d) * (W - 1) + (u + W - 1)] = v;
    }
  };

  for (int64_t t = t0; t < t_stop; ++t) {
    if (ResetAt(p, b, t)) {
#pragma unroll
      for (int k = 0; k < W - 1; ++k) {
        win[k] = 0.f;
        vis[k] = false;
      }
    }
    win[W - 1] = LoadX<E>(p, b, t, d);
    vis[W - 1] = true;
    acc[W - 1] = 0.f;
    float pre = bias;
#pragma unroll
    for (int k = 0; k < W; ++k) pre += wt[k] * win[k];
    float dpre = ToFloat<E>(static_cast<const E*>(g.dout)[b * g.dout_strides.batch +
                                                         t * g.dout_strides.token + d]);
    if (p.silu) {
      const float sg = ConvSigmoid(pre);
      dpre *= sg * (1.f + pre * (1.f - sg));
    }
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if (vis[k]) acc[k] += dpre * wt[k];
    }
    if (t < own_end) {
#pragma unroll
      for (int k = 0; k < W; ++k) dw[k] += dpre * win[k];  // invisible slots hold 0
      dbias += dpre;
    }
    if (t == T - 1 && g.dfinal_state != nullptr) {
#pragma unroll
      for (int k = 0; k < W - 1; ++k) {
        if (vis[k + 1]) acc[k + 1] += g.dfinal_state[(b * p.dim + d) * (W - 1) + k];
      }
    }
    finish(t - (W - 1), acc[0]);
#pragma unroll
    for (int k = 0; k < W - 1; ++k) {
      win[k] = win[k + 1];
      vis[k] = vis[k + 1];
      acc[k] = acc[k + 1];
    }
  }
  // Inputs that no later token reaches (the sample ended or they are past this tile).
#pragma unroll
  for (int k = 0; k < W - 1; ++k) finish(t_stop - (W - 1) + k, acc[k]);

  float* out = part + ((b * gridDim.y + tile) * p.dim + d) * (W + 1);
#pragma unroll
  for (int k = 0; k < W; ++k) out[k] = dw[k];
  out[W] = dbias;
}

template <int W>
__global__ void ConvReduceKernel(CausalConv1dParams p, CausalConv1dGrads g, const float* part,
                                 int64_t n_tiles) {
  const int64_t d = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d >= p.dim) return;
  float sum[W + 1];
#pragma unroll
  for (int k = 0; k <= W; ++k) sum[k] = 0.f;
  for (int64_t i = 0; i < p.batch * n_tiles; ++i) {
    const float* v = part + (i * p.dim + d) * (W + 1);
#pragma unroll
    for (int k = 0; k <= W; ++k) sum[k] += v[k];
  }
#pragma unroll
  for (int k = 0; k < W; ++k) g.dweight[d * W + k] = sum[k];
  if (g.dbias != nullptr) g.dbias[d] = sum[W];
}

int64_t Tiles(const CausalConv1dParams& p) { return (p.seqlen + kConvTile - 1) / kConvTile; }

template <typename E, int W>
absl::Status LaunchConvForward(const CausalConv1dParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.dim + kConvThreads - 1) / kConvThreads),
                  static_cast<unsigned>(Tiles(p)), static_cast<unsigned>(p.batch));
  ConvForwardKernel<E, W><<<grid, kConvThreads, 0, stream>>>(p);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E, int W>
absl::Status LaunchConvBackward(const CausalConv1dParams& p, const CausalConv1dGrads& g,
                                cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.dim + kConvThreads - 1) / kConvThreads),
                  static_cast<unsigned>(Tiles(p)), static_cast<unsigned>(p.batch));
  float* part = static_cast<float*>(p.workspace);
  ConvBackwardKernel<E, W><<<grid, kConvThreads, 0, stream>>>(p, g, part);
  RWR_CUDA_LAUNCH();
  ConvReduceKernel<W><<<static_cast<unsigned>((p.dim + 127) / 128), 128, 0, stream>>>(p, g, part,
                                                                                    Tiles(p));
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E>
absl::Status DispatchForward(const CausalConv1dParams& p, cudaStream_t stream) {
  switch (p.width) {
    case 2: return LaunchConvForward<E, 2>(p, stream);
    case 3: return LaunchConvForward<E, 3>(p, stream);
    default: return LaunchConvForward<E, 4>(p, stream);
  }
}

template <typename E>
absl::Status DispatchBackward(const CausalConv1dParams& p, const CausalConv1dGrads& g,
                              cudaStream_t stream) {
  switch (p.width) {
    case 2: return LaunchConvBackward<E, 2>(p, g, stream);
    case 3: return LaunchConvBackward<E, 3>(p, g, stream);
    default: return LaunchConvBackward<E, 4>(p, g, stream);
  }
}

}  // namespace

int64_t ConvWorkspaceBytes(const CausalConv1dParams& p) {
  if (p.batch <= 0 || p.seqlen <= 0 || p.dim <= 0) return 0;
  return p.batch * Tiles(p) * p.dim * (p.width + 1) * int64_t(sizeof(float));
}

absl::Status Forward(const CausalConv1dParams& p, CUstream_st* stream) {
  RWR_RETURN_IF_ERROR(CanImplement(p, Backend::kCuda));
  if (p.final_state != nullptr && p.final_state == p.initial_state && Tiles(p) > 1) {
    return absl::InvalidArgumentError(fmt::format(
        "causal conv1d CUDA: final_state may alias initial_state only for seqlen <= {}, got {}",
        kConvTile, p.seqlen));
  }
  return p.dtype == DType::kBF16 ? DispatchForward<__nv_bfloat16>(p, stream)
                                 : DispatchForward<float>(p, stream);
}

absl::Status Backward(const CausalConv1dParams& p, const CausalConv1dGrads& g,
                      CUstream_st* stream) {
  RWR_RETURN_IF_ERROR(CanImplement(p, g, Backend::kCuda));
  if (p.workspace == nullptr) {
    return absl::InvalidArgumentError(
        "causal conv1d CUDA backward: needs a workspace of ConvWorkspaceBytes(params) bytes");
  }
  return p.dtype == DType::kBF16 ? DispatchBackward<__nv_bfloat16>(p, g, stream)
                                 : DispatchBackward<float>(p, g, stream);
}

absl::Status Step(const CausalConv1dParams& p, CUstream_st* stream) {
  if (p.seqlen != 1 || p.initial_state == nullptr || p.final_state == nullptr) {
    return absl::InvalidArgumentError(
        "causal conv1d step: needs seqlen 1 and both initial_state and final_state");
  }
  return Forward(p, stream);
}

}  // namespace rwr::scan
