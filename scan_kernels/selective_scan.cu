// CUDA selective scan (sm_90), forward and backward, S = 16, fp32 or bf16 tensors, fp32 state.
//
// Layout of the work. A lane owns 4 of the 16 states of one channel (4 lanes per channel, 8
// channels per warp, 64 channels per 256-thread block) and walks tokens in tiles of 16. Per-token
// channel scalars (softplus Δ, SiLU gate, the output) are computed once per channel by the lane
// that owns that token within a group of 4 and shared through shared memory; the sums over the
// states (y, dx, dΔ) are reduce-scatters over the 4 lanes with shuffles. T is split into K chunks
// that run in parallel: a chunk-local pass (state from zero, plus the chunk's decay) is carried
// across chunks, then the real pass starts each chunk from its carried state. Where the channels
// alone fill the GPU (B 4 at Di 5120) and the rows are 16-byte aligned, the forward is the
// one-pass kernel of selective_scan_single_pass.cu instead (UsesOnePass); device helpers both
// files use live in scan_device.cuh. A block's x, Δ, z, dout tiles reach shared memory by
// cp.async, a tile ahead (RawTile), where rows are aligned.
//
// Forward writes the state at every 16-token tile boundary (the checkpoints, in the workspace);
// Backward walks each chunk's tiles last to first, recomputes the tile's states from its
// checkpoint into registers and runs the reverse recurrence. dB and dC (sums over channels) are
// reduced in a fixed order: within a warp by shuffles, within a block through shared memory, then
// across blocks by a separate kernel over per-block partials. No atomics anywhere: every output
// is bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "common/call_status_cuda.h"
#include "common/cuda_elements.cuh"
#include "fmt/format.h"
#include "scan_kernels/scan_device.cuh"
#include "scan_kernels/scan_tuning.h"
#include "scan_kernels/selective_scan.h"
#include "scan_kernels/selective_scan_single_pass.h"
#include "scan_kernels/selective_scan_wide.h"

