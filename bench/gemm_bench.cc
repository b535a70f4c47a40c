// The trainer's GEMMs at Mamba-2.8B shapes, timed the way the trainer calls them
// (cublasGemmEx, CUBLAS_GEMM_DEFAULT) against cuBLASLt's heuristic candidates for the same
// problem: how much of the step's GEMM time an algorithm choice could still win, and whether the
// fastest candidate repeats its bits. Every GEMM is described in the trainer's row-major terms
// (Linear / LinearDx / LinearDw in trainer/mamba_cuda.cc) and mapped to column-major here.
//
//   gemm_bench --tokens 8192 --algos 16 --reps 10 --json gemm.json
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "trainer/gemm_runner.h"

namespace {

#define CHECK_CUDA(x)                                                                \
  do {                                                                               \
    cudaError_t e_ = (x);                                                            \
    if (e_ != cudaSuccess) {                                                         \
      fmt::print(stderr, "{}:{}: {}\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)
#define CHECK_BLAS(x)                                                               \
  do {                                                                              \
    cublasStatus_t s_ = (x);                                                        \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                              \
      fmt::print(stderr, "{}:{}: cuBLAS status {}\n", __FILE__, __LINE__, int(s_)); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

// Row-major, as the trainer writes them. fwd: Y(M,N) = X(M,K)·W(N,K)ᵀ; dx: dX(M,K) = dY(M,N)·W;
// dw: dW(N,K) = dY(M,N)ᵀ·X(M,K). ld* are row strides in elements.
enum class Role { kFwd, kDx, kDw };
struct Gemm {
  std::string name;
  Role role;
  int64_t M, N, K;
  int64_t ld_in, ld_out;  // fwd: ldx, ldy; dx: lddy, lddx; dw: lddy, ldx
  bool out_f32;
  float beta;
  int per_step;  // calls per training step
};

// The column-major problem the trainer runs for it (the mapping lives in GemmProblem).
rwr::trainer::GemmProblem ToColMajor(const Gemm& g) {
  using rwr::trainer::GemmProblem;
  const cudaDataType_t out = g.out_f32 ? CUDA_R_32F : CUDA_R_16BF;
  switch (g.role) {
    case Role::kFwd:
      return GemmProblem::Forward(g.M, g.N, g.K, g.ld_in, g.ld_out, CUDA_R_16BF, out);
    case Role::kDx:
      return GemmProblem::InputGrad(g.M, g.N, g.K, g.ld_in, g.ld_out, CUDA_R_16BF, out);
    case Role::kDw:
      return GemmProblem::WeightGrad(g.M, g.N, g.K, g.ld_in, g.ld_out, CUDA_R_16BF);
  }
  return {};
}

// Elements each operand needs (A, B, D) for the column-major problem.
int64_t Span(cublasOperation_t t, int64_t rows, int64_t cols, int64_t ld) {
  return t == CUBLAS_OP_N ? ld * cols : ld * rows;
}

const char* RoleName(Role r) { return r == Role::kFwd ? "fwd" : r == Role::kDx ? "dx" : "dw"; }

std::vector<Gemm> StepGemms(int64_t tokens, int layers) {
  const int64_t D = 2560, Di = 5120, R = 160, X = 192, V = 50280;
  const int64_t head_rows = std::min<int64_t>(4096, (int64_t(1) << 26) / V);  // HeadBlockRows
  const int head_blocks = static_cast<int>((tokens + head_rows - 1) / head_rows);
  const int64_t hr = std::min(head_rows, tokens);
  return {
      {"in_proj", Role::kFwd, tokens, 2 * Di, D, D, 2 * Di, false, 0.f, layers},
      {"x_proj", Role::kFwd, tokens, X, Di, Di, X, false, 0.f, layers},
      // Once a step where the layers keep Δraw for the backward (else twice: recomputed).
      {"dt_proj", Role::kFwd, tokens, Di, R, X, Di, false, 0.f, layers},
      {"out_proj", Role::kFwd, tokens, D, Di, Di, D, true, 1.f, layers},
      {"out_proj", Role::kDx, tokens, D, Di, D, Di, false, 0.f, layers},
      {"out_proj", Role::kDw, tokens, D, Di, D, Di, true, 0.f, layers},
      {"dt_proj", Role::kDw, tokens, Di, R, Di, X, true, 0.f, layers},
      {"dt_proj", Role::kDx, tokens, Di, R, Di, X, false, 0.f, layers},
      {"x_proj", Role::kDw, tokens, X, Di, X, Di, true, 0.f, layers},
      {"x_proj", Role::kDx, tokens, X, Di, X, Di, false, 1.f, layers},
      {"in_proj", Role::kDw, tokens, 2 * Di, D, 2 * Di, D, true, 0.f, layers},
      {"in_proj", Role::kDx, tokens, 2 * Di, D, 2 * Di, D, true, 0.f, layers},
      {"lm_head", Role::kFwd, hr, V, D, D, V, true, 0.f, head_blocks},
      {"lm_head", Role::kDx, hr, V, D, V, D, true, 0.f, head_blocks},
      {"lm_head", Role::kDw, hr, V, D, V, D, true, 1.f, head_blocks},
  };
}

struct Buffers {
  void *a = nullptr, *b = nullptr, *d = nullptr;
  int64_t d_bytes = 0;
};

void FillRandom(void* dst, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<__nv_bfloat16> host(n);
  for (auto& v : host) v = __float2bfloat16(u(rng) * 0.05f);
  CHECK_CUDA(cudaMemcpy(dst, host.data(), n * 2, cudaMemcpyHostToDevice));
}

// Median µs of `reps` calls after `warm` (CUDA events around each call).
template <typename F>
double MedianUs(F&& call, int warm, int reps, cudaStream_t s) {
  for (int i = 0; i < warm; ++i) call();
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(e0, s));
    call();
    CHECK_CUDA(cudaEventRecord(e1, s));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    us.push_back(ms * 1e3);
  }
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app(
      "The trainer's GEMMs at Mamba-2.8B shapes: cublasGemmEx against cuBLASLt's "
      "heuristic candidates");
  int64_t tokens = 8192;
  int layers = 64, algos = 16, reps = 10, warm = 3, per_id = 0;
  int64_t workspace_mib = 32;
  std::string json_path;
  app.add_option("--tokens", tokens, "Tokens per step (batch × sequence), the GEMMs' M");
  app.add_option("--layers", layers, "Layers (calls per step of each per-layer GEMM)");
  app.add_option("--algos", algos, "cuBLASLt heuristic candidates to time per GEMM");
  app.add_option("--per-id", per_id,
                 "Also time up to this many heuristic candidates of every algorithm id "
                 "(search limited by id), beyond the top --algos");
  app.add_option("--reps", reps, "Timed calls per candidate (median), after --warm");
  app.add_option("--warm", warm, "Untimed calls first");
  app.add_option("--workspace-mib", workspace_mib, "cuBLASLt workspace");
  app.add_option("--json", json_path, "Write results as JSON");
  CLI11_PARSE(app, argc, argv);

  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  cublasHandle_t blas;
  CHECK_BLAS(cublasCreate(&blas));
  CHECK_BLAS(cublasSetStream(blas, stream));
  cublasLtHandle_t lt;
  CHECK_BLAS(cublasLtCreate(&lt));
  const size_t ws_bytes = size_t(workspace_mib) << 20;
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, ws_bytes));

  fmt::print("{} | tokens {} | {} layers | {} candidates, median of {}\n", prop.name, tokens,
             layers, algos, reps);
  fmt::print("{:<9} {:<4} {:>6} {:>6} {:>6} {:>5} | {:>9} {:>9} {:>9} {:>4} {:>7} | {:>5}\n",
             "gemm", "role", "m", "n", "k", "calls", "GemmEx", "lt[0]", "best", "idx", "TFLOP/s",
             "bits");
  nlohmann::json out = {
      {"device", prop.name}, {"tokens", tokens}, {"gemms", nlohmann::json::array()}};
  double step_ex = 0, step_lt0 = 0, step_best = 0, step_wide = 0;
  for (const Gemm& g : StepGemms(tokens, layers)) {
    const rwr::trainer::GemmProblem c = ToColMajor(g);
    const cudaDataType_t dt = c.d;
    const int64_t a_n = Span(c.ta, c.m, c.k, c.lda), b_n = Span(c.tb, c.k, c.n, c.ldb);
    const int64_t d_n = c.ldd * c.n, d_bytes = d_n * (g.out_f32 ? 4 : 2);
    Buffers buf;
    CHECK_CUDA(cudaMalloc(&buf.a, a_n * 2));
    CHECK_CUDA(cudaMalloc(&buf.b, b_n * 2));
    CHECK_CUDA(cudaMalloc(&buf.d, d_bytes));
    FillRandom(buf.a, a_n, 1);
    FillRandom(buf.b, b_n, 2);
    CHECK_CUDA(cudaMemset(buf.d, 0, d_bytes));
    const float one = 1.f, beta = g.beta;

    const double ex_us = MedianUs(
        [&] {
          CHECK_BLAS(cublasGemmEx(blas, c.ta, c.tb, c.m, c.n, c.k, &one, buf.a, CUDA_R_16BF, c.lda,
                                  buf.b, CUDA_R_16BF, c.ldb, &beta, buf.d, dt, c.ldd,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        },
        warm, reps, stream);

    cublasLtMatmulDesc_t op;
    CHECK_BLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CHECK_BLAS(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &c.ta, sizeof(c.ta)));
    CHECK_BLAS(
        cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &c.tb, sizeof(c.tb)));
    cublasLtMatrixLayout_t la, lb, ld;
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, c.ta == CUBLAS_OP_N ? c.m : c.k,
                                          c.ta == CUBLAS_OP_N ? c.k : c.m, c.lda));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, c.tb == CUBLAS_OP_N ? c.k : c.n,
                                          c.tb == CUBLAS_OP_N ? c.n : c.k, c.ldb));
    CHECK_BLAS(cublasLtMatrixLayoutCreate(&ld, dt, c.m, c.n, c.ldd));
    cublasLtMatmulPreference_t pref;
    CHECK_BLAS(cublasLtMatmulPreferenceCreate(&pref));
    CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws_bytes, sizeof(ws_bytes)));
    // As the trainer's GemmRunner: no split-K that adds its parts into D in place.
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE |
                             CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                             CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes)));
    std::vector<cublasLtMatmulHeuristicResult_t> found(algos);
    int returned = 0;
    CHECK_BLAS(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, algos, found.data(),
                                              &returned));
    std::vector<double> lt_us;
    for (int i = 0; i < returned; ++i) {
      lt_us.push_back(MedianUs(
          [&] {
            CHECK_BLAS(cublasLtMatmul(lt, op, &one, buf.a, la, buf.b, lb, &beta, buf.d, ld, buf.d,
                                      ld, &found[i].algo, ws, ws_bytes, stream));
          },
          warm, reps, stream));
    }
    const int best = static_cast<int>(std::min_element(lt_us.begin(), lt_us.end()) - lt_us.begin());
    // Bits: the best candidate twice from the same D (beta 0 only: beta 1 accumulates).
    std::string bits = "-";
    if (g.beta == 0.f && returned > 0) {
      std::vector<char> first(d_bytes), second(d_bytes);
      for (std::vector<char>* dst : {&first, &second}) {
        CHECK_CUDA(cudaMemsetAsync(buf.d, 0xff, d_bytes, stream));
        CHECK_BLAS(cublasLtMatmul(lt, op, &one, buf.a, la, buf.b, lb, &beta, buf.d, ld, buf.d, ld,
                                  &found[best].algo, ws, ws_bytes, stream));
        CHECK_CUDA(cudaMemcpyAsync(dst->data(), buf.d, d_bytes, cudaMemcpyDeviceToHost, stream));
        CHECK_CUDA(cudaStreamSynchronize(stream));
      }
      bits = first == second ? "same" : "DIFF";
    }
    // A wider search: the heuristic asked per algorithm id instead of over all of them.
    if (per_id > 0) {
      std::vector<int> ids(256);
      int nids = 0;
      CHECK_BLAS(cublasLtMatmulAlgoGetIds(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF,
                                          CUDA_R_16BF, dt, dt, static_cast<int>(ids.size()),
                                          ids.data(), &nids));
      const uint32_t mode = CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID;
      CHECK_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE, &mode,
                                                      sizeof(mode)));
      double wide_best = 1e30;
      int wide_id = -1, timed = 0;
      for (int i = 0; i < nids; ++i) {
        std::vector<cublasLtMatmulHeuristicResult_t> r(per_id);
        bool init_ok = true;
        for (auto& x : r) {
          init_ok = init_ok && cublasLtMatmulAlgoInit(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F,
                                                      CUDA_R_16BF, CUDA_R_16BF, dt, dt, ids[i],
                                                      &x.algo) == CUBLAS_STATUS_SUCCESS;
        }
        int got = 0;
        if (!init_ok || cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, per_id,
                                                       r.data(), &got) != CUBLAS_STATUS_SUCCESS) {
          continue;
        }
        for (int j = 0; j < got; ++j) {
          if (r[j].state != CUBLAS_STATUS_SUCCESS || r[j].workspaceSize > ws_bytes) continue;
          const double us = MedianUs(
              [&] {
                CHECK_BLAS(cublasLtMatmul(lt, op, &one, buf.a, la, buf.b, lb, &beta, buf.d, ld,
                                          buf.d, ld, &r[j].algo, ws, ws_bytes, stream));
              },
              warm, reps, stream);
          ++timed;
          if (us < wide_best) {
            wide_best = us;
            wide_id = ids[i];
          }
        }
      }
      fmt::print("  per-id search: {} candidates over {} ids, best {:.1f} us (id {}) vs {:.1f}\n",
                 timed, nids, wide_best, wide_id, returned > 0 ? lt_us[best] : ex_us);
      step_wide += std::min(wide_best, returned > 0 ? lt_us[best] : ex_us) * g.per_step;
    }
    const double flop = 2.0 * g.M * g.N * g.K;
    const double lt0 = returned > 0 ? lt_us[0] : ex_us, lbest = returned > 0 ? lt_us[best] : ex_us;
    fmt::print(
        "{:<9} {:<4} {:>6} {:>6} {:>6} {:>5} | {:>9.1f} {:>9.1f} {:>9.1f} {:>4} {:>7.0f} | {:>5}\n",
        g.name, RoleName(g.role), c.m, c.n, c.k, g.per_step, ex_us, lt0, lbest, best,
        flop / lbest / 1e6, bits);
    step_ex += ex_us * g.per_step;
    step_lt0 += lt0 * g.per_step;
    step_best += std::min(lbest, ex_us) * g.per_step;
    out["gemms"].push_back({{"name", g.name},
                            {"role", RoleName(g.role)},
                            {"m", c.m},
                            {"n", c.n},
                            {"k", c.k},
                            {"per_step", g.per_step},
                            {"gemmex_us", ex_us},
                            {"lt_us", lt_us},
                            {"best", best},
                            {"bits", bits}});
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
    CHECK_CUDA(cudaFree(buf.a));
    CHECK_CUDA(cudaFree(buf.b));
    CHECK_CUDA(cudaFree(buf.d));
  }
  fmt::print(
      "per step: GemmEx {:.1f} ms, cuBLASLt first candidate {:.1f} ms, best of both {:.1f} ms\n",
      step_ex / 1e3, step_lt0 / 1e3, step_best / 1e3);
  if (per_id > 0) fmt::print("per step with the per-id search: {:.1f} ms\n", step_wide / 1e3);
  out["step_ms"] = {
      {"gemmex", step_ex / 1e3}, {"lt_first", step_lt0 / 1e3}, {"best", step_best / 1e3}};
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(1) << "\n";
  return 0;
}
