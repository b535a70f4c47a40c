// A block's raw tile of the per-token scan inputs, copied into shared memory by cp.async: the
// Δ, x, z rows of the block's kCh channels and the token's B and C, 16 tokens per tile. Used by
// the one-pass forward (selective_scan_single_pass.cu) and the wide chunked forward
// (selective_scan_wide.cu); both need every row 16-byte aligned (RowsAligned). Internal to
// scan_kernels/.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_elements.cuh"
#include "scan_kernels/scan_device.cuh"
#include "scan_kernels/selective_scan.h"

namespace rwr::scan::device {

// One stage: Δ, x, z as [token][kCh] rows, then B and C as [token][S].
template <typename E, int kCh>
struct RawStage {
  static constexpr int kVec = 16 / int(sizeof(E));  // elements per 16-byte copy
  static constexpr int kRowBytes = kCh * int(sizeof(E));
  static constexpr int kStreamBytes = kTile * kRowBytes;
  static constexpr int kBCStreamBytes = kTile * kS * int(sizeof(E));
  static constexpr int kBytes = 3 * kStreamBytes + 2 * kBCStreamBytes;
  // Copies per stage: Δ, x, z rows, then B and C rows.
  static constexpr int kRowCopies = kTile * (kCh / kVec);
  static constexpr int kBCCopies = kTile * (kS / kVec);
  static constexpr int kCopies = 3 * kRowCopies + 2 * kBCCopies;
  static_assert(kRowBytes % 16 == 0, "a channel row of the block is whole 16-byte copies");
  static_assert(kBytes % 16 == 0, "stages stay 16-byte aligned");

  // Stream 0 Δ, 1 x, 2 z at (token, channel within the block).
  static __device__ __forceinline__ float At(const char* stage, int stream, int tok, int col) {
    return cuda_elements::ToFloat<E>(*reinterpret_cast<const E*>(
        stage + stream * kStreamBytes + tok * kRowBytes + col * int(sizeof(E))));
  }
  // Token tok's B (which 0) or C (1) row.
  static __device__ __forceinline__ const E* BC(const char* stage, int which, int tok) {
    return reinterpret_cast<const E*>(stage + 3 * kStreamBytes + which * kBCStreamBytes) + tok * kS;
  }
};

// This thread's share of every tile's copies, worked out once: the copies a thread issues are the
// same for every tile, only 16 tokens further on (recomputing the 64-bit addresses per tile cost
// ~7 instructions per token and lane, ncu on the first one-pass version).
template <typename E, int kCh, int kThr>
struct TileCopies {
  using Stage = RawStage<E, kCh>;
  static constexpr int kPer = (Stage::kCopies + kThr - 1) / kThr;
  static constexpr int kNever = 1 << 30;  // tok of a copy whose columns are past Di
  const char* src[kPer];                  // the copy's source in the next tile to issue
  int64_t step[kPer];  // bytes from one tile's source to the next (16 token strides)
  int dst[kPer];       // byte offset in a stage; −1: this thread has no such copy
  int tok[kPer];       // token within the tile (kNever: always zero-filled)