namespace rwr::scan {
namespace {

using namespace device;  // NOLINT: kS, kTile, the exp, reduce, reset and cp.async helpers

constexpr int kQ = 4;             // lanes per channel
constexpr int kSPL = kS / kQ;     // states per lane
constexpr int kChPerWarp = 32 / kQ;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kChPerBlock = kWarps * kChPerWarp;  // 64

std::atomic<int> g_chunks_override{0};
std::atomic<int> g_variant{1};

// ---- element access ------------------------------------------------------------------------

using cuda_elements::FromFloat;
using cuda_elements::ToFloat;
template <typename E>
__device__ __forceinline__ float Ld(const void* base, int64_t i) {
  return ToFloat<E>(static_cast<const E*>(base)[i]);
}
template <typename E>
__device__ __forceinline__ void St(void* base, int64_t i, float v) {
  static_cast<E*>(base)[i] = FromFloat<E>(v);
}

// 2^v on the FMA pipe, for a share of the exps so that the special-function unit (16 ex2 per
// multiprocessor per clock) and the FMA pipe (128 per clock) share the load. v = n + f with n the
// nearest integer (the 1.5·2^23 rounding trick, no conversion instruction: conversions run on the
// slow pipe too) and f in [-0.5, 0.5]; 2^f by a degree-5 minimax polynomial (relative error
// 7.5e-8, about ex2.approx's); n goes into the exponent bits by one integer shift-add. v is
// clamped to [-125, 125]: below, 2^v is under 2.4e-38 (0 to fp32 state arithmetic).
__device__ __forceinline__ float Exp2Poly(float v) {
  constexpr float kRound = 12582912.f;  // 1.5·2^23: v + kRound rounds v to an integer
  v = fminf(fmaxf(v, -125.f), 125.f);
  const float t = __fadd_rn(v, kRound);
  const float f = __fsub_rn(v, __fsub_rn(t, kRound));
  float q = 1.327647198e-3f;
  q = __fmaf_rn(q, f, 9.675541334e-3f);
  q = __fmaf_rn(q, f, 5.550713274e-2f);
  q = __fmaf_rn(q, f, 2.402211972e-1f);
  q = __fmaf_rn(q, f, 6.931469671e-1f);
  q = __fmaf_rn(q, f, 1.000000072f);
  // The low bits of t's pattern hold n (two's complement); shifted by 23 they add n to the
  // exponent of q, the bits above wrap away.
  return __int_as_float(__float_as_int(q) + (__float_as_int(t) << 23));
}

// Which exps of a tile go to the FMA pipe: kPoly 0 none, 1 one state of a lane's 4 (25%). s is
// a compile-time constant in the unrolled loops. (Measured slower, v8: the scan is bound by
// instruction issue, not by the special-function unit; kept as variant 7.)
template <int kPoly>
__device__ __forceinline__ float ExpOf(float v, int s) {
  return kPoly == 1 && s == kSPL - 1 ? Exp2Poly(v) : Exp2(v);
}

// The 8 channels of a warp each hold v[0..7] for the same 4 states (lanes ch*4+q, same q);
// afterwards lane (ch, q) holds v[ch] summed over the 8 channels.
__device__ __forceinline__ float ReduceScatter8Channels(const float (&v)[8], int ch) {
  const bool b2 = ch & 4, b1 = ch & 2, b0 = ch & 1;
  float k[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float mine = b2 ? v[4 + i] : v[i], other = b2 ? v[i] : v[4 + i];
    k[i] = mine + __shfl_xor_sync(kFull, other, 16);
  }
  float m[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float mine = b1 ? k[2 + i] : k[i], other = b1 ? k[i] : k[2 + i];
    m[i] = mine + __shfl_xor_sync(kFull, other, 8);
  }
  const float mine = b0 ? m[1] : m[0], other = b0 ? m[0] : m[1];
  return mine + __shfl_xor_sync(kFull, other, 4);
}

// The same sum without most of the selects (v19). Lane (ch, q) holds its 4 states in an order
// swizzled by its channel, local state i being state 4q + (i ^ m) with m = ch / 2 (two bits), so
// that the partners of the first two rounds (ch ^ 4, ch ^ 2) hold each other's kept states in the
// slots they send: every lane keeps local states {0, 1} and sends {2, 3}, then keeps 0 and sends 1,
// with no per-lane choice of which values to send. Only the last round (ch ^ 1) chooses between
// dB and dC. v: dB of local states 0..3, then dC. Afterwards lane (ch, q) holds, summed over the
// 8 channels, dB (ch even) or dC (ch odd) of state 4q + m: column SwizzledColumn(ch, q).
__device__ __forceinline__ float ReduceScatter8ChannelsSwizzled(const float (&v)[8], int ch) {
  const float k0 = v[0] + __shfl_xor_sync(kFull, v[2], 16);
  const float k1 = v[1] + __shfl_xor_sync(kFull, v[3], 16);
  const float k4 = v[4] + __shfl_xor_sync(kFull, v[6], 16);
  const float k5 = v[5] + __shfl_xor_sync(kFull, v[7], 16);
  const float b = k0 + __shfl_xor_sync(kFull, k1, 8), c = k4 + __shfl_xor_sync(kFull, k5, 8);
  const bool odd = ch & 1;
  return (odd ? c : b) + __shfl_xor_sync(kFull, odd ? b : c, 4);
}
__device__ __forceinline__ int StateSwizzle(int ch) { return (ch >> 1) & 3; }
__device__ __forceinline__ int SwizzledColumn(int ch, int q) {
  return ((ch & 1) ? kS : 0) + q * kSPL + StateSwizzle(ch);
}
// v's components in a lane's swizzled order: out[i] = component i ^ m (its own inverse).
__device__ __forceinline__ void Swizzle(const float4 v, int m, float (&out)[kSPL]) {
  const bool s1 = m & 1, s2 = m & 2;
  const float a0 = s1 ? v.y : v.x, a1 = s1 ? v.x : v.y, a2 = s1 ? v.w : v.z, a3 = s1 ? v.z : v.w;
  out[0] = s2 ? a2 : a0; out[1] = s2 ? a3 : a1; out[2] = s2 ? a0 : a2; out[3] = s2 ? a1 : a3;
}
__device__ __forceinline__ float4 Unswizzle(const float (&v)[kSPL], int m) {
  float o[kSPL];
  Swizzle(make_float4(v[0], v[1], v[2], v[3]), m, o);
  return make_float4(o[0], o[1], o[2], o[3]);
}

// Workspace regions (floats unless noted), each 256-byte aligned.
struct Work {
  int K = 1;            // chunks
  int tiles_per_chunk;  // 16-token tiles per chunk
  int nJ;               // tiles in T
  int nblk;             // channel blocks
  float* ckpt;          // (B, nJ, Di, S) state before each tile
  float* hloc;          // (B, K, Di, S) chunk-local end state (forward), from zero
  float* hdecay;        // (B, K, Di, S) the chunk's decay exp(A·ΣΔ), 0 if it holds a reset
  float* gloc;          // (B, K, Di, S) state gradient flowing out of chunk c's start, chunk-local
                        // (from zero at the chunk's end): the chunk-local gradient pass's
  float* gdecay;        // (B, K, Di, S) the chunk's decay (the same pass)
  float* ginc;          // (B, K, Di, S) chained backward: the complete state gradient flowing out
                        // of chunk c's start, for chunk c − 1's block
  int* chain;           // (B, K, nblk) chained backward: 1 once that block published its ginc;
                        // then one ticket counter (the order blocks take work in)
  int local_first;      // the first chunk the chunk-local gradient pass runs for (to K − 1)
  int seg_chunks;       // chained backward: chunks per chain (segment); a segment's last chunk
                        // folds the later segments' local gradients instead of waiting
  float* dbc_part;      // (B, T, nblk, 2S) per-block dB | dC partials
  float* dA_part;       // (B, K, Di, S)
  float* dDb_part;      // (B, K, Di, 2) dD, dbias partials
};

struct TileIo {
  int64_t b, d;
  int q, ch, warp;
  bool active;  // d < Di
};

// kW: warps per block (the forward runs with 1, 2 or 8; the backward with kWarps). The block
// runs channel block `blk` of batch row `b` (blockIdx.x and .z unless it takes work by ticket).
template <int kW = kWarps>
__device__ __forceinline__ TileIo MakeIo(const SelectiveScanParams& p, int64_t blk, int64_t b) {
  TileIo io;
  io.warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  io.ch = lane >> 2;
  io.q = lane & 3;
  io.d = blk * (kW * kChPerWarp) + io.warp * kChPerWarp + io.ch;
  io.active = io.d < p.dim;
  io.b = b;
  return io;
}
template <int kW = kWarps>
__device__ __forceinline__ TileIo MakeIo(const SelectiveScanParams& p) {
  return MakeIo<kW>(p, blockIdx.x, blockIdx.z);
}

// One lane's row of a tile in a (B, T, Di) output: the element of token t0 + q of its channel,
// worked out where it is needed (the backward: once per segment; held for the whole tile, four
// of them spilled); group i (token t0 + 4i + q) is then 4i token strides on, the strides staying
// in the kernel's parameters (constant memory, not registers). Replaces `b·batch + t·token + d`
// in 64 bits at every store (~10 integer instructions each, 16 stores per lane and tile in the
// backward). An inactive lane points at the last channel and never stores.
template <typename E>
struct TileRow {
  E* row;
  const TokenStrides& strides;
  __device__ __forceinline__ TileRow(void* base, const TokenStrides& s, const TileIo& io,
                                     int64_t dd, int64_t t0)
      : row(base != nullptr ? static_cast<E*>(base) + io.b * s.batch + (t0 + io.q) * s.token + dd
                            : nullptr),
        strides(s) {}
  __device__ __forceinline__ void Store(int i, float v) const {
    row[4 * i * strides.token] = FromFloat<E>(v);
  }
};

// ---- tile loading ------------------------------------------------------------------------------
// Every kernel walks 16-token tiles through double-buffered shared memory. A tile's global loads
// are issued just before it is committed to shared memory, while other warps of the
// multiprocessor compute: issuing them a tile earlier held ~30 more registers, which spilled under
// the register caps and measured slower (v7 in docs/scan_kernels_notes.md).

// B and C values of a tile each thread of a kThr-thread block loads.
template <int kThr>
constexpr int BCPerThread() {
  return (kTile * 2 * kS) / kThr;
}
constexpr int kBCPerThread = BCPerThread<kThreads>();  // 2

// Per-token channel scalars live in shared memory as sdx[buf][warp][tok / 4][channel][tok % 4],
// the channel row padded to 5 float4: the commit (lane channel·4 + q writes token 4i + q) stores
// nearly contiguously, and a read of one token (8 channels, 80 bytes apart) is conflict-free.
constexpr int kSdxPad = 5;

// This thread's share of a tile's B and C (columns 0..15 = B, 16..31 = C).
template <typename E, int kThr = kThreads>
__device__ __forceinline__ void LoadBC(const SelectiveScanParams& p, int64_t b, int64_t t0,
                                       bool need_b, bool need_c,
                                       float (&v)[BCPerThread<kThr>()]) {
  constexpr int kPer = BCPerThread<kThr>();
  if (t0 + kTile <= p.seqlen) {  // whole tile inside T: plain loads
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int idx = threadIdx.x + k * kThr;
      const int tok = idx >> 5, col = idx & 31;
      const int64_t t = t0 + tok;
      if (col < kS) {
        v[k] = need_b ? Ld<E>(p.B, b * p.B_strides.batch + t * p.B_strides.token + col) : 0.f;
      } else {
        v[k] = need_c ? Ld<E>(p.C, b * p.C_strides.batch + t * p.C_strides.token + (col - kS))
                      : 0.f;
      }
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int idx = threadIdx.x + k * kThr;
    const int tok = idx >> 5, col = idx & 31;
    const int64_t t = t0 + tok;
    float val = 0.f;
    if (t < p.seqlen) {
      if (col < kS) {
        if (need_b) val = Ld<E>(p.B, b * p.B_strides.batch + t * p.B_strides.token + col);
      } else if (need_c) {
        val = Ld<E>(p.C, b * p.C_strides.batch + t * p.C_strides.token + (col - kS));
      }
    }
    v[k] = val;
  }
}
// B and C of one tile in shared memory. fp32: [tok][32] floats (B 0..15, C 16..31). bf16:
// [tok][q][8] (B 4q..4q+3, then C 4q..4q+3), so that one 16-byte read gives a lane both, half the
// shared-memory wavefronts of two fp32 reads (the values are bf16 already: no rounding).
template <typename E>
struct BCTile;
template <>
struct BCTile<float> {
  float v[kTile][2 * kS];
  template <int kThr = kThreads>
  __device__ __forceinline__ void Store(const float (&vals)[BCPerThread<kThr>()]) {
#pragma unroll
    for (int k = 0; k < BCPerThread<kThr>(); ++k) {
      const int idx = threadIdx.x + k * kThr;
      v[idx >> 5][idx & 31] = vals[k];
    }
  }
  __device__ __forceinline__ float4 ReadB(int tok, int q) const {
    return *reinterpret_cast<const float4*>(&v[tok][q * kSPL]);
  }
  __device__ __forceinline__ float4 ReadC(int tok, int q) const {
    return *reinterpret_cast<const float4*>(&v[tok][kS + q * kSPL]);
  }
  __device__ __forceinline__ void Read(int tok, int q, float4* B, float4* C) const {
    *B = ReadB(tok, q);
    *C = ReadC(tok, q);
  }
};
template <>
struct BCTile<__nv_bfloat16> {
  __nv_bfloat16 v[kTile][kQ][8];
  static __device__ __forceinline__ float Lo(uint32_t u) { return __uint_as_float(u << 16); }
  static __device__ __forceinline__ float Hi(uint32_t u) { return __uint_as_float(u & 0xffff0000u); }
  template <int kThr = kThreads>
  __device__ __forceinline__ void Store(const float (&vals)[BCPerThread<kThr>()]) {
#pragma unroll
    for (int k = 0; k < BCPerThread<kThr>(); ++k) {
      const int idx = threadIdx.x + k * kThr;
      const int tok = idx >> 5, col = idx & 31, st = col & (kS - 1);
      v[tok][st / kSPL][(col >> 4) * kSPL + (st % kSPL)] = __float2bfloat16_rn(vals[k]);
    }
  }
  __device__ __forceinline__ float4 ReadB(int tok, int q) const {
    const uint2 r = *reinterpret_cast<const uint2*>(&v[tok][q][0]);
    return make_float4(Lo(r.x), Hi(r.x), Lo(r.y), Hi(r.y));
  }
  __device__ __forceinline__ float4 ReadC(int tok, int q) const {
    const uint2 r = *reinterpret_cast<const uint2*>(&v[tok][q][4]);
    return make_float4(Lo(r.x), Hi(r.x), Lo(r.y), Hi(r.y));
  }
  __device__ __forceinline__ void Read(int tok, int q, float4* B, float4* C) const {
    const uint4 r = *reinterpret_cast<const uint4*>(&v[tok][q][0]);
    *B = make_float4(Lo(r.x), Hi(r.x), Lo(r.y), Hi(r.y));
    *C = make_float4(Lo(r.z), Hi(r.z), Lo(r.w), Hi(r.w));
  }
};
static_assert(sizeof(BCTile<__nv_bfloat16>) <= sizeof(BCTile<float>), "bf16 tile fits the fp32 slot");

// The backward's fp32 B and C tile in the four state orders of ReduceScatter8ChannelsSwizzled:
// copy m holds at [tok][col] the value of column col ^ m (B 0..15, C 16..31), so that a lane reads
// its states in its own order with one 16-byte read each for B and C, as BCTile<float> does.
struct BCTileSwizzled {
  float v[4][kTile][2 * kS];
  __device__ __forceinline__ void Store(const float (&vals)[kBCPerThread]) {
#pragma unroll
    for (int k = 0; k < kBCPerThread; ++k) {
      const int idx = threadIdx.x + k * kThreads;
#pragma unroll
      for (int m = 0; m < 4; ++m) v[m][idx >> 5][(idx & 31) ^ m] = vals[k];
    }
  }
  // The lane's view: copy m, its q group.
  __device__ __forceinline__ const float* Lane(int q, int m) const { return &v[m][0][q * kSPL]; }
  static __device__ __forceinline__ float4 ReadB(const float* lane, int tok) {
    return *reinterpret_cast<const float4*>(lane + tok * 2 * kS);
  }
  static __device__ __forceinline__ void Read(const float* lane, int tok, float4* B, float4* C) {
    *B = ReadB(lane, tok);
    *C = *reinterpret_cast<const float4*>(lane + tok * 2 * kS + kS);
  }
};

// ---- asynchronous tile loads ---------------------------------------------------------------
// A block's per-token streams (x, Δ, z, dout; kW·8 channels × 16 tokens each) are copied into
// shared memory by cp.async, 16 bytes per copy, issued before the previous tile's arithmetic:
// no registers are held and no warp waits on global memory until the commit (ncu on v8: 38% of
// the forward's stall cycles were global loads waited on). Needs every row 16-byte aligned
// (RowsAligned on the host); otherwise each lane loads its own elements (TokStream).

// Shared-memory image of kN streams of one tile: [stream][token][kW·8 channels], rows padded by
// 32 bytes so that a warp's commit reads (tokens q, 4+q, .. of 8 channels) are conflict-free.
template <typename E, int kW, int kN>
struct RawTile {
  static constexpr int kCh = kW * kChPerWarp;
  static constexpr int kRowBytes = kCh * int(sizeof(E)) + 32;
  static constexpr int kStreamBytes = kTile * kRowBytes;
  static constexpr int kBytes = kN * kStreamBytes;
  static constexpr int kVec = 16 / int(sizeof(E));  // elements per copy
  static constexpr int kPerRow = kCh / kVec;
  static constexpr int kCopies = kTile * kPerRow;   // per stream

  char* bytes;
  // rows[s]: element (b, token 0, first channel of the block) of stream s, or null (skipped).
  // Tokens past T and channels past Di are zero-filled.
  __device__ __forceinline__ void Issue(const E* const (&rows)[kN], const int64_t (&tstride)[kN],
                                        int64_t t0, int64_t T, int64_t d0, int64_t dim) const {
    // A fixed count of copies per thread (one for 8-warp blocks): a loop bounded by threadIdx.x
    // compiled to an unrolled-by-4 loop with remainder, ~500 instructions per stream.
    constexpr int kPerThread = (kCopies + kW * 32 - 1) / (kW * 32);
#pragma unroll
    for (int s = 0; s < kN; ++s) {
      if (rows[s] == nullptr) continue;
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        const int c = threadIdx.x + k * kW * 32;
        if (kCopies % (kW * 32) != 0 && c >= kCopies) continue;
        const int tok = c / kPerRow, part = c % kPerRow;
        const bool valid = t0 + tok < T && d0 + part * kVec < dim;
        const E* src = valid ? rows[s] + (t0 + tok) * tstride[s] + part * kVec : rows[s];
        CpAsync16(bytes + s * kStreamBytes + tok * kRowBytes + part * 16, src, valid);
      }
    }
    CpAsyncCommit();
  }
  // Element (token, channel col of the block) of stream s.
  __device__ __forceinline__ float Read(int s, int tok, int col) const {
    return ToFloat<E>(*reinterpret_cast<const E*>(bytes + s * kStreamBytes + tok * kRowBytes +
                                              col * int(sizeof(E))));
  }
  // This lane's 4 tokens (4i + q) of stream s.
  __device__ __forceinline__ void Read4(int s, int q, int col, float (&v)[4]) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = Read(s, 4 * i + q, col);
  }
};

