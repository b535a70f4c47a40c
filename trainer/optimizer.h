// AdamW with fp32 master weights and moments over the flat parameter layout, global-norm
// gradient clipping and the warmup + cosine learning-rate schedule.
//
// The update matches torch.optim.AdamW (decoupled decay: p ← p·(1 − lr·wd), then
// p ← p − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + eps)); no weight decay on norms, biases, A_log
// and D (ParamSpec::weight_decay). Each instance updates the elements [range.begin, range.end)
// it owns (ZeRO-1: one range per rank; the whole buffer on one rank) and keeps moments for
// those only.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "trainer/communicator.h"
#include "trainer/param_layout.h"

namespace rwr::trainer {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(const ParamLayout& layout, AdamWOptions options, ShardRange range);

  // One update of params[range] from grads[range] at learning rate `lr`.
  void Step(std::span<float> params, std::span<const float> grads, double lr);

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }
  const ShardRange& range() const { return range_; }
  // The moments (range size), or empty, meaning zero, until the first Step or until set: a GPU
  // run keeps its own on the device and never makes these (22 GB at 2.8B on one rank).
  std::vector<float>& exp_avg() { return m_; }
  std::vector<float>& exp_avg_sq() { return v_; }

 private:
  AdamWOptions options_;
  ShardRange range_;
  std::vector<std::pair<int64_t, int64_t>> decayed_;  // [begin, end) within the range
  std::vector<float> m_, v_;
  int64_t step_ = 0;
};

// sqrt(Σ g²) over all ranks' gradients (each rank passes the full, already all-reduced buffer;
// computed in fp64 in a fixed order, so identical everywhere).
double GlobalNorm(std::span<const float> grads);
// Scales grads by min(1, max_norm / (norm + 1e-6)) like torch.nn.utils.clip_grad_norm_.
void ClipByGlobalNorm(std::span<float> grads, double norm, double max_norm);
bool AllFinite(std::span<const float> values);

struct LrSchedule {
  double lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  // Linear warmup from lr/warmup to lr over warmup_steps, then cosine to min_lr at total_steps.
  // `step` counts from 0 (the first update).
  double At(int64_t step) const;
};

}  // namespace rwr::trainer
