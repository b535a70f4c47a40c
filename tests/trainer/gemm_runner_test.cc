// The trainer's cuBLASLt GEMMs (trainer/gemm_runner.h; device machine, skips without a GPU): every
// layout the trainer uses against a host reference, the timing of a shape leaving an accumulating
// D as it was, adopted choices giving the same bits, and foreign or unusable choices refused or
// timed afresh. Tolerances: bf16 operands with an fp32 D — |err| ≤ 1e-5·Σ|a·b| (fp32 sums of exact
// bf16 products); a bf16 D adds its rounding, 2⁻⁸ of |d|; fp32 operands ≤ 1e-5·Σ|a·b|.
#include "trainer/gemm_runner.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "trainer/mamba_cuda.h"

namespace rwr::trainer {
namespace {

// Column-major operands on the host as floats (already rounded to the device type), and on the
// device in that type.
struct Matrix {
  int64_t rows = 0, cols = 0, ld = 0;
  cudaDataType_t type = CUDA_R_32F;
  std::vector<float> host;  // ld × cols
  void* dev = nullptr;

  Matrix(int64_t r, int64_t c, int64_t l, cudaDataType_t t, uint32_t seed)
      : rows(r), cols(c), ld(l), type(t), host(l * c) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (float& v : host) v = Round(u(rng));
    EXPECT_EQ(cudaMalloc(&dev, Bytes()), cudaSuccess);
    Upload();
  }
  ~Matrix() { cudaFree(dev); }
  Matrix(const Matrix&) = delete;
  Matrix& operator=(const Matrix&) = delete;
  int64_t Bytes() const { return ld * cols * (type == CUDA_R_32F ? 4 : 2); }
  float Round(float v) const {
    return type == CUDA_R_16BF ? __bfloat162float(__float2bfloat16(v)) : v;
  }
  void Upload() {
    if (type == CUDA_R_32F) {
      cudaMemcpy(dev, host.data(), Bytes(), cudaMemcpyHostToDevice);
      return;
    }
    std::vector<__nv_bfloat16> b(host.size());
    for (size_t i = 0; i < host.size(); ++i) b[i] = __float2bfloat16(host[i]);
    cudaMemcpy(dev, b.data(), Bytes(), cudaMemcpyHostToDevice);
  }
  std::vector<float> Download() const {
    std::vector<float> out(host.size());
    if (type == CUDA_R_32F) {
      cudaMemcpy(out.data(), dev, Bytes(), cudaMemcpyDeviceToHost);
      return out;
    }
    std::vector<__nv_bfloat16> b(host.size());
    cudaMemcpy(b.data(), dev, Bytes(), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < b.size(); ++i) out[i] = __bfloat162float(b[i]);
    return out;
  }
  std::vector<char> Bits() const {
    std::vector<char> bits(Bytes());
    cudaMemcpy(bits.data(), dev, Bytes(), cudaMemcpyDeviceToHost);
    return bits;
  }
};

// The operands of one problem, stored as GemmProblem says (op(A) is m × k, op(B) is k × n).
struct Operands {
  Matrix a, b, d;
  explicit Operands(const GemmProblem& p, uint32_t seed = 1)
      : a(p.ta == CUBLAS_OP_N ? p.m : p.k, p.ta == CUBLAS_OP_N ? p.k : p.m, p.lda, p.ab, seed),
        b(p.tb == CUBLAS_OP_N ? p.k : p.n, p.tb == CUBLAS_OP_N ? p.n : p.k, p.ldb, p.ab, seed + 1),
        d(p.m, p.n, p.ldd, p.d, seed + 2) {}
};

// Checks D against beta·D0 + op(A)·op(B) computed on the host in double.
void ExpectProduct(const GemmProblem& p, const Operands& o, const std::vector<float>& d0,
                   float beta) {
  const std::vector<float> got = o.d.Download();
  auto at_a = [&](int64_t i, int64_t l) {
    return p.ta == CUBLAS_OP_N ? o.a.host[l * p.lda + i] : o.a.host[i * p.lda + l];
  };
  auto at_b = [&](int64_t l, int64_t j) {
    return p.tb == CUBLAS_OP_N ? o.b.host[j * p.ldb + l] : o.b.host[l * p.ldb + j];
  };
  int bad = 0;
  for (int64_t j = 0; j < p.n; ++j) {
    for (int64_t i = 0; i < p.m; ++i) {
      double sum = beta * d0[j * p.ldd + i], mag = std::fabs(sum);
      for (int64_t l = 0; l < p.k; ++l) {
        sum += double(at_a(i, l)) * at_b(l, j);
        mag += std::fabs(double(at_a(i, l)) * at_b(l, j));
      }
      const double tol = 1e-5 * mag + (p.d == CUDA_R_16BF ? std::fabs(sum) / 256 : 0) + 1e-7;
      if (std::fabs(got[j * p.ldd + i] - sum) > tol && ++bad <= 5) {
        ADD_FAILURE() << p.Key() << " D(" << i << ", " << j << ") = " << got[j * p.ldd + i]
                      << ", expected " << sum << " ± " << tol;
      }
    }
  }
  EXPECT_EQ(bad, 0) << p.Key();
}

class GemmRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    ASSERT_EQ(cudaMalloc(&workspace_, kWorkspace), cudaSuccess);
    runner_ = NewRunner();
  }
  void TearDown() override {
    runner_.reset();
    cudaFree(workspace_);
  }
  std::unique_ptr<GemmRunner> NewRunner() {
    auto runner = GemmRunner::Create(nullptr, workspace_, kWorkspace);
    EXPECT_TRUE(runner.ok()) << runner.status();
    return runner.ok() ? std::move(*runner) : nullptr;
  }
  static constexpr size_t kWorkspace = size_t{32} << 20;
  void* workspace_ = nullptr;
  std::unique_ptr<GemmRunner> runner_;
};

