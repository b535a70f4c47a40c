// CUDA causal depthwise conv1d (sm_90), width 2–4, forward and backward, fp32 or bf16 tensors.
//
// One thread per (batch, V adjacent channels, tile of 64 tokens); consecutive threads take
// consecutive channel groups, so every token row is read coalesced. V = 4 (one 8-byte bf16 or
// 16-byte fp32 access per token row) where x, out, dout and dx rows allow it (base, strides and Di
// multiples of 4 elements, the trainer's and the bench's tensors), else V = 1. A thread walks its
// tile in groups of tokens: it issues the loads of a whole group (predicated past the tile's end,
// never a data-dependent exit, so the group stays in registers), then computes and stores it.
// The last W inputs stay in registers, masked at document starts (a reset at t hides every
// earlier input from t onwards; resets are per token, so every channel of a warp branches alike).
// The backward recomputes the pre-activations up to W−1 tokens past its tile (their gradients
// reach the tile's inputs) and writes per-tile dweight/dbias partials that a second kernel sums
// in a fixed order: no atomics, bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/call_status_cuda.h"
#include "common/cuda_dependent_launch.cuh"
#include "common/cuda_elements.cuh"
#include "fmt/format.h"
#include "scan_kernels/causal_conv1d.h"

namespace rwr::scan {
namespace {

constexpr int kConvTile = 64;
constexpr int kConvThreads = 128;
constexpr int kConvVec = 4;          // channels per thread where rows are aligned
constexpr int kConvGroupFwd = 8;     // tokens whose loads are in flight together (forward)
constexpr int kConvGroupBwd = 4;     // same, backward (x and dout: 8 loads)
// Blocks per SM the register caps aim at (uncapped, the V = 4 kernels take 140–160 registers).
constexpr int kConvMinBlocksFwd = 5;
constexpr int kConvMinBlocksBwd = 4;
constexpr int kReduceCols = 32;      // ConvReduceKernel block: partial columns ...
constexpr int kReduceSlices = 8;     // ... × row slices summed in a fixed order

using cuda_elements::FromFloat;
using cuda_elements::ToFloat;

__device__ __forceinline__ float ConvSigmoid(float v) { return __fdividef(1.f, 1.f + __expf(-v)); }

// A document starts: the W − 1 earlier inputs of the window are gone (the forward and the
// backward walk the same window).
template <int W, int V>
__device__ __forceinline__ void ClearHistory(float (&win)[W][V]) {
#pragma unroll
  for (int k = 0; k < W - 1; ++k) {
#pragma unroll
    for (int j = 0; j < V; ++j) win[k][j] = 0.f;
  }
}

// The conv's output before the SiLU for channel j of the window.
template <int W, int V>
__device__ __forceinline__ float PreActivation(const float (&wt)[W][V], const float (&win)[W][V],
                                               float bias, int j) {
  float acc = bias;
#pragma unroll
  for (int k = 0; k < W; ++k) acc += wt[k][j] * win[k][j];
  return acc;
}

// One global access of Bytes bytes.
template <int Bytes> struct RawOf;
template <> struct RawOf<2> { using Type = unsigned short; };
template <> struct RawOf<4> { using Type = unsigned int; };
template <> struct RawOf<8> { using Type = uint2; };
template <> struct RawOf<16> { using Type = uint4; };

// An element's bits as a trivial type (so it can share a union with the access type).
template <typename E> struct BitsOf { using Type = float; };
template <> struct BitsOf<__nv_bfloat16> { using Type = unsigned short; };

template <typename E>
__device__ __forceinline__ float BitsToFloat(typename BitsOf<E>::Type v);
template <>
__device__ __forceinline__ float BitsToFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ float BitsToFloat<__nv_bfloat16>(unsigned short v) {
  return ToFloat<__nv_bfloat16>(__ushort_as_bfloat16(v));
}
template <typename E>
__device__ __forceinline__ typename BitsOf<E>::Type FloatToBits(float v);
template <>
__device__ __forceinline__ float FloatToBits<float>(float v) { return v; }
template <>
__device__ __forceinline__ unsigned short FloatToBits<__nv_bfloat16>(float v) {
  return __bfloat16_as_ushort(FromFloat<__nv_bfloat16>(v));
}

// V adjacent channels of one token row, loaded or stored as one access.
template <typename E, int V>
union ChannelRow {
  typename RawOf<int(sizeof(E)) * V>::Type raw;
  typename BitsOf<E>::Type bits[V];
};

template <typename E, int V>
__device__ __forceinline__ ChannelRow<E, V> LoadRow(const E* row) {
  ChannelRow<E, V> r;
  r.raw = *reinterpret_cast<const decltype(r.raw)*>(row);
  return r;
}

template <typename E, int V>
__device__ __forceinline__ ChannelRow<E, V> ZeroRow() {
  ChannelRow<E, V> r;
  r.raw = {};
  return r;
}

template <typename E, int V>
__device__ __forceinline__ void Unpack(const ChannelRow<E, V>& r, float (&f)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j) f[j] = BitsToFloat<E>(r.bits[j]);
}

template <typename E, int V>
__device__ __forceinline__ void StoreRow(E* row, const float (&f)[V]) {
  ChannelRow<E, V> r;
#pragma unroll
  for (int j = 0; j < V; ++j) r.bits[j] = FloatToBits<E>(f[j]);
  *reinterpret_cast<decltype(r.raw)*>(row) = r.raw;
}

__device__ __forceinline__ bool ResetAt(const CausalConv1dParams& p, int64_t b, int64_t t) {
  return p.resets != nullptr && p.resets[b * p.resets_batch_stride + t] != 0;
}

// wt[k][j] = weight[d0 + j, k], bias[j] = bias[d0 + j] (0 without bias).
template <int W, int V>
__device__ __forceinline__ void LoadWeights(const CausalConv1dParams& p, int64_t d0,
                                            float (&wt)[W][V], float (&bias)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
#pragma unroll
    for (int k = 0; k < W; ++k) wt[k][j] = p.weight[(d0 + j) * W + k];
    bias[j] = p.bias != nullptr ? p.bias[d0 + j] : 0.f;
  }
}

