// Wide chunked CUDA forward of the selective scan (sm_90), S = 16, fp32 or bf16 tensors.
//
// Why a third forward: where the channels alone do not fill the GPU (B 1–2 at Di 5120) T must be
// split into chunks, and a chunk then needs two passes of exps (a chunk-local pass for the state
// each chunk hands on, then the real one). The 4-lane chunked forward (selective_scan.cu) spends
// ~16 instructions per (token, channel, state) on its real pass: its per-token channel work
// (softplus, gate, loads, stores) is shared by 4 lanes and its sums over states are shuffles.
// Here a lane owns one channel and all 16 states, so the per-token channel work is paid once per
// 16 states and the sum over states stays in the lane: 144 instructions per token and lane in the
// real pass (9 per element, 20 special-function ops: 16 exps, softplus, gate), 98 in the
// chunk-local pass (6 per element, 18). The special-function unit is the busiest pipe then
// (docs/scan_kernels_notes.md, v21). The chunk count gives about two waves (WideChunks).
//
// Per 16-token tile a block has its raw rows (Δ, x, z of its kCh channels; B and C) copied into
// shared memory by cp.async two tiles ahead (IssueTile, scan_tile_copies.cuh), converts B and C
// to fp32 once, and each lane walks the tile reading its own channel's Δ, x, z from the stage.
// The chunk-local pass (kLocal) starts from zero and keeps the chunk's end state and its decay
// exp(A·ΣΔ) (0 when a document starts inside the chunk); the real pass starts chunk c from the
// initial state carried over chunks 0..c−1, and writes the output, the checkpoint before every
// tile and the final state. No atomics, one fixed order of every sum: bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "common/call_status_cuda.h"
#include "common/cuda_elements.cuh"
#include "scan_kernels/scan_device.cuh"
#include "scan_kernels/scan_tile_copies.cuh"
#include "scan_kernels/selective_scan_wide.h"