// The trainer's three layouts (Linear: TN, LinearDx: NN, LinearDw: NT) at odd sizes, strided
// operands, each output type, and fp32 operands (its parity mode).
TEST_F(GemmRunnerTest, EveryTrainerLayoutMatchesTheHost) {
  const cudaDataType_t bf = CUDA_R_16BF, f32 = CUDA_R_32F;
  // Built by the row-major constructors the trainer uses (M tokens, N outputs, K inputs), so the
  // mapping to column-major is checked here too.
  using P = GemmProblem;
  const std::vector<GemmProblem> problems = {
      P::Forward(37, 50, 24, 30, 50, bf, bf),   // X strided (ldx 30)
      P::Forward(37, 50, 24, 24, 52, bf, f32),  // into a wider fp32 Y
      P::InputGrad(37, 50, 24, 50, 24, bf, bf),
      P::InputGrad(37, 50, 24, 56, 24, bf, f32),  // dY strided
      P::WeightGrad(37, 50, 24, 50, 30, bf),      // X strided
      P::Forward(160, 64, 256, 256, 64, bf, bf),
      P::Forward(37, 50, 24, 24, 50, f32, f32),  // fp32 parity mode
      P::WeightGrad(37, 50, 24, 50, 24, f32),
  };
  for (const GemmProblem& p : problems) {
    Operands o(p);
    const std::vector<float> d0 = o.d.host;
    ASSERT_TRUE(runner_->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok()) << p.Key();
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ExpectProduct(p, o, d0, 0.f);
  }
  EXPECT_EQ(runner_->choices().algos.size(), problems.size());
}

