// Generation on the GPU (device machine; skips without one), the twin of generate_test.cc's CPU
// tests: greedy tokens and every step's logits against Hugging Face's cached generation, the
// logits after any split of a sequence into Advance calls against the CPU model's, rows of
// unequal length run together against each row alone, Reset, and two runs giving the same bits.
// Tolerances as mamba_cuda_test.cc: logits relative error ≤ 1e-4 in fp32, ≤ 2e-2 in bf16 (bf16
// weights and activations, fp32 accumulation).
#include <gtest/gtest.h>

#include <array>

#include "storage/safetensors.h"
#include "tests/trainer/hf_fixture.h"
#include "trainer/few_rows_linear.h"
#include "trainer/generate.h"
#include "trainer/mamba_cpu.h"
#include "trainer/mamba_cuda.h"
#include "trainer/model_io.h"
#include "trainer/param_layout.h"

namespace rwr::trainer {
namespace {

using testing::RelErr;

class GenerateCudaTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }
  double tolerance() const { return GetParam() == "fp32" ? 1e-4 : 2e-2; }
  std::unique_ptr<Decoder> Cuda(const testing::HfFixture& f) const {
    auto decoder = MakeDecoder(f.model.config, f.model.params, "cuda", GetParam());
    EXPECT_TRUE(decoder.ok()) << decoder.status();
    EXPECT_EQ((*decoder)->device(), "cuda (" + GetParam() + ")");
    return std::move(*decoder);
  }
};

TEST_P(GenerateCudaTest, GreedyTokensAndEveryStepsLogitsMatchHuggingFace) {
  testing::HfFixture f = testing::LoadHfFixture();
  auto file = storage::SafetensorsFile::Open(testing::kHfFixtureDir + "/generate.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<int64_t> prompt64 = *(*file)->ReadInt("prompt_ids");
  const std::vector<int64_t> expected64 = *(*file)->ReadInt("generated_ids");
  const std::vector<int32_t> prompt(prompt64.begin(), prompt64.end());
  const std::vector<int32_t> expected(expected64.begin(), expected64.end());
  const std::vector<float> step_logits = *(*file)->ReadFloat("step_logits");
  const int64_t V = f.model.config.vocab_size;
  std::unique_ptr<Decoder> decoder = Cuda(f);
  std::vector<float> logits(V);
  ASSERT_TRUE(decoder->Advance(prompt, logits).ok());
  double worst = 0;
  for (size_t step = 0; step < expected.size(); ++step) {
    const double rel = RelErr(logits, {step_logits.data() + step * V, size_t(V)});
    EXPECT_LT(rel, tolerance()) << "step " << step;
    worst = std::max(worst, rel);
    ASSERT_TRUE(decoder->Advance(std::span(&expected[step], 1), logits).ok());
  }
  std::cout << GetParam() << ": worst step logits relative error " << worst << "\n";
  ASSERT_TRUE(decoder->Reset().ok());
  TokenSampler greedy(SamplingOptions{});
  auto generated = GenerateTokens(*decoder, prompt, greedy,
                                  {.max_new_tokens = static_cast<int64_t>(expected.size())});
  ASSERT_TRUE(generated.ok()) << generated.status();
  EXPECT_EQ(generated->ids, expected);
}

TEST_P(GenerateCudaTest, AnySplitMatchesTheCpuModelAndTwoRunsGiveTheSameBits) {
  testing::HfFixture f = testing::LoadHfFixture();
  const int64_t T = f.T, V = f.model.config.vocab_size;
  const std::span<const int32_t> tokens(f.tokens.data(), T);
  std::unique_ptr<Decoder> cpu = MakeCpuDecoder(f.model.config, f.model.params);
  std::vector<float> reference(V);
  ASSERT_TRUE(cpu->Advance(tokens, reference).ok());
  std::unique_ptr<Decoder> gpu = Cuda(f);
  std::vector<float> whole_first;
  for (const std::vector<int64_t>& split : std::vector<std::vector<int64_t>>{
           {T}, {1, T - 1}, {10, 1, 1, T - 12}, std::vector<int64_t>(T, 1), {T}}) {
    ASSERT_TRUE(gpu->Reset().ok());
    std::vector<float> logits(V);
    int64_t at = 0;
    for (int64_t n : split) {
      ASSERT_TRUE(gpu->Advance(tokens.subspan(at, n), logits).ok());
      at += n;
    }
    EXPECT_LT(RelErr(logits, reference), tolerance()) << split.size() << " calls";
    if (split.size() == 1) {
      if (whole_first.empty()) {
        whole_first = logits;
      } else {
        EXPECT_EQ(logits, whole_first);  // the same call again: the same bits
      }
    }
  }
  std::vector<float> logits(V);
  const int32_t out_of_range = static_cast<int32_t>(V);
  EXPECT_FALSE(gpu->Advance(std::span(&out_of_range, 1), logits).ok());
}

// Rows of unequal length together (left-padded, a reset at each row's first real token) against
// each row alone on the CPU, then one more token per row from the state each was left with.
TEST_P(GenerateCudaTest, RowsTogetherMatchEachRowAloneOnTheCpu) {
  testing::HfFixture f = testing::LoadHfFixture();
  const int64_t V = f.model.config.vocab_size, width = f.T;
  const std::vector<int64_t> lengths = {f.T, 20, 1, f.T - 5};
  const int64_t rows = static_cast<int64_t>(lengths.size());
  std::unique_ptr<Decoder> cpu = MakeCpuDecoder(f.model.config, f.model.params);
  std::vector<int32_t> tokens;
  std::vector<uint8_t> resets(rows * width, 0);
  std::vector<std::vector<float>> alone;
  const int32_t next = 5;
  for (int64_t r = 0; r < rows; ++r) {
    const std::span<const int32_t> row(f.tokens.data() + (r % 2) * f.T, lengths[r]);
    const int64_t pad = width - lengths[r];
    for (int64_t i = 0; i < pad; ++i) tokens.push_back(static_cast<int32_t>((i * 7) % V));
    tokens.insert(tokens.end(), row.begin(), row.end());
    resets[r * width + pad] = 1;
    std::vector<float> logits(V);
    ASSERT_TRUE(cpu->Reset(1).ok());
    ASSERT_TRUE(cpu->Advance(row, logits).ok());
    ASSERT_TRUE(cpu->Advance(std::span(&next, 1), logits).ok());
    alone.push_back(logits);
  }
  std::unique_ptr<Decoder> gpu = Cuda(f);
  ASSERT_TRUE(gpu->Reset(rows).ok());
  std::vector<float> logits(rows * V);
  ASSERT_TRUE(gpu->Advance(tokens, resets, logits).ok());
  ASSERT_TRUE(gpu->Advance(std::vector<int32_t>(rows, next), logits).ok());
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_LT(RelErr({logits.data() + r * V, size_t(V)}, alone[r]), tolerance()) << "row " << r;
  }
  // A call of another row count than the Reset's is refused.
  std::vector<float> one(V);
  EXPECT_FALSE(gpu->Advance(std::span(&next, 1), one).ok());
}

