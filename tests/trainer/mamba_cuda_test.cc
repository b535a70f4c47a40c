// The CUDA Mamba LM (device machine; skips without a GPU) against the Hugging Face fixtures and
// the CPU path. Tolerances: fp32 — logits rel ≤ 1e-4, each gradient rel ≤ 1e-3 (the scan kernels
// use fast-math exp); bf16 (bf16 activations and weights, fp32 accumulation) — logits rel ≤ 2e-2,
// gradients ≤ 6e-2. Chunked equals unchunked (rel ≤ 1e-4 fp32); three AdamW steps reproduce
// torch's losses; two runs give the same bits.
#include "trainer/mamba_cuda.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "storage/safetensors.h"
#include "storage/shard.h"
#include "tests/support/shard_dataset.h"
#include "tests/support/temp_dir.h"
#include "tests/trainer/hf_fixture.h"
#include "trainer/checkpoint.h"
#include "trainer/mamba_cuda_kernels.h"
#include "trainer/model_io.h"
#include "trainer/rng.h"
#include "trainer/train_loop.h"

namespace rwr::trainer {
namespace {

using testing::RelErr;
using Fixture = testing::HfFixture;
const std::string& kDir = testing::kHfFixtureDir;
Fixture LoadFixture() { return testing::LoadHfFixture(); }

class MambaCudaTest : public ::testing::TestWithParam<GemmPrecision> {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }
  bool fp32() const { return GetParam() == GemmPrecision::kFp32; }
};

TEST_P(MambaCudaTest, LogitsLossAndGradientsMatchHuggingFace) {
  Fixture f = LoadFixture();
  auto model = MambaCuda::Create(f.model.config, GetParam());
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_TRUE((*model)->UploadParams(f.model.params).ok());
  std::vector<float> logits(f.B * f.T * f.model.config.vocab_size);
  auto loss = (*model)->Forward(f.batch(), 0, logits.data());
  ASSERT_TRUE(loss.ok()) << loss.status();
  auto outputs = *storage::SafetensorsFile::Open(kDir + "/outputs.safetensors");
  const double logits_rel = RelErr(logits, *outputs->ReadFloat("logits"));
  EXPECT_LT(logits_rel, fp32() ? 1e-4 : 2e-2);
  std::ifstream in(kDir + "/expected.json");
  const double expected = nlohmann::json::parse(in)["loss"].get<double>();
  EXPECT_NEAR(loss->loss_sum / loss->tokens, expected, (fp32() ? 1e-4 : 2e-2) * expected);

  ASSERT_TRUE((*model)->ZeroGrads().ok());
  auto fb = (*model)->ForwardBackward(f.batch(), 0, 1.f / f.count);
  ASSERT_TRUE(fb.ok()) << fb.status();
  std::vector<float> grads(f.model.params.size());
  ASSERT_TRUE((*model)->DownloadGrads(grads).ok());
  double worst = 0;
  for (const ParamSpec& spec : (*model)->layout().specs()) {
    const double rel = RelErr({grads.data() + spec.offset, size_t(spec.size)},
                              *outputs->ReadFloat("grad." + spec.name));
    EXPECT_LT(rel, fp32() ? 1e-3 : 6e-2) << spec.name;
    worst = std::max(worst, rel);
  }
  std::cout << (fp32() ? "fp32" : "bf16") << ": logits rel " << logits_rel
            << ", worst gradient rel " << worst << "\n";
}

TEST_P(MambaCudaTest, ChunkedEqualsUnchunked) {
  Fixture f = LoadFixture();
  f.reset[1 * f.T + 17] = 1;
  auto model = *MambaCuda::Create(f.model.config, GetParam());
  ASSERT_TRUE(model->UploadParams(f.model.params).ok());
  std::vector<float> full(f.model.params.size()), part(f.model.params.size());
  ASSERT_TRUE(model->ZeroGrads().ok());
  auto a = model->ForwardBackward(f.batch(), 0, 0.01f);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(model->DownloadGrads(full).ok());
  ASSERT_TRUE(model->ZeroGrads().ok());
  auto b = model->ForwardBackward(f.batch(), 16, 0.01f);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_TRUE(model->DownloadGrads(part).ok());
  EXPECT_NEAR(a->loss_sum, b->loss_sum, (fp32() ? 1e-5 : 1e-3) * a->loss_sum);
  EXPECT_LT(RelErr(part, full), fp32() ? 1e-4 : 2e-2);
}

// ZeroGrads clears nothing: each gradient's first writer overwrites it, later ones add. Large
// stale gradients must not show through in any tensor, two calls must add up, and a chunk
// without loss rows (the last one, which the backward takes first: the head does not write the
// tied embedding there) must leave the embedding's other rows at zero. Between ZeroGrads and the
// first backward, the download and the optimizer both see zeros.
TEST_P(MambaCudaTest, GradientsAccumulateFromZeroGradsOn) {
  Fixture f = LoadFixture();
  for (int64_t b = 0; b < f.B; ++b) {
    for (int64_t t = 16; t < f.T; ++t) f.mask[b * f.T + t] = 0;
  }
  auto model = *MambaCuda::Create(f.model.config, GetParam());
  ASSERT_TRUE(model->UploadParams(f.model.params).ok());
  const size_t n = f.model.params.size();
  auto per_tensor = [&](const std::vector<float>& got, const std::vector<float>& want, double tol,
                        const char* what) {
    for (const ParamSpec& spec : model->layout().specs()) {
      EXPECT_LT(RelErr({got.data() + spec.offset, size_t(spec.size)},
                       {want.data() + spec.offset, size_t(spec.size)}),
                tol)
          << what << ": " << spec.name;
    }
  };
  std::vector<float> once(n), twice(n), chunked(n), none(n, 1.f);
  ASSERT_TRUE(model->ZeroGrads().ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 0.01f).ok());
  ASSERT_TRUE(model->DownloadGrads(once).ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 0.01f).ok());  // adds to the first call's
  ASSERT_TRUE(model->DownloadGrads(twice).ok());
  std::vector<float> doubled = once;
  for (float& g : doubled) g *= 2;
  per_tensor(twice, doubled, 1e-5, "two calls");

  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 100.f).ok());  // large stale sums
  ASSERT_TRUE(model->ZeroGrads().ok());                           // ... stay in memory, forgotten
  ASSERT_TRUE(model->DownloadGrads(none).ok());
  EXPECT_TRUE(std::all_of(none.begin(), none.end(), [](float g) { return g == 0.f; }))
      << "gradients read before any writer are not zero";
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 16, 0.01f).ok());
  ASSERT_TRUE(model->DownloadGrads(chunked).ok());
  per_tensor(chunked, once, fp32() ? 1e-4 : 2e-2, "chunked after stale sums");
  // The optimizer reads the same gradients the download showed.
  auto norm = model->ClipAndStep(0, 0, AdamWOptions{});
  ASSERT_TRUE(norm.ok()) << norm.status();
  double sumsq = 0;
  for (float g : chunked) sumsq += double(g) * g;
  EXPECT_NEAR(*norm, std::sqrt(sumsq), 1e-5 * std::sqrt(sumsq));

  // The optimizer right after ZeroGrads (stale sums in memory) sees a zero gradient.
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 100.f).ok());
  ASSERT_TRUE(model->ZeroGrads().ok());
  auto zero = model->ClipAndStep(0, 0, AdamWOptions{});
  ASSERT_TRUE(zero.ok()) << zero.status();
  EXPECT_EQ(*zero, 0.0);
}