namespace rwr::scan::wide {
namespace {

using namespace device;  // NOLINT: kS, kTile, the exp, reset and cp.async helpers
using cuda_elements::FromFloat;

constexpr int kWarps = 4;
constexpr int kThr = kWarps * 32;
constexpr int kCh = kThr;   // a lane per channel
constexpr int kStages = 3;  // raw tiles in flight: this one and two ahead
// Register cap 128. A cap of 96 (5 blocks per multiprocessor) measured the same (H200, B 1–2).
constexpr int kMinBlocks = 4;
// Chunks for about two waves of resident blocks, of at least 10 tiles each. Measured (H200): at
// B 2, T 4k, 13 chunks beat 6 (one wave) by 8%; at B 1, T 8k, 26 and 13 tie; at B 1, T 2k, 26
// chunks of 5 tiles lose 7% to 13 of 10 (each chunk's start, carry and first tiles' copies).
constexpr int kWaves = 2;
constexpr int kMinChunkTiles = 10;
template <typename E>
constexpr int SmemBytes() {
  return kStages * RawStage<E, kCh>::kBytes + kTile * 2 * kS * 4;  // raw stages, B|C fp32
}

template <typename E, bool kLocal>
__global__ void __launch_bounds__(kThr, kMinBlocks)
    WideForwardKernel(SelectiveScanParams p, Chunks w) {
  using St = RawStage<E, kCh>;
  extern __shared__ __align__(16) char smem[];
  char* raw = smem;
  auto sbc = reinterpret_cast<float(*)[2 * kS]>(smem + kStages * St::kBytes);  // [kTile]: B | C

  const int tid = threadIdx.x;
  const int c = blockIdx.y;
  const int64_t b = blockIdx.z, d0 = int64_t(blockIdx.x) * kCh, d = d0 + tid;
  const bool active = d < p.dim;
  const int64_t dd = active ? d : p.dim - 1;
  const int64_t T = p.seqlen;
  const int n_tiles = static_cast<int>((T + kTile - 1) / kTile);
  const int j_begin = c * w.tiles_per_chunk;
  const int j_end = min(n_tiles, j_begin + w.tiles_per_chunk);
  const bool gated = !kLocal && p.z != nullptr;

  float A2[kS];  // A·log2(e): exp(Δ·A) = 2^(Δ·A2)
  float h[kS];
#pragma unroll
  for (int s = 0; s < kS; ++s) {
    A2[s] = p.A[dd * kS + s] * kLog2e;  // A's base need not be 16-byte aligned
    h[s] = 0.f;
  }
  if (!kLocal) {
    if (p.initial_state != nullptr) {
#pragma unroll
      for (int s = 0; s < kS; ++s) h[s] = p.initial_state[(b * p.dim + dd) * kS + s];
    }
    // Carry over the earlier chunks (their local end states and decays).
    for (int cc = 0; cc < c; ++cc) {
      const int64_t o = ((b * w.K + cc) * p.dim + dd) * kS;
#pragma unroll
      for (int s = 0; s < kS; s += 4) {
        const float4 hl = *reinterpret_cast<const float4*>(w.hloc + o + s);
        const float4 dc = *reinterpret_cast<const float4*>(w.hdecay + o + s);
        h[s] = dc.x * h[s] + hl.x;
        h[s + 1] = dc.y * h[s + 1] + hl.y;
        h[s + 2] = dc.z * h[s + 2] + hl.z;
        h[s + 3] = dc.w * h[s + 3] + hl.w;
      }
    }
  }
  const float bias = p.delta_bias != nullptr ? p.delta_bias[dd] : 0.f;
  const float Dw = !kLocal && p.D != nullptr ? p.D[dd] : 0.f;
  E* out_col = kLocal ? nullptr : static_cast<E*>(p.out) + b * p.out_strides.batch + dd;
  float delta_sum = 0.f;  // ΣΔ since the last reset (chunk-local pass)
  bool any_reset = false;
  bool flag = LoadResetFlag(p, b, int64_t(j_begin) * kTile);  // lane l < 16: token t0 + l

#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (j_begin + st < j_end) {
      IssueTile<E, kCh, kThr>(raw + st * St::kBytes, p, b, d0, int64_t(j_begin + st) * kTile,
                              gated);
    } else {
      CpAsyncCommit();  // an empty group keeps the group count per tile fixed
    }
  }
  for (int j = j_begin; j < j_end; ++j) {
    const int64_t t0 = int64_t(j) * kTile;
    CpAsyncWaitGroup<kStages - 2>();  // tile j's group (groups complete in order)
    __syncthreads();  // everyone's copies visible; every lane's walk of tile j − 1 done
    // Tile j + kStages − 1 goes to the stage tile j − 1 used: its walk ended before the barrier.
    const int jn = j + kStages - 1;
    if (jn < j_end) {
      IssueTile<E, kCh, kThr>(raw + ((jn - j_begin) % kStages) * St::kBytes, p, b, d0,
                              int64_t(jn) * kTile, gated);
    } else {
      CpAsyncCommit();
    }
    const char* stage = raw + ((j - j_begin) % kStages) * St::kBytes;
    // B and C as fp32, converted once per tile (not by every lane at every token).
#pragma unroll
    for (int k = 0; k < kTile * 2 * kS / kThr; ++k) {
      const int i = tid + k * kThr, tok = i / (2 * kS), col = i % (2 * kS);
      sbc[tok][col] = cuda_elements::ToFloat<E>(St::BC(stage, col / kS, tok)[col % kS]);
    }
    const unsigned resets = ResetMask(flag);
    flag = LoadResetFlag(p, b, t0 + kTile);  // the next tile's, read during this one
    __syncthreads();

    if (!kLocal && w.ckpt != nullptr && active) {
      float* dst = w.ckpt + ((b * n_tiles + j) * p.dim + d) * kS;
#pragma unroll
      for (int s = 0; s < kS; s += 4) {
        *reinterpret_cast<float4*>(dst + s) = make_float4(h[s], h[s + 1], h[s + 2], h[s + 3]);
      }
    }
    // The walk; kReset = false is the common tile without a document start (no selects).
    auto walk = [&](auto reset_tag) {
      constexpr bool kReset = decltype(reset_tag)::value;
#pragma unroll 1
      for (int tok = 0; tok < kTile; ++tok) {
        const bool inside = t0 + tok < T && active;
        const float x = St::At(stage, 1, tok, tid);
        float delta = 0.f, slope;  // past T: Δ 0 leaves the state as it is
        if (inside) delta = DeltaOf(p, St::At(stage, 0, tok, tid), bias, &slope);
        const float dx = delta * x;
        const bool reset = kReset && ((resets >> tok) & 1u);
        if (kLocal) {
          if (reset) {
            delta_sum = 0.f;
            any_reset = true;
          }
          delta_sum += delta;
        }
        float y[4] = {0.f, 0.f, 0.f, 0.f};  // four partial sums: four short chains, not one
#pragma unroll
        for (int s = 0; s < kS; s += 4) {
          const float4 Bv = *reinterpret_cast<const float4*>(&sbc[tok][s]);
          const float Bs[4] = {Bv.x, Bv.y, Bv.z, Bv.w};
          float4 Cv = make_float4(0.f, 0.f, 0.f, 0.f);
          if (!kLocal) Cv = *reinterpret_cast<const float4*>(&sbc[tok][kS + s]);
          const float Cs[4] = {Cv.x, Cv.y, Cv.z, Cv.w};
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float a = Exp2(delta * A2[s + i]);
            h[s + i] = (reset ? 0.f : h[s + i]) * a + dx * Bs[i];
            if (!kLocal) y[s / 4] += Cs[i] * h[s + i];
          }
        }
        if (!kLocal && inside) {
          float gate = 1.f;
          if (gated) {
            const float z = St::At(stage, 2, tok, tid);
            gate = z * Sigmoid(z);
          }
          const float yy = (y[0] + y[1]) + (y[2] + y[3]);
          out_col[(t0 + tok) * p.out_strides.token] = FromFloat<E>((yy + Dw * x) * gate);
        }
      }
    };
    if (resets == 0) {
      walk(std::false_type{});
    } else {
      walk(std::true_type{});
    }
  }
  CpAsyncWaitAll();  // no copy outlives the block
  if (!active) return;
  if (kLocal) {
    const int64_t o = ((b * w.K + c) * p.dim + d) * kS;
#pragma unroll
    for (int s = 0; s < kS; s += 4) {
      *reinterpret_cast<float4*>(w.hloc + o + s) = make_float4(h[s], h[s + 1], h[s + 2], h[s + 3]);
      float dc[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) dc[i] = any_reset ? 0.f : Exp2(delta_sum * A2[s + i]);
      *reinterpret_cast<float4*>(w.hdecay + o + s) = make_float4(dc[0], dc[1], dc[2], dc[3]);
    }
  } else if (c == w.K - 1 && p.final_state != nullptr) {
#pragma unroll
    for (int s = 0; s < kS; ++s) p.final_state[(b * p.dim + d) * kS + s] = h[s];
  }
}