// Two models of `config` with `params`, one replaying decode steps from a CUDA graph, one launching
// every kernel, each with `rows` sequences started.
std::array<std::unique_ptr<MambaCuda>, 2> GraphAndPlainModels(const MambaConfig& config,
                                                              std::span<const float> params,
                                                              GemmPrecision precision,
                                                              int64_t rows) {
  std::array<std::unique_ptr<MambaCuda>, 2> models;
  for (int i = 0; i < 2; ++i) {
    auto model = MambaCuda::Create(config, precision);
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return {};
    models[i] = std::move(*model);
    EXPECT_TRUE(models[i]->UploadParams(params).ok());
    models[i]->SetDecodeGraphs(i == 0);
    EXPECT_TRUE(models[i]->ResetSequence(rows).ok());
  }
  return models;
}

// Decode steps replayed from a CUDA graph give the bits of the same steps launched one kernel at
// a time: through a prompt, steps, another prompt (new buffers: a new capture) and more steps.
TEST_P(GenerateCudaTest, DecodeGraphsGiveTheBitsOfPlainLaunches) {
  testing::HfFixture f = testing::LoadHfFixture();
  const int64_t V = f.model.config.vocab_size, rows = 3;
  const GemmPrecision precision =
      GetParam() == "fp32" ? GemmPrecision::kFp32 : GemmPrecision::kBf16;
  std::array<std::unique_ptr<MambaCuda>, 2> models =
      GraphAndPlainModels(f.model.config, f.model.params, precision, rows);
  ASSERT_TRUE(models[0] != nullptr);
  auto step_tokens = [&](int step) {
    std::vector<int32_t> ids(rows);
    for (int64_t r = 0; r < rows; ++r) ids[r] = static_cast<int32_t>((step * 31 + r * 7) % V);
    return ids;
  };
  const std::vector<int32_t> prompt(f.tokens.begin(), f.tokens.begin() + rows * 10);
  const std::vector<int32_t> second(f.tokens.begin() + 5, f.tokens.begin() + 5 + rows * 4);
  int call = 0;
  auto both = [&](const std::vector<int32_t>& tokens) {
    std::vector<float> logits[2] = {std::vector<float>(rows * V), std::vector<float>(rows * V)};
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(models[i]->Advance({.tokens = tokens, .rows = rows}, 0, logits[i]).ok())
          << "call " << call;
    }
    EXPECT_EQ(logits[0], logits[1]) << "call " << call;
    ++call;
  };
  both(prompt);
  for (int step = 0; step < 6; ++step) both(step_tokens(step));
  both(second);
  for (int step = 6; step < 10; ++step) both(step_tokens(step));
  EXPECT_TRUE(models[0]->decode_graphs()) << "the steps were not captured (see the warning)";
}