// ZeroGrads(calls) announces the accumulation: the calls up to it add as without, one past it is
// refused (with collectives the last call has summed the gradients over the ranks), and the
// count ends with ClipAndStep. A negative count is refused.
TEST_P(MambaCudaTest, AnAnnouncedAccumulationRefusesACallPastIt) {
  Fixture f = LoadFixture();
  auto model = *MambaCuda::Create(f.model.config, GetParam());
  ASSERT_TRUE(model->UploadParams(f.model.params).ok());
  const size_t n = f.model.params.size();
  std::vector<float> counted(n), plain(n);
  ASSERT_TRUE(model->ZeroGrads(2).ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 0.01f).ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 16, 0.01f).ok());
  auto past = model->ForwardBackward(f.batch(), 0, 0.01f);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(past.status().message().find("call 3 of an accumulation ZeroGrads announced as 2"),
            std::string::npos)
      << past.status();
  ASSERT_TRUE(model->DownloadGrads(counted).ok());
  ASSERT_TRUE(model->ZeroGrads().ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 0.01f).ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 16, 0.01f).ok());
  ASSERT_TRUE(model->DownloadGrads(plain).ok());
  EXPECT_EQ(counted, plain);  // the refused call added nothing

  ASSERT_TRUE(model->ZeroGrads(1).ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 0.01f).ok());
  ASSERT_TRUE(model->ClipAndStep(1.0, 1e-3, AdamWOptions{}).ok());
  EXPECT_TRUE(model->ForwardBackward(f.batch(), 0, 0.01f).ok()) << "the count outlived the step";

  auto negative = model->ZeroGrads(-1);
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument) << negative;
}

