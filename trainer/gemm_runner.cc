// GemmRunner: cuBLASLt GEMMs with a timed algorithm choice per shape (see gemm_runner.h).
#include "trainer/gemm_runner.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
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
ProcessChoices& ProcessRegistry() {
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

GemmProblem GemmProblem::Forward(int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy,
                                 cudaDataType_t ab, cudaDataType_t y) {
  // Yᵀ(N, M) = Wᵀ·Xᵀ: W is stored K × N (column-major), taken transposed; X is stored K × M.
  return {.ta = CUBLAS_OP_T,
          .tb = CUBLAS_OP_N,
          .m = N,
          .n = M,
          .k = K,
          .lda = K,
          .ldb = ldx,
          .ldd = ldy,
          .ab = ab,
          .d = y};
}
GemmProblem GemmProblem::InputGrad(int64_t M, int64_t N, int64_t K, int64_t lddy, int64_t lddx,
                                   cudaDataType_t ab, cudaDataType_t dx) {
  // dXᵀ(K, M) = W·dYᵀ: W stored K × N, dY stored N × M.
  return {.ta = CUBLAS_OP_N,
          .tb = CUBLAS_OP_N,
          .m = K,
          .n = M,
          .k = N,
          .lda = K,
          .ldb = lddy,
          .ldd = lddx,
          .ab = ab,
          .d = dx};
}
GemmProblem GemmProblem::WeightGrad(int64_t M, int64_t N, int64_t K, int64_t lddy, int64_t ldx,
                                    cudaDataType_t ab) {
  // dWᵀ(K, N) = Xᵀ·dY: X stored K × M, dY stored N × M and taken transposed.
  return {.ta = CUBLAS_OP_N,
          .tb = CUBLAS_OP_T,
          .m = K,
          .n = N,
          .k = M,
          .lda = ldx,
          .ldb = lddy,
          .ldd = K,
          .ab = ab,
          .d = CUDA_R_32F};
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

absl::StatusOr<std::unique_ptr<GemmRunner>> GemmRunner::Create(cudaStream_t stream, void* workspace,
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
  for (const auto& [problem, plan] : plans_) {
    if (problem.timed) choices.algos[problem.Key()] = ToBytes(plan->algo);
  }
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
  // Shapes already planned take theirs now (where cuBLASLt accepts it for them).
  for (auto& [problem, plan] : plans_) {
    const auto it = adopted_.find(problem.Key());
    if (it == adopted_.end() || !problem.timed) continue;
    if (Fits(*plan, FromBytes(it->second))) {
      plan->algo = FromBytes(it->second);
      Remember(problem.Key(), plan->algo);
    }
    adopted_.erase(it);
  }
  return absl::OkStatus();
}

absl::Status GemmRunner::Run(const GemmProblem& problem, const void* A, const void* B, void* D,
                             float beta) {
  GemmProblem p = problem;
  p.accumulate = beta != 0.f;  // what the tuning must know, whatever the caller said
  RWR_ASSIGN_OR_RETURN(Plan * plan, PlanFor(p, A, B, D, beta));
  const float one = 1.f;
  RWR_CUBLAS(cublasLtMatmul(lt_, plan->op, &one, A, plan->a, B, plan->b, &beta, D, plan->d, D,
                            plan->d, &plan->algo, workspace_, workspace_bytes_, stream_));
  return absl::OkStatus();
}

bool GemmRunner::Fits(const Plan& plan, const cublasLtMatmulAlgo_t& algo) const {
  cublasLtMatmulHeuristicResult_t check{};
  if (cublasLtMatmulAlgoCheck(lt_, plan.op, plan.a, plan.b, plan.d, plan.d, &algo, &check) !=
          CUBLAS_STATUS_SUCCESS ||
      check.workspaceSize > workspace_bytes_) {
    return false;
  }
  // Not one that adds split-K parts into D in place (a file may hold any algorithm).
  uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                           sizeof(scheme), &written) != CUBLAS_STATUS_SUCCESS) {
    return false;
  }
  return scheme != CUBLASLT_REDUCTION_SCHEME_INPLACE;
}

void GemmRunner::Remember(const std::string& key, const cublasLtMatmulAlgo_t& algo) const {
  ProcessChoices& process = ProcessRegistry();
  std::lock_guard lock(process.mu);
  process.algos.insert_or_assign(std::pair{device_, key}, ToBytes(algo));
}

absl::StatusOr<std::unique_ptr<GemmRunner::Plan>> GemmRunner::Describe(const GemmProblem& p) const {
  auto plan = std::make_unique<Plan>();
  const cudaDataType_t scale = CUDA_R_32F;
  RWR_CUBLAS(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, scale));
  RWR_CUBLAS(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &p.ta, sizeof(p.ta)));
  RWR_CUBLAS(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &p.tb, sizeof(p.tb)));
  // Stored shapes: op(A) is m × k, so A is stored m × k (N) or k × m (T); likewise B.
  const bool an = p.ta == CUBLAS_OP_N, bn = p.tb == CUBLAS_OP_N;
  RWR_CUBLAS(cublasLtMatrixLayoutCreate(&plan->a, p.ab, an ? p.m : p.k, an ? p.k : p.m, p.lda));
  RWR_CUBLAS(cublasLtMatrixLayoutCreate(&plan->b, p.ab, bn ? p.k : p.n, bn ? p.n : p.k, p.ldb));
  RWR_CUBLAS(cublasLtMatrixLayoutCreate(&plan->d, p.d, p.m, p.n, p.ldd));
  return plan;
}

