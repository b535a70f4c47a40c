// One-pass CUDA forward of the selective scan (sm_90), S = 16, fp32 or bf16 tensors.
//
// Why a second forward: the chunked forward (selective_scan.cu) does its per-token channel work
// (softplus, gate, bf16 unpacking of B and C) in every lane group and, where the channels alone
// cannot fill the GPU, pays a second pass of exps for its chunks. Here T is walked once and that
// work is done once per tile. Measured (docs/scan_kernels_notes.md, v13): with 4 states per lane
// it is 24% faster than the chunked forward at B 4, Di 5120 (the trainer's shape); at B 1 neither
// 4 nor 2 states per lane (8 lanes per channel, 1280 warps) give the schedulers enough warps to
// beat the chunked forward, so selective_scan.cu uses it only where the channels fill the GPU
// (SinglePassStatesPerLane), at 8 states per lane where even that layout fills it (B ≥ 5 at
// Di 5120: 16% faster at B 8, 17% slower at B 4); variant 15 keeps the 2-state layout measurable.
//
// Per 16-token tile a block
//   1. has its raw rows (Δ, x, z of its channels, B and C) copied into shared memory by
//      cp.async, kStages − 1 tiles ahead of use (nothing waits on global memory; the reset flags,
//      a byte per token, come a tile ahead by plain loads);
//   2. prepares them once per (token, channel) and per (token, lane group) — Δ = softplus(Δraw +
//      bias), Δ·x, D·x, the SiLU gate, B and C as fp32 in each lane group's order — so the
//      per-state loop reads two or three 16-byte words per token and does only the recurrence:
//      one exp, one multiply, two fused multiply-adds per (channel, state, token);
//   3. walks the tile, each lane carrying its states; the sum over a channel's states (y) is a
//      reduce-scatter over the channel's lanes every kQ tokens, after which lane q writes token q.
// The state before each tile goes to the checkpoints the backward reads (same layout as the
// chunked forward). No atomics, one fixed order of every sum: bitwise reproducible.
#include "scan_kernels/selective_scan_single_pass.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/call_status_cuda.h"
#include "common/cuda_elements.cuh"
#include "scan_kernels/scan_device.cuh"
#include "scan_kernels/scan_tile_copies.cuh"