// Same inputs, same bits: gradients, loss and the updated parameters of two runs (the embedding,
// norm-weight and gradient-norm sums have a fixed order; no float atomics).
// Two runs give the same bits — and so does a run that recomputes the normed input, conv output
// and Δraw in the backward instead of keeping them (SetKeepActivations(false)); the keeping run
// holds more memory, which shows that it kept them.
TEST_P(MambaCudaTest, TwoRunsGiveTheSameBits) {
  Fixture f = LoadFixture();
  f.reset[1 * f.T + 17] = 1;
  auto run = [&](bool keep, std::vector<float>* grads, std::vector<float>* params, double* loss,
                 int64_t* peak) {
    auto model = *MambaCuda::Create(f.model.config, GetParam());
    model->SetKeepActivations(keep);
    ASSERT_TRUE(model->UploadParams(f.model.params).ok());
    ASSERT_TRUE(model->ZeroGrads().ok());
    auto r = model->ForwardBackward(f.batch(), 16, 1.f / f.count);
    ASSERT_TRUE(r.ok()) << r.status();
    *loss = r->loss_sum;
    *peak = model->peak_bytes();
    grads->resize(f.model.params.size());
    ASSERT_TRUE(model->DownloadGrads(*grads).ok());
    ASSERT_TRUE(model->ClipAndStep(1.0, 1e-3, AdamWOptions{}).ok());
    params->resize(f.model.params.size());
    ASSERT_TRUE(model->DownloadParams(*params).ok());
  };
  std::vector<float> g1, g2, g3, p1, p2, p3;
  double l1 = 0, l2 = 0, l3 = 0;
  int64_t peak1 = 0, peak2 = 0, peak3 = 0;
  run(true, &g1, &p1, &l1, &peak1);
  run(true, &g2, &p2, &l2, &peak2);
  run(false, &g3, &p3, &l3, &peak3);
  EXPECT_EQ(l1, l2);
  EXPECT_TRUE(g1 == g2) << "gradients differ between runs";
  EXPECT_TRUE(p1 == p2) << "updated parameters differ between runs";
  EXPECT_EQ(l1, l3);
  EXPECT_TRUE(g1 == g3) << "gradients differ between keeping and recomputing activations";
  EXPECT_TRUE(p1 == p3) << "updated parameters differ between keeping and recomputing";
  EXPECT_GT(peak1, peak3) << "the keeping run kept nothing";
}

// The head's last block of loss rows changes size from batch to batch: its GEMMs run untimed, so
// a new mask adds no GEMM choices (the run directory's gemm_algos.json does not grow every step).
TEST_P(MambaCudaTest, ChangingLossRowsAddNoGemmChoices) {
  Fixture f = LoadFixture();
  auto model = *MambaCuda::Create(f.model.config, GetParam());
  ASSERT_TRUE(model->UploadParams(f.model.params).ok());
  ASSERT_TRUE(model->ZeroGrads().ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 16, 1.f / f.count).ok());
  const GemmChoices first = model->gemm_choices();
  EXPECT_FALSE(first.algos.empty());
  for (int drop : {3, 7}) {
    for (size_t i = 0; i < f.mask.size(); i += drop) f.mask[i] = 0;
    ASSERT_TRUE(model->ZeroGrads().ok());  // else the weight-gradient GEMMs add: other shapes
    ASSERT_TRUE(model->ForwardBackward(f.batch(), 16, 1.f / f.count).ok());
    EXPECT_EQ(model->gemm_choices(), first) << "after dropping every " << drop << "th loss row";
  }
}