// Window before token t0 (t0 <= T): slots k = 0..W−2 hold inputs u = t0−(W−1)+k of channels
// d0..d0+V−1, masked at resets; vis[k] says whether slot k is visible from t0.
template <typename E, int W, int V>
__device__ __forceinline__ void LoadWindow(const CausalConv1dParams& p, int64_t b, int64_t d0,
                                           int64_t t0, float (&win)[W][V], bool (&vis)[W]) {
  const E* x = static_cast<const E*>(p.x) + b * p.x_strides.batch + d0;
#pragma unroll
  for (int k = 0; k < W - 1; ++k) {
    const int64_t u = t0 - (W - 1) + k;
    if (u >= 0) {
      Unpack<E, V>(LoadRow<E, V>(x + u * p.x_strides.token), win[k]);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        win[k][j] = p.initial_state != nullptr
                        ? p.initial_state[(b * p.dim + d0 + j) * (W - 1) + (u + W - 1)]
                        : 0.f;
      }
    }
    vis[k] = true;
    if (u >= 0 && ResetAt(p, b, u)) {
#pragma unroll
      for (int k2 = 0; k2 < k; ++k2) {
#pragma unroll
        for (int j = 0; j < V; ++j) win[k2][j] = 0.f;
        vis[k2] = false;
      }
    }
  }
}

template <typename E, int W, int V>
__global__ void __launch_bounds__(kConvThreads, kConvMinBlocksFwd)
    ConvForwardKernel(CausalConv1dParams p) {
  constexpr int G = kConvGroupFwd;
  const int64_t d0 = (int64_t(blockIdx.x) * kConvThreads + threadIdx.x) * V;
  if (d0 >= p.dim) return;
  const int64_t b = blockIdx.z, t0 = int64_t(blockIdx.y) * kConvTile;
  const int64_t t_end = min(p.seqlen, t0 + kConvTile);
  float wt[W][V], bias[V];
  LoadWeights<W, V>(p, d0, wt, bias);
  float win[W][V];
  bool vis[W];
  LoadWindow<E, W, V>(p, b, d0, t0, win, vis);
  const E* x = static_cast<const E*>(p.x) + b * p.x_strides.batch + d0;
  E* out = static_cast<E*>(p.out) + b * p.out_strides.batch + d0;
  const uint8_t* resets = p.resets != nullptr ? p.resets + b * p.resets_batch_stride : nullptr;
  for (int64_t tg = t0; tg < t_end; tg += G) {
    // Every load of the group before any store (out may alias x as far as the compiler knows).
    ChannelRow<E, V> xin[G];
    bool reset[G];
#pragma unroll
    for (int i = 0; i < G; ++i) {
      const int64_t t = tg + i;
      xin[i] = t < t_end ? LoadRow<E, V>(x + t * p.x_strides.token) : ZeroRow<E, V>();
      reset[i] = resets != nullptr && t < t_end && resets[t] != 0;
    }
#pragma unroll
    for (int i = 0; i < G; ++i) {
      const int64_t t = tg + i;
      if (reset[i]) ClearHistory(win);
      Unpack<E, V>(xin[i], win[W - 1]);
      float y[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float acc = PreActivation(wt, win, bias[j], j);
        if (p.silu) acc *= ConvSigmoid(acc);
        y[j] = acc;
      }
      if (t < t_end) StoreRow<E, V>(out + t * p.out_strides.token, y);
#pragma unroll
      for (int k = 0; k < W - 1; ++k) {
#pragma unroll
        for (int j = 0; j < V; ++j) win[k][j] = win[k + 1][j];
      }
    }
  }
  if (t_end == p.seqlen && p.final_state != nullptr) {
    // The last W−1 inputs, masked as token T would see them (re-read: the tile's walk shifted
    // zeros in past its end).
    LoadWindow<E, W, V>(p, b, d0, p.seqlen, win, vis);
#pragma unroll
    for (int j = 0; j < V; ++j) {
#pragma unroll
      for (int k = 0; k < W - 1; ++k) p.final_state[(b * p.dim + d0 + j) * (W - 1) + k] = win[k][j];
    }
  }
}