// One lane's view of a (B, T, Di) tensor: its tokens t0 + 4i + q of a tile, for its channel.
template <typename E>
struct TokStream {
  const E* lane_base = nullptr;  // element (b, q, d)
  int64_t stride = 0;            // token stride
  __device__ __forceinline__ void Init(const void* p, const TokenStrides& s, int64_t b, int64_t d,
                                       int q) {
    stride = s.token;
    lane_base = p != nullptr ? static_cast<const E*>(p) + b * s.batch + d + q * s.token : nullptr;
  }
  // v[i] = element at token 16j + 4i + q, 0 where that token is past T (or the lane inactive).
  __device__ __forceinline__ void Load4(int j, int64_t T, int q, bool active, float (&v)[4]) const {
    const E* ptr = lane_base + int64_t(j) * kTile * stride;
    const int64_t t0 = int64_t(j) * kTile;
    if (t0 + kTile <= T) {  // whole tile inside T (block-uniform): no per-element branches;
#pragma unroll            // an inactive lane reads its clamped channel and drops the value
      for (int i = 0; i < 4; ++i) v[i] = ToFloat<E>(ptr[4 * i * stride]);
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] = active ? v[i] : 0.f;
      return;
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[i] = active && t0 + q + 4 * i < T ? ToFloat<E>(ptr[4 * i * stride]) : 0.f;
    }
  }
};

// The per-token streams of a tile for one lane (forward: Δ, x, z; chunk gradient: Δ, dout, z;
// backward: Δ, x, dout, z): copied into the block's RawTile by cp.async (kAsync) or loaded by the
// lane itself (TokStream). Load(j) starts tile j's loads; Take hands over the lane's tokens
// 4i + q of every stream — in the asynchronous case after waiting for this thread's copies and a
// block barrier (everyone's copies visible). A null stream (no gate) reads as zeros.
template <typename E, int kW, int kN, bool kAsync>
struct TileStreams {
  RawTile<E, kW, kN> raw;
  const E* rows[kN];  // element (b, token 0, the block's first channel), or null
  int64_t row_strides[kN];
  TokStream<E> lane[kN];
  float held[kN][4];  // the lane's 4 tokens of each stream

  __device__ __forceinline__ TileStreams(char* smem, const void* const (&tensors)[kN],
                                         const TokenStrides (&strides)[kN], const TileIo& io,
                                         int64_t dd, int64_t d0) {
    raw.bytes = smem;
#pragma unroll
    for (int s = 0; s < kN; ++s) {
      rows[s] = tensors[s] != nullptr
                    ? static_cast<const E*>(tensors[s]) + io.b * strides[s].batch + d0
                    : nullptr;
      row_strides[s] = strides[s].token;
      if constexpr (!kAsync) lane[s].Init(tensors[s], strides[s], io.b, dd, io.q);
    }
  }
  __device__ __forceinline__ void Load(int j, int64_t T, int64_t d0, int64_t dim,
                                       const TileIo& io) {
    if (kAsync) {
      raw.Issue(rows, row_strides, int64_t(j) * kTile, T, d0, dim);
      return;
    }
#pragma unroll
    for (int s = 0; s < kN; ++s) {
      if (rows[s] != nullptr) {
        lane[s].Load4(j, T, io.q, io.active, held[s]);
      } else {
        held[s][0] = held[s][1] = held[s][2] = held[s][3] = 0.f;
      }
    }
  }
  // col: the lane's channel within the block.
  __device__ __forceinline__ const float (&Take(int q, int col))[kN][4] {
    if (kAsync) {
      CpAsyncWaitAll();
      __syncthreads();
#pragma unroll
      for (int s = 0; s < kN; ++s) {
        if (rows[s] != nullptr) {
          raw.Read4(s, q, col, held[s]);
        } else {
          held[s][0] = held[s][1] = held[s][2] = held[s][3] = 0.f;
        }
      }
    }
    return held;
  }
};

// ---- forward --------------------------------------------------------------------------------

// kFinal = false: the chunk-local pass (state from zero; stores the end state and the decay), for
// chunks 0..K−2 (the last chunk's end state is carried nowhere).
// kFinal = true: the real pass from the carried state; writes out, checkpoints, final state.
// kPoly: share of the exps computed on the FMA pipe (ExpOf). kW: warps per block (8 channels
// each); small blocks spread few channels (B·Di/8 warps in all when K = 1) over every
// multiprocessor. Registers capped at 64 for 8-warp blocks (4 per multiprocessor); small blocks
// get 8 per multiprocessor (each thread loads a larger share of B and C, and few warps run then
// anyway).
// kAsync: x, Δ, z arrive through RawTile (cp.async). Dynamic shared memory, ForwardSmemBytes.
template <typename E, bool kFinal, int kPoly, int kW, bool kAsync>
__global__ void __launch_bounds__(kW * 32, kW == 8 ? 4 : 8)
    ScanForwardKernel(SelectiveScanParams p, Work w) {
  constexpr int kThr = kW * 32;
  // Small blocks run few warps per multiprocessor: nothing else hides a tile's load latency, so
  // the next tile's loads are issued before this tile's arithmetic (their registers fit under
  // the 128 cap). 8-warp blocks issue them just before the commit (v7), unless asynchronous.
  constexpr bool kPrefetch = kW < 8 || kAsync;
  extern __shared__ float4 fwd_smem[];
  auto sdx = reinterpret_cast<float4(*)[kW][kTile / 4][kChPerWarp][kSdxPad]>(fwd_smem);  // [2]: {Δ, x, SiLU(z), -}
  auto sbc = reinterpret_cast<BCTile<E>*>(fwd_smem + 2 * kW * (kTile / 4) * kChPerWarp * kSdxPad);  // [2]
  const TileIo io = MakeIo<kW>(p);
  const int c = blockIdx.y;
  const int64_t dd = io.active ? io.d : p.dim - 1;
  const int64_t T = p.seqlen;
  const bool gated = kFinal && p.z != nullptr;

  float A2[kSPL];  // A·log2(e): exp(Δ·A) = 2^(Δ·A2)
#pragma unroll
  for (int s = 0; s < kSPL; ++s) A2[s] = p.A[dd * kS + io.q * kSPL + s] * kLog2e;
  const float Dd = p.D != nullptr ? p.D[dd] : 0.f;
  const float dbias = p.delta_bias != nullptr ? p.delta_bias[dd] : 0.f;

  float h[kSPL] = {0.f, 0.f, 0.f, 0.f};
  if (kFinal) {
    if (p.initial_state != nullptr) {
      const float4 v = *reinterpret_cast<const float4*>(p.initial_state +
                                                        (io.b * p.dim + dd) * kS + io.q * kSPL);
      h[0] = v.x; h[1] = v.y; h[2] = v.z; h[3] = v.w;
    }
    // Carry over the earlier chunks (their local end states and decays).
    for (int cc = 0; cc < c; ++cc) {
      const int64_t o = ((io.b * w.K + cc) * p.dim + dd) * kS + io.q * kSPL;
      const float4 hl = *reinterpret_cast<const float4*>(w.hloc + o);
      const float4 dc = *reinterpret_cast<const float4*>(w.hdecay + o);
      h[0] = dc.x * h[0] + hl.x; h[1] = dc.y * h[1] + hl.y;
      h[2] = dc.z * h[2] + hl.z; h[3] = dc.w * h[3] + hl.w;
    }
  }
  float delta_sum = 0.f;  // ΣΔ since the last reset (chunk-local pass)
  bool any_reset = false;

  // Prefetch registers: this lane's tokens t0 + 4i + q of the next tile.
  float pbc[BCPerThread<kThr>()];
  bool pr;
  const int64_t d0 = int64_t(blockIdx.x) * RawTile<E, kW, 3>::kCh;  // the block's first channel
  const int col = io.warp * kChPerWarp + io.ch;  // this lane's channel within the block
  TileStreams<E, kW, 3, kAsync> streams(reinterpret_cast<char*>(sbc + 2),
                                        {p.delta, p.x, gated ? p.z : nullptr},
                                        {p.delta_strides, p.x_strides, p.z_strides}, io, dd, d0);
  auto load = [&](int j) {
    const int64_t t0 = int64_t(j) * kTile;
    streams.Load(j, T, d0, p.dim, io);
    LoadBC<E, kThr>(p, io.b, t0, true, kFinal, pbc);
    pr = LoadResetFlag(p, io.b, t0);
  };
  auto commit = [&](int buf, int j) -> unsigned {
    const int64_t t0 = int64_t(j) * kTile;
    const auto& [pd, px, pz] = streams.Take(io.q, col);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t t = t0 + 4 * i + io.q;
      float delta = 0.f, slope;
      if (t < T && io.active) delta = DeltaOf(p, pd[i], dbias, &slope);
      const float gate = gated ? pz[i] * Sigmoid(pz[i]) : 1.f;
      sdx[buf][io.warp][i][io.ch][io.q] = make_float4(delta, px[i], gate, 0.f);
    }
    sbc[buf].template Store<kThr>(pbc);
    return ResetMask(pr);
  };

  const int j_begin = c * w.tiles_per_chunk;
  const int j_end = min(w.nJ, j_begin + w.tiles_per_chunk);
  load(j_begin);
  unsigned resets = commit(0, j_begin);
  __syncthreads();
  for (int j = j_begin; j < j_end; ++j) {
    const int buf = (j - j_begin) & 1;
    const bool more = j + 1 < j_end;
    if (kPrefetch && more) load(j + 1);
    const int64_t t0 = int64_t(j) * kTile;
    if (kFinal && w.ckpt != nullptr && io.active) {
      *reinterpret_cast<float4*>(w.ckpt + ((io.b * w.nJ + j) * p.dim + io.d) * kS + io.q * kSPL) =
          make_float4(h[0], h[1], h[2], h[3]);
    }
    // The tile's arithmetic; kReset = false is the common tile without a document start (no
    // per-token selects). Shared-memory reads run one token ahead (software pipelining).
    auto compute = [&](auto reset_tag) {
      constexpr bool kReset = decltype(reset_tag)::value;
      float4 n_dx = sdx[buf][io.warp][0][io.ch][0];
      float4 n_B, n_C = make_float4(0.f, 0.f, 0.f, 0.f);
      if (kFinal) {
        sbc[buf].Read(0, io.q, &n_B, &n_C);
      } else {
        n_B = sbc[buf].ReadB(0, io.q);
      }
      E* out_tile = kFinal ? static_cast<E*>(p.out) + io.b * p.out_strides.batch + dd +
                                 (t0 + io.q) * p.out_strides.token
                           : nullptr;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float yp[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int tok = 4 * i + k;
          const float4 dx = n_dx, Bq = n_B, Cq = n_C;
          if (tok + 1 < kTile) {
            n_dx = sdx[buf][io.warp][(tok + 1) >> 2][io.ch][(tok + 1) & 3];
            if (kFinal) {
              sbc[buf].Read(tok + 1, io.q, &n_B, &n_C);
            } else {
              n_B = sbc[buf].ReadB(tok + 1, io.q);
            }
          }
          const float delta = dx.x, dbx = dx.x * dx.y;
          const bool reset = kReset && ((resets >> tok) & 1u);
          const float Bv[4] = {Bq.x, Bq.y, Bq.z, Bq.w};
          if (!kFinal) {
            if (reset) {
              delta_sum = 0.f;
              any_reset = true;
            }
            delta_sum += delta;
          }
          float y = 0.f;
          const float Cv[4] = {Cq.x, Cq.y, Cq.z, Cq.w};
#pragma unroll
          for (int s = 0; s < kSPL; ++s) {
            const float a = ExpOf<kPoly>(delta * A2[s], s);
            h[s] = (reset ? 0.f : h[s]) * a + dbx * Bv[s];
            if (kFinal) y += Cv[s] * h[s];
          }
          yp[k] = y;
        }
        if (kFinal) {
          const float y = ReduceScatter<4>(yp, io.q);
          if (t0 + 4 * i + io.q < T && io.active) {
            const float4 own = sdx[buf][io.warp][i][io.ch][io.q];  // {Δ, x, gate}
            out_tile[4 * i * p.out_strides.token] = FromFloat<E>((y + Dd * own.y) * own.z);
          }
        }
      }
    };
    if (resets == 0) {
      compute(std::false_type{});
    } else {
      compute(std::true_type{});
    }
    unsigned next = 0;
    if (more) {
      if (!kPrefetch) load(j + 1);
      next = commit(buf ^ 1, j + 1);
    }
    __syncthreads();
    resets = next;
  }
  if (!io.active) return;
  if (kFinal) {
    if (c == w.K - 1 && p.final_state != nullptr) {
      *reinterpret_cast<float4*>(p.final_state + (io.b * p.dim + io.d) * kS + io.q * kSPL) =
          make_float4(h[0], h[1], h[2], h[3]);
    }
  } else {
    const int64_t o = ((io.b * w.K + c) * p.dim + io.d) * kS + io.q * kSPL;
    *reinterpret_cast<float4*>(w.hloc + o) = make_float4(h[0], h[1], h[2], h[3]);
    float dc[4];
#pragma unroll
    for (int s = 0; s < kSPL; ++s) dc[s] = any_reset ? 0.f : Exp2(delta_sum * A2[s]);
    *reinterpret_cast<float4*>(w.hdecay + o) = make_float4(dc[0], dc[1], dc[2], dc[3]);
  }
}