// The norm backward kernel against a double-precision host reference, at widths that take
// different register layouts: 48, Mamba-2.8B's 2560, 5120 and the 16384 limit.
TEST(MambaCudaKernels, RmsNormBackwardMatchesHost) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  for (const int64_t D : {48, 2560, 5120, 16384}) {
    const int64_t rows = 37, n = rows * D;
    Rng rng(static_cast<uint64_t>(D));
    auto uniform = [&] { return static_cast<float>(2 * rng.Uniform() - 1); };
    std::vector<float> x(n), w(D), dy(n), dx(n), rstd(rows);
    for (auto* v : {&x, &dy, &dx, &w}) {
      for (float& e : *v) e = uniform();
    }
    std::vector<double> want_dx(dx.begin(), dx.end()), want_dw(D, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      double ss = 0;
      for (int64_t d = 0; d < D; ++d) ss += double(x[r * D + d]) * x[r * D + d];
      rstd[r] = static_cast<float>(1 / std::sqrt(ss / D + 1e-5));
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += double(dy[r * D + d]) * w[d] * x[r * D + d] * rstd[r];
      for (int64_t d = 0; d < D; ++d) {
        const double xh = double(x[r * D + d]) * rstd[r];
        want_dx[r * D + d] += rstd[r] * (dy[r * D + d] * w[d] - xh * dot / D);
        want_dw[d] += dy[r * D + d] * xh;
      }
    }
    auto upload = [](const std::vector<float>& h) {
      void* p = nullptr;
      EXPECT_EQ(cudaMalloc(&p, h.size() * 4), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
      return static_cast<float*>(p);
    };
    float *gx = upload(x), *gw = upload(w), *gdy = upload(dy), *gdx = upload(dx),
          *grstd = upload(rstd),
          // Overwritten (dw_add false), never read: NaN would show through an add.
              *gdw = upload(std::vector<float>(D, std::numeric_limits<float>::quiet_NaN())),
          *gscratch = upload(std::vector<float>(cuda::RmsNormBackwardScratch(rows, D), 0.f));
    void* gact = nullptr;
    ASSERT_EQ(cudaMalloc(&gact, n * 2), cudaSuccess);
    const absl::Status st = cuda::RmsNormBackward(gx, gw, grstd, gdy, gdx, gact, cuda::Act::kBF16,
                                                  gdw, false, gscratch, rows, D, nullptr);
    ASSERT_TRUE(st.ok()) << "D " << D << ": " << st;
    std::vector<float> got_dx(n), got_dw(D);
    std::vector<uint16_t> got_act(n);
    ASSERT_EQ(cudaMemcpy(got_dx.data(), gdx, n * 4, cudaMemcpyDeviceToHost), cudaSuccess) << D;
    ASSERT_EQ(cudaMemcpy(got_dw.data(), gdw, D * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(got_act.data(), gact, n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
    for (void* p : {static_cast<void*>(gx), static_cast<void*>(gw), static_cast<void*>(gdy),
                    static_cast<void*>(gdx), static_cast<void*>(grstd), static_cast<void*>(gdw),
                    static_cast<void*>(gscratch), gact}) {
      cudaFree(p);
    }
    std::vector<float> act(n);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t bits = uint32_t(got_act[i]) << 16;
      std::memcpy(&act[i], &bits, 4);
    }
    EXPECT_LT(RelErr(got_dx, std::vector<float>(want_dx.begin(), want_dx.end())), 1e-5) << D;
    EXPECT_LT(RelErr(got_dw, std::vector<float>(want_dw.begin(), want_dw.end())), 1e-5) << D;
    EXPECT_LT(RelErr(act, got_dx), 1e-2) << "bf16 copy, D " << D;
  }
}

// chunk_len 0 runs whole rows when they fit, else the largest halving that does, with the same
// result; a chunk_len that does not fit is an error that names the setting.
// The chunk fitting (kept activations off: they would take the memory the test measures), then
// kept activations never shrinking a chunk: they use only what a whole-row chunk leaves.
TEST(MambaCudaMemory, AutoChunkFitsTheMemoryLeft) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  Fixture f = LoadFixture();
  auto whole = *MambaCuda::Create(f.model.config, GemmPrecision::kFp32);
  whole->SetKeepActivations(false);
  ASSERT_TRUE(whole->UploadParams(f.model.params).ok());
  ASSERT_TRUE(whole->ZeroGrads().ok());
  auto a = whole->ForwardBackward(f.batch(), 0, 0.01f);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(whole->last_chunk_len(), f.T);
  std::vector<float> full(f.model.params.size()), part(f.model.params.size());
  ASSERT_TRUE(whole->DownloadGrads(full).ok());

  auto tight = *MambaCuda::Create(f.model.config, GemmPrecision::kFp32);
  tight->SetKeepActivations(false);
  tight->SetMemoryBudget(whole->peak_bytes() - 1);
  ASSERT_TRUE(tight->UploadParams(f.model.params).ok());
  ASSERT_TRUE(tight->ZeroGrads().ok());
  auto b = tight->ForwardBackward(f.batch(), 0, 0.01f);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_LT(tight->last_chunk_len(), f.T);
  ASSERT_TRUE(tight->DownloadGrads(part).ok());
  EXPECT_NEAR(a->loss_sum, b->loss_sum, 1e-5 * a->loss_sum);
  EXPECT_LT(RelErr(part, full), 1e-4);

  auto too_big = tight->ForwardBackward(f.batch(), f.T, 0.01f);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(too_big.status().message().find("train.chunk_len"), std::string_view::npos)
      << too_big.status();

  // Keeping on, with just the memory the whole row needs without them: still the whole row, and
  // nothing kept (the same peak); with room for them, the same gradients from more memory.
  auto keeper = *MambaCuda::Create(f.model.config, GemmPrecision::kFp32);
  keeper->SetMemoryBudget(whole->peak_bytes());
  ASSERT_TRUE(keeper->UploadParams(f.model.params).ok());
  ASSERT_TRUE(keeper->ZeroGrads().ok());
  auto c = keeper->ForwardBackward(f.batch(), 0, 0.01f);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(keeper->last_chunk_len(), f.T);
  EXPECT_EQ(keeper->peak_bytes(), whole->peak_bytes());
  keeper->SetMemoryBudget(0);
  ASSERT_TRUE(keeper->ZeroGrads().ok());
  auto e = keeper->ForwardBackward(f.batch(), 0, 0.01f);
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_GT(keeper->peak_bytes(), whole->peak_bytes());
  ASSERT_TRUE(keeper->DownloadGrads(part).ok());
  EXPECT_TRUE(part == full) << "kept activations changed the gradients";
}

TEST_P(MambaCudaTest, ThreeAdamWStepsMatchTorch) {
  Fixture f = LoadFixture();
  std::ifstream in(kDir + "/expected.json");
  const nlohmann::json hp = nlohmann::json::parse(in)["adamw"];
  auto model = *MambaCuda::Create(f.model.config, GetParam());
  ASSERT_TRUE(model->UploadParams(f.model.params).ok());
  const AdamWOptions options{hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]};
  for (int step = 0; step < 4; ++step) {
    ASSERT_TRUE(model->ZeroGrads().ok());
    auto loss = model->ForwardBackward(f.batch(), 0, 1.f / f.count);
    ASSERT_TRUE(loss.ok()) << loss.status();
    const double expected = hp["losses"][step].get<double>();
    EXPECT_NEAR(loss->loss_sum / loss->tokens, expected, (fp32() ? 1e-4 : 3e-2) * expected)
        << "step " << step;
    if (step == 3) break;
    auto norm = model->ClipAndStep(hp["clip_norm"], hp["lr"], options);
    ASSERT_TRUE(norm.ok()) << norm.status();
    EXPECT_NEAR(*norm, hp["grad_norms_before_clip"][step].get<double>(),
                (fp32() ? 1e-4 : 5e-2) * *norm);
  }
}

