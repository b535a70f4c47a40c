// Launchers for the small CUDA kernels of the GPU Mamba LM (trainer/mamba_cuda.cc): embedding,
// RMSNorm, residual add, A = −exp(A_log), row gather/scatter, cross-entropy over vocab rows,
// AdamW, sum of squares. C++17 and plain pointers, so the .cu file needs nothing of the trainer.
// Every launcher enqueues on `stream` and returns the launch error as a Status.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

struct CUstream_st;

namespace rwr::trainer::cuda {

using Stream = CUstream_st*;

absl::Status Embed(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc, int64_t rows,
                   const float* emb, float* h, int64_t D, Stream stream);
absl::Status EmbedBackward(const int32_t* tokens, int64_t T, int64_t t0, int64_t Tc, int64_t rows,
                           const float* dh, float* demb, int64_t D, Stream stream);
absl::Status RmsNorm(const float* x, const float* w, float* y, float* rstd, int64_t rows, int64_t D,
                     float eps, Stream stream);
absl::Status RmsNormBackward(const float* x, const float* w, const float* rstd, const float* dy,
                             float* dx, float* dw, int64_t rows, int64_t D, Stream stream);
absl::Status Add(float* a, const float* b, int64_t n, Stream stream);
absl::Status NegExp(const float* a, float* out, int64_t n, Stream stream);
absl::Status ALogGrad(const float* dA, const float* A, float* g, int64_t n, Stream stream);
absl::Status GatherRows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t D,
                        Stream stream);
absl::Status ScatterRows(const float* src, const int32_t* rows, float* dst, int64_t n, int64_t D,
                         Stream stream);
absl::Status CrossEntropy(float* logits, int64_t rows, int64_t V, const int32_t* targets,
                          const uint8_t* weight, float* loss, float scale, bool grad,
                          Stream stream);
absl::Status AdamW(float* p, const float* g, float* m, float* v, const uint8_t* decay, int64_t n,
                   float b1, float b2, float step_size, float decay_factor, float inv_bc2_sqrt,
                   float eps, float grad_scale, Stream stream);
absl::Status SumSquares(const float* g, int64_t n, double* out, Stream stream);

}  // namespace rwr::trainer::cuda