// A model whose every decode GEMM is a few-rows linear in bf16 (dt_rank 8 and x_proj's 40
// columns are whole 16-byte loads; the fixture's 3 and 35 are not, so its dt_proj runs on
// cuBLASLt): the chain where x_proj lets dt_proj start before it ends, against the CPU model at
// every step, and replayed from a graph against plain launches bit for bit.
TEST_P(GenerateCudaTest, EveryGemmAFewRowsLinearMatchesTheCpuModel) {
  MambaConfig c;
  c.d_model = 128;
  c.n_layer = 2;
  c.vocab_size = 512;
  c.d_inner = 256;
  c.dt_rank = 8;
  ASSERT_TRUE(c.Validate().ok());
  if (GetParam() == "fp32") GTEST_SKIP() << "the few-rows linear takes bf16 only";
  // Every decode GEMM's sizes are ones the few-rows linear takes (pointers from cudaMalloc are
  // 256-byte aligned; x_proj's row of R + 2S = 40 is dt_proj's x stride).
  const auto takes = [](int64_t ldx, int64_t n, int64_t k, bool y_f32) {
    void* const aligned = reinterpret_cast<void*>(uintptr_t{1} << 20);
    return cuda::FewRowsLinearApplies({.x = aligned,
                                       .ldx = ldx,
                                       .w = aligned,
                                       .y = aligned,
                                       .ldy = n,
                                       .y_f32 = y_f32,
                                       .rows = 1,
                                       .n = n,
                                       .k = k});
  };
  const int64_t X = c.dt_rank + 2 * c.d_state;
  EXPECT_TRUE(takes(c.d_model, 2 * c.d_inner, c.d_model, false)) << "in_proj";
  EXPECT_TRUE(takes(c.d_inner, X, c.d_inner, false)) << "x_proj";
  EXPECT_TRUE(takes(X, c.d_inner, c.dt_rank, false)) << "dt_proj";
  EXPECT_TRUE(takes(c.d_inner, c.d_model, c.d_inner, true)) << "out_proj";
  EXPECT_TRUE(takes(c.d_model, c.vocab_size, c.d_model, true)) << "lm_head";
  const std::vector<float> params = InitParams(c, 3);
  std::array<std::unique_ptr<MambaCuda>, 2> models =
      GraphAndPlainModels(c, params, GemmPrecision::kBf16, 1);
  ASSERT_TRUE(models[0] != nullptr);
  std::unique_ptr<Decoder> cpu = MakeCpuDecoder(c, params);
  const int64_t V = c.vocab_size;
  for (int call = 0; call < 9; ++call) {
    std::vector<int32_t> tokens(call == 0 ? 9 : 1);
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<int32_t>((call * 37 + i * 11 + 5) % V);
    }
    std::vector<float> logits[3] = {std::vector<float>(V), std::vector<float>(V),
                                    std::vector<float>(V)};
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(models[i]->Advance({.tokens = tokens, .rows = 1}, 0, logits[i]).ok());
    }
    ASSERT_TRUE(cpu->Advance(tokens, logits[2]).ok());
    EXPECT_EQ(logits[0], logits[1]) << "call " << call;
    EXPECT_LT(RelErr(logits[0], logits[2]), tolerance()) << "call " << call;
  }
  EXPECT_TRUE(models[0]->decode_graphs()) << "the steps were not captured (see the warning)";
}

// Parameters uploaded between decode steps reach the next step replayed from the graph: A =
// −exp(A_log) is not part of the graph and is computed again (against plain launches, which
// compute it in every call).
TEST_P(GenerateCudaTest, NewParametersReachTheNextGraphStep) {
  testing::HfFixture f = testing::LoadHfFixture();
  const MambaConfig& c = f.model.config;
  const GemmPrecision precision =
      GetParam() == "fp32" ? GemmPrecision::kFp32 : GemmPrecision::kBf16;
  std::array<std::unique_ptr<MambaCuda>, 2> models =
      GraphAndPlainModels(c, f.model.params, precision, 1);
  ASSERT_TRUE(models[0] != nullptr);
  std::vector<float> changed = f.model.params;  // every layer's A_log moved
  const ParamLayout layout = ParamLayout::ForMamba(c);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    for (int64_t i = 0; i < c.d_inner * c.d_state; ++i) changed[layout.layer(l).A_log + i] += 0.5f;
  }
  const int64_t V = c.vocab_size;
  for (int call = 0; call < 8; ++call) {
    if (call == 4) {
      for (auto& model : models) ASSERT_TRUE(model->UploadParams(changed).ok());
    }
    std::vector<int32_t> tokens(call == 0 ? 6 : 1);
    for (size_t i = 0; i < tokens.size(); ++i) {
      tokens[i] = static_cast<int32_t>((call * 29 + i * 13 + 3) % V);
    }
    std::vector<float> logits[2] = {std::vector<float>(V), std::vector<float>(V)};
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(models[i]->Advance({.tokens = tokens, .rows = 1}, 0, logits[i]).ok());
    }
    EXPECT_EQ(logits[0], logits[1]) << "call " << call;
  }
  EXPECT_TRUE(models[0]->decode_graphs()) << "the steps were not captured (see the warning)";
}

INSTANTIATE_TEST_SUITE_P(Precisions, GenerateCudaTest, ::testing::Values("fp32", "bf16"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace rwr::trainer