// A checkpoint downloads the moments into the last checkpoint's vectors: what they held before
// never shows, before the first update (zeros) or after it (the moments of a fresh download).
TEST_P(MambaCudaTest, DownloadOptimizerIntoUsedVectorsGivesWhatAFreshOneDoes) {
  Fixture f = LoadFixture();
  auto model = *MambaCuda::Create(f.model.config, GetParam());
  ASSERT_TRUE(model->UploadParams(f.model.params).ok());
  const size_t n =
      static_cast<size_t>(model->optimizer_range().end - model->optimizer_range().begin);
  std::vector<float> m(n, 7.f), v(n, 7.f);
  int64_t step = -1;
  ASSERT_TRUE(model->DownloadOptimizer(&m, &v, &step).ok());
  EXPECT_EQ(step, 0);
  EXPECT_EQ(m, std::vector<float>(n, 0.f));
  EXPECT_EQ(v, std::vector<float>(n, 0.f));
  ASSERT_TRUE(model->ZeroGrads().ok());
  ASSERT_TRUE(model->ForwardBackward(f.batch(), 0, 1.f / f.count).ok());
  ASSERT_TRUE(model->ClipAndStep(1.0, 1e-2, {0.9, 0.95, 1e-8, 0.1}).ok());
  std::fill(m.begin(), m.end(), 7.f);
  std::fill(v.begin(), v.end(), 7.f);
  std::vector<float> fresh_m, fresh_v;
  ASSERT_TRUE(model->DownloadOptimizer(&m, &v, &step).ok());
  ASSERT_TRUE(model->DownloadOptimizer(&fresh_m, &fresh_v, &step).ok());
  EXPECT_EQ(step, 1);
  EXPECT_EQ(m, fresh_m);
  EXPECT_EQ(v, fresh_v);
  EXPECT_NE(fresh_v, std::vector<float>(n, 0.f));
}