// ---- backward -------------------------------------------------------------------------------

// Chunk-local reverse pass: the state gradient that flows out of the chunk's start when the
// gradient entering its end is zero, and the chunk's decay. Chunks local_first..K−1: only earlier
// chunks use it (all of them in the two-pass backward, those past the first segment in the
// segmented chained one).
// kAsync: Δ, dout, z through RawTile. Dynamic shared memory, ChunkGradSmemBytes.
template <typename E, bool kAsync>
__global__ void __launch_bounds__(kThreads)
    ScanChunkGradKernel(SelectiveScanParams p, SelectiveScanGrads g, Work w) {
  extern __shared__ float4 cg_smem[];
  auto sdx = reinterpret_cast<float4(*)[kWarps][kTile / 4][kChPerWarp][kSdxPad]>(cg_smem);  // [2]: {Δ, -, dy, -}
  auto sbc = reinterpret_cast<BCTile<E>*>(cg_smem + 2 * kWarps * (kTile / 4) * kChPerWarp * kSdxPad);  // [2]
  const TileIo io = MakeIo(p);
  const int c = blockIdx.y + w.local_first;
  const int64_t dd = io.active ? io.d : p.dim - 1;
  const int64_t T = p.seqlen;
  const bool gated = p.z != nullptr;
  float A2[kSPL];
#pragma unroll
  for (int s = 0; s < kSPL; ++s) A2[s] = p.A[dd * kS + io.q * kSPL + s] * kLog2e;
  const float dbias = p.delta_bias != nullptr ? p.delta_bias[dd] : 0.f;
  float gs[kSPL] = {0.f, 0.f, 0.f, 0.f};
  float delta_sum = 0.f;
  bool any_reset = false;

  float pbc[kBCPerThread];
  bool pr;
  const int64_t d0 = int64_t(blockIdx.x) * kChPerBlock;
  const int col = io.warp * kChPerWarp + io.ch;
  TileStreams<E, kWarps, 3, kAsync> streams(reinterpret_cast<char*>(sbc + 2),
                                            {p.delta, g.dout, gated ? p.z : nullptr},
                                            {p.delta_strides, g.dout_strides, p.z_strides}, io,
                                            dd, d0);
  auto load = [&](int j) {
    streams.Load(j, T, d0, p.dim, io);
    LoadBC<E>(p, io.b, int64_t(j) * kTile, false, true, pbc);
    pr = LoadResetFlag(p, io.b, int64_t(j) * kTile);
  };
  auto commit = [&](int buf, int j) -> unsigned {
    const int64_t t0 = int64_t(j) * kTile;
    const auto& [pd, pdo, pz] = streams.Take(io.q, col);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t t = t0 + 4 * i + io.q;
      float delta = 0.f, slope;
      if (t < T && io.active) delta = DeltaOf(p, pd[i], dbias, &slope);
      const float dy = gated ? pdo[i] * pz[i] * Sigmoid(pz[i]) : pdo[i];
      sdx[buf][io.warp][i][io.ch][io.q] = make_float4(delta, 0.f, dy, 0.f);
    }
    sbc[buf].Store(pbc);
    return ResetMask(pr);
  };

  const int j_begin = c * w.tiles_per_chunk;
  const int j_end = min(w.nJ, j_begin + w.tiles_per_chunk);
  load(j_end - 1);
  unsigned resets = commit(0, j_end - 1);
  __syncthreads();
  for (int j = j_end - 1; j >= j_begin; --j) {
    const int buf = (j_end - 1 - j) & 1;
    const bool more = j > j_begin;
    if (more) load(j - 1);
    float4 n_v = sdx[buf][io.warp][kTile / 4 - 1][io.ch][3];
    float4 n_C = sbc[buf].ReadC(kTile - 1, io.q);
#pragma unroll
    for (int tok = kTile - 1; tok >= 0; --tok) {
      const float4 v = n_v, Cq = n_C;
      if (tok > 0) {
        n_v = sdx[buf][io.warp][(tok - 1) >> 2][io.ch][(tok - 1) & 3];
        n_C = sbc[buf].ReadC(tok - 1, io.q);
      }
      const float Cv[4] = {Cq.x, Cq.y, Cq.z, Cq.w};
      const bool reset = (resets >> tok) & 1u;
#pragma unroll
      for (int s = 0; s < kSPL; ++s) {
        gs[s] += Cv[s] * v.z;
        gs[s] = reset ? 0.f : gs[s] * Exp2(v.x * A2[s]);
      }
      if (!any_reset) delta_sum += v.x;
      if (reset) any_reset = true;
    }
    unsigned next = 0;
    if (more) next = commit(buf ^ 1, j - 1);
    __syncthreads();
    resets = next;
  }
  if (!io.active) return;
  const int64_t o = ((io.b * w.K + c) * p.dim + io.d) * kS + io.q * kSPL;
  *reinterpret_cast<float4*>(w.gloc + o) = make_float4(gs[0], gs[1], gs[2], gs[3]);
  float dc[4];
#pragma unroll
  for (int s = 0; s < kSPL; ++s) dc[s] = any_reset ? 0.f : Exp2(delta_sum * A2[s]);
  *reinterpret_cast<float4*>(w.gdecay + o) = make_float4(dc[0], dc[1], dc[2], dc[3]);
}

constexpr int kSdxFloats = 2 * kWarps * (kTile / 4) * kChPerWarp * kSdxPad * 4;
constexpr int kBackwardSmem =
    (kSdxFloats + kWarps * kTile * 2 * kS) * int(sizeof(float)) + 2 * int(sizeof(BCTileSwizzled));

