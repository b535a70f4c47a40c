// Selective scan (Mamba-1 S6), forward and backward: the CPU reference (fp32 data, fp64
// accumulation) and the CUDA kernels (sm_90). Knows nothing of the model.
//
//   Δ_t    = softplus(Δraw_t + bias)            (bias optional, softplus optional)
//   h_t    = exp(Δ_t·A)·h_{t−1} + Δ_t·B_t·x_t   per channel d and state s; h_{−1} = initial state
//   y_t    = Σ_s C_t[s]·h_t[s] + D·x_t          (D optional)
//   out_t  = y_t·SiLU(z_t)                      (gate z optional)
//
// A reset mark at token t (document start in a packed sample) zeroes the carried state before
// token t, so h_t = Δ_t·B_t·x_t there and no gradient flows back across it.
//
// Layout is token-major. Per-token tensors have a contiguous innermost dimension (channel for
// x/Δ/z/out, state for B/C) and explicit batch and token strides in elements, so B and C may be
// slices of a wider [B, T, R + 2S] row.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*; keeps this header free of CUDA includes.

namespace rwr::scan {

// Element type of the per-token tensors (x, Δ, z, B, C, out and their gradients). A, D, Δ bias,
// states and their gradients are always fp32. The CPU reference takes kF32 only; CUDA takes both.
enum class DType : uint8_t { kF32, kBF16 };

enum class Backend : uint8_t { kCpu, kCuda };

// Strides in elements of a [B, T, inner] tensor whose inner dimension is contiguous.
struct TokenStrides {
  int64_t batch = 0;
  int64_t token = 0;
};

struct SelectiveScanParams {
  int64_t batch = 0;   // B
  int64_t seqlen = 0;  // T
  int64_t dim = 0;     // Di
  int64_t dstate = 0;  // S
  DType dtype = DType::kF32;

  const void* x = nullptr;  // (B, T, Di)
  TokenStrides x_strides;
  const void* delta = nullptr;  // (B, T, Di) Δraw, before bias and softplus
  TokenStrides delta_strides;
  const float* A = nullptr;  // (Di, S) contiguous; A = −exp(A_log), negative for a decaying state
  const void* B = nullptr;   // (B, T, S)
  TokenStrides B_strides;
  const void* C = nullptr;  // (B, T, S)
  TokenStrides C_strides;
  const float* D = nullptr;  // (Di) optional skip weight
  const void* z = nullptr;   // (B, T, Di) optional gate
  TokenStrides z_strides;
  const float* delta_bias = nullptr;  // (Di) optional
  bool delta_softplus = false;
  const uint8_t* resets = nullptr;  // (B, T) optional; nonzero at t: state zeroed before token t
  int64_t resets_batch_stride = 0;  // token stride is 1
  const float* initial_state = nullptr;  // (B, Di, S) contiguous, optional (zeros when null)
  float* final_state = nullptr;          // (B, Di, S) contiguous, optional output; may alias
                                         // initial_state (in-place state update)

  void* out = nullptr;  // (B, T, Di)
  TokenStrides out_strides;

  // CUDA only: device buffer, 256-byte aligned. Forward stores a checkpoint of the state every
  // 16 tokens there; Backward reads them, so the same workspace, unmodified, must be passed to
  // the Backward of the same inputs. It needs CheckpointBytes(params) when `scratch` is set,
  // else WorkspaceBytes(params) (the scratch then follows the checkpoints). Ignored by the CPU
  // reference.
  void* workspace = nullptr;
  // CUDA only, optional: ScratchBytes(params) bytes, 256-byte aligned, for what lives within one
  // call (chunk carries, gradient partials). Nothing is kept there between calls, so one scratch
  // can serve every layer of a model while each layer keeps its own checkpoints.
  void* scratch = nullptr;
  // CUDA Step only: the next kernel in the stream is a programmatic dependent launch that waits
  // for this one (griddepcontrol.wait) and may start before it ends. Only where it is known to
  // wait: a kernel launched so that does not would read what this one has not yet written.
  bool let_next_start = false;
};

// Gradients. Every gradient is written (overwritten), never accumulated into.
struct SelectiveScanGrads {
  const void* dout = nullptr;  // (B, T, Di) gradient of out
  TokenStrides dout_strides;
  const float* dfinal_state = nullptr;  // (B, Di, S) optional gradient of final_state

  void* dx = nullptr;  // (B, T, Di)
  TokenStrides dx_strides;
  void* ddelta = nullptr;  // (B, T, Di) gradient of Δraw
  TokenStrides ddelta_strides;
  float* dA = nullptr;  // (Di, S)
  void* dB = nullptr;   // (B, T, S)
  TokenStrides dB_strides;
  void* dC = nullptr;  // (B, T, S)
  TokenStrides dC_strides;
  float* dD = nullptr;               // (Di), required when D is set
  void* dz = nullptr;                // (B, T, Di), required when z is set
  TokenStrides dz_strides;
  float* ddelta_bias = nullptr;      // (Di), required when delta_bias is set
  float* dinitial_state = nullptr;   // (B, Di, S) optional
  // Optional: the forward output (what Forward writes to params.out), which the backward
  // recomputes anyway — for a caller that needs it (the out_proj weight gradient) and did not
  // keep it. params.out is not written.
  void* out = nullptr;  // (B, T, Di)
  TokenStrides out_strides;
};

// The one place that says which shapes, dtypes and flags a backend supports. CPU: fp32, S <= 256.
// CUDA: fp32 or bf16, S = 16; states and workspace 16-byte aligned (cudaMalloc'd is fine). All
// CUDA results are bitwise reproducible run to run (no atomics).
absl::Status CanImplement(const SelectiveScanParams& params, Backend backend);
absl::Status CanImplement(const SelectiveScanParams& params, const SelectiveScanGrads& grads,
                          Backend backend);

// CPU reference: fp32 in/out, fp64 accumulation. Pointers are host memory.
absl::Status ForwardCpu(const SelectiveScanParams& params);
absl::Status BackwardCpu(const SelectiveScanParams& params, const SelectiveScanGrads& grads);

// CUDA (device pointers). Without CUDA in the build these return Unimplemented.
// Bytes Forward/Backward need for these sizes (0 when CUDA is not built): the checkpoints kept
// from Forward to Backward, the per-call scratch, and both together (a workspace without a
// separate scratch).
int64_t CheckpointBytes(const SelectiveScanParams& params);
int64_t ScratchBytes(const SelectiveScanParams& params);
int64_t WorkspaceBytes(const SelectiveScanParams& params);
absl::Status Forward(const SelectiveScanParams& params, CUstream_st* stream);
absl::Status Backward(const SelectiveScanParams& params, const SelectiveScanGrads& grads,
                      CUstream_st* stream);

// Single-token step for generation: params.seqlen must be 1, initial_state and final_state both
// set (they may be the same buffer: the state is updated in place). No workspace needed.
absl::Status StepCpu(const SelectiveScanParams& params);
absl::Status Step(const SelectiveScanParams& params, CUstream_st* stream);

// True when this build has the CUDA kernels.
bool HaveCuda();

}  // namespace rwr::scan