// A shape's first call times candidates that write D; an accumulating call must still see the D
// it was given (the trainer's residual add and gradient accumulation), then and on later calls.
TEST_F(GemmRunnerTest, TimingLeavesAnAccumulatingDAsItWas) {
  GemmProblem p{CUBLAS_OP_T, CUBLAS_OP_N, 70, 33, 48, 48, 48, 70, CUDA_R_16BF, CUDA_R_32F};
  p.accumulate = true;
  Operands o(p, 7);
  std::vector<float> d0 = o.d.host;
  ASSERT_TRUE(runner_->Run(p, o.a.dev, o.b.dev, o.d.dev, 1.f).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ExpectProduct(p, o, d0, 1.f);
  d0 = o.d.Download();  // a second call adds again, from what the first left
  ASSERT_TRUE(runner_->Run(p, o.a.dev, o.b.dev, o.d.dev, 1.f).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ExpectProduct(p, o, d0, 1.f);
}

// Choices exported by one runner and adopted by another give the same algorithm and bits; a
// second runner in the same process takes the first's timing without adopting anything.
TEST_F(GemmRunnerTest, AdoptedChoicesGiveTheSameBits) {
  GemmProblem p{CUBLAS_OP_N, CUBLAS_OP_T, 96, 200, 512, 96, 200, 96, CUDA_R_16BF, CUDA_R_32F};
  Operands o(p, 11);
  ASSERT_TRUE(runner_->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  const std::vector<char> first = o.d.Bits();
  const GemmChoices choices = runner_->choices();
  ASSERT_EQ(choices.algos.count(p.Key()), 1u);

  auto adopter = NewRunner();
  ASSERT_TRUE(adopter->Adopt(choices).ok());
  EXPECT_EQ(adopter->choices(), choices);  // adopted, not run yet, already reported
  o.d.Upload();
  ASSERT_TRUE(adopter->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  EXPECT_EQ(o.d.Bits(), first);
  EXPECT_EQ(adopter->choices(), choices);

  auto sibling = NewRunner();
  o.d.Upload();
  ASSERT_TRUE(sibling->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  EXPECT_EQ(o.d.Bits(), first);
  EXPECT_EQ(sibling->choices().algos.at(p.Key()), choices.algos.at(p.Key()));
}

TEST_F(GemmRunnerTest, ChoicesFromAnotherGpuOrVersionAreRefused) {
  GemmChoices choices = runner_->choices();
  choices.device = "Some Other GPU";
  absl::Status refused = runner_->Adopt(choices);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("picked on Some Other GPU"), std::string::npos) << refused;
  choices = runner_->choices();
  choices.cublaslt_version += 1;
  EXPECT_EQ(runner_->Adopt(choices).code(), absl::StatusCode::kFailedPrecondition);
}

// An adopted algorithm cuBLASLt rejects for its shape (a damaged or hand-edited file) is timed
// afresh: the result is still right.
TEST_F(GemmRunnerTest, UnusableAdoptedAlgorithmIsTimedAfresh) {
  GemmProblem p{CUBLAS_OP_T, CUBLAS_OP_N, 40, 29, 72, 72, 72, 40, CUDA_R_16BF, CUDA_R_16BF};
  GemmChoices choices = runner_->choices();
  GemmAlgoBytes garbage;
  garbage.fill(0xffffffffffffffffULL);
  choices.algos[p.Key()] = garbage;
  ASSERT_TRUE(runner_->Adopt(choices).ok());
  Operands o(p, 21);
  const std::vector<float> d0 = o.d.host;
  ASSERT_TRUE(runner_->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ExpectProduct(p, o, d0, 0.f);
  EXPECT_NE(runner_->choices().algos.at(p.Key()), garbage);
}

// An adopted algorithm wins over the one this process timed for the shape, is used (the right
// product), and becomes the process's choice: a later runner that adopts nothing takes it.
TEST_F(GemmRunnerTest, AdoptedAlgorithmWinsAndIsRemembered) {
  GemmProblem p{CUBLAS_OP_T, CUBLAS_OP_N, 128, 96, 320, 320, 320, 128, CUDA_R_16BF, CUDA_R_32F};
  Operands o(p, 31);
  const std::vector<float> d0 = o.d.host;
  ASSERT_TRUE(runner_->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  const GemmAlgoBytes timed = runner_->choices().algos.at(p.Key());
  GemmAlgoBytes other{};
  bool found = false;
  auto candidates = runner_->CandidatesFor(p, 8);
  ASSERT_TRUE(candidates.ok()) << candidates.status();
  for (const GemmAlgoBytes& c : *candidates) {
    if (c != timed) {
      other = c;
      found = true;
      break;
    }
  }
  if (!found) GTEST_SKIP() << "cuBLASLt offers one algorithm for this shape";
  GemmChoices choices = runner_->choices();
  choices.algos[p.Key()] = other;
  auto adopter = NewRunner();
  ASSERT_TRUE(adopter->Adopt(choices).ok());
  o.d.Upload();
  ASSERT_TRUE(adopter->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(adopter->choices().algos.at(p.Key()), other);
  ExpectProduct(p, o, d0, 0.f);
  auto later = NewRunner();
  o.d.Upload();
  ASSERT_TRUE(later->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  EXPECT_EQ(later->choices().algos.at(p.Key()), other);
  // Adopting for a shape a runner has already run switches it too.
  choices.algos[p.Key()] = timed;
  ASSERT_TRUE(later->Adopt(choices).ok());
  EXPECT_EQ(later->choices().algos.at(p.Key()), timed);
}

// A shape marked untimed (one that changes from call to call) runs cuBLASLt's first candidate:
// the right product, and nothing recorded.
TEST_F(GemmRunnerTest, UntimedShapesRunButAreNotRecorded) {
  GemmProblem p{CUBLAS_OP_N, CUBLAS_OP_T, 48, 88, 53, 48, 88, 48, CUDA_R_16BF, CUDA_R_32F};
  p.timed = false;
  Operands o(p, 41);
  const std::vector<float> d0 = o.d.host;
  ASSERT_TRUE(runner_->Run(p, o.a.dev, o.b.dev, o.d.dev, 0.f).ok());
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ExpectProduct(p, o, d0, 0.f);
  EXPECT_TRUE(runner_->choices().algos.empty());
}

}  // namespace
}  // namespace rwr::trainer
