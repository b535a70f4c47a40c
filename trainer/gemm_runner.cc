// GemmRunner: cuBLASLt GEMMs with a timed algorithm choice per shape (see gemm_runner.h).
#include "trainer/gemm_runner.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "common/call_status_cuda.h"
#include "common/status.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

namespace rwr::trainer {
namespace {

// Candidates timed per shape, and calls per candidate: one warm-up, then the median of kReps.
// A Mamba-2.8B step has ~16 shapes; tuning them all costs about a second once.
constexpr int kCandidates = 16;
constexpr int kReps = 5;

const char* TypeName(cudaDataType_t t) {
  return t == CUDA_R_16BF ? "bf16" : t == CUDA_R_32F ? "f32" : t == CUDA_R_16F ? "f16" : "?";
}
int64_t TypeBytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

GemmAlgoBytes ToBytes(const cublasLtMatmulAlgo_t& algo) {
  static_assert(sizeof(cublasLtMatmulAlgo_t) == sizeof(GemmAlgoBytes));
  GemmAlgoBytes bytes;
  std::memcpy(bytes.data(), &algo, sizeof(algo));
  return bytes;
}
cublasLtMatmulAlgo_t FromBytes(const GemmAlgoBytes& bytes) {
  cublasLtMatmulAlgo_t algo;
  std::memcpy(&algo, bytes.data(), sizeof(algo));
  return algo;
}

// Every shape a process timed, by device name and key: each later runner (a second model, a
// resumed run in the same process) takes the same algorithm instead of timing again, so models in
// one process give the same bits.
struct ProcessChoices {
  std::mutex mu;
  std::map<std::pair<std::string, std::string>, GemmAlgoBytes> algos;
};
ProcessChoices& Timed() {
  static ProcessChoices* choices = new ProcessChoices();
  return *choices;
}

// Two events bracketing one timed call.
struct EventPair {
  cudaEvent_t start = nullptr, end = nullptr;
  ~EventPair() {
    if (start) cudaEventDestroy(start);
    if (end) cudaEventDestroy(end);
  }
};

}  // namespace

std::string GemmProblem::Key() const {
  return fmt::format("{}{} m{} n{} k{} lda{} ldb{} ldd{} {}>{}{}", ta == CUBLAS_OP_T ? 'T' : 'N',
                     tb == CUBLAS_OP_T ? 'T' : 'N', m, n, k, lda, ldb, ldd, TypeName(ab),
                     TypeName(d), accumulate ? "+" : "");
}

// A shape's descriptors (made once) and its algorithm.
struct GemmRunner::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

absl::StatusOr<std::unique_ptr<GemmRunner>> GemmRunner::Create(cudaStream_t stream,
                                                               void* workspace,
                                                               size_t workspace_bytes) {
  std::unique_ptr<GemmRunner> runner(new GemmRunner());
  RWR_CUBLAS(cublasLtCreate(&runner->lt_));
  runner->stream_ = stream;
  runner->workspace_ = workspace;
  runner->workspace_bytes_ = workspace_bytes;
  int device = 0;
  RWR_CUDA(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  RWR_CUDA(cudaGetDeviceProperties(&prop, device));
  runner->device_ = prop.name;
  return runner;
}

GemmRunner::~GemmRunner() {
  plans_.clear();
  if (lt_) cublasLtDestroy(lt_);
}

GemmChoices GemmRunner::choices() const {
  GemmChoices choices{device_, static_cast<int64_t>(cublasLtGetVersion()), adopted_};
  for (const auto& [problem, plan] : plans_) choices.algos[problem.Key()] = ToBytes(plan->algo);
  return choices;
}

absl::Status GemmRunner::Adopt(const GemmChoices& choices) {
  const int64_t version = static_cast<int64_t>(cublasLtGetVersion());
  if (choices.device != device_ || choices.cublaslt_version != version) {
    return absl::FailedPreconditionError(fmt::format(
        "GEMM algorithms were picked on {} with cuBLASLt {}; this is {} with cuBLASLt {}",
        choices.device, choices.cublaslt_version, device_, version));
  }
  for (const auto& [key, algo] : choices.algos) adopted_[key] = algo;
  return absl::OkStatus();
}

absl::Status GemmRunner::Run(const GemmProblem& p, const void* A, const void* B, void* D,
                             float beta) {
  RWR_ASSIGN_OR_RETURN(Plan * plan, PlanFor(p, A, B, D, beta));
  const float one = 1.f;
  RWR_CUBLAS(cublasLtMatmul(lt_, plan->op, &one, A, plan->a, B, plan->b, &beta, D, plan->d, D,
                            plan->d, &plan->algo, workspace_, workspace_bytes_, stream_));
  return absl::OkStatus();
}

absl::StatusOr<GemmRunner::Plan*> GemmRunner::PlanFor(const GemmProblem& p, const void* A,
                                                      const void* B, void* D, float beta) {
  if (const auto it = plans_.find(p); it != plans_.end()) return it->second.get();
  auto plan = std::make_unique<Plan>();
  const cudaDataType_t scale = CUDA_R_32F;
  RWR_CUBLAS(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, scale));
  RWR_CUBLAS(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &p.ta,
                                            sizeof(p.ta)));
  RWR_CUBLAS(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &p.tb,
                                            sizeof(p.tb)));
  // Stored shapes: op(A) is m × k, so A is stored m × k (N) or k × m (T); likewise B.
  const bool an = p.ta == CUBLAS_OP_N, bn = p.tb == CUBLAS_OP_N;
  RWR_CUBLAS(
      cublasLtMatrixLayoutCreate(&plan->a, p.ab, an ? p.m : p.k, an ? p.k : p.m, p.lda));
  RWR_CUBLAS(
      cublasLtMatrixLayoutCreate(&plan->b, p.ab, bn ? p.k : p.n, bn ? p.n : p.k, p.ldb));
  RWR_CUBLAS(cublasLtMatrixLayoutCreate(&plan->d, p.d, p.m, p.n, p.ldd));

  const std::string key = p.Key();
  bool chosen = false;
  if (const auto it = adopted_.find(key); it != adopted_.end()) {
    plan->algo = FromBytes(it->second);
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t ok = cublasLtMatmulAlgoCheck(lt_, plan->op, plan->a, plan->b, plan->d,
                                                      plan->d, &plan->algo, &check);
    chosen = ok == CUBLAS_STATUS_SUCCESS && check.workspaceSize <= workspace_bytes_;
    if (!chosen) spdlog::warn("gemm {}: the adopted algorithm does not fit; timing afresh", key);
    adopted_.erase(it);
  }
  ProcessChoices& process = Timed();
  if (!chosen) {
    std::lock_guard lock(process.mu);
    if (const auto it = process.algos.find({device_, key}); it != process.algos.end()) {
      plan->algo = FromBytes(it->second);
      chosen = true;
    }
  }
  if (!chosen) {
    RWR_RETURN_IF_ERROR(Tune(p, *plan, A, B, D, beta));
    std::lock_guard lock(process.mu);
    process.algos.emplace(std::pair{device_, key}, ToBytes(plan->algo));
  }
  return plans_.emplace(p, std::move(plan)).first->second.get();
}

