// AdamW, clipping and the schedule; see optimizer.h.
#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>

namespace rwr::trainer {

AdamW::AdamW(const ParamLayout& layout, AdamWOptions options, ShardRange range)
    : options_(options), range_(range) {
  for (const ParamSpec& spec : layout.specs()) {
    if (!spec.weight_decay) continue;
    const int64_t b = std::max(spec.offset, range.begin),
                  e = std::min(spec.offset + spec.size, range.end);
    if (b < e) decayed_.push_back({b - range.begin, e - range.begin});
  }
}

void AdamW::Step(std::span<float> params, std::span<const float> grads, double lr) {
  ++step_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double bc2_sqrt = std::sqrt(1 - std::pow(b2, static_cast<double>(step_)));
  const float step_size = static_cast<float>(lr / bc1);
  const float decay = static_cast<float>(1 - lr * options_.weight_decay);
  const float fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2);
  const float inv_bc2_sqrt = static_cast<float>(1 / bc2_sqrt);
  const float eps = static_cast<float>(options_.eps);
  const int64_t n = range_.end - range_.begin;
  if (m_.empty()) m_.assign(n, 0.f);
  if (v_.empty()) v_.assign(n, 0.f);
  float* p = params.data() + range_.begin;
  const float* g = grads.data() + range_.begin;
  // One pass over the range, in stretches with and without the decoupled decay (decayed_ is in
  // layout order).
  auto update = [&](int64_t b, int64_t e, bool decays) {
#pragma omp parallel for schedule(static) if (e - b > (1 << 18))
    for (int64_t i = b; i < e; ++i) {
      if (decays) p[i] *= decay;
      m_[i] = fb1 * m_[i] + (1 - fb1) * g[i];
      v_[i] = fb2 * v_[i] + (1 - fb2) * g[i] * g[i];
      const float denom = std::sqrt(v_[i]) * inv_bc2_sqrt + eps;
      p[i] -= step_size * m_[i] / denom;
    }
  };
  int64_t at = 0;
  for (const auto& [b, e] : decayed_) {
    update(at, b, false);
    update(b, e, true);
    at = e;
  }
  update(at, n, false);
}

double GlobalNorm(std::span<const float> grads) {
  double sum = 0;
  for (float g : grads) sum += static_cast<double>(g) * g;
  return std::sqrt(sum);
}

void ClipByGlobalNorm(std::span<float> grads, double norm, double max_norm) {
  if (max_norm <= 0) return;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1) return;
  const float c = static_cast<float>(coef);
  for (float& g : grads) g *= c;
}

bool AllFinite(std::span<const float> values) {
  for (float v : values) {
    if (!std::isfinite(v)) return false;
  }
  return true;
}

double LrSchedule::At(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return lr * (step + 1) / warmup_steps;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / decay_steps);
  return min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(M_PI * progress));
}

}  // namespace rwr::trainer
