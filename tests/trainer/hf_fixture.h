// The Hugging Face parity fixture (tests/fixtures/hf_mamba, made by scripts/make_hf_fixtures.py)
// as a training batch, shared by the CPU parity test and its CUDA twin.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "storage/safetensors.h"
#include "trainer/mamba_cpu.h"  // TokenBatch
#include "trainer/model_io.h"

namespace rwr::trainer::testing {

inline const std::string kHfFixtureDir = RWR_FIXTURE_DIR;

// ‖a − ref‖ / ‖ref‖ in double.
inline double RelErr(std::span<const float> a, std::span<const float> ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct HfFixture {
  LoadedModel model;
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens, targets;
  std::vector<uint8_t> mask, reset;
  int64_t count = 0;  // loss tokens
  TokenBatch batch() const {
    return {B, T, tokens.data(), targets.data(), mask.data(), reset.data()};
  }
};

inline HfFixture LoadHfFixture() {
  HfFixture f;
  auto model = LoadModelDir(kHfFixtureDir);
  EXPECT_TRUE(model.ok()) << model.status();
  f.model = std::move(*model);
  auto inputs = storage::SafetensorsFile::Open(kHfFixtureDir + "/inputs.safetensors");
  EXPECT_TRUE(inputs.ok());
  const auto* info = (*inputs)->Find("input_ids");
  f.B = info->shape[0];
  f.T = info->shape[1];
  auto ids = *(*inputs)->ReadInt("input_ids");
  auto loss_mask = *(*inputs)->ReadInt("loss_mask");
  // HF label shifting: position t predicts token t+1, counted where loss_mask[t+1] is 1.
  f.tokens.resize(f.B * f.T);
  f.targets.assign(f.B * f.T, 0);
  f.mask.assign(f.B * f.T, 0);
  f.reset.assign(f.B * f.T, 0);
  for (int64_t b = 0; b < f.B; ++b) {
    f.reset[b * f.T] = 1;
    for (int64_t t = 0; t < f.T; ++t) {
      f.tokens[b * f.T + t] = static_cast<int32_t>(ids[b * f.T + t]);
      if (t + 1 < f.T) {
        f.targets[b * f.T + t] = static_cast<int32_t>(ids[b * f.T + t + 1]);
        f.mask[b * f.T + t] = static_cast<uint8_t>(loss_mask[b * f.T + t + 1]);
        f.count += f.mask[b * f.T + t];
      }
    }
  }
  return f;
}

}  // namespace rwr::trainer::testing
