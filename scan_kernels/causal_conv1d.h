// Causal depthwise conv1d (Mamba-1 mixer, width 2–4), forward and backward, with fused bias and
// SiLU, document resets and carried state: the CPU reference (fp32 data, fp64 accumulation) and
// the CUDA kernels (sm_90). Knows nothing of the model.
//
//   pre_t[d] = bias[d] + Σ_{k=0}^{W−1} weight[d, k]·x_{t−(W−1)+k}[d]
//   out_t[d] = silu ? SiLU(pre_t[d]) : pre_t[d]
//
// x_u for u < 0 comes from the initial state (zeros when none). A reset mark at token t starts a
// new document: inputs before t are zero for tokens t, t+1, ... (the window never crosses a
// document start). The final state holds the last W−1 inputs with the same masking, so the next
// chunk of a long sample continues exactly.
//
// Layout is token-major: x and out are (B, T, Di) with a contiguous channel dimension and
// explicit batch and token strides in elements.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "scan_kernels/selective_scan.h"  // DType, Backend, TokenStrides

namespace rwr::scan {

struct CausalConv1dParams {
  int64_t batch = 0;   // B
  int64_t seqlen = 0;  // T
  int64_t dim = 0;     // Di
  int64_t width = 4;   // W, 2..4
  DType dtype = DType::kF32;  // of x, out, dx and dout

  const void* x = nullptr;  // (B, T, Di)
  TokenStrides x_strides;
  const float* weight = nullptr;  // (Di, W) contiguous; weight[d, W−1] multiplies the current token
  const float* bias = nullptr;    // (Di) optional
  bool silu = true;
  const uint8_t* resets = nullptr;  // (B, T) optional; nonzero at t: document starts at token t
  int64_t resets_batch_stride = 0;  // token stride is 1
  const float* initial_state = nullptr;  // (B, Di, W−1) contiguous, oldest first; optional
  float* final_state = nullptr;          // (B, Di, W−1) contiguous, optional output; may alias
                                         // initial_state (in-place update; on CUDA only for
                                         // seqlen <= 64, e.g. the single-token step)

  void* out = nullptr;  // (B, T, Di)
  TokenStrides out_strides;

  // CUDA Backward only: device scratch of ConvWorkspaceBytes(params) bytes, 256-byte aligned,
  // for the fixed-order dweight/dbias reduction. Ignored elsewhere.
  void* workspace = nullptr;
  // CUDA Step only: as SelectiveScanParams::let_next_start.
  bool let_next_start = false;
};

// Gradients. Every gradient is written (overwritten), never accumulated into.
struct CausalConv1dGrads {
  const void* dout = nullptr;  // (B, T, Di)
  TokenStrides dout_strides;
  const float* dfinal_state = nullptr;  // (B, Di, W−1) optional

  void* dx = nullptr;  // (B, T, Di)
  TokenStrides dx_strides;
  float* dweight = nullptr;         // (Di, W)
  float* dbias = nullptr;           // (Di), required when bias is set
  float* dinitial_state = nullptr;  // (B, Di, W−1) optional
};

absl::Status CanImplement(const CausalConv1dParams& params, Backend backend);
absl::Status CanImplement(const CausalConv1dParams& params, const CausalConv1dGrads& grads,
                          Backend backend);

// CPU reference: fp32 in/out, fp64 accumulation. Pointers are host memory.
absl::Status ForwardCpu(const CausalConv1dParams& params);
absl::Status BackwardCpu(const CausalConv1dParams& params, const CausalConv1dGrads& grads);

// CUDA (device pointers); Unimplemented without CUDA in the build.
int64_t ConvWorkspaceBytes(const CausalConv1dParams& params);
absl::Status Forward(const CausalConv1dParams& params, CUstream_st* stream);
absl::Status Backward(const CausalConv1dParams& params, const CausalConv1dGrads& grads,
                      CUstream_st* stream);

// Single-token step for generation: params.seqlen must be 1, initial_state and final_state set
// (may be the same buffer).
absl::Status StepCpu(const CausalConv1dParams& params);
absl::Status Step(const CausalConv1dParams& params, CUstream_st* stream);

}  // namespace rwr::scan