// The tile is processed in segments of kSeg tokens, last first: a segment's states are
// recomputed from the tile's checkpoint into registers (kSeg 8: the second segment's starting
// state costs a re-walk of the first), then the reverse recurrence runs through it. kStoreExp
// keeps the recompute's exp(Δ·A) in registers for the reverse instead of computing them again.
// kAsync: Δ, x, dout, z through RawTile, issued before the tile's arithmetic like B, C, the
// resets and the checkpoint then (without it those are loaded just before the commit: issued
// earlier they held registers that spilled under the cap, v7). kBcF32: B and C kept as fp32 in
// shared memory (converted once at the commit, not unpacked by every lane at every read).
// kChained: the chunks hand their state gradient on (ChainLength) instead of reading the
// chunk-local gradient pass's results; a template parameter so that the two-pass kernel keeps its
// registers (the work indices below are then blockIdx, free to re-read). With fp32 B/C tiles
// (kBcF32, or fp32 tensors) a lane holds its states in its channel's swizzled order (v19,
// ReduceScatter8ChannelsSwizzled): A, the checkpoint, the state gradient and the B/C tile are read
// in that order and dA and the state gradients written back in state order.
template <typename E, int kMinBlocks, int kSeg, bool kStoreExp, bool kAsync, bool kBcF32 = false,
          bool kChained = false>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    ScanBackwardKernel(SelectiveScanParams p, SelectiveScanGrads g, Work w) {
  constexpr bool kPrefetch = kAsync;
  // Dynamic shared memory (over the 48 KB static limit), kBackwardSmem (+ the RawTile of Δ, x,
  // dout, z where asynchronous) bytes:
  extern __shared__ float4 smem[];
  auto sdx = reinterpret_cast<float4(*)[kWarps][kTile / 4][kChPerWarp][kSdxPad]>(smem);  // [2]: {Δ, x, dy, dΔ/dΔraw}
  constexpr bool kSwz = kBcF32 || std::is_same_v<E, float>;
  using BC = std::conditional_t<kSwz, BCTileSwizzled, BCTile<E>>;
  auto sbc = reinterpret_cast<BC*>(smem + kSdxFloats / 4);  // [2]
  auto sred = reinterpret_cast<float(*)[kTile][2 * kS]>(  // [kWarps]: per-warp dB | dC sums
      reinterpret_cast<char*>(smem) + kSdxFloats * 4 + 2 * sizeof(BCTileSwizzled));
  // Which (channel block, chunk, batch row) this block runs. Chained, blocks take work in the
  // order they start (a ticket), last chunk first, so a block only ever waits for one that
  // started before it: whatever the scheduler does, the block it waits for runs.
  int blk = blockIdx.x, c = blockIdx.y, bz = blockIdx.z;
  if constexpr (kChained) {
    // Segments of seg_chunks chunks chain independently; tickets go through the segments
    // round-robin, each one last chunk first, so that every segment's chain starts at once and a
    // block's predecessor in its chain (the next chunk) holds an earlier ticket. Only the last
    // segment may be shorter.
    __shared__ int item;
    const int per_chunk = w.nblk * static_cast<int>(p.batch);
    if (threadIdx.x == 0) item = atomicAdd(w.chain + w.K * per_chunk, 1);
    __syncthreads();
    const int rank = item / per_chunk, L = w.seg_chunks, segs = (w.K + L - 1) / L;
    const int last_len = w.K - (segs - 1) * L;
    int seg, back;  // the segment, and the chunk's place from its end
    if (rank < last_len * segs) {
      back = rank / segs;
      seg = rank % segs;
    } else {
      back = last_len + (rank - last_len * segs) / (segs - 1);
      seg = (rank - last_len * segs) % (segs - 1);
    }
    c = min(w.K, (seg + 1) * L) - 1 - back;
    bz = (item % per_chunk) / w.nblk;
    blk = item % w.nblk;
  }
  const int seg_first = kChained ? c / w.seg_chunks * w.seg_chunks : 0;
  const int seg_last = kChained ? min(w.K, seg_first + w.seg_chunks) - 1 : w.K - 1;
  const TileIo io = MakeIo(p, blk, bz);
  const int64_t dd = io.active ? io.d : p.dim - 1;
  const int64_t T = p.seqlen;
  const bool gated = p.z != nullptr;
  const int m = kSwz ? StateSwizzle(io.ch) : 0;  // local state s is state 4q + (s ^ m)

  float A[kSPL], A2[kSPL];
#pragma unroll
  for (int s = 0; s < kSPL; ++s) {
    A[s] = p.A[dd * kS + io.q * kSPL + (s ^ m)];
    A2[s] = A[s] * kLog2e;
  }
  const float Dd = p.D != nullptr ? p.D[dd] : 0.f;
  const float dbias = p.delta_bias != nullptr ? p.delta_bias[dd] : 0.f;

  // Gradient entering the chunk's last token from later chunks: chained inside a segment, what
  // the next chunk's block published (it started earlier: the ticket order); else dfinal_state
  // carried through the later chunks' local gradients and decays.
  float gs[kSPL] = {0.f, 0.f, 0.f, 0.f};
  if (kChained && c < seg_last) {
    if (threadIdx.x == 0) {
      const int* flag = w.chain + (int64_t(bz) * w.K + c + 1) * w.nblk + blk;
      while (LoadAcquire(flag) == 0) __nanosleep(64);
    }
    __syncthreads();
    Swizzle(__ldcg(reinterpret_cast<const float4*>(
                w.ginc + ((io.b * w.K + c + 1) * p.dim + dd) * kS + io.q * kSPL)),
            m, gs);
  } else if (g.dfinal_state != nullptr) {
    Swizzle(*reinterpret_cast<const float4*>(g.dfinal_state + (io.b * p.dim + dd) * kS +
                                             io.q * kSPL),
            m, gs);
  }
  for (int cc = w.K - 1; cc > c && (!kChained || c == seg_last); --cc) {
    const int64_t o = ((io.b * w.K + cc) * p.dim + dd) * kS + io.q * kSPL;
    float gl[kSPL], dc[kSPL];
    Swizzle(*reinterpret_cast<const float4*>(w.gloc + o), m, gl);
    Swizzle(*reinterpret_cast<const float4*>(w.gdecay + o), m, dc);
#pragma unroll
    for (int s = 0; s < kSPL; ++s) gs[s] = dc[s] * gs[s] + gl[s];
  }

  // Prefetch registers for the next tile (the one before, in token order) and the current
  // tile's per-lane values.
  float pbc[kBCPerThread];
  float4 pck;
  bool pr;
  float own_dout[4], own_z[4];
  float ck[kSPL];
  const int64_t d0 = int64_t(blk) * kChPerBlock;
  const int lane_col = io.warp * kChPerWarp + io.ch;
  TileStreams<E, kWarps, 4, kAsync> streams(
      reinterpret_cast<char*>(smem) + kBackwardSmem, {p.delta, p.x, g.dout, gated ? p.z : nullptr},
      {p.delta_strides, p.x_strides, g.dout_strides, p.z_strides}, io, dd, d0);
  auto load = [&](int j) {
    const int64_t t0 = int64_t(j) * kTile;
    streams.Load(j, T, d0, p.dim, io);
    LoadBC<E>(p, io.b, t0, true, true, pbc);
    pr = LoadResetFlag(p, io.b, t0);
    pck = *reinterpret_cast<const float4*>(w.ckpt + ((io.b * w.nJ + j) * p.dim + dd) * kS +
                                           io.q * kSPL);
  };
  auto commit = [&](int buf, int j) -> unsigned {
    const int64_t t0 = int64_t(j) * kTile;
    const auto& [pd, px, pdo, pz] = streams.Take(io.q, lane_col);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t t = t0 + 4 * i + io.q;
      float delta = 0.f, slope = 0.f;
      if (t < T && io.active) delta = DeltaOf(p, pd[i], dbias, &slope);
      const float dy = gated ? pdo[i] * pz[i] * Sigmoid(pz[i]) : pdo[i];
      sdx[buf][io.warp][i][io.ch][io.q] = make_float4(delta, px[i], dy, slope);
      own_dout[i] = pdo[i];
      own_z[i] = pz[i];
    }
    Swizzle(pck, m, ck);
    sbc[buf].Store(pbc);
    return ResetMask(pr);
  };

  // The lane's B and C of token tok in its state order.
  auto read_b = [&](int buf, int tok) {
    if constexpr (kSwz) {
      return BCTileSwizzled::ReadB(sbc[buf].Lane(io.q, m), tok);
    } else {
      return sbc[buf].ReadB(tok, io.q);
    }
  };
  auto read_bc = [&](int buf, int tok, float4* B, float4* C) {
    if constexpr (kSwz) {
      BCTileSwizzled::Read(sbc[buf].Lane(io.q, m), tok, B, C);
    } else {
      sbc[buf].Read(tok, io.q, B, C);
    }
  };

  float dA_acc[kSPL] = {0.f, 0.f, 0.f, 0.f};
  float dD_acc = 0.f, dbias_acc = 0.f;
  const int j_begin = c * w.tiles_per_chunk;
  const int j_end = min(w.nJ, j_begin + w.tiles_per_chunk);
  load(j_end - 1);
  unsigned resets = commit(0, j_end - 1);
  __syncthreads();
  for (int j = j_end - 1; j >= j_begin; --j) {
    const int buf = (j_end - 1 - j) & 1;
    const bool more = j > j_begin;
    if (kPrefetch && more) load(j - 1);
    const int64_t t0 = int64_t(j) * kTile;
    // Whether all this lane's tokens of the tile are inside T (no per-token check).
    const bool whole = io.active && t0 + kTile <= T;
    // The tile's arithmetic; kReset = false is the common tile without a document start.
    auto compute = [&](auto reset_tag) {
      constexpr bool kReset = decltype(reset_tag)::value;
      // dB | dC: lane (ch, q) ends up with one column of each token, summed over the warp's 8
      // channels: ch < 4 ? 4q+ch : 16+4q+ch−4, or swizzled SwizzledColumn(ch, q).
      const int col = kSwz ? SwizzledColumn(io.ch, io.q)
                      : io.ch < 4 ? io.q * kSPL + io.ch
                                  : kS + io.q * kSPL + (io.ch - 4);
#pragma unroll
      for (int seg = kTile / kSeg - 1; seg >= 0; --seg) {
        const int tok0 = seg * kSeg;
        float hprev[kSPL] = {ck[0], ck[1], ck[2], ck[3]};
        if (tok0 > 0) {  // walk the earlier tokens to this segment's starting state
#pragma unroll
          for (int tok = 0; tok < tok0; ++tok) {
            const float4 v = sdx[buf][io.warp][tok >> 2][io.ch][tok & 3];
            const float4 Bq = read_b(buf, tok);
            const float Bv[4] = {Bq.x, Bq.y, Bq.z, Bq.w};
            const float dbx = v.x * v.y;
            const bool reset = kReset && ((resets >> tok) & 1u);
#pragma unroll
            for (int s = 0; s < kSPL; ++s) {
              hprev[s] = (reset ? 0.f : hprev[s]) * Exp2(v.x * A2[s]) + dbx * Bv[s];
            }
          }
        }
        // Recompute this segment's states (and exps); with a gate or g.out, also y (dz, out).
        float hs[kSeg][kSPL], ea[kStoreExp ? kSeg : 1][kSPL];
        const TileRow<E> dz_row(g.dz, g.dz_strides, io, dd, t0),
            out_row(g.out, g.out_strides, io, dd, t0);
#pragma unroll
        for (int ii = 0; ii < kSeg / 4; ++ii) {
          const int i = tok0 / 4 + ii;
          float yp[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int tok = 4 * i + k;
            const float4 v = sdx[buf][io.warp][i][io.ch][k];
            float4 Bq, Cq;
            read_bc(buf, tok, &Bq, &Cq);
            const float dbx = v.x * v.y;
            const bool reset = kReset && ((resets >> tok) & 1u);
            const float Bv[4] = {Bq.x, Bq.y, Bq.z, Bq.w};
            const float Cv[4] = {Cq.x, Cq.y, Cq.z, Cq.w};
            float y = 0.f;
#pragma unroll
            for (int s = 0; s < kSPL; ++s) {
              const float a = Exp2(v.x * A2[s]);
              if (kStoreExp) ea[kStoreExp ? tok - tok0 : 0][s] = a;
              hprev[s] = (reset ? 0.f : hprev[s]) * a + dbx * Bv[s];
              hs[tok - tok0][s] = hprev[s];
              y += Cv[s] * hprev[s];
            }
            yp[k] = y;
          }
          if (gated || g.out != nullptr) {
            const float y = ReduceScatter<4>(yp, io.q) +
                            Dd * sdx[buf][io.warp][i][io.ch][io.q].y;
            if (whole || (io.active && t0 + 4 * i + io.q < T)) {
              float out = y;
              if (gated) {
                const float sz = Sigmoid(own_z[i]);
                dz_row.Store(i, own_dout[i] * y * sz * (1.f + own_z[i] * (1.f - sz)));
                out = y * (own_z[i] * sz);  // as the forward: y·SiLU(z)
              }
              if (g.out != nullptr) out_row.Store(i, out);
            }
          }
        }
        // Reverse through this segment.
        const TileRow<E> dx_row(g.dx, g.dx_strides, io, dd, t0),
            ddelta_row(g.ddelta, g.ddelta_strides, io, dd, t0);
#pragma unroll
        for (int ii = kSeg / 4 - 1; ii >= 0; --ii) {
          const int i = tok0 / 4 + ii;
          float ddp[4], dxp[4];
#pragma unroll
          for (int k = 3; k >= 0; --k) {
            const int tok = 4 * i + k;
            const float4 v = sdx[buf][io.warp][i][io.ch][k];
            float4 Bq, Cq;
            read_bc(buf, tok, &Bq, &Cq);
            const float delta = v.x, x = v.y, dy = v.z, dbx = delta * x;
            const bool reset = kReset && ((resets >> tok) & 1u);
            const float Bv[4] = {Bq.x, Bq.y, Bq.z, Bq.w};
            const float Cv[4] = {Cq.x, Cq.y, Cq.z, Cq.w};
            float vals[8];
            float dd_part = 0.f, dx_part = 0.f;
#pragma unroll
            for (int s = 0; s < kSPL; ++s) {
              gs[s] += Cv[s] * dy;  // now dL/dh_t
              const float hb = hs[tok - tok0][s];
              const float dlog_a = gs[s] * (hb - dbx * Bv[s]);  // g·a·h_{t−1}
              dA_acc[s] += dlog_a * delta;
              const float gB = gs[s] * Bv[s];
              dd_part += dlog_a * A[s];  // + x·Σ_s gB, added once per token after the sums
              dx_part += gB;
              vals[s] = gs[s] * dbx;  // dB
              vals[4 + s] = dy * hb;  // dC
              const float a = kStoreExp ? ea[kStoreExp ? tok - tok0 : 0][s] : Exp2(delta * A2[s]);
              gs[s] = reset ? 0.f : gs[s] * a;
            }
            ddp[k] = dd_part;
            dxp[k] = dx_part;
            sred[io.warp][tok][col] = kSwz ? ReduceScatter8ChannelsSwizzled(vals, io.ch)
                                           : ReduceScatter8Channels(vals, io.ch);
          }
          const float dxs = ReduceScatter<4>(dxp, io.q);
          const float4 own = sdx[buf][io.warp][i][io.ch][io.q];  // {Δ, x, dy, slope}
          const float dds = ReduceScatter<4>(ddp, io.q) + own.y * dxs;
          if (whole || (io.active && t0 + 4 * i + io.q < T)) {
            const float ddraw = dds * own.w;
            dx_row.Store(i, Dd * own.z + own.x * dxs);
            ddelta_row.Store(i, ddraw);
            dD_acc += own.z * own.y;
            dbias_acc += ddraw;
          }
        }
      }
    };
    if (resets == 0) {
      compute(std::false_type{});
    } else {
      compute(std::true_type{});
    }
    __syncthreads();  // sred complete
    float* const dbc_tile = w.dbc_part + ((io.b * T + t0) * w.nblk + blk) * (2 * kS);
#pragma unroll
    for (int k = 0; k < kBCPerThread; ++k) {
      const int idx = threadIdx.x + k * kThreads;
      const int tok = idx >> 5, v = idx & 31;
      float sum = 0.f;
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) sum += sred[wi][tok][v];
      if (t0 + kTile <= T || t0 + tok < T) dbc_tile[tok * w.nblk * (2 * kS) + v] = sum;
    }
    unsigned next = 0;
    if (more) {
      if (!kPrefetch) load(j - 1);
      next = commit(buf ^ 1, j - 1);
    }
    __syncthreads();  // sred consumed; next tile's shared memory visible
    resets = next;
  }
  // Per-chunk partials of the parameter gradients; the initial state's gradient from chunk 0.
  dD_acc += __shfl_xor_sync(kFull, dD_acc, 1);
  dD_acc += __shfl_xor_sync(kFull, dD_acc, 2);
  dbias_acc += __shfl_xor_sync(kFull, dbias_acc, 1);
  dbias_acc += __shfl_xor_sync(kFull, dbias_acc, 2);
  // Chained: hand the gradient at this chunk's start to the previous chunk's block of its segment
  // (every thread's store made visible device-wide before the flag is released).
  if (kChained && c > seg_first) {
    if (io.active) {
      *reinterpret_cast<float4*>(w.ginc + ((io.b * w.K + c) * p.dim + io.d) * kS + io.q * kSPL) =
          Unswizzle(gs, m);
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) StoreRelease(w.chain + (int64_t(bz) * w.K + c) * w.nblk + blk, 1);
  }
  if (!io.active) return;
  const int64_t o = ((io.b * w.K + c) * p.dim + io.d) * kS + io.q * kSPL;
  *reinterpret_cast<float4*>(w.dA_part + o) = Unswizzle(dA_acc, m);
  if (io.q == 0) {
    *reinterpret_cast<float2*>(w.dDb_part + ((io.b * w.K + c) * p.dim + io.d) * 2) =
        make_float2(dD_acc, dbias_acc);
  }
  if (c == 0 && g.dinitial_state != nullptr) {
    *reinterpret_cast<float4*>(g.dinitial_state + (io.b * p.dim + io.d) * kS + io.q * kSPL) =
        Unswizzle(gs, m);
  }
}