absl::Status GemmRunner::Tune(const GemmProblem& p, Plan& plan, const void* A, const void* B,
                              void* D, float beta) {
  const std::string key = p.Key();
  cublasLtMatmulPreference_t pref = nullptr;
  RWR_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  // No split-K that adds its parts into D in place (the one reduction scheme that is not a
  // fixed-order pass over a workspace): every candidate repeats its bits.
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                           CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
  std::vector<cublasLtMatmulHeuristicResult_t> found(kCandidates);
  int returned = 0;
  absl::Status status = RWR_CUBLAS_STATUS(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_, sizeof(workspace_bytes_)));
  if (status.ok()) {
    status = RWR_CUBLAS_STATUS(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes)));
  }
  if (status.ok()) {
    status = RWR_CUBLAS_STATUS(cublasLtMatmulAlgoGetHeuristic(
        lt_, plan.op, plan.a, plan.b, plan.d, plan.d, pref, kCandidates, found.data(), &returned));
  }
  cublasLtMatmulPreferenceDestroy(pref);
  RWR_RETURN_IF_ERROR(status);
  if (returned == 0) {
    return absl::UnimplementedError(fmt::format("gemm {}: cuBLASLt has no algorithm for it", key));
  }

  // The timing calls write D; an accumulating call's D is put back afterwards.
  const int64_t d_bytes = p.ldd * p.n * TypeBytes(p.d);
  std::vector<char> saved;
  if (p.accumulate) {
    saved.resize(d_bytes);
    RWR_CUDA(cudaMemcpyAsync(saved.data(), D, d_bytes, cudaMemcpyDeviceToHost, stream_));
  }
  EventPair events;
  RWR_CUDA(cudaEventCreate(&events.start));
  RWR_CUDA(cudaEventCreate(&events.end));
  const cudaEvent_t start = events.start, end = events.end;
  auto time_one = [&](const cublasLtMatmulAlgo_t& algo) -> absl::StatusOr<float> {
    const float one = 1.f;
    std::vector<float> ms;
    for (int rep = 0; rep <= kReps; ++rep) {
      RWR_CUDA(cudaEventRecord(start, stream_));
      RWR_CUBLAS(cublasLtMatmul(lt_, plan.op, &one, A, plan.a, B, plan.b, &beta, D, plan.d, D,
                                plan.d, &algo, workspace_, workspace_bytes_, stream_));
      RWR_CUDA(cudaEventRecord(end, stream_));
      RWR_CUDA(cudaEventSynchronize(end));
      float elapsed = 0;
      RWR_CUDA(cudaEventElapsedTime(&elapsed, start, end));
      if (rep > 0) ms.push_back(elapsed);  // rep 0 warms up
    }
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    return ms[ms.size() / 2];
  };
  float best_ms = 0;
  int best = -1;
  for (int i = 0; i < returned; ++i) {
    if (found[i].state != CUBLAS_STATUS_SUCCESS) continue;
    absl::StatusOr<float> ms = time_one(found[i].algo);
    if (!ms.ok()) {
      cudaGetLastError();  // a candidate that fails to launch is skipped, not fatal
      continue;
    }
    if (best < 0 || *ms < best_ms) best_ms = *ms, best = i;
  }
  if (p.accumulate) {
    RWR_CUDA(cudaMemcpyAsync(D, saved.data(), d_bytes, cudaMemcpyHostToDevice, stream_));
    RWR_CUDA(cudaStreamSynchronize(stream_));
  }
  if (best < 0) {
    return absl::InternalError(fmt::format("gemm {}: none of cuBLASLt's {} candidates ran", key,
                                           returned));
  }
  plan.algo = found[best].algo;
  spdlog::debug("gemm {}: candidate {} of {} ({:.1f} µs)", key, best, returned, best_ms * 1e3);
  return absl::OkStatus();
}

}  // namespace rwr::trainer