// On one GPU AdamW runs bucket by bucket on a second stream, overlapping the next forward (each
// layer waits for its own bucket): the same losses, logits, weights and moments to the bit as the
// update run in line, through steps, an evaluation forward and the downloads.
TEST_P(MambaCudaTest, OverlappedOptimizerGivesTheBitsOfAnInLineOne) {
  Fixture f = LoadFixture();
  const AdamWOptions options{0.9, 0.95, 1e-8, 0.1};
  struct Run {
    std::vector<double> losses;
    std::vector<float> logits, params, exp_avg, exp_avg_sq;
  };
  auto run = [&](bool overlap, const GemmChoices* choices) -> std::pair<Run, GemmChoices> {
    auto model = *MambaCuda::Create(f.model.config, GetParam());
    model->SetOverlapOptimizer(overlap);
    if (choices != nullptr) EXPECT_TRUE(model->AdoptGemmChoices(*choices).ok());
    EXPECT_TRUE(model->UploadParams(f.model.params).ok());
    Run r;
    for (int step = 0; step < 3; ++step) {
      EXPECT_TRUE(model->ZeroGrads().ok());
      auto loss = model->ForwardBackward(f.batch(), 0, 1.f / f.count);
      EXPECT_TRUE(loss.ok()) << loss.status();
      r.losses.push_back(loss->loss_sum);
      auto norm = model->ClipAndStep(1.0, 1e-2, options);
      EXPECT_TRUE(norm.ok()) << norm.status();
    }
    r.logits.resize(f.B * f.T * f.model.config.vocab_size);
    EXPECT_TRUE(model->Forward(f.batch(), 0, r.logits.data()).ok());
    r.params.resize(f.model.params.size());
    EXPECT_TRUE(model->DownloadParams(r.params).ok());
    int64_t adam_step = 0;
    EXPECT_TRUE(model->DownloadOptimizer(&r.exp_avg, &r.exp_avg_sq, &adam_step).ok());
    EXPECT_EQ(adam_step, 3);
    return {r, model->gemm_choices()};
  };
  auto [in_line, choices] = run(false, nullptr);
  const Run overlapped = run(true, &choices).first;  // the same GEMM algorithms
  EXPECT_EQ(overlapped.losses, in_line.losses);
  EXPECT_EQ(overlapped.logits, in_line.logits);
  EXPECT_EQ(overlapped.params, in_line.params);
  EXPECT_EQ(overlapped.exp_avg, in_line.exp_avg);
  EXPECT_EQ(overlapped.exp_avg_sq, in_line.exp_avg_sq);
}