absl::StatusOr<std::vector<GemmAlgoBytes>> GemmRunner::CandidatesFor(const GemmProblem& p,
                                                                     int count) const {
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<Plan> plan, Describe(p));
  RWR_ASSIGN_OR_RETURN(std::vector<cublasLtMatmulHeuristicResult_t> found,
                       Candidates(*plan, p.Key(), count));
  std::vector<GemmAlgoBytes> out;
  for (const auto& f : found) out.push_back(ToBytes(f.algo));
  return out;
}

absl::StatusOr<GemmRunner::Plan*> GemmRunner::PlanFor(const GemmProblem& p, const void* A,
                                                      const void* B, void* D, float beta) {
  if (const auto it = plans_.find(p); it != plans_.end()) return it->second.get();
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<Plan> plan, Describe(p));
  const std::string key = p.Key();
  if (!p.timed) {  // cuBLASLt's first candidate: a function of the shape, device and version
    RWR_ASSIGN_OR_RETURN(std::vector<cublasLtMatmulHeuristicResult_t> found,
                         Candidates(*plan, key, 1));
    plan->algo = found[0].algo;
    return plans_.emplace(p, std::move(plan)).first->second.get();
  }
  // The job's own choice first (adopted), then this process's, then a timing.
  bool chosen = false;
  if (const auto it = adopted_.find(key); it != adopted_.end()) {
    chosen = Fits(*plan, FromBytes(it->second));
    if (chosen) {
      plan->algo = FromBytes(it->second);
      Remember(key, plan->algo);
    } else {
      spdlog::warn("gemm {}: the adopted algorithm does not fit; timing afresh", key);
    }
    adopted_.erase(it);
  }
  ProcessChoices& process = ProcessRegistry();
  if (!chosen) {
    std::optional<cublasLtMatmulAlgo_t> known;
    {
      std::lock_guard lock(process.mu);
      if (const auto it = process.algos.find({device_, key}); it != process.algos.end()) {
        known = FromBytes(it->second);
      }
    }
    if (known && Fits(*plan, *known)) {
      plan->algo = *known;
      chosen = true;
    }
  }
  if (!chosen) {
    RWR_RETURN_IF_ERROR(Tune(p, *plan, A, B, D, beta));
    // Another runner may have timed the same shape meanwhile: the first choice stands, so that
    // every runner of the process agrees.
    std::lock_guard lock(process.mu);
    const auto [it, inserted] = process.algos.emplace(std::pair{device_, key}, ToBytes(plan->algo));
    if (!inserted && Fits(*plan, FromBytes(it->second))) plan->algo = FromBytes(it->second);
  }
  return plans_.emplace(p, std::move(plan)).first->second.get();
}

absl::StatusOr<std::vector<cublasLtMatmulHeuristicResult_t>> GemmRunner::Candidates(
    const Plan& plan, const std::string& key, int count) const {
  cublasLtMatmulPreference_t pref = nullptr;
  RWR_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  // No split-K that adds its parts into D in place (the one reduction scheme that is not a
  // fixed-order pass over a workspace): every candidate repeats its bits.
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |
                           CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
  std::vector<cublasLtMatmulHeuristicResult_t> found(count);
  int returned = 0;
  absl::Status status = RWR_CUBLAS_STATUS(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_, sizeof(workspace_bytes_)));
  if (status.ok()) {
    status = RWR_CUBLAS_STATUS(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes)));
  }
  if (status.ok()) {
    status = RWR_CUBLAS_STATUS(cublasLtMatmulAlgoGetHeuristic(
        lt_, plan.op, plan.a, plan.b, plan.d, plan.d, pref, count, found.data(), &returned));
  }
  cublasLtMatmulPreferenceDestroy(pref);
  RWR_RETURN_IF_ERROR(status);
  if (returned == 0) {
    return absl::UnimplementedError(fmt::format("gemm {}: cuBLASLt has no algorithm for it", key));
  }
  found.resize(returned);
  return found;
}

absl::Status GemmRunner::Tune(const GemmProblem& p, Plan& plan, const void* A, const void* B,
                              void* D, float beta) {
  const std::string key = p.Key();
  RWR_ASSIGN_OR_RETURN(std::vector<cublasLtMatmulHeuristicResult_t> found,
                       Candidates(plan, key, kCandidates));
  const int returned = static_cast<int>(found.size());

  // The timing calls write D; an accumulating call's D is put back afterwards.
  // D's extent: n columns of ldd, the last only m long (D may be a view ending at its buffer's).
  const int64_t d_bytes = (p.ldd * (p.n - 1) + p.m) * TypeBytes(p.d);
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
    return absl::InternalError(
        fmt::format("gemm {}: none of cuBLASLt's {} candidates ran", key, returned));
  }
  plan.algo = found[best].algo;
  spdlog::debug("gemm {}: candidate {} of {} ({:.1f} µs)", key, best, returned, best_ms * 1e3);
  return absl::OkStatus();
}

}  // namespace rwr::trainer