// Per-thread partials: part[((b·nTiles + tile)·Di + d)·(W+1) + k], k < W: dweight, k = W: dbias.
template <typename E, int W, int V>
__global__ void __launch_bounds__(kConvThreads, kConvMinBlocksBwd)
    ConvBackwardKernel(CausalConv1dParams p, CausalConv1dGrads g, float* part) {
  constexpr int G = kConvGroupBwd;
  const int64_t d0 = (int64_t(blockIdx.x) * kConvThreads + threadIdx.x) * V;
  if (d0 >= p.dim) return;
  const int64_t b = blockIdx.z, tile = blockIdx.y, t0 = tile * kConvTile;
  const int64_t T = p.seqlen;
  const int64_t own_end = min(T, t0 + kConvTile);
  // Tokens up to W−1 past the tile still reach its inputs; the walk goes to own_end + W − 1 even
  // past T (inputs and dout read as 0 there) so that the tile's last inputs finish inside it.
  const int64_t walk_end = own_end + (W - 1);
  const int64_t load_end = min(T, walk_end);
  float wt[W][V], bias[V];
  LoadWeights<W, V>(p, d0, wt, bias);
  float win[W][V], acc[W][V], dw[W][V], dbias[V];
  bool vis[W];
  LoadWindow<E, W, V>(p, b, d0, t0, win, vis);
#pragma unroll
  for (int j = 0; j < V; ++j) {
#pragma unroll
    for (int k = 0; k < W; ++k) {
      acc[k][j] = 0.f;
      dw[k][j] = 0.f;
    }
    dbias[j] = 0.f;
  }
  const E* x = static_cast<const E*>(p.x) + b * p.x_strides.batch + d0;
  const E* dout = static_cast<const E*>(g.dout) + b * g.dout_strides.batch + d0;
  E* dx = static_cast<E*>(g.dx) + b * g.dx_strides.batch + d0;
  const uint8_t* resets = p.resets != nullptr ? p.resets + b * p.resets_batch_stride : nullptr;

  for (int64_t tg = t0; tg < walk_end; tg += G) {
    ChannelRow<E, V> xin[G], dyin[G];
    bool reset[G];
#pragma unroll
    for (int i = 0; i < G; ++i) {
      const int64_t t = tg + i;
      const bool in = t < load_end;
      xin[i] = in ? LoadRow<E, V>(x + t * p.x_strides.token) : ZeroRow<E, V>();
      dyin[i] = in ? LoadRow<E, V>(dout + t * g.dout_strides.token) : ZeroRow<E, V>();
      reset[i] = resets != nullptr && in && resets[t] != 0;
    }
#pragma unroll
    for (int i = 0; i < G; ++i) {
      const int64_t t = tg + i;
      if (reset[i]) {
        ClearHistory(win);
#pragma unroll
        for (int k = 0; k < W - 1; ++k) vis[k] = false;
      }
      Unpack<E, V>(xin[i], win[W - 1]);
      vis[W - 1] = true;
      float dpre[V];
      Unpack<E, V>(dyin[i], dpre);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        acc[W - 1][j] = 0.f;
        const float pre = PreActivation(wt, win, bias[j], j);
        if (p.silu) {
          const float sg = ConvSigmoid(pre);
          dpre[j] *= sg * (1.f + pre * (1.f - sg));
        }
#pragma unroll
        for (int k = 0; k < W; ++k) {
          if (vis[k]) acc[k][j] += dpre[j] * wt[k][j];
        }
      }
      if (t < own_end) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
#pragma unroll
          for (int k = 0; k < W; ++k) dw[k][j] += dpre[j] * win[k][j];  // invisible slots hold 0
          dbias[j] += dpre[j];
        }
      }
      if (t == T - 1 && g.dfinal_state != nullptr) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