template <typename E, bool kLocal>
absl::Status LaunchPass(const SelectiveScanParams& p, const Chunks& w, int chunks,
                        cudaStream_t stream) {
  auto* kernel = WideForwardKernel<E, kLocal>;
  constexpr int kSmem = SmemBytes<E>();
  RWR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  const dim3 grid(static_cast<unsigned>((p.dim + kCh - 1) / kCh), static_cast<unsigned>(chunks),
                  static_cast<unsigned>(p.batch));
  kernel<<<grid, kThr, kSmem, stream>>>(p, w);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E>
absl::Status LaunchFor(const SelectiveScanParams& p, const Chunks& w, cudaStream_t stream) {
  if (w.K > 1) RWR_RETURN_IF_ERROR((LaunchPass<E, true>(p, w, w.K - 1, stream)));
  return LaunchPass<E, false>(p, w, w.K, stream);
}

}  // namespace

int WideChunks(int64_t batch, int64_t seqlen, int64_t dim, int sms, int most) {
  const int64_t n_tiles = (seqlen + kTile - 1) / kTile;
  const int64_t blocks = batch * ((dim + kCh - 1) / kCh);  // per chunk
  const int64_t slots = int64_t(kMinBlocks) * sms;         // resident blocks
  const int64_t k = std::min<int64_t>(
      {kWaves * slots / std::max<int64_t>(1, blocks), n_tiles / kMinChunkTiles, most});
  return static_cast<int>(std::max<int64_t>(1, k));
}

absl::Status LaunchWide(const SelectiveScanParams& p, const Chunks& chunks, CUstream_st* stream) {
  if (chunks.K > 1 && (chunks.hloc == nullptr || chunks.hdecay == nullptr)) {
    return absl::InvalidArgumentError("selective scan wide forward: chunks need hloc and hdecay");
  }
  return p.dtype == DType::kBF16 ? LaunchFor<__nv_bfloat16>(p, chunks, stream)
                                 : LaunchFor<float>(p, chunks, stream);
}

}  // namespace rwr::scan::wide