// dB, dC: sum the per-block partials in block order.
template <typename E>
__global__ void ReduceBCKernel(SelectiveScanParams p, SelectiveScanGrads g, Work w) {
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);  // b*T + t
  const int v = threadIdx.x & 31;
  if (row >= p.batch * p.seqlen) return;
  const int64_t b = row / p.seqlen, t = row % p.seqlen;
  const float* part = w.dbc_part + row * w.nblk * (2 * kS) + v;
  float sum = 0.f;
  for (int k = 0; k < w.nblk; ++k) sum += part[k * (2 * kS)];
  if (v < kS) {
    St<E>(g.dB, b * g.dB_strides.batch + t * g.dB_strides.token + v, sum);
  } else {
    St<E>(g.dC, b * g.dC_strides.batch + t * g.dC_strides.token + (v - kS), sum);
  }
}

// dA, dD, dbias: sum the per-(batch, chunk) partials in order.
__global__ void ReduceParamsKernel(SelectiveScanParams p, SelectiveScanGrads g, Work w) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // d*S + s
  if (i >= p.dim * kS) return;
  const int64_t n = p.batch * w.K;
  float sum = 0.f;
  for (int64_t k = 0; k < n; ++k) sum += w.dA_part[k * p.dim * kS + i];
  g.dA[i] = sum;
  if (i < p.dim) {
    float dD = 0.f, db = 0.f;
    for (int64_t k = 0; k < n; ++k) {
      const float2 v = *reinterpret_cast<const float2*>(w.dDb_part + (k * p.dim + i) * 2);
      dD += v.x;
      db += v.y;
    }
    if (g.dD != nullptr) g.dD[i] = dD;
    if (g.ddelta_bias != nullptr) g.ddelta_bias[i] = db;
  }
}

// ---- host side ------------------------------------------------------------------------------

int64_t Align256(int64_t n) { return (n + 255) / 256 * 256; }

int NumSms() {
  static const int n = [] {
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) == cudaSuccess) {
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    }
    return sms;
  }();
  return n;
}

// Which kernel pass a chunk count is for: the forward and the backward may split T differently
// (each call lays out its own scratch; only the checkpoints, one per tile, outlive a call).
enum class Pass { kForward, kBackward };

int ChunksFor(int64_t batch, int64_t seqlen, int64_t dim, Pass pass) {
  const int64_t nJ = (seqlen + kTile - 1) / kTile;
  const int64_t nblk = (dim + kChPerBlock - 1) / kChPerBlock;
  int64_t k = g_chunks_override.load();
  if (k <= 0 && pass == Pass::kForward && batch * nblk >= 2 * NumSms()) {
    k = 1;  // the channels alone fill the machine: no chunk-local pass (a second exp pass)
  } else if (k <= 0) {
    // Enough blocks for about 16 per multiprocessor (several waves of 4 resident ones: the
    // chunk-local pass costs a fraction of a pass, idle multiprocessors cost more), chunks of
    // at least 4 tiles.
    const int64_t want = (16 * int64_t(NumSms()) + nblk * batch - 1) / (nblk * batch);
    k = std::min<int64_t>(want, std::max<int64_t>(1, nJ / 4));
  }
  return static_cast<int>(std::clamp<int64_t>(k, 1, std::max<int64_t>(1, nJ)));
}