// `rwr train` on the GPU follows the CPU run's losses (fp32 GEMMs, rel 1e-3 over 6 steps with
// warmup), and resumes from a checkpoint it wrote to the same losses, bit for bit.
std::string MakeDataset(const std::string& dir) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  storage::ShardManifest manifest;
  manifest.vocab_size = 97;
  manifest.seq_len = 40;
  storage::ShardWriter writer(dir + "/shard_0.rws", {.vocab_size = 97, .seq_len = 40});
  Rng rng(11);
  for (int r = 0; r < 24; ++r) {
    writer.BeginRow();
    for (int doc = 0; doc < 2; ++doc) {
      std::vector<uint32_t> tokens;
      std::vector<uint8_t> mask;
      uint32_t t = rng.Next() % 97;
      for (int i = 0; i < 20; ++i, t = (5 * t + 2) % 97) {
        tokens.push_back(t);
        mask.push_back(i >= 4);
      }
      EXPECT_TRUE(writer.AddDocument(tokens, mask).ok());
    }
  }
  rwr::testing::FinishOneShardDataset(writer, manifest, dir, "shard_0.rws");
  return dir;
}

std::map<int64_t, double> Losses(const std::string& out) {
  std::map<int64_t, double> losses;
  std::ifstream in(out + "/metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    losses[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return losses;
}

TEST(TrainCuda, GpuRunFollowsCpuRunAndResumes) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const std::string root = rwr::testing::FreshTempDir("train_cuda", "follows_cpu");
  const std::string data = MakeDataset(root + "/data");
  auto config_for = [&](const std::string& out, const std::string& device,
                        std::vector<std::string> extra) {
    Config config = DefaultTrainConfig();
    auto body = Config::Parse(fmt::format(R"(
model: {{hidden_size: 32, num_hidden_layers: 2, vocab_size: 97, state_size: 16, time_step_rank: 2}}
data: {{dir: {}, seed: 1}}
train: {{out_dir: {}, steps: 6, batch_size: 2, grad_accum: 2, lr: 0.01, warmup_steps: 2,
        chunk_len: 16, checkpoint_every: 0, log_every: 100, device: {}, gemm_precision: fp32}}
)",
                                          data, out, device),
                              "test");
    EXPECT_TRUE(body.ok());
    config.Merge(*body);
    EXPECT_TRUE(config.SetAll(extra).ok());
    return config;
  };
  std::filesystem::remove_all(root + "/cpu");
  std::filesystem::remove_all(root + "/gpu");
  std::filesystem::remove_all(root + "/gpu_resumed");
  SingleRankCommunicator comm;
  ASSERT_TRUE(Train(config_for(root + "/cpu", "cpu", {}), &comm).ok());
  auto gpu = Train(config_for(root + "/gpu", "cuda", {}), &comm);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  const auto cpu_losses = Losses(root + "/cpu"), gpu_losses = Losses(root + "/gpu");
  ASSERT_EQ(gpu_losses.size(), 6u);
  for (const auto& [step, loss] : cpu_losses) {
    EXPECT_NEAR(gpu_losses.at(step), loss, 1e-3 * loss) << "step " << step;
  }
  // The GEMM algorithms the run timed are kept beside its checkpoints.
  auto read_algos = [](const std::string& dir) {
    std::ifstream in(dir + "/gemm_algos.json");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return GemmChoices::FromJson(text, dir);
  };
  auto algos = read_algos(root + "/gpu");
  ASSERT_TRUE(algos.ok()) << algos.status();
  EXPECT_GE(algos->algos.size(), 8u);  // the layer's GEMMs and the head's
  auto part =
      Train(config_for(root + "/gpu_resumed", "cuda", {"train.max_steps_this_run=3"}), &comm);
  ASSERT_TRUE(part.ok()) << part.status();
  // A file from another GPU type is set aside (timed afresh, rewritten), not an error.
  GemmChoices foreign = *algos;
  foreign.device = "Some Other GPU";
  std::ofstream(root + "/gpu_resumed/gemm_algos.json") << foreign.ToJson();
  auto rest = Train(config_for(root + "/gpu_resumed", "cuda", {}), &comm);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->start_step, 3);
  auto rewritten = read_algos(root + "/gpu_resumed");
  ASSERT_TRUE(rewritten.ok()) << rewritten.status();
  EXPECT_EQ(rewritten->device, algos->device);
  const auto resumed = Losses(root + "/gpu_resumed");
  // The GPU path is deterministic, so the resumed run repeats the uninterrupted one exactly.
  for (int64_t step = 4; step <= 6; ++step) {
    EXPECT_EQ(resumed.at(step), gpu_losses.at(step)) << step;
  }

  // The bf16 training path: close to fp32, and a resumed run exact too (the bf16 weight copy is
  // rebuilt from the fp32 master weights on resume, as every AdamW step rebuilds it).
  const std::vector<std::string> bf16{"train.gemm_precision=bf16"};
  std::filesystem::remove_all(root + "/gpu16");
  std::filesystem::remove_all(root + "/gpu16_resumed");
  ASSERT_TRUE(Train(config_for(root + "/gpu16", "cuda", bf16), &comm).ok());
  std::vector<std::string> first_half = bf16;
  first_half.push_back("train.max_steps_this_run=3");
  ASSERT_TRUE(Train(config_for(root + "/gpu16_resumed", "cuda", first_half), &comm).ok());
  ASSERT_TRUE(Train(config_for(root + "/gpu16_resumed", "cuda", bf16), &comm).ok());
  const auto losses16 = Losses(root + "/gpu16"), resumed16 = Losses(root + "/gpu16_resumed");
  ASSERT_EQ(losses16.size(), 6u);
  for (int64_t step = 1; step <= 6; ++step) {
    EXPECT_NEAR(losses16.at(step), gpu_losses.at(step), 2e-2 * gpu_losses.at(step)) << step;
    EXPECT_EQ(resumed16.at(step), losses16.at(step)) << step;
  }
}

