// The trainer's GEMMs through cuBLASLt, with each shape's algorithm picked by timing: the first
// call of a shape times cuBLASLt's heuristic candidates for it on the call's own operands and
// keeps the fastest (the GEMMs of a 2048 × 4 Mamba-2.8B step on an H200: 196.1 ms with
// cublasGemmEx's default algorithm, 187.0 ms so; bench/gemm_bench shows it per shape). D keeps
// its meaning through the tuning: an accumulating call's D is saved to the host first and put
// back before the real call.
//
// Deterministic: a chosen algorithm gives the same bits every call (candidates whose split-K adds
// its parts into D in place are not asked for), and a process times each shape once — every
// runner in it (a second model, a run resumed in the same process) takes that choice. A new
// process may pick differently between near-equal candidates, so the choices can be exported and
// adopted (GemmChoices, kept by `rwr train` in the run directory).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/gemm_choices.h"

namespace rwr::trainer {

// One column-major GEMM: D(m, n) = op(A)(m, k)·op(B)(k, n) + beta·D with fp32 accumulation; lda,
// ldb, ldd are the stored matrices' column strides in elements.
struct GemmProblem {
  cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldd = 0;
  cudaDataType_t ab = CUDA_R_16BF;  // A and B
  cudaDataType_t d = CUDA_R_16BF;
  bool accumulate = false;  // beta != 0 (Run sets it from beta: the tuning must keep D)
  // false: a shape that changes from call to call (the head's last block of loss rows), run
  // with cuBLASLt's first heuristic candidate — a function of shape, device and version — not
  // timed, so not in choices() either.
  bool timed = true;

  std::string Key() const;  // "TN m10240 n8192 k2560 lda2560 ldb2560 ldd10240 bf16>bf16[+]"
  auto operator<=>(const GemmProblem&) const = default;

  // The trainer's row-major GEMMs (X, W, dY activations of type `ab`; ld* row strides in
  // elements) as column-major problems, the one place that mapping is written:
  //   Forward     Y(M, N) = X(M, K)·W(N, K)ᵀ       A = W, B = X
  //   InputGrad   dX(M, K) = dY(M, N)·W(N, K)      A = W, B = dY
  //   WeightGrad  dW(N, K) = dY(M, N)ᵀ·X(M, K)     A = X, B = dY (dW fp32, row stride K)
  static GemmProblem Forward(int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy,
                             cudaDataType_t ab, cudaDataType_t y);
  static GemmProblem InputGrad(int64_t M, int64_t N, int64_t K, int64_t lddy, int64_t lddx,
                               cudaDataType_t ab, cudaDataType_t dx);
  static GemmProblem WeightGrad(int64_t M, int64_t N, int64_t K, int64_t lddy, int64_t ldx,
                                cudaDataType_t ab);
};

class GemmRunner {
 public:
  // `workspace` (device, `workspace_bytes`) is cuBLASLt's scratch; the caller keeps it alive.
  static absl::StatusOr<std::unique_ptr<GemmRunner>> Create(cudaStream_t stream, void* workspace,
                                                            size_t workspace_bytes);
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // Queues D = op(A)·op(B) + beta·D on the stream; a shape's first call tunes it (synchronously).
  absl::Status Run(const GemmProblem& p, const void* A, const void* B, void* D, float beta);

  // cuBLASLt's heuristic candidates for the shape, at most `count`, best first, none that adds
  // split-K parts into D in place (what a timing chooses from).
  absl::StatusOr<std::vector<GemmAlgoBytes>> CandidatesFor(const GemmProblem& p, int count) const;

  // The algorithm of every timed shape run so far (and of adopted shapes not run yet).
  GemmChoices choices() const;
  // Runs these shapes with these algorithms from now on (shapes already run too) instead of
  // timing them, and makes them this process's choice for later runners. Refused
  // (FailedPrecondition, saying why) when they were picked on another GPU type or cuBLASLt
  // version; an algorithm cuBLASLt rejects for its shape is timed afresh instead.
  absl::Status Adopt(const GemmChoices& choices);

  struct Plan;

 private:
  GemmRunner() = default;
  // The shape's descriptors, without an algorithm.
  absl::StatusOr<std::unique_ptr<Plan>> Describe(const GemmProblem& p) const;
  absl::StatusOr<Plan*> PlanFor(const GemmProblem& p, const void* A, const void* B, void* D,
                                float beta);
  absl::Status Tune(const GemmProblem& p, Plan& plan, const void* A, const void* B, void* D,
                    float beta);
  // cuBLASLt's heuristic candidates for the plan, at most `count`, none that adds split-K parts
  // into D in place; an error when there is none.
  absl::StatusOr<std::vector<cublasLtMatmulHeuristicResult_t>> Candidates(const Plan& plan,
                                                                          const std::string& key,
                                                                          int count) const;
  // Whether cuBLASLt accepts `algo` for the plan's shape within this runner's workspace.
  bool Fits(const Plan& plan, const cublasLtMatmulAlgo_t& algo) const;
  // Makes `algo` the process's choice for `key` (later runners take it).
  void Remember(const std::string& key, const cublasLtMatmulAlgo_t& algo) const;

  cublasLtHandle_t lt_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::string device_;
  std::map<GemmProblem, std::unique_ptr<Plan>> plans_;
  std::map<std::string, GemmAlgoBytes> adopted_;  // by key, until the shape's first call
};

}  // namespace rwr::trainer
