// Launchers for the small CUDA kernels of the GPU Mamba LM (trainer/mamba_cuda.cc): embedding,
// RMSNorm, A = −exp(A_log), row gather/scatter, cross-entropy over vocab rows, AdamW, sum of
// squares. C++17 and plain pointers, so the .cu file needs nothing of the trainer. Every launcher
// enqueues on `stream` and returns the launch error as a Status.
//
// Activations (`void*` below) are fp32 or bf16 (`Act`); the residual stream, its gradient, norm
// statistics and every parameter, gradient and moment are fp32. Every reduction has a fixed order
// (no float atomics), so the same inputs give the same bits run to run.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

struct CUstream_st;

namespace rwr::trainer::cuda {

using Stream = CUstream_st*;

enum class Act : uint8_t { kF32, kBF16 };
inline int64_t ActBytes(Act act) { return act == Act::kF32 ? 4 : 2; }

// h (B·Tc, D) = emb[tokens[b, t0 + t]]
absl::Status Embed(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc, int64_t rows,
                   const float* emb, float* h, int64_t D, Stream stream);
// demb[ids[i]] += Σ_{k in [offsets[i], offsets[i+1])} dh[rows[k]] for each of `n` distinct ids,
// rows summed in the order given (the host sorts them), so the result is reproducible.
absl::Status EmbedBackward(const int32_t* ids, const int32_t* offsets, const int32_t* rows,
                           int64_t n, const float* dh, float* demb, int64_t D, Stream stream);

// y (rows, D) = x·rstd·w in `act`; rstd (rows) = 1/sqrt(mean(x²) + eps). x_copy, when set,
// receives a copy of x (a layer keeping its input for the backward: one read of x for both).
// let_next_start: the next kernel is a programmatic dependent launch that waits for this one
// (common/cuda_dependent_launch.cuh) and may start before it ends — only where it is known to
// wait (a kernel launched so that does not wait would read what this one has not yet written).
absl::Status RmsNorm(const float* x, const float* w, void* y, Act act, float* rstd, int64_t rows,
                     int64_t D, float eps, Stream stream, float* x_copy = nullptr,
                     bool let_next_start = false);

// Scratch floats RmsNormBackward needs for the weight-gradient partials.
int64_t RmsNormBackwardScratch(int64_t rows, int64_t D);
// dx += RMSNorm backward of dy (fp32); dw (+)= Σ_rows dy·x·rstd (per-block partials in `scratch`,
// summed in block order; added to dw where dw_add, else overwriting it); dx_act, when set,
// receives the updated dx converted to `act`.
absl::Status RmsNormBackward(const float* x, const float* w, const float* rstd, const float* dy,
                             float* dx, void* dx_act, Act act, float* dw, bool dw_add,
                             float* scratch, int64_t rows, int64_t D, Stream stream);

// out = add ? out + v : v. (A gradient's first writer overwrites: nothing clears the gradients.)
absl::Status Accumulate(float* out, const float* v, int64_t n, bool add, Stream stream);
absl::Status NegExp(const float* a, float* out, int64_t n, Stream stream);
// g (+)= dA·A: the gradient of A_log where A = −exp(A_log).
absl::Status ALogGrad(const float* dA, const float* A, float* g, int64_t n, bool add,
                      Stream stream);
// bf16 copy of fp32 values (the GEMM weights of the bf16 path).
absl::Status ToBf16(const float* src, void* dst, int64_t n, Stream stream);

// dst row r = src row rows[r] (activations); ScatterRows: dst row rows[r] = src row r (fp32).
// let_next_start as for RmsNorm.
absl::Status GatherRows(const void* src, const int32_t* rows, void* dst, Act act, int64_t n,
                        int64_t D, Stream stream, bool let_next_start = false);
absl::Status ScatterRows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t D,
                         Stream stream);

// One row of fp32 logits (V) per target: loss[r] = lse − z[target] where weight[r] is 1, else 0.
// With `grad` set, grad row r = (softmax − onehot)·scale (zeros where weight is 0), in `act`;
// grad may alias logits when act is fp32.
absl::Status CrossEntropy(const float* logits, int64_t rows, int64_t V, const int32_t* targets,
                          const uint8_t* weight, float* loss, float scale, void* grad, Act act,
                          Stream stream);

// One AdamW step over n fp32 parameters; bit i of `decay` says whether parameter i takes weight
// decay; p16, when set, receives the updated values in bf16.
absl::Status AdamW(float* p, void* p16, const float* g, float* m, float* v, const uint32_t* decay,
                   int64_t n, float b1, float b2, float step_size, float decay_factor,
                   float inv_bc2_sqrt, float eps, float grad_scale, Stream stream);

// Scratch doubles SumSquares needs.
int64_t SumSquaresScratch();
// *out = Σ g² in fp64, fixed-order (per-block partials, then one block sums them).
absl::Status SumSquares(const float* g, int64_t n, double* scratch, double* out, Stream stream);

}  // namespace rwr::trainer::cuda