#pragma unroll
          for (int k = 0; k < W - 1; ++k) {
            if (vis[k + 1]) acc[k + 1][j] += g.dfinal_state[(b * p.dim + d0 + j) * (W - 1) + k];
          }
        }
      }
      // The input at u = t − (W−1) has its finished gradient in acc[0].
      const int64_t u = t - (W - 1);
      if (u >= t0 && u < own_end) {
        StoreRow<E, V>(dx + u * g.dx_strides.token, acc[0]);
      } else if (u < 0 && g.dinitial_state != nullptr) {  // tile 0 only
#pragma unroll
        for (int j = 0; j < V; ++j) {
          g.dinitial_state[(b * p.dim + d0 + j) * (W - 1) + (u + W - 1)] = acc[0][j];
        }
      }
#pragma unroll
      for (int k = 0; k < W - 1; ++k) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          win[k][j] = win[k + 1][j];
          acc[k][j] = acc[k + 1][j];
        }
        vis[k] = vis[k + 1];
      }
    }
  }

  float* out = part + ((b * gridDim.y + tile) * p.dim + d0) * (W + 1);
  float v[V * (W + 1)];
#pragma unroll
  for (int j = 0; j < V; ++j) {
#pragma unroll
    for (int k = 0; k < W; ++k) v[j * (W + 1) + k] = dw[k][j];
    v[j * (W + 1) + W] = dbias[j];
  }
  if constexpr (V % 4 == 0) {  // 16-byte aligned: the launch checks part, and d0 % 4 == 0
#pragma unroll
    for (int i = 0; i < V * (W + 1); i += 4) {
      *reinterpret_cast<float4*>(out + i) = make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < V * (W + 1); ++i) out[i] = v[i];
  }
}