// Lays out the checkpoints (at `ckpt_base`) and the scratch of one pass (at `scratch_base`, or
// right after the checkpoints when that is null); with ckpt_base == nullptr only computes the
// sizes.
struct WorkBytes {
  int64_t ckpt = 0, scratch = 0;
};
WorkBytes LayoutWork(const SelectiveScanParams& p, Pass pass, bool with_workspace,
                     char* ckpt_base, char* scratch_base, Work* w) {
  w->nJ = static_cast<int>((p.seqlen + kTile - 1) / kTile);
  // In-place state (final_state == initial_state) needs one chunk: the thread that reads a
  // channel's initial state is then the one that writes its final state.
  const bool in_place = p.final_state != nullptr && p.final_state == p.initial_state;
  w->K = with_workspace && !in_place ? ChunksFor(p.batch, p.seqlen, p.dim, pass) : 1;
  w->tiles_per_chunk = (w->nJ + w->K - 1) / w->K;
  w->K = (w->nJ + w->tiles_per_chunk - 1) / w->tiles_per_chunk;  // no empty chunks
  w->nblk = static_cast<int>((p.dim + kChPerBlock - 1) / kChPerBlock);
  const int64_t B = p.batch, K = w->K, Di = p.dim;
  WorkBytes bytes;
  bytes.ckpt = Align256(B * w->nJ * Di * kS * int64_t(sizeof(float)));
  w->ckpt = reinterpret_cast<float*>(ckpt_base);
  char* base = scratch_base != nullptr ? scratch_base
               : ckpt_base != nullptr  ? ckpt_base + bytes.ckpt
                                       : nullptr;
  int64_t off = 0;
  auto take = [&](int64_t floats) -> float* {
    float* ptr = base != nullptr ? reinterpret_cast<float*>(base + off) : nullptr;
    off += Align256(floats * int64_t(sizeof(float)));
    return ptr;
  };
  w->local_first = 1;
  w->seg_chunks = w->K;
  w->hloc = w->hdecay = w->gloc = w->gdecay = w->ginc = w->dbc_part = w->dA_part = w->dDb_part =
      nullptr;
  w->chain = nullptr;
  if (pass == Pass::kForward) {
    w->hloc = take(B * K * Di * kS);
    w->hdecay = take(B * K * Di * kS);
  } else {
    w->gloc = take(B * K * Di * kS);
    w->gdecay = take(B * K * Di * kS);
    w->ginc = take(B * K * Di * kS);
    w->chain = reinterpret_cast<int*>(take(B * K * w->nblk + 1));  // ints: the same 4 bytes
    w->dbc_part = take(B * p.seqlen * w->nblk * 2 * kS);
    w->dA_part = take(B * K * Di * kS);
    w->dDb_part = take(B * K * Di * 2);
  }
  bytes.scratch = off;
  return bytes;
}

absl::Status CheckAligned(const SelectiveScanParams& p) {
  if (Misaligned16(p.initial_state) || Misaligned16(p.final_state) || Misaligned16(p.workspace) ||
      Misaligned16(p.scratch)) {
    return absl::InvalidArgumentError(
        "selective scan CUDA: initial_state, final_state, workspace and scratch must be 16-byte "
        "aligned");
  }
  return absl::OkStatus();
}

// The kernels of one variant (scan_tuning.h).
struct Variant {
  int fwd_poly = 0;            // ScanForwardKernel kPoly
  int fwd_warps = 0;           // ScanForwardKernel kW; 0 = ForwardWarps()
  int bwd_seg = 8;             // ScanBackwardKernel kSeg
  bool bwd_store_exp = false;  // ScanBackwardKernel kStoreExp
  int bwd_min_blocks = 2;      // ScanBackwardKernel register cap: blocks per multiprocessor
  bool async = true;           // RawTile loads where the rows are aligned
  int single_pass = 0;         // one-pass forward: 0 where it applies and fills the GPU (4
                               // states per lane), 2 / 4 wherever it applies, −1 never
  bool bwd_bc_f32 = true;      // ScanBackwardKernel kBcF32 (asynchronous bf16 backward)
  int bwd_chain = 0;           // chained backward (ChainLength): 0 where chains fill the GPU,
                               // in segments of the chunks where the channel blocks alone do
                               // not; 1 one chain wherever K > 1; 2 segments of 2 chunks wherever
                               // K > 2; −1 never (two-pass)
  int wide = 0;                // wide chunked forward: 0 where the rows are aligned and the
                               // one-pass forward does not run, 1 wherever they are aligned,
                               // −1 never
};
Variant VariantOf(int n) {
  Variant v;  // 1, the default
  // 2–14 are the measurements from before the one-pass forward and the fp32 B/C backward tiles.
  if (n >= 2 && n <= 14) {
    v.single_pass = -1;
    v.bwd_bc_f32 = false;
    v.bwd_chain = -1;
    v.wide = -1;
  }
  switch (n) {
    case 2: v.async = false; break;
    case 4: v.async = false; v.bwd_store_exp = true; break;
    case 5: v.async = false; v.bwd_store_exp = true; v.bwd_min_blocks = 1; break;
    case 6: v.async = false; v.bwd_seg = 16; v.bwd_store_exp = true; v.bwd_min_blocks = 1; break;
    case 7: v.async = false; v.fwd_poly = 1; break;
    case 9: v.async = false; v.fwd_warps = 8; break;
    case 10: v.async = false; v.fwd_warps = 2; break;
    case 11: v.async = false; v.fwd_warps = 1; break;
    case 14: v.fwd_warps = 8; break;
    case 15:
      v.single_pass = 2;
      v.wide = -1;
      break;
    case 16:
      v.single_pass = 4;
      v.wide = -1;
      break;
    case 22: v.bwd_chain = -1; break;
    case 23: v.bwd_chain = 1; break;
    case 29:
      v.bwd_chain = 2;
      break;
    case 25:
      v.wide = -1;
      break;
    case 26:
      v.wide = 1;
      break;
    case 28:
      v.single_pass = 8;
      v.wide = -1;
      break;
    default: break;  // 1, 12
  }
  return v;
}

// Whether the forward runs the one-pass kernel: rows aligned for its copies, and (by default)
// enough channels to fill the GPU at 4 or 8 states per lane; variants 15, 16 and 28 force a
// layout.
bool UsesOnePass(const SelectiveScanParams& p, const Variant& v) {
  return v.single_pass >= 0 && single_pass::SinglePassApplies(p) &&
         (v.single_pass > 0 || single_pass::SinglePassStatesPerLane(p, NumSms()) > 0);
}

// Whether the forward runs the wide chunked kernel (a lane per channel): rows aligned for its
// copies and (by default) where the one-pass forward does not fill the GPU; variant 26 forces it
// wherever the rows are aligned.
bool UsesWide(const SelectiveScanParams& p, const Variant& v) {
  return v.wide >= 0 && single_pass::SinglePassApplies(p) && (v.wide > 0 || !UsesOnePass(p, v));
}

// The forward's chunk count: 0 for the one-pass forward; the wide forward's own (about two waves
// of resident blocks, at most the scratch's K) unless the chunks are overridden.
int ForwardChunksOf(const SelectiveScanParams& p, const Work& w, const Variant& v) {
  if (UsesWide(p, v)) {
    if (g_chunks_override.load() > 0) return w.K;
    const int k = wide::WideChunks(p.batch, p.seqlen, p.dim, NumSms(), w.K);
    const int tiles = (w.nJ + k - 1) / k;
    return (w.nJ + tiles - 1) / tiles;  // no empty chunks
  }
  return UsesOnePass(p, v) ? 0 : w.K;
}

// How many chunks each chain of the backward holds (each chunk hands its state gradient to the
// previous chunk's block, last chunk first), or 0 for no chains (the two-pass backward: a
// chunk-local gradient pass for every chunk, then the backward). A chain pays where the chains fill
// the GPU's 2 resident backward blocks per multiprocessor: a block's wait is then for one that
// started a wave earlier. Where the channel blocks alone do (B 4 at Di 5120), one chain of all K
// chunks; where they do not (B 1–2), the chunks are cut into segments that chain independently,
// and the chunk-local gradient pass runs only for the segments after the first, whose local
// gradients carry the gradient into each segment's last chunk; with fewer than 2 chunks a
// segment, the two-pass.
int ChainLength(const SelectiveScanParams& p, const Work& w, const Variant& v) {
  if (w.K <= 1 || v.bwd_chain < 0) return 0;
  // Only the current backward (8-token segments, exps recomputed, fp32 B/C tiles) is built chained.
  if (v.bwd_seg != 8 || v.bwd_store_exp || !v.bwd_bc_f32) return 0;
  if (v.bwd_chain == 1) return w.K;
  if (v.bwd_chain == 2) return w.K > 2 ? 2 : 0;
  const int64_t chains_per_segment = p.batch * w.nblk, want = 2 * int64_t(NumSms());
  const int64_t segments = (want + chains_per_segment - 1) / chains_per_segment;
  if (segments <= 1) return w.K;
  if (2 * segments > w.K) return 0;
  return static_cast<int>((w.K + segments - 1) / segments);  // the last segment may be shorter
}

// Warps per forward block: 8 when the grid has several blocks per multiprocessor, else fewer, so
// that every multiprocessor gets a share of the channels.
int ForwardWarps(int64_t batch, int64_t dim, int K) {
  const int64_t blocks8 = batch * K * ((dim + kChPerBlock - 1) / kChPerBlock);
  return blocks8 >= 2 * NumSms() ? 8 : blocks8 >= NumSms() ? 2 : 1;
}

template <typename E, int kW, bool kAsync>
constexpr int ForwardSmemBytes() {
  return 2 * kW * (kTile / 4) * kChPerWarp * kSdxPad * 16 + 2 * int(sizeof(BCTile<E>)) +
         (kAsync ? RawTile<E, kW, 3>::kBytes : 0);
}

template <typename E, bool kFinal, int kW, bool kAsync>
absl::Status LaunchForwardKernel(int poly, int chunks, const SelectiveScanParams& p,
                                 const Work& w, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.dim + kW * kChPerWarp - 1) / (kW * kChPerWarp)),
                  chunks, static_cast<unsigned>(p.batch));
  constexpr int kSmem = ForwardSmemBytes<E, kW, kAsync>();
  auto* kernel = poly == 1 ? ScanForwardKernel<E, kFinal, 1, kW, kAsync>
                           : ScanForwardKernel<E, kFinal, 0, kW, kAsync>;
  RWR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<grid, kW * 32, kSmem, stream>>>(p, w);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E, bool kFinal>
