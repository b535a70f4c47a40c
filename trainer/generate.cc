// Token generation with the CPU model; see trainer/generate.h.
#include "trainer/generate.h"

#include <algorithm>
#include <cmath>

#include "common/status.h"
#include "fmt/format.h"

#ifdef RWR_TRAINER_HAVE_CUDA
#include "trainer/mamba_cuda.h"
#endif

namespace rwr::trainer {
namespace {

// Prompt tokens run at once on the CPU: bounds the activations a long prompt holds.
constexpr int64_t kCpuPrefillChunk = 4096;

class CpuDecoder final : public Decoder {
 public:
  CpuDecoder(const MambaConfig& config, std::span<const float> params)
      : model_(config), params_(params), state_(model_.NewSequence()) {}
  int64_t vocab_size() const override { return model_.config().vocab_size; }
  std::string device() const override { return "cpu"; }
  absl::Status Reset() override {
    state_ = model_.NewSequence();
    return absl::OkStatus();
  }
  absl::Status Advance(std::span<const int32_t> tokens, std::span<float> next_logits) override {
    return model_.Advance(params_, tokens, kCpuPrefillChunk, state_, next_logits);
  }

 private:
  MambaCpu model_;
  std::span<const float> params_;
  SequenceState state_;
};

#ifdef RWR_TRAINER_HAVE_CUDA
class CudaDecoder final : public Decoder {
 public:
  CudaDecoder(std::unique_ptr<MambaCuda> model, int64_t vocab, std::string precision)
      : model_(std::move(model)), vocab_(vocab), precision_(std::move(precision)) {}
  int64_t vocab_size() const override { return vocab_; }
  std::string device() const override { return "cuda (" + precision_ + ")"; }
  absl::Status Reset() override { return model_->ResetSequence(); }
  absl::Status Advance(std::span<const int32_t> tokens, std::span<float> next_logits) override {
    return model_->Advance(tokens, 0, next_logits);  // 0: the largest chunk that fits
  }

 private:
  std::unique_ptr<MambaCuda> model_;
  int64_t vocab_;
  std::string precision_;
};
#endif

}  // namespace

std::unique_ptr<Decoder> MakeCpuDecoder(const MambaConfig& config, std::span<const float> params) {
  return std::make_unique<CpuDecoder>(config, params);
}

absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const MambaConfig& config,
                                                     std::span<const float> params,
                                                     const std::string& device,
                                                     const std::string& precision) {
  if (device != "cpu" && device != "cuda" && device != "auto") {
    return absl::InvalidArgumentError(
        fmt::format("device '{}': expected cpu, cuda or auto", device));
  }
  if (precision != "bf16" && precision != "fp32") {
    return absl::InvalidArgumentError(
        fmt::format("precision '{}': expected bf16 or fp32", precision));
  }
  if (device == "cpu") return MakeCpuDecoder(config, params);
#ifdef RWR_TRAINER_HAVE_CUDA
  if (device == "cuda" || (CudaDeviceAvailable() && config.d_state == 16)) {
    RWR_ASSIGN_OR_RETURN(std::unique_ptr<MambaCuda> model,
                         MambaCuda::Create(config, precision == "fp32" ? GemmPrecision::kFp32
                                                                       : GemmPrecision::kBf16));
    RWR_RETURN_IF_ERROR(model->UploadParams(params));
    RWR_RETURN_IF_ERROR(model->ResetSequence());
    return std::unique_ptr<Decoder>(
        std::make_unique<CudaDecoder>(std::move(model), config.vocab_size, precision));
  }
#else
  if (device == "cuda") {
    return absl::UnimplementedError(
        "device cuda: this build has no CUDA (configure with RWR_CUDA=ON)");
  }
#endif
  return MakeCpuDecoder(config, params);
}

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

absl::StatusOr<Generated> GenerateTokens(Decoder& decoder, std::span<const int32_t> prompt,
                                         TokenSampler& sampler, const GenerateOptions& options) {
  if (prompt.empty()) {
    return absl::InvalidArgumentError("generation needs at least one prompt token");
  }
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        fmt::format("max_new_tokens {} is negative", options.max_new_tokens));
  }
  std::vector<float> logits(decoder.vocab_size());
  RWR_RETURN_IF_ERROR(decoder.Advance(prompt, logits));
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
    RWR_RETURN_IF_ERROR(decoder.Advance(std::span<const int32_t>(&next, 1), logits));
  }
  out.end = Generated::End::kMaxTokens;
  return out;
}

}  // namespace rwr::trainer
