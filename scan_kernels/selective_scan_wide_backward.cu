// Wide CUDA backward of the selective scan (sm_90), S = 16, fp32 or bf16 tensors: one lane owns
// one channel and all 16 of its states.
//
// Why a second backward: the 4-lanes-per-channel backward (selective_scan.cu) spends about half
// of its ~49 instructions per (token, channel, state) on work that is not the recurrence: every
// per-token channel quantity (Δ, the gate, dy) is shared among a channel's 4 lanes through
// shared memory, every sum over the states (y, dx, dΔ) is a 4-lane shuffle reduction, and dB/dC
// are reduced over 8 channels with shuffles and selects at every token. Here the sums over the
// states stay inside a lane, the per-token channel work is done once by the lane that needs it
// and amortised over 16 states, and dB/dC are reduced over the warp's 32 channels with 31
// shuffles and no per-state selects (the states are held in an order that makes the kept half of
// every round the same slots in every lane, below). The price is fewer warps (one per 32
// channels per chunk), which the 16 independent states per lane make up for with
// instruction-level parallelism.
//
// Per 16-token tile, last tile first, a 64-thread block (64 channels)
//   1. has its raw rows of Δraw, x, dout and z copied into shared memory by cp.async a tile
//      ahead, and B and C loaded into registers a tile ahead and stored, as fp32, in the four
//      orders the lanes read them in;
//   2. computes Δ = softplus(Δraw + bias) and Δ·x of its channel for the 16 tokens;
//   3. per 8-token segment, last first, recomputes the segment's states from the tile's
//      checkpoint (the second half's walk starts with an unstored walk of the first) into a
//      per-lane history in shared memory, with y for the gate and output gradients, then runs the
//      reverse recurrence through it.
// dB and dC: a warp's 32-channel sums per token go to shared memory, the two warps' sums to
// per-block partials, summed over the blocks by selective_scan.cu in block order. No atomics:
// bitwise reproducible.
//
// State order. Lane l holds state s in slot s ^ (l & 15). In the dB/dC reduce-scatter's rounds
// over lanes l ^ 8, l ^ 4, l ^ 2, l ^ 1 each lane keeps slots [0, m) and adds its partner's
// slots [m, 2m), which hold the same states (the partner's order differs in bit m): no selects.
// A, the checkpoint and the state gradients are read and written through LoadSlots / StoreSlots;
// B and C are kept in four copies whose columns are xor-permuted by 0..3, so that each lane reads
// its order with 16-byte reads.
#include "scan_kernels/selective_scan_wide_backward.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/call_status_cuda.h"
#include "common/cuda_elements.cuh"
#include "scan_kernels/scan_device.cuh"