  // The copies of batch row b, channels d0.., starting at the first tile.
  __device__ __forceinline__ void Init(const SelectiveScanParams& p, int64_t b, int64_t d0) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int c = threadIdx.x + k * kThr;
      const void* base;
      TokenStrides st;
      int64_t col;                      // element offset within the token row
      if (c < 3 * Stage::kRowCopies) {  // Δ, x, z: kCh channels of one token per row
        const int sidx = c / Stage::kRowCopies, r = c % Stage::kRowCopies;
        tok[k] = r / (kCh / Stage::kVec);
        const int part = r % (kCh / Stage::kVec);
        base = sidx == 0 ? p.delta : sidx == 1 ? p.x : p.z;
        st = sidx == 0 ? p.delta_strides : sidx == 1 ? p.x_strides : p.z_strides;
        col = d0 + part * Stage::kVec;
        dst[k] = sidx * Stage::kStreamBytes + tok[k] * Stage::kRowBytes + part * 16;
      } else {  // B, C: the S values of one token
        const int r0 = c - 3 * Stage::kRowCopies;
        const int sidx = r0 / Stage::kBCCopies, r = r0 % Stage::kBCCopies;
        tok[k] = r / (kS / Stage::kVec);
        const int part = r % (kS / Stage::kVec);
        base = sidx == 0 ? p.B : p.C;
        st = sidx == 0 ? p.B_strides : p.C_strides;
        col = part * Stage::kVec;
        dst[k] = 3 * Stage::kStreamBytes + sidx * Stage::kBCStreamBytes +
                 tok[k] * (kS * int(sizeof(E))) + part * 16;
      }
      // No z (no gate): nothing to copy, nobody reads it.
      if (c >= Stage::kCopies || base == nullptr) dst[k] = -1;
      const bool inside = c < 3 * Stage::kRowCopies ? col < p.dim : true;
      if (!inside) tok[k] = kNever;
      src[k] = reinterpret_cast<const char*>(
          static_cast<const E*>(base != nullptr ? base : p.x) +
          (inside && base != nullptr ? b * st.batch + tok[k] * st.token + col : 0));
      step[k] = inside ? kTile * st.token * int64_t(sizeof(E)) : 0;
    }
  }
  // Issues the copies of the tile at t0 (the next one in order) and commits them as a group.
  // Copies past T are zero-filled, read from the row base of x (a valid address; nothing is read).
  __device__ __forceinline__ void Issue(char* stage, int64_t t0, int64_t T, const void* x) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      if (dst[k] >= 0) {
        const bool valid = t0 + tok[k] < T;
        CpAsync16(stage + dst[k], valid ? src[k] : x, valid);
        src[k] += step[k];
      }
    }
    CpAsyncCommit();
  }
};

// The same copies with nothing kept between tiles, stream by stream (each stream's base and
// strides are then known where the copy is written): each tile's addresses are worked out again,
// a few integer instructions per copy, for a kernel whose registers are better spent on its
// states (the wide forward: 16 per lane). Issues the tile at t0 of batch row b, channels d0..,
// and commits it as a group.
template <typename E, int kCh, int kThr>
__device__ __forceinline__ void IssueTile(char* stage, const SelectiveScanParams& p, int64_t b,
                                          int64_t d0, int64_t t0, bool with_z) {
  using Stage = RawStage<E, kCh>;
  constexpr int kPerRow = kCh / Stage::kVec;  // copies per token row of a channel stream
  const auto rows = [&](int sidx, const void* base, const TokenStrides& st) {
#pragma unroll
    for (int k = 0; k < (Stage::kRowCopies + kThr - 1) / kThr; ++k) {
      const int c = threadIdx.x + k * kThr;
      if (Stage::kRowCopies % kThr != 0 && c >= Stage::kRowCopies) break;
      const int tok = c / kPerRow, part = c % kPerRow;
      const int64_t col = d0 + part * Stage::kVec, t = t0 + tok;
      const bool valid = col < p.dim && t < p.seqlen;
      const E* src = static_cast<const E*>(base) + (valid ? b * st.batch + t * st.token + col : 0);
      CpAsync16(stage + sidx * Stage::kStreamBytes + tok * Stage::kRowBytes + part * 16, src,
                valid);
    }
  };
  const auto bc = [&](int sidx, const void* base, const TokenStrides& st) {
    constexpr int kPerTok = kS / Stage::kVec;
#pragma unroll
    for (int k = 0; k < (Stage::kBCCopies + kThr - 1) / kThr; ++k) {
      const int c = threadIdx.x + k * kThr;
      if (c >= Stage::kBCCopies) break;
      const int tok = c / kPerTok, part = c % kPerTok;
      const int64_t t = t0 + tok;
      const bool valid = t < p.seqlen;
      const E* src = static_cast<const E*>(base) +
                     (valid ? b * st.batch + t * st.token + part * Stage::kVec : 0);
      CpAsync16(stage + 3 * Stage::kStreamBytes + sidx * Stage::kBCStreamBytes +
                    tok * (kS * int(sizeof(E))) + part * 16,
                src, valid);
    }
  };
  rows(0, p.delta, p.delta_strides);
  rows(1, p.x, p.x_strides);
  if (with_z && p.z != nullptr) rows(2, p.z, p.z_strides);  // no z: nobody reads it
  bc(0, p.B, p.B_strides);
  bc(1, p.C, p.C_strides);
  CpAsyncCommit();
}

}  // namespace rwr::scan::device
