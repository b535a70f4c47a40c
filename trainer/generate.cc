// Token generation with the CPU model; see trainer/generate.h.
#include "trainer/generate.h"

#include <algorithm>
#include <cmath>

#include "common/status.h"
#include "fmt/format.h"

namespace rwr::trainer {

TokenSampler::TokenSampler(const SamplingOptions& options)
    : options_(options), rng_(options.seed) {}

int32_t TokenSampler::Pick(std::span<const float> logits) {
  const int32_t n = static_cast<int32_t>(logits.size());
  if (options_.temperature <= 0) {  // the first maximum: ties go to the lowest id
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  }
  order_.resize(n);
  for (int32_t i = 0; i < n; ++i) order_[i] = {logits[i], i};
  // By logit, highest first; equal logits by id, so the order (and the pick) never depends on
  // the sort's implementation.
  std::sort(order_.begin(), order_.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  const double inv_t = 1.0 / options_.temperature;
  const double top = order_[0].first;
  double total = 0;
  std::vector<double> weight(n);
  for (int32_t i = 0; i < n; ++i) {
    weight[i] = std::exp((order_[i].first - top) * inv_t);
    total += weight[i];
  }
  // The nucleus: the shortest head of the order holding top_p of the probability.
  int32_t kept = n;
  if (options_.top_p < 1) {
    double mass = 0;
    for (int32_t i = 0; i < n; ++i) {
      mass += weight[i] / total;
      if (mass >= options_.top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  double kept_total = 0;
  for (int32_t i = 0; i < kept; ++i) kept_total += weight[i];
  double u = rng_.Uniform() * kept_total;
  for (int32_t i = 0; i < kept; ++i) {
    u -= weight[i];
    if (u < 0) return order_[i].second;
  }
  return order_[kept - 1].second;  // rounding left u just above 0
}

absl::StatusOr<Generated> GenerateTokens(const MambaCpu& model, std::span<const float> params,
                                         std::span<const int32_t> prompt, SequenceState& state,
                                         TokenSampler& sampler, const GenerateOptions& options) {
  if (prompt.empty()) {
    return absl::InvalidArgumentError("generation needs at least one prompt token");
  }
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        fmt::format("max_new_tokens {} is negative", options.max_new_tokens));
  }
  std::vector<float> logits(model.config().vocab_size);
  RWR_RETURN_IF_ERROR(model.Advance(params, prompt, options.prefill_chunk, state, logits));
  Generated out;
  while (static_cast<int64_t>(out.ids.size()) < options.max_new_tokens) {
    const int32_t next = sampler.Pick(logits);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
        options.stop_ids.end()) {
      out.end = Generated::End::kStopId;
      return out;
    }
    out.ids.push_back(next);
    if (options.stop && options.stop(out.ids)) {
      out.end = Generated::End::kStopCondition;
      return out;
    }
    if (static_cast<int64_t>(out.ids.size()) == options.max_new_tokens) break;
    RWR_RETURN_IF_ERROR(
        model.Advance(params, std::span<const int32_t>(&next, 1), 1, state, logits));
  }
  out.end = Generated::End::kMaxTokens;
  return out;
}

}  // namespace rwr::trainer