namespace rwr::scan::wide_backward {
namespace {

using namespace device;  // NOLINT: kS, kTile, the exp, reset and cp.async helpers
using cuda_elements::FromFloat;
using cuda_elements::ToFloat;

constexpr int kWarps = 2;
constexpr int kThreads = kWarps * 32;
constexpr int kCh = kChannelsPerBlock;  // one channel per thread
static_assert(kCh == kThreads, "one channel per lane");
constexpr int kSeg = 8;      // tokens per recompute segment (the history's length)
constexpr int kStreams = 4;  // Δraw, x, dout, z
constexpr int kBCPer = kTile * 2 * kS / kThreads;  // B and C values each thread loads per tile: 8
constexpr float kLn2 = 0.6931471805599453f;

// Shared memory of one block for element type E (bytes; regions 16-byte aligned).
template <typename E>
struct Smem {
  static constexpr int kVec = 16 / int(sizeof(E));  // elements per 16-byte copy
  static constexpr int kRawElems = kStreams * kTile * kCh;  // one buffer: [stream][tok][channel]
  static constexpr int kCopiesPerStream = kTile * (kCh / kVec) / kThreads;  // per thread
  // B | C of a tile as fp32 in 4 copies; copy m holds at column c the value of column c ^ m. The
  // copies are 8 floats further apart than their size, so that the 8 lanes of a quarter warp
  // (4 copies × 2 column groups) read distinct banks.
  static constexpr int kBCCopy = kTile * 2 * kS + 8;
  static constexpr int kBCFloats = 4 * kBCCopy;  // one buffer (refilled between tiles)
  static constexpr int kHistF4 = kSeg * (kS / 4) * 32;  // per warp: [tok][float4 j][lane]
  static constexpr int kSredFloats = kTile * 2 * kS;    // per warp: [tok][column]
  static constexpr int kRawBytes = 2 * kRawElems * int(sizeof(E));
  static constexpr int kBCOffset = kRawBytes;
  // Per (token, channel) of the tile: {Δ, Δ·x}, each lane's own.
  static constexpr int kScalOffset = kBCOffset + kBCFloats * 4;
  static constexpr int kHistOffset = kScalOffset + kTile * kCh * 8;
  static constexpr int kSredOffset = kHistOffset + kWarps * kHistF4 * 16;
  static constexpr int kBytes = kSredOffset + kWarps * kSredFloats * 4;
};

// o[k] = v[k ^ lo]: a lane's xor order within a float4.
__device__ __forceinline__ void XorComponents(float4 v, int lo, float (&o)[4]) {
  const bool s0 = lo & 1, s1 = lo & 2;
  const float a0 = s0 ? v.y : v.x, a1 = s0 ? v.x : v.y, a2 = s0 ? v.w : v.z, a3 = s0 ? v.z : v.w;
  o[0] = s1 ? a2 : a0;
  o[1] = s1 ? a3 : a1;
  o[2] = s1 ? a0 : a2;
  o[3] = s1 ? a1 : a3;
}

// 16 states (contiguous, 16-byte aligned) into slot order: slot i = state i ^ lm.
__device__ __forceinline__ void LoadSlots(const float* states, int lm, float (&slots)[kS]) {
  const int hi = lm >> 2, lo = lm & 3;
#pragma unroll
  for (int j = 0; j < kS / 4; ++j) {
    float o[4];
    XorComponents(reinterpret_cast<const float4*>(states)[j ^ hi], lo, o);
#pragma unroll
    for (int k = 0; k < 4; ++k) slots[4 * j + k] = o[k];
  }
}
__device__ __forceinline__ void StoreSlots(float* states, int lm, const float (&slots)[kS]) {
  const int hi = lm >> 2, lo = lm & 3;
#pragma unroll
  for (int j = 0; j < kS / 4; ++j) {
    float o[4];
    XorComponents(make_float4(slots[4 * j], slots[4 * j + 1], slots[4 * j + 2], slots[4 * j + 3]),
                  lo, o);
    reinterpret_cast<float4*>(states)[j ^ hi] = make_float4(o[0], o[1], o[2], o[3]);
  }
}

// One round of the dB | dC reduce-scatter over lanes l and l ^ kM: slots [0, kM) kept, the
// partner's slots [kM, 2kM) added (the same states, by the xor order).
template <int kM>
__device__ __forceinline__ void SumRound(float (&vB)[kS], float (&vC)[kS]) {
#pragma unroll
  for (int i = 0; i < kM; ++i) {
    vB[i] += __shfl_xor_sync(kFull, vB[i + kM], kM);
    vC[i] += __shfl_xor_sync(kFull, vC[i + kM], kM);
  }
}

template <typename E>
__device__ __forceinline__ void StoreAt(void* base, int64_t i, float v) {
  static_cast<E*>(base)[i] = FromFloat<E>(v);
}

template <typename E>
__global__ void __launch_bounds__(kThreads, 3)
    WideBackwardKernel(SelectiveScanParams p, SelectiveScanGrads g, WideWork w) {
  using L = Smem<E>;
  extern __shared__ float4 smem4[];
  char* const smem = reinterpret_cast<char*>(smem4);
  E* const raw = reinterpret_cast<E*>(smem);  // [2][kStreams][kTile][kCh]
  float* const sbc = reinterpret_cast<float*>(smem + L::kBCOffset);
  float2* const scal = reinterpret_cast<float2*>(smem + L::kScalOffset) + threadIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float4* const hist = reinterpret_cast<float4*>(smem + L::kHistOffset) + warp * L::kHistF4;
  float* const sred = reinterpret_cast<float*>(smem + L::kSredOffset);  // [kWarps][kTile][32]

  const int blk = blockIdx.x, c = blockIdx.y;
  const int64_t b = blockIdx.z;
  const int lm = lane & 15, hi = lm >> 2, lo = lm & 3;
  const int64_t d0 = int64_t(blk) * kCh;
  const int64_t d = d0 + threadIdx.x;
  const bool active = d < p.dim;
  const int64_t dd = active ? d : p.dim - 1;
  const int64_t T = p.seqlen;
  const bool gated = p.z != nullptr;

  float A2[kS];
  LoadSlots(p.A + dd * kS, lm, A2);
#pragma unroll
  for (int s = 0; s < kS; ++s) A2[s] *= kLog2e;
  const float Dd = p.D != nullptr ? p.D[dd] : 0.f;
  const float dbias = p.delta_bias != nullptr ? p.delta_bias[dd] : 0.f;

  // The gradient entering this chunk's last token: dfinal_state carried back through the later
  // chunks' local gradients and decays.
  float gs[kS];
#pragma unroll
  for (int s = 0; s < kS; ++s) gs[s] = 0.f;
  if (g.dfinal_state != nullptr) LoadSlots(g.dfinal_state + (b * p.dim + dd) * kS, lm, gs);
  for (int cc = w.K - 1; cc > c; --cc) {
    const int64_t o = ((b * w.K + cc) * p.dim + dd) * kS;
    float gl[kS], dc[kS];
    LoadSlots(w.gloc + o, lm, gl);
    LoadSlots(w.gdecay + o, lm, dc);
#pragma unroll
    for (int s = 0; s < kS; ++s) gs[s] = dc[s] * gs[s] + gl[s];
  }

  // Tile j's raw rows into buffer buf (cp.async; zero-filled past T, past Di, and for no gate).
  auto copy_stream = [&](E* dst, const void* ptr, const TokenStrides& st, int64_t t0) {
#pragma unroll
    for (int k = 0; k < L::kCopiesPerStream; ++k) {
      const int ci = threadIdx.x + k * kThreads;
      const int tok = ci / (kCh / L::kVec), ch = (ci % (kCh / L::kVec)) * L::kVec;
      const int64_t t = t0 + tok;
      const bool valid = ptr != nullptr && t < T && d0 + ch < p.dim;
      const E* src = valid ? static_cast<const E*>(ptr) + b * st.batch + t * st.token + d0 + ch
                           : static_cast<const E*>(p.x);
      CpAsync16(dst + tok * kCh + ch, src, valid);
    }
  };
  auto issue = [&](int j, int buf) {
    const int64_t t0 = int64_t(j) * kTile;
    E* const dst = raw + buf * L::kRawElems;
    copy_stream(dst, p.delta, p.delta_strides, t0);
    copy_stream(dst + kTile * kCh, p.x, p.x_strides, t0);
    copy_stream(dst + 2 * kTile * kCh, g.dout, g.dout_strides, t0);
    copy_stream(dst + 3 * kTile * kCh, p.z, p.z_strides, t0);
    CpAsyncCommit();
  };
  // This thread's share of tile j's B | C: token warp + 2k, column lane (B below 16, C above).
  auto load_bc = [&](int j, float (&v)[kBCPer]) {
    const int64_t t0 = int64_t(j) * kTile;
#pragma unroll
    for (int k = 0; k < kBCPer; ++k) {
      const int64_t t = t0 + warp + 2 * k;
      float val = 0.f;
      if (t < T) {
        val = lane < kS ? ToFloat(static_cast<const E*>(
                              p.B)[b * p.B_strides.batch + t * p.B_strides.token + lane])
                        : ToFloat(static_cast<const E*>(
                              p.C)[b * p.C_strides.batch + t * p.C_strides.token + lane - kS]);
      }
      v[k] = val;
    }
  };
  auto store_bc = [&](const float (&v)[kBCPer]) {
    float* const dst = sbc;
#pragma unroll
    for (int k = 0; k < kBCPer; ++k) {
      const int tok = warp + 2 * k;
#pragma unroll
      for (int m = 0; m < 4; ++m) dst[m * L::kBCCopy + tok * 2 * kS + (lane ^ m)] = v[k];
    }
  };

  float dA[kS];
#pragma unroll
  for (int s = 0; s < kS; ++s) dA[s] = 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;

  const int j_begin = c * w.tiles_per_chunk;
  const int j_end = min(w.nJ, j_begin + w.tiles_per_chunk);
  float pbc[kBCPer];
  issue(j_end - 1, 0);
  load_bc(j_end - 1, pbc);
  bool pr = LoadResetFlag(p, b, int64_t(j_end - 1) * kTile);
  store_bc(pbc);
  unsigned resets = ResetMask(pr);
  CpAsyncWaitAll();
  __syncthreads();

  for (int j = j_end - 1; j >= j_begin; --j) {
    const int buf = (j_end - 1 - j) & 1;
    const bool more = j > j_begin;
    if (more) {
      issue(j - 1, buf ^ 1);
      load_bc(j - 1, pbc);
      pr = LoadResetFlag(p, b, int64_t(j - 1) * kTile);
    }
    const int64_t t0 = int64_t(j) * kTile;
    const float* const ckpt = w.ckpt + ((b * w.nJ + j) * p.dim + dd) * kS;
    const E* const rw = raw + buf * L::kRawElems + threadIdx.x;  // [stream][tok] stride kCh
    auto raw_at = [&](int s, int tok) { return ToFloat(rw[(s * kTile + tok) * kCh]); };
    // This lane's B and C of token tok in its slot order: copy lo, float4 j ^ hi.
    const float* const bcl = sbc + lo * L::kBCCopy;
    auto read_b = [&](int tok, float (&v)[kS]) {
#pragma unroll
      for (int q = 0; q < kS / 4; ++q) {
        const float4 f = *reinterpret_cast<const float4*>(bcl + tok * 2 * kS + 4 * (q ^ hi));
        v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
      }
    };
    auto read_c = [&](int tok, float (&v)[kS]) {
#pragma unroll
      for (int q = 0; q < kS / 4; ++q) {
        const float4 f =
            *reinterpret_cast<const float4*>(bcl + tok * 2 * kS + kS + 4 * (q ^ hi));
        v[4 * q] = f.x; v[4 * q + 1] = f.y; v[4 * q + 2] = f.z; v[4 * q + 3] = f.w;
      }
    };

    // Δ and Δ·x of this lane's channel for the tile's tokens (0 past T: the state carries).
#pragma unroll
    for (int tok = 0; tok < kTile; ++tok) {
      float delta = 0.f;
      if (active && t0 + tok < T) {
        const float v = raw_at(0, tok) + dbias;
        delta = p.delta_softplus ? Softplus(v) : v;
      }
      scal[tok * kCh] = make_float2(delta, delta * raw_at(1, tok));
    }

    auto compute = [&](auto reset_tag) {
      constexpr bool kReset = decltype(reset_tag)::value;
      // One recurrence step of token tok (states h into h_tok).
      auto walk = [&](int tok, float (&h)[kS]) {
        float Bv[kS];
        read_b(tok, Bv);
        const bool reset = kReset && ((resets >> tok) & 1u);
        const float2 v = scal[tok * kCh];  // {Δ, Δ·x}
#pragma unroll
        for (int s = 0; s < kS; ++s) {
          const float a = Exp2(v.x * A2[s]);
          h[s] = fmaf(reset ? 0.f : h[s], a, v.y * Bv[s]);
        }
      };
#pragma unroll 1
      for (int seg = kTile / kSeg - 1; seg >= 0; --seg) {
        const int tok0 = seg * kSeg;
        float h[kS];
        LoadSlots(ckpt, lm, h);
#pragma unroll 1
        for (int tok = 0; tok < tok0; ++tok) walk(tok, h);
        // The segment's states into the history, and y = Σ C·h (without D·x) per token.
        float yv[kSeg];
#pragma unroll
        for (int k = 0; k < kSeg; ++k) {
          walk(tok0 + k, h);
#pragma unroll
          for (int q = 0; q < kS / 4; ++q) {
            hist[(k * (kS / 4) + q) * 32 + lane] =
                make_float4(h[4 * q], h[4 * q + 1], h[4 * q + 2], h[4 * q + 3]);
          }
          float Cv[kS];
          read_c(tok0 + k, Cv);
          float y = 0.f;
#pragma unroll
          for (int s = 0; s < kS; ++s) y = fmaf(Cv[s], h[s], y);
          yv[k] = y;
        }
        // Reverse through the segment.
#pragma unroll
        for (int k = kSeg - 1; k >= 0; --k) {
          const int tok = tok0 + k;
          const int64_t t = t0 + tok;
          const bool in = active && t < T;
          const bool reset = kReset && ((resets >> tok) & 1u);
          const float xr = raw_at(1, tok), dor = raw_at(2, tok);
          float dyv = dor;
          if (gated) {
            const float zr = raw_at(3, tok);
            const float sz = Sigmoid(zr);
            dyv = dor * zr * sz;
            if (in) {
              const float y = yv[k] + Dd * xr;
              StoreAt<E>(g.dz, b * g.dz_strides.batch + t * g.dz_strides.token + d,
                         dor * y * sz * (1.f + zr * (1.f - sz)));
              if (g.out != nullptr) {
                StoreAt<E>(g.out, b * g.out_strides.batch + t * g.out_strides.token + d,
                           y * (zr * sz));
              }
            }
          } else if (g.out != nullptr && in) {
            StoreAt<E>(g.out, b * g.out_strides.batch + t * g.out_strides.token + d,
                       yv[k] + Dd * xr);
          }
          float Bv[kS], Cv[kS], hv[kS];
          read_b(tok, Bv);
          read_c(tok, Cv);
#pragma unroll
          for (int q = 0; q < kS / 4; ++q) {
            const float4 f = hist[(k * (kS / 4) + q) * 32 + lane];
            hv[4 * q] = f.x; hv[4 * q + 1] = f.y; hv[4 * q + 2] = f.z; hv[4 * q + 3] = f.w;
          }
          const float2 v = scal[tok * kCh];
          const float dl = v.x, bx = v.y;
          float dd2 = 0.f, gb = 0.f, vB[kS], vC[kS];
#pragma unroll
          for (int s = 0; s < kS; ++s) {
            gs[s] = fmaf(Cv[s], dyv, gs[s]);                    // now dL/dh_t
            const float dlog = gs[s] * fmaf(-bx, Bv[s], hv[s]);  // g·a·h_{t−1}
            dA[s] = fmaf(dlog, dl, dA[s]);
            dd2 = fmaf(dlog, A2[s], dd2);
            gb = fmaf(gs[s], Bv[s], gb);
            vB[s] = gs[s] * bx;
            vC[s] = dyv * hv[s];
            const float a = Exp2(dl * A2[s]);
            gs[s] = reset ? 0.f : gs[s] * a;
          }
          // dB | dC over the warp's 32 channels: lane l ends with column l (dB l, dC l − 16).
          SumRound<8>(vB, vC);
          SumRound<4>(vB, vC);
          SumRound<2>(vB, vC);
          SumRound<1>(vB, vC);
          const bool upper = lane & 16;
          const float send = upper ? vB[0] : vC[0];
          sred[(warp * kTile + tok) * 2 * kS + lane] =
              (upper ? vC[0] : vB[0]) + __shfl_xor_sync(kFull, send, 16);
          if (in) {
            const float draw = raw_at(0, tok) + dbias;
            const float slope = p.delta_softplus ? Sigmoid(draw) : 1.f;
            const float ddelta = (dd2 * kLn2 + xr * gb) * slope;
            StoreAt<E>(g.dx, b * g.dx_strides.batch + t * g.dx_strides.token + d,
                       Dd * dyv + dl * gb);
            StoreAt<E>(g.ddelta, b * g.ddelta_strides.batch + t * g.ddelta_strides.token + d,
                       ddelta);
            dD_acc += dyv * xr;
            dbias_acc += ddelta;
          }
        }
      }
    };
    if (resets == 0) {
      compute(std::false_type{});
    } else {
      compute(std::true_type{});
    }
    __syncthreads();  // sred complete, B | C and the rows read
    float* const dbc_tile = w.dbc_part + ((b * T + t0) * w.nblk + blk) * (2 * kS);
#pragma unroll
    for (int k = 0; k < kBCPer; ++k) {
      const int idx = threadIdx.x + k * kThreads;
      const int tok = idx >> 5, v = idx & 31;
      const float sum = sred[tok * 2 * kS + v] + sred[(kTile + tok) * 2 * kS + v];
      if (t0 + tok < T) dbc_tile[int64_t(tok) * w.nblk * (2 * kS) + v] = sum;
    }
    if (more) {
      store_bc(pbc);
      resets = ResetMask(pr);
      CpAsyncWaitAll();
    }
    __syncthreads();  // sred consumed; the next tile's rows and B | C in place
  }
  if (!active) return;
  const int64_t o = (b * w.K + c) * p.dim + d;
  StoreSlots(w.dA_part + o * kS, lm, dA);
  *reinterpret_cast<float2*>(w.dDb_part + o * 2) = make_float2(dD_acc, dbias_acc);
  if (c == 0 && g.dinitial_state != nullptr) {
    StoreSlots(g.dinitial_state + (b * p.dim + d) * kS, lm, gs);
  }
}

template <typename E>
absl::Status LaunchFor(const SelectiveScanParams& p, const SelectiveScanGrads& g,
                       const WideWork& w, cudaStream_t stream) {
  constexpr int kSmem = Smem<E>::kBytes;
  auto* kernel = WideBackwardKernel<E>;
  RWR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const dim3 grid(static_cast<unsigned>(w.nblk), static_cast<unsigned>(w.K),
                  static_cast<unsigned>(p.batch));
  kernel<<<grid, kThreads, kSmem, stream>>>(p, g, w);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace

bool WideBackwardApplies(const SelectiveScanParams& p, const SelectiveScanGrads& g) {
  const size_t elem = p.dtype == DType::kBF16 ? 2 : 4;
  return p.dstate == kS && RowsAligned(p.x, p.x_strides, p.dim, elem) &&
         RowsAligned(p.delta, p.delta_strides, p.dim, elem) &&
         RowsAligned(p.z, p.z_strides, p.dim, elem) &&
         RowsAligned(g.dout, g.dout_strides, p.dim, elem);
}

absl::Status LaunchWideBackward(const SelectiveScanParams& p, const SelectiveScanGrads& g,
                                const WideWork& w, CUstream_st* stream) {
  return p.dtype == DType::kBF16 ? LaunchFor<__nv_bfloat16>(p, g, w, stream)
                                 : LaunchFor<float>(p, g, w, stream);
}

}  // namespace rwr::scan::wide_backward