absl::Status LaunchForwardPass(int warps, bool async, int poly, int chunks,
                               const SelectiveScanParams& p, const Work& w, cudaStream_t stream) {
  if (async) {
    switch (warps) {
      case 1: return LaunchForwardKernel<E, kFinal, 1, true>(poly, chunks, p, w, stream);
      case 2: return LaunchForwardKernel<E, kFinal, 2, true>(poly, chunks, p, w, stream);
      default: return LaunchForwardKernel<E, kFinal, 8, true>(poly, chunks, p, w, stream);
    }
  }
  switch (warps) {
    case 1: return LaunchForwardKernel<E, kFinal, 1, false>(poly, chunks, p, w, stream);
    case 2: return LaunchForwardKernel<E, kFinal, 2, false>(poly, chunks, p, w, stream);
    default: return LaunchForwardKernel<E, kFinal, 8, false>(poly, chunks, p, w, stream);
  }
}

template <typename E>
absl::Status LaunchForward(const SelectiveScanParams& p, cudaStream_t stream) {
  Work w;
  LayoutWork(p, Pass::kForward, p.workspace != nullptr, static_cast<char*>(p.workspace),
             static_cast<char*>(p.scratch), &w);
  const Variant v = VariantOf(g_variant.load());
  if (UsesWide(p, v)) {
    wide::Chunks chunks;
    chunks.K = ForwardChunksOf(p, w, v);
    chunks.tiles_per_chunk = (w.nJ + chunks.K - 1) / chunks.K;
    chunks.ckpt = w.ckpt;
    chunks.hloc = w.hloc;  // sized for w.K ≥ chunks.K
    chunks.hdecay = w.hdecay;
    return wide::LaunchWide(p, chunks, stream);
  }
  if (UsesOnePass(p, v)) {
    const int spl =
        v.single_pass > 0 ? v.single_pass : single_pass::SinglePassStatesPerLane(p, NumSms());
    return single_pass::LaunchSinglePass(p, w.ckpt, spl, stream);
  }
  const int warps = v.fwd_warps > 0 ? v.fwd_warps : ForwardWarps(p.batch, p.dim, w.K);
  const size_t elem = sizeof(E);
  const bool async = v.async && RowsAligned(p.x, p.x_strides, p.dim, elem) &&
                     RowsAligned(p.delta, p.delta_strides, p.dim, elem) &&
                     RowsAligned(p.z, p.z_strides, p.dim, elem);
  if (w.K > 1) {
    const absl::Status local =
        LaunchForwardPass<E, false>(warps, async, v.fwd_poly, w.K - 1, p, w, stream);
    RWR_RETURN_IF_ERROR(local);
  }
  return LaunchForwardPass<E, true>(warps, async, v.fwd_poly, w.K, p, w, stream);
}

template <typename E, int kMinBlocks, int kSeg, bool kStoreExp, bool kAsync = false,
          bool kBcF32 = false, bool kChained = false>
absl::Status LaunchBackwardKernel(dim3 grid, const SelectiveScanParams& p,
                                  const SelectiveScanGrads& g, const Work& w,
                                  cudaStream_t stream) {
  auto* kernel = ScanBackwardKernel<E, kMinBlocks, kSeg, kStoreExp, kAsync, kBcF32, kChained>;
  constexpr int kSmem = kBackwardSmem + (kAsync ? RawTile<E, kWarps, 4>::kBytes : 0);
  RWR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<grid, kThreads, kSmem, stream>>>(p, g, w);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E, bool kAsync>
absl::Status LaunchChunkGradKernel(dim3 grid, const SelectiveScanParams& p,
                                   const SelectiveScanGrads& g, const Work& w,
                                   cudaStream_t stream) {
  auto* kernel = ScanChunkGradKernel<E, kAsync>;
  constexpr int kSmem = ForwardSmemBytes<E, kWarps, kAsync>();  // the same tiles
  RWR_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
  kernel<<<grid, kThreads, kSmem, stream>>>(p, g, w);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

template <typename E>
absl::Status LaunchBackward(const SelectiveScanParams& p, const SelectiveScanGrads& g,
                            cudaStream_t stream) {
  Work w;
  LayoutWork(p, Pass::kBackward, true, static_cast<char*>(p.workspace),
             static_cast<char*>(p.scratch), &w);
  const unsigned nb = static_cast<unsigned>(p.batch);
  const Variant v = VariantOf(g_variant.load());
  const size_t elem = sizeof(E);
  const bool async = v.async && RowsAligned(p.x, p.x_strides, p.dim, elem) &&
                     RowsAligned(p.delta, p.delta_strides, p.dim, elem) &&
                     RowsAligned(p.z, p.z_strides, p.dim, elem) &&
                     RowsAligned(g.dout, g.dout_strides, p.dim, elem);
  const int chain_len = ChainLength(p, w, v);
  const bool chained = chain_len > 0;
  if (chained) {
    w.seg_chunks = chain_len;
    w.local_first = chain_len;  // the chunks past the first segment
    // The published flags and the ticket start at zero.
    RWR_CUDA(cudaMemsetAsync(w.chain, 0, (p.batch * w.K * w.nblk + 1) * sizeof(int), stream));
  }
  if (w.local_first < w.K) {
    const dim3 local_grid(w.nblk, w.K - w.local_first, nb);
    const absl::Status local = async ? LaunchChunkGradKernel<E, true>(local_grid, p, g, w, stream)
                                     : LaunchChunkGradKernel<E, false>(local_grid, p, g, w, stream);
    RWR_RETURN_IF_ERROR(local);
  }
  const dim3 grid(w.nblk, w.K, nb);
  // The asynchronous backward keeps 2 blocks per multiprocessor only with bf16 tiles (fp32 ones
  // need 8 KB more shared memory per block than fits).
  const bool bwd_async = async && std::is_same_v<E, __nv_bfloat16> && v.bwd_seg == 8 &&
                         !v.bwd_store_exp;
  const absl::Status st =
      chained && bwd_async
          ? LaunchBackwardKernel<E, 2, 8, false, true, true, true>(grid, p, g, w, stream)
      : chained ? LaunchBackwardKernel<E, 2, 8, false, false, false, true>(grid, p, g, w, stream)
      : v.bwd_seg == 16        ? LaunchBackwardKernel<E, 1, 16, true>(grid, p, g, w, stream)
      : bwd_async && v.bwd_bc_f32
          ? LaunchBackwardKernel<E, 2, 8, false, true, true>(grid, p, g, w, stream)
      : bwd_async              ? LaunchBackwardKernel<E, 2, 8, false, true>(grid, p, g, w, stream)
      : !v.bwd_store_exp       ? LaunchBackwardKernel<E, 2, 8, false>(grid, p, g, w, stream)
      : v.bwd_min_blocks == 1  ? LaunchBackwardKernel<E, 1, 8, true>(grid, p, g, w, stream)
                               : LaunchBackwardKernel<E, 2, 8, true>(grid, p, g, w, stream);
  RWR_RETURN_IF_ERROR(st);
  const int64_t rows = p.batch * p.seqlen;
  ReduceBCKernel<E><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(p, g, w);
  RWR_CUDA_LAUNCH();
  ReduceParamsKernel<<<static_cast<unsigned>((p.dim * kS + 255) / 256), 256, 0, stream>>>(p, g, w);
  RWR_CUDA_LAUNCH();
  return absl::OkStatus();
}

}  // namespace

void SetScanChunksOverride(int chunks) { g_chunks_override.store(chunks); }
void SetScanVariant(int variant) { g_variant.store(variant); }
int ScanChunks(int64_t batch, int64_t seqlen, int64_t dim, bool backward) {
  return ChunksFor(batch, seqlen, dim, backward ? Pass::kBackward : Pass::kForward);
}
bool ScanForwardIsOnePass(const SelectiveScanParams& params) {
  const Variant v = VariantOf(g_variant.load());
  return UsesOnePass(params, v) && !UsesWide(params, v);
}
bool ScanForwardIsWide(const SelectiveScanParams& params) {
  return UsesWide(params, VariantOf(g_variant.load()));
}
int ScanForwardChunks(const SelectiveScanParams& params) {
  Work w;
  LayoutWork(params, Pass::kForward, true, nullptr, nullptr, &w);
  return ForwardChunksOf(params, w, VariantOf(g_variant.load()));
}
int ScanBackwardChains(const SelectiveScanParams& params) {
  Work w;
  LayoutWork(params, Pass::kBackward, true, nullptr, nullptr, &w);
  const int len = ChainLength(params, w, VariantOf(g_variant.load()));
  return len > 0 ? (w.K + len - 1) / len : 0;
}

bool HaveCuda() { return true; }

namespace {
// The checkpoints, and the larger of the two passes' scratch.
WorkBytes SizesFor(const SelectiveScanParams& p) {
  if (p.batch <= 0 || p.seqlen <= 0 || p.dim <= 0) return {};
  Work w;
  const WorkBytes f = LayoutWork(p, Pass::kForward, true, nullptr, nullptr, &w);
  const WorkBytes b = LayoutWork(p, Pass::kBackward, true, nullptr, nullptr, &w);
  return {f.ckpt, std::max(f.scratch, b.scratch)};
}
}  // namespace

int64_t CheckpointBytes(const SelectiveScanParams& p) { return SizesFor(p).ckpt; }
int64_t ScratchBytes(const SelectiveScanParams& p) { return SizesFor(p).scratch; }
int64_t WorkspaceBytes(const SelectiveScanParams& p) {
  const WorkBytes b = SizesFor(p);
  return b.ckpt + b.scratch;
}

absl::Status Forward(const SelectiveScanParams& p, CUstream_st* stream) {
  RWR_RETURN_IF_ERROR(CanImplement(p, Backend::kCuda));
  RWR_RETURN_IF_ERROR(CheckAligned(p));
  return p.dtype == DType::kBF16 ? LaunchForward<__nv_bfloat16>(p, stream)
                                 : LaunchForward<float>(p, stream);
}

absl::Status Backward(const SelectiveScanParams& p, const SelectiveScanGrads& g,
                      CUstream_st* stream) {
  RWR_RETURN_IF_ERROR(CanImplement(p, g, Backend::kCuda));
  RWR_RETURN_IF_ERROR(CheckAligned(p));
  if (p.workspace == nullptr) {
    return absl::InvalidArgumentError(
        "selective scan CUDA backward: needs the workspace its Forward filled (WorkspaceBytes)");
  }
  if (device::Misaligned16(g.dfinal_state) || device::Misaligned16(g.dinitial_state)) {
    return absl::InvalidArgumentError(
        "selective scan CUDA backward: dfinal_state and dinitial_state must be 16-byte aligned");
  }
  return p.dtype == DType::kBF16 ? LaunchBackward<__nv_bfloat16>(p, g, stream)
                                 : LaunchBackward<float>(p, g, stream);
}

}  // namespace rwr::scan
