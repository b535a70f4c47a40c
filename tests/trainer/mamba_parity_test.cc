// The CPU Mamba LM against Hugging Face transformers' MambaForCausalLM (fixtures made by
// scripts/make_hf_fixtures.py: float64 reference, odd sizes D 48, L 3, V 997, S 16, R 3, T 37, B
// 2). fp32 tolerances: logits and loss relative error ≤ 1e-5; each parameter's gradient ‖g − g_hf‖
// / ‖g_hf‖ ≤ 1e-4. Chunked processing (state carried forward, gradients backward) equals unchunked
// within 1e-5.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "nlohmann/json.hpp"
#include "storage/safetensors.h"
#include "tests/support/temp_dir.h"
#include "tests/trainer/hf_fixture.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_io.h"
#include "trainer/optimizer.h"

namespace rwr::trainer {
namespace {

using testing::RelErr;
using Fixture = testing::HfFixture;
const std::string& kDir = testing::kHfFixtureDir;
Fixture LoadFixture() { return testing::LoadHfFixture(); }

nlohmann::json Expected() {
  std::ifstream in(kDir + "/expected.json");
  return nlohmann::json::parse(in);
}

TEST(MambaParity, LogitsAndLossMatchHuggingFace) {
  Fixture f = LoadFixture();
  MambaCpu model(f.model.config);
  std::vector<float> logits(f.B * f.T * f.model.config.vocab_size);
  auto loss = model.Forward(f.model.params, f.batch(), 0, logits.data());
  ASSERT_TRUE(loss.ok()) << loss.status();
  auto outputs = storage::SafetensorsFile::Open(kDir + "/outputs.safetensors");
  ASSERT_TRUE(outputs.ok());
  auto ref = *(*outputs)->ReadFloat("logits");
  const double rel = RelErr(logits, ref);
  EXPECT_LT(rel, 1e-5) << "logits relative error";
  const double mean_loss = loss->loss_sum / loss->tokens;
  const double expected = Expected()["loss"].get<double>();
  EXPECT_NEAR(mean_loss, expected, 1e-5 * expected);
  std::cout << "logits rel err " << rel << ", loss " << mean_loss << " vs HF " << expected << "\n";
}

TEST(MambaParity, EveryGradientMatchesHuggingFace) {
  Fixture f = LoadFixture();
  MambaCpu model(f.model.config);
  int64_t count = 0;
  for (uint8_t m : f.mask) count += m;
  std::vector<float> grads(f.model.params.size(), 0.f);
  auto loss = model.ForwardBackward(f.model.params, f.batch(), 0, 1.f / count, grads);
  ASSERT_TRUE(loss.ok()) << loss.status();
  EXPECT_EQ(loss->tokens, count);
  auto outputs = storage::SafetensorsFile::Open(kDir + "/outputs.safetensors");
  double worst = 0;
  for (const ParamSpec& spec : model.layout().specs()) {
    auto ref = (*outputs)->ReadFloat("grad." + spec.name);
    ASSERT_TRUE(ref.ok()) << spec.name;
    const double rel = RelErr({grads.data() + spec.offset, size_t(spec.size)}, *ref);
    EXPECT_LT(rel, 1e-4) << spec.name;
    worst = std::max(worst, rel);
  }
  std::cout << "worst per-tensor gradient relative error " << worst << "\n";
}

TEST(MambaChunked, ChunkedLossAndGradientsEqualUnchunked) {
  Fixture f = LoadFixture();
  // Documents packed into one row: a reset in the middle of sample 1 (also inside a chunk).
  f.reset[1 * f.T + 17] = 1;
  MambaCpu model(f.model.config);
  std::vector<float> full(f.model.params.size(), 0.f);
  auto whole = model.ForwardBackward(f.model.params, f.batch(), 0, 0.01f, full);
  ASSERT_TRUE(whole.ok()) << whole.status();
  for (int64_t chunk : {1, 5, 16, 36}) {
    std::vector<float> part(f.model.params.size(), 0.f);
    auto chunked = model.ForwardBackward(f.model.params, f.batch(), chunk, 0.01f, part);
    ASSERT_TRUE(chunked.ok()) << chunked.status();
    EXPECT_NEAR(chunked->loss_sum, whole->loss_sum, 1e-5 * whole->loss_sum) << "chunk " << chunk;
    EXPECT_EQ(chunked->tokens, whole->tokens);
    for (const ParamSpec& spec : model.layout().specs()) {
      EXPECT_LT(RelErr({part.data() + spec.offset, size_t(spec.size)},
                       {full.data() + spec.offset, size_t(spec.size)}),
                1e-5)
          << spec.name << " chunk " << chunk;
    }
    auto fwd = model.Forward(f.model.params, f.batch(), chunk);
    EXPECT_NEAR(fwd->loss_sum, whole->loss_sum, 1e-5 * whole->loss_sum);
  }
}

TEST(MambaChunked, ResetIsolatesDocuments) {
  // A document after a reset gets the same logits whatever came before it in the row.
  Fixture f = LoadFixture();
  MambaCpu model(f.model.config);
  const int64_t V = f.model.config.vocab_size, T = f.T;
  f.reset[20] = 1;
  std::vector<float> a(f.B * T * V), b(f.B * T * V);
  ASSERT_TRUE(model.Forward(f.model.params, f.batch(), 7, a.data()).ok());
  for (int64_t t = 0; t < 20; ++t) f.tokens[t] = (f.tokens[t] * 7 + 3) % V;  // change the prefix
  ASSERT_TRUE(model.Forward(f.model.params, f.batch(), 0, b.data()).ok());
  for (int64_t i = 20 * V; i < T * V; ++i) ASSERT_NEAR(a[i], b[i], 1e-4) << i;
  bool prefix_differs = false;
  for (int64_t i = 0; i < 20 * V; ++i) prefix_differs |= a[i] != b[i];
  EXPECT_TRUE(prefix_differs);
}

// Three AdamW steps with global-norm clipping reproduce torch.optim.AdamW's losses (tolerance
// 1e-5 relative: fp32 here against a float64 reference) and pre-clip gradient norms.
TEST(MambaParity, ThreeAdamWStepsMatchTorch) {
  Fixture f = LoadFixture();
  const nlohmann::json hp = Expected()["adamw"];
  MambaCpu model(f.model.config);
  AdamW adamw(model.layout(),
              {.beta1 = hp["beta1"],
               .beta2 = hp["beta2"],
               .eps = hp["eps"],
               .weight_decay = hp["weight_decay"]},
              ShardRange{0, model.layout().total()});
  std::vector<float>& params = f.model.params;
  for (int step = 0; step < 4; ++step) {
    std::vector<float> grads(params.size(), 0.f);
    int64_t count = 0;
    for (uint8_t m : f.mask) count += m;
    auto loss = model.ForwardBackward(params, f.batch(), 0, 1.f / count, grads);
    ASSERT_TRUE(loss.ok()) << loss.status();
    const double mean = loss->loss_sum / loss->tokens;
    const double expected = hp["losses"][step].get<double>();
    EXPECT_NEAR(mean, expected, 1e-5 * expected) << "step " << step;
    if (step == 3) break;
    const double norm = GlobalNorm(grads);
    EXPECT_NEAR(norm, hp["grad_norms_before_clip"][step].get<double>(), 1e-5 * norm);
    ClipByGlobalNorm(grads, norm, hp["clip_norm"].get<double>());
    adamw.Step(params, grads, hp["lr"].get<double>());
  }
}

TEST(Optimizer, ScheduleWarmsUpThenDecaysToMin) {
  LrSchedule s{.lr = 1.0, .min_lr = 0.1, .warmup_steps = 4, .total_steps = 14};
  EXPECT_DOUBLE_EQ(s.At(0), 0.25);
  EXPECT_DOUBLE_EQ(s.At(3), 1.0);
  EXPECT_DOUBLE_EQ(s.At(4), 1.0);
  EXPECT_NEAR(s.At(9), 0.55, 1e-12);
  EXPECT_DOUBLE_EQ(s.At(14), 0.1);
  EXPECT_DOUBLE_EQ(s.At(100), 0.1);
}

TEST(Optimizer, NoDecayOnNormsBiasesALogAndD) {
  MambaConfig c = LoadFixture().model.config;
  ParamLayout layout = ParamLayout::ForMamba(c);
  for (const ParamSpec& spec : layout.specs()) {
    const bool expect_decay = spec.name.find("norm") == std::string::npos &&
                              spec.name.find("bias") == std::string::npos &&
                              spec.name.find("A_log") == std::string::npos &&
                              spec.name.substr(spec.name.size() - 2) != ".D";
    EXPECT_EQ(spec.weight_decay, expect_decay) << spec.name;
  }
}

TEST(ModelIo, OriginalEmbeddingNameAndShapeErrors) {
  Fixture f = LoadFixture();
  const std::string dir = rwr::testing::FreshTempDir("model_io", "embedding_name");
  ASSERT_TRUE(SaveModelDir(dir, f.model.config, f.model.params).ok());
  auto back = LoadModelDir(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->params, f.model.params);
  // Config that disagrees with the weights: a clear error naming the tensor.
  MambaConfig other = f.model.config;
  other.d_state = 8;
  std::vector<float> p;
  absl::Status s = LoadWeights(dir, other, &p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("x_proj.weight"), std::string::npos) << s;
}

}  // namespace
}  // namespace rwr::trainer