namespace rwr::scan::single_pass {
namespace {

using namespace device;  // NOLINT: kS, kTile, the exp, reduce, reset and cp.async helpers
using cuda_elements::FromFloat;
using cuda_elements::ToFloat;

constexpr int kStages = 3;  // raw tiles in flight: this one and two ahead

// The block's shape and shared-memory layout for element type E, kSPL states per lane, kW warps.
template <typename E, int kSPL, int kW>
struct Layout {
  static constexpr int kQ = kS / kSPL;   // lanes per channel
  static constexpr int kCPW = 32 / kQ;   // channels per warp
  static constexpr int kCh = kW * kCPW;  // channels per block
  static constexpr int kThr = kW * 32;
  using Stage = RawStage<E, kCh>;
  using Copies = TileCopies<E, kCh, kThr>;
  static constexpr int kRawBytes = kStages * Stage::kBytes;
  // Prepared tile: {Δ, Δ·x, D·x, gate} per (token, channel); per (token, lane group q) the
  // lane's B values then its C values, fp32.
  static constexpr int kPrepBytes = kTile * kCh * 16;
  static constexpr int kBCBytes = kTile * kQ * 2 * kSPL * 4;
  static constexpr int kSmemBytes = kRawBytes + kPrepBytes + kBCBytes;
};

// Register cap for 5 blocks per multiprocessor: B 4 at Di 5120 (the default's shape, 4 states per
// lane) has 640 blocks, 4.85 per multiprocessor (the 2-state layout, variant 15, ~5 at B 1).
constexpr int kMinBlocks = 5;

template <typename E, int kSPL, int kW>
__global__ void __launch_bounds__(kW * 32, kMinBlocks)
    SinglePassForwardKernel(SelectiveScanParams p, float* ckpt) {
  using L = Layout<E, kSPL, kW>;
  constexpr int kQ = L::kQ;
  extern __shared__ __align__(16) char smem[];
  char* raw = smem;
  auto prep = reinterpret_cast<float4(*)[L::kCh]>(smem + L::kRawBytes);  // [kTile][kCh]
  auto sbc = reinterpret_cast<float(*)[kQ][2 * kSPL]>(smem + L::kRawBytes + L::kPrepBytes);

  const int tid = threadIdx.x, lane = tid & 31;
  const int q = lane % kQ;
  const int col = (tid >> 5) * L::kCPW + lane / kQ;  // this lane's channel within the block
  const int64_t b = blockIdx.z, d0 = int64_t(blockIdx.x) * L::kCh, d = d0 + col;
  const bool active = d < p.dim;
  const int64_t dd = active ? d : p.dim - 1;
  const int64_t T = p.seqlen;
  const int n_tiles = static_cast<int>((T + kTile - 1) / kTile);

  // The preparing thread's channel is fixed: the block's threads are a multiple of its channels.
  const int pc = tid % L::kCh;
  const bool p_active = d0 + pc < p.dim;
  const float bias = p.delta_bias != nullptr && p_active ? p.delta_bias[d0 + pc] : 0.f;
  const float Dw = p.D != nullptr && p_active ? p.D[d0 + pc] : 0.f;
  const bool gated = p.z != nullptr;

  float A2[kSPL];  // A·log2(e): exp(Δ·A) = 2^(Δ·A2)
  float h[kSPL];
#pragma unroll
  for (int s = 0; s < kSPL; ++s) {
    A2[s] = p.A[dd * kS + q * kSPL + s] * kLog2e;
    h[s] = p.initial_state != nullptr ? p.initial_state[(b * p.dim + dd) * kS + q * kSPL + s]
                                      : 0.f;
  }
  E* out_col = static_cast<E*>(p.out) + b * p.out_strides.batch + dd;
  bool flag = LoadResetFlag(p, b, 0);  // lane l < 16: a document starts at token t0 + l

  typename L::Copies copies;
  copies.Init(p, b, d0);
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_tiles) {
      copies.Issue(raw + st * L::Stage::kBytes, int64_t(st) * kTile, T, p.x);
    } else {
      CpAsyncCommit();  // an empty group keeps the group count per tile fixed
    }
  }
  for (int j = 0; j < n_tiles; ++j) {
    const int64_t t0 = int64_t(j) * kTile;
    // The stage tile j + kStages − 1 goes to held tile j − 1, whose preparation every thread
    // finished before the last barrier.
    const int jn = j + kStages - 1;
    if (jn < n_tiles) {
      copies.Issue(raw + (jn % kStages) * L::Stage::kBytes, int64_t(jn) * kTile, T, p.x);
    } else {
      CpAsyncCommit();
    }
    CpAsyncWaitGroup<kStages - 1>();  // tile j's group (groups complete in order)
    __syncthreads();                  // everyone's copies visible; the last tile's walk done
    const char* stage = raw + (j % kStages) * L::Stage::kBytes;

    // Prepare the per-(token, channel) scalars: 16 / kQ tokens per thread.
#pragma unroll
    for (int k = 0; k < kTile * L::kCh / L::kThr; ++k) {
      const int tok = (tid + k * L::kThr) / L::kCh;
      const float x = L::Stage::At(stage, 1, tok, pc);
      float delta = 0.f, slope;  // (the slope is the backward's; unused here)
      if (t0 + tok < T && p_active)
        delta = DeltaOf(p, L::Stage::At(stage, 0, tok, pc), bias, &slope);
      float gate = 1.f;
      if (gated) {
        const float z = L::Stage::At(stage, 2, tok, pc);
        gate = z * Sigmoid(z);
      }
      prep[tok][pc] = make_float4(delta, delta * x, Dw * x, gate);
    }
    // B and C in lane-group order, fp32 (converted once here, not per lane in the walk).
    for (int i = tid; i < kTile * kQ; i += L::kThr) {
      const int tok = i / kQ, g = i % kQ;
      const E* Bt = L::Stage::BC(stage, 0, tok);
      const E* Ct = L::Stage::BC(stage, 1, tok);
#pragma unroll
      for (int s = 0; s < kSPL; ++s) {
        sbc[tok][g][s] = ToFloat<E>(Bt[g * kSPL + s]);
        sbc[tok][g][kSPL + s] = ToFloat<E>(Ct[g * kSPL + s]);
      }
    }
    const unsigned resets = ResetMask(flag);
    flag = LoadResetFlag(p, b, t0 + kTile);  // the next tile's, read during this one
    __syncthreads();

    if (ckpt != nullptr && active) {
      float* dst = ckpt + ((b * n_tiles + j) * p.dim + d) * kS + q * kSPL;
#pragma unroll
      for (int s = 0; s < kSPL; s += 2) {
        *reinterpret_cast<float2*>(dst + s) = make_float2(h[s], h[s + 1]);
      }
    }
    // The walk; kReset = false is the common tile without a document start (no selects).
    auto walk = [&](auto reset_tag) {
      constexpr bool kReset = decltype(reset_tag)::value;
      // Shared-memory reads run one token ahead of their use (MIO waits were 30% of the stalls
      // of the first version, ncu).
      float4 n_sc, n_bc[kSPL / 2];
      auto read = [&](int tok) {
        n_sc = prep[tok][col];  // {Δ, Δ·x, D·x, gate}
#pragma unroll
        for (int v = 0; v < kSPL / 2; ++v) {
          n_bc[v] = *reinterpret_cast<const float4*>(&sbc[tok][q][4 * v]);
        }
      };
      read(0);
#pragma unroll
      for (int g = 0; g < kTile / kQ; ++g) {
        float yp[kQ];
#pragma unroll
        for (int k = 0; k < kQ; ++k) {
          const int tok = g * kQ + k;
          const float4 sc = n_sc;
          float bc[2 * kSPL];
#pragma unroll
          for (int v = 0; v < kSPL / 2; ++v) {
            bc[4 * v] = n_bc[v].x; bc[4 * v + 1] = n_bc[v].y;
            bc[4 * v + 2] = n_bc[v].z; bc[4 * v + 3] = n_bc[v].w;
          }
          if (tok + 1 < kTile) read(tok + 1);
          const bool reset = kReset && ((resets >> tok) & 1u);
          float y = 0.f;
#pragma unroll
          for (int s = 0; s < kSPL; ++s) {
            const float a = Exp2(sc.x * A2[s]);
            h[s] = (reset ? 0.f : h[s]) * a + sc.y * bc[s];
            y += bc[kSPL + s] * h[s];
          }
          yp[k] = y;
        }
        const float y = ReduceScatter<kQ>(yp, q);
        const int tok = g * kQ + q;
        if (t0 + tok < T && active) {
          const float4 sc = prep[tok][col];
          out_col[(t0 + tok) * p.out_strides.token] = FromFloat<E>((y + sc.z) * sc.w);
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
  if (active && p.final_state != nullptr) {
#pragma unroll
    for (int s = 0; s < kSPL; ++s) p.final_state[(b * p.dim + d) * kS + q * kSPL + s] = h[s];
  }
}

template <typename E, int kSPL, int kW>
absl::Status Launch(const SelectiveScanParams& p, float* ckpt, cudaStream_t stream) {
  using L = Layout<E, kSPL, kW>;
  auto* kernel = SinglePassForwardKernel<E, kSPL, kW>;
  RWR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                L::kSmemBytes));
  const dim3 grid(static_cast<unsigned>((p.dim + L::kCh - 1) / L::kCh), 1,
                  static_cast<unsigned>(p.batch));
  kernel<<<grid, L::kThr, L::kSmemBytes, stream>>>(p, ckpt);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

// Warps per block: 2 with 2 states per lane (B 1 at Di 5120: 640 blocks, ~5 per multiprocessor,
// so the last wave is nearly full), 4 with 4 states per lane.
template <typename E>
absl::Status LaunchFor(const SelectiveScanParams& p, float* ckpt, int spl, cudaStream_t stream) {
  switch (spl) {
    case 2:
      return Launch<E, 2, 2>(p, ckpt, stream);
    case 8:
      return Launch<E, 8, 4>(p, ckpt, stream);
    default:
      return Launch<E, 4, 4>(p, ckpt, stream);
  }
}

}  // namespace

bool SinglePassApplies(const SelectiveScanParams& p) {
  const size_t elem = p.dtype == DType::kBF16 ? 2 : 4;
  return p.dstate == kS && RowsAligned(p.x, p.x_strides, p.dim, elem) &&
         RowsAligned(p.delta, p.delta_strides, p.dim, elem) &&
         RowsAligned(p.z, p.z_strides, p.dim, elem) &&
         RowsAligned(p.B, p.B_strides, kS, elem) && RowsAligned(p.C, p.C_strides, kS, elem);
}

int SinglePassStatesPerLane(const SelectiveScanParams& p, int sms) {
  // Warps at 4 states per lane: 8 channels each. Measured (docs/scan_kernels_notes.md, v13b): with
  // 19 per multiprocessor (B 4, Di 5120) the one pass beats the chunked forward by 24%; at B 1
  // (5 per multiprocessor, 10 at 2 states per lane) latency shows: 4 states lose by 30–40%, 2
  // states win 5% at T 2k and lose 2% at 8k — not enough to keep a second layout in the rule.
  // At 8 states per lane (16 channels a warp) the per-token channel work and the sum over states
  // are shared by half as many lanes: with the same 12 warps per multiprocessor or more it wins
  // (v22, H200: B 5 −9%, B 8 −16%, B 16 −17%), below it loses (B 4 +17%, B 3 +21%).
  const int64_t warps4 = p.batch * ((p.dim + 7) / 8), warps8 = p.batch * ((p.dim + 15) / 16);
  const int64_t enough = 12 * int64_t(sms);
  return warps8 >= enough ? 8 : warps4 >= enough ? 4 : 0;
}

absl::Status LaunchSinglePass(const SelectiveScanParams& p, float* ckpt, int states_per_lane,
                              CUstream_st* stream) {
  if (states_per_lane != 2 && states_per_lane != 4 && states_per_lane != 8) {
    return absl::InvalidArgumentError("selective scan single pass: 2, 4 or 8 states per lane");
  }
  return p.dtype == DType::kBF16
             ? LaunchFor<__nv_bfloat16>(p, ckpt, states_per_lane, stream)
             : LaunchFor<float>(p, ckpt, states_per_lane, stream);
}

}  // namespace rwr::scan::single_pass
