// Token generation with the CPU model (MambaCpu): a prompt runs once, then each new token is one
// step of the recurrent state, so a token costs the same at any length of what came before.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/mamba_cpu.h"
#include "trainer/rng.h"

namespace rwr::trainer {

struct SamplingOptions {
  double temperature = 0;  // 0: greedy (the most likely token; the lowest id wins a tie)
  double top_p = 1;        // nucleus: sample among the most likely tokens holding top_p of the mass
  uint64_t seed = 0;       // the same seed, prompt and model give the same tokens
};

// Picks the next token from logits. Deterministic for a seed: its own generator, no global state.
class TokenSampler {
 public:
  explicit TokenSampler(const SamplingOptions& options);
  int32_t Pick(std::span<const float> logits);

 private:
  SamplingOptions options_;
  Rng rng_;
  std::vector<std::pair<float, int32_t>> order_;  // scratch: (logit, id) by probability
};

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  std::vector<int32_t> stop_ids;  // ends generation, itself not kept (end of text)
  // Called after each kept token with everything generated so far; true ends generation.
  std::function<bool(std::span<const int32_t> generated)> stop;
  int64_t prefill_chunk = 4096;  // prompt tokens run at once (bounds the prompt's activations)
};

struct Generated {
  std::vector<int32_t> ids;  // the new tokens (no stop id)
  enum class End { kStopId, kStopCondition, kMaxTokens } end = End::kMaxTokens;
};

// Runs `prompt` (at least one token) from `state` and generates after it. `state` is left after
// the prompt and every generated token but the last, which the model has not run yet.
absl::StatusOr<Generated> GenerateTokens(const MambaCpu& model, std::span<const float> params,
                                         std::span<const int32_t> prompt, SequenceState& state,
                                         TokenSampler& sampler, const GenerateOptions& options);

}  // namespace rwr::trainer