// Sums the partials over (batch, tile) rows: column c of the (rows, Di·(W+1)) partials is
// dweight[d, k] (k < W) or dbias[d] (k = W), d = c / (W+1). Slice y of the block sums rows
// y, y + kReduceSlices, ... in order, then slice 0 adds the slices in order: a fixed order.
template <int W>
__global__ void __launch_bounds__(kReduceCols * kReduceSlices)
    ConvReduceKernel(CausalConv1dParams p, CausalConv1dGrads g, const float* part, int64_t rows) {
  __shared__ float slice_sum[kReduceSlices][kReduceCols];
  const int64_t cols = p.dim * (W + 1);
  const int64_t c = int64_t(blockIdx.x) * kReduceCols + threadIdx.x;
  float sum = 0.f;
  if (c < cols) {
    for (int64_t i = threadIdx.y; i < rows; i += kReduceSlices) sum += part[i * cols + c];
  }
  slice_sum[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  float total = 0.f;
#pragma unroll
  for (int y = 0; y < kReduceSlices; ++y) total += slice_sum[y][threadIdx.x];
  const int64_t d = c / (W + 1), k = c % (W + 1);
  if (k < W) {
    g.dweight[d * W + k] = total;
  } else if (g.dbias != nullptr) {
    g.dbias[d] = total;
  }
}

int64_t Tiles(const CausalConv1dParams& p) { return (p.seqlen + kConvTile - 1) / kConvTile; }

// Whether rows of V channels can be read as one access: base, strides and Di multiples of V.
template <typename E>
bool RowsVectorizable(const void* base, const TokenStrides& s, int64_t dim, int v) {
  return reinterpret_cast<uintptr_t>(base) % (sizeof(E) * v) == 0 && s.batch % v == 0 &&
         s.token % v == 0 && dim % v == 0;
}

dim3 ConvGrid(const CausalConv1dParams& p, int v) {
  const int64_t threads = (p.dim + v - 1) / v;
  return dim3(static_cast<unsigned>((threads + kConvThreads - 1) / kConvThreads),
              static_cast<unsigned>(Tiles(p)), static_cast<unsigned>(p.batch));
}

template <typename E, int W>
absl::Status LaunchConvForward(const CausalConv1dParams& p, cudaStream_t stream) {
  if (RowsVectorizable<E>(p.x, p.x_strides, p.dim, kConvVec) &&
      RowsVectorizable<E>(p.out, p.out_strides, p.dim, kConvVec)) {
    ConvForwardKernel<E, W, kConvVec><<<ConvGrid(p, kConvVec), kConvThreads, 0, stream>>>(p);
  } else {
    ConvForwardKernel<E, W, 1><<<ConvGrid(p, 1), kConvThreads, 0, stream>>>(p);
  }
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E, int W>
absl::Status LaunchConvBackward(const CausalConv1dParams& p, const CausalConv1dGrads& g,
                                cudaStream_t stream) {
  float* part = static_cast<float*>(p.workspace);
  if (RowsVectorizable<E>(p.x, p.x_strides, p.dim, kConvVec) &&
      RowsVectorizable<E>(g.dout, g.dout_strides, p.dim, kConvVec) &&
      RowsVectorizable<E>(g.dx, g.dx_strides, p.dim, kConvVec) &&
      reinterpret_cast<uintptr_t>(part) % 16 == 0) {
    ConvBackwardKernel<E, W, kConvVec>
        <<<ConvGrid(p, kConvVec), kConvThreads, 0, stream>>>(p, g, part);
  } else {
    ConvBackwardKernel<E, W, 1><<<ConvGrid(p, 1), kConvThreads, 0, stream>>>(p, g, part);
  }
  RWR_CUDA_LAUNCH();
  const int64_t cols = p.dim * (W + 1);
  ConvReduceKernel<W><<<static_cast<unsigned>((cols + kReduceCols - 1) / kReduceCols),
                        dim3(kReduceCols, kReduceSlices), 0, stream>>>(p, g, part,
                                                                       p.batch * Tiles(p));
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

// The single-token step (Step): one thread per (row, channel) reads its W − 1 inputs of state,
// the token and its weights, writes the output and the shifted state. The forward's kernels are
// built for tiles of tokens and pay their set-up at T = 1; this is the step's floor, a read and a
// write of the state (the sum in PreActivation's order). Rows on the grid's x axis, whose 2^31
// blocks take any batch; channel blocks on y.
template <typename E, int W>
__global__ void __launch_bounds__(kConvThreads) ConvStepKernel(CausalConv1dParams p) {
  if (p.let_next_start) cuda_dependent_launch::LetDependentsLaunch();
  const int64_t b = blockIdx.x;
  const int64_t d = blockIdx.y * int64_t{kConvThreads} + threadIdx.x;
  if (d >= p.dim) return;
  const bool reset = p.resets != nullptr && p.resets[b * p.resets_batch_stride] != 0;
  const int64_t at = (b * p.dim + d) * (W - 1);
  float win[W];
#pragma unroll
  for (int k = 0; k < W - 1; ++k) win[k] = reset ? 0.f : p.initial_state[at + k];
  win[W - 1] = ToFloat<E>(static_cast<const E*>(p.x)[b * p.x_strides.batch + d]);
  float acc = p.bias != nullptr ? p.bias[d] : 0.f;
#pragma unroll
  for (int k = 0; k < W; ++k) acc += p.weight[d * W + k] * win[k];
  if (p.silu) acc *= ConvSigmoid(acc);
  static_cast<E*>(p.out)[b * p.out_strides.batch + d] = FromFloat<E>(acc);
#pragma unroll
  for (int k = 0; k < W - 1; ++k) p.final_state[at + k] = win[k + 1];
}

template <typename E, int W>
absl::Status LaunchConvStep(const CausalConv1dParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.batch),
                  static_cast<unsigned>((p.dim + kConvThreads - 1) / kConvThreads));
  ConvStepKernel<E, W><<<grid, kConvThreads, 0, stream>>>(p);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E>
absl::Status DispatchStep(const CausalConv1dParams& p, cudaStream_t stream) {
  switch (p.width) {
    case 2:
      return LaunchConvStep<E, 2>(p, stream);
    case 3:
      return LaunchConvStep<E, 3>(p, stream);
    default:
      return LaunchConvStep<E, 4>(p, stream);
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
  RWR_RETURN_IF_ERROR(CanImplement(p, Backend::kCuda));
  return p.dtype == DType::kBF16 ? DispatchStep<__nv_bfloat16>(p, stream)
                                 : DispatchStep<float>(p, stream);
}

}  // namespace rwr::scan