// A model made for inference (generation, eval) holds no gradients: at least the parameters'
// fp32 bytes less than a training model after the same upload and forward, the same logits (with
// the training model's GEMM algorithms), and the training calls refused with a line saying why.
TEST_P(MambaCudaTest, AModelForInferenceHoldsNoGradients) {
  Fixture f = LoadFixture();
  auto train = *MambaCuda::Create(f.model.config, GetParam());
  auto made = MambaCuda::CreateForInference(f.model.config, GetParam());
  ASSERT_TRUE(made.ok()) << made.status();
  std::unique_ptr<MambaCuda> infer = std::move(*made);
  const int64_t V = f.model.config.vocab_size;
  std::vector<float> trained(f.B * f.T * V), inferred(trained.size());
  ASSERT_TRUE(train->UploadParams(f.model.params).ok());
  ASSERT_TRUE(train->Forward(f.batch(), 0, trained.data()).ok());
  ASSERT_TRUE(infer->AdoptGemmChoices(train->gemm_choices()).ok());
  ASSERT_TRUE(infer->UploadParams(f.model.params).ok());
  ASSERT_TRUE(infer->Forward(f.batch(), 0, inferred.data()).ok());
  EXPECT_EQ(trained, inferred);
  // No gradients; in bf16 also no fp32 copy of the GEMM weights, of which the upload stages at
  // most one tensor at a time (an in_proj: a sixth of them here).
  const int64_t grad_bytes = static_cast<int64_t>(f.model.params.size()) * 4;
  int64_t gemm_fp32_bytes = 0;
  for (int64_t l = 0; l < f.model.config.n_layer; ++l) {
    const std::string layer = fmt::format("backbone.layers.{}.mixer.", l);
    for (const char* name :
         {"in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight"}) {
      gemm_fp32_bytes += infer->layout().Find(layer + name)->size * 4;
    }
  }
  const int64_t fp32_saved = GetParam() == GemmPrecision::kBf16 ? gemm_fp32_bytes / 2 : 0;
  EXPECT_LE(infer->peak_bytes() + grad_bytes + fp32_saved, train->peak_bytes());
  std::vector<float> downloaded(f.model.params.size());
  EXPECT_EQ(infer->DownloadParams(downloaded).ok(), GetParam() == GemmPrecision::kFp32);

  auto step = infer->ForwardBackward(f.batch(), 0, 1.f);
  ASSERT_FALSE(step.ok());
  EXPECT_EQ(step.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(step.status().message().find("made for inference"), std::string::npos)
      << step.status();
  EXPECT_FALSE(infer->ClipAndStep(1.0, 1e-3, AdamWOptions{}).ok());
  std::vector<float> grads(f.model.params.size());
  EXPECT_FALSE(infer->DownloadGrads(grads).ok());
}

INSTANTIATE_TEST_SUITE_P(Precisions, MambaCudaTest,
                         ::testing::Values(GemmPrecision::kFp32, GemmPrecision::kBf16),
                         [](const auto& info) {
                           return info.param == GemmPrecision::kFp32 ? "fp32" : "bf16";
                         });

}  // namespace
}  // namespace rwr::trainer
