// Token generation with the CPU model; see trainer/generate.h.
#include "trainer/generate.h"

#include <algorithm>
#include <cmath>

#include "common/status.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

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
  using Decoder::Advance;
  absl::Status Advance(std::span<const int32_t> tokens, std::span<const uint8_t> resets,
                       std::span<float> next_logits) override {
    return model_.Advance(params_, {.tokens = tokens, .rows = rows(), .resets = resets},
                          kCpuPrefillChunk, state_, next_logits);
  }

 protected:
  absl::Status ResetRows(int64_t rows) override {
    if (rows <= 0) return absl::InvalidArgumentError(fmt::format("{} rows", rows));
    state_ = model_.NewSequence(rows);
    return absl::OkStatus();
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
  using Decoder::Advance;
  absl::Status Advance(std::span<const int32_t> tokens, std::span<const uint8_t> resets,
                       std::span<float> next_logits) override {
    // chunk 0: the largest chunk that fits
    return model_->Advance({.tokens = tokens, .rows = rows(), .resets = resets}, 0, next_logits);
  }

 protected:
  absl::Status ResetRows(int64_t rows) override { return model_->ResetSequence(rows); }

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
    absl::StatusOr<std::unique_ptr<MambaCuda>> model = MambaCuda::CreateForInference(
        config, precision == "fp32" ? GemmPrecision::kFp32 : GemmPrecision::kBf16);
    absl::Status ready = model.status();
    if (ready.ok()) ready = (*model)->UploadParams(params);
    if (ready.ok()) ready = (*model)->ResetSequence(1);
    if (ready.ok()) {
      return std::unique_ptr<Decoder>(
          std::make_unique<CudaDecoder>(std::move(*model), config.vocab_size, precision));
    }
    if (device == "cuda") return ready;
    spdlog::warn("generation on the GPU failed to start ({}); running on the CPU",
                 std::string(ready.message()));
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

absl::StatusOr<std::vector<Generated>> GenerateRows(Decoder& decoder,
                                                    std::span<const int32_t> prompts,
                                                    std::span<const uint8_t> resets,
                                                    std::vector<TokenSampler>& samplers,
                                                    const GenerateOptions& options) {
  const int64_t rows = decoder.rows(), V = decoder.vocab_size();
  if (prompts.empty()) {
    return absl::InvalidArgumentError("generation needs at least one prompt token");
  }
  if (static_cast<int64_t>(samplers.size()) != rows) {
    return absl::InvalidArgumentError(
        fmt::format("{} samplers for {} rows", samplers.size(), rows));
  }
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError(
        fmt::format("max_new_tokens {} is negative", options.max_new_tokens));
  }
  std::vector<float> logits(rows * V);
  if (options.cancelled && options.cancelled()) return absl::CancelledError("interrupted");
  RWR_RETURN_IF_ERROR(decoder.Advance(prompts, resets, logits));
  std::vector<Generated> out(rows);
  std::vector<bool> running(rows, options.max_new_tokens > 0);
  std::vector<int32_t> next(rows);
  int64_t left = options.max_new_tokens > 0 ? rows : 0;
  while (left > 0) {
    for (int64_t r = 0; r < rows; ++r) {
      if (!running[r]) continue;  // fed its last token again: what it makes is dropped
      next[r] = samplers[r].Pick(std::span<const float>(logits.data() + r * V, V));
      Generated& g = out[r];
      if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next[r]) !=
          options.stop_ids.end()) {
        g.end = Generated::End::kStopId;
      } else {
        g.ids.push_back(next[r]);
        if (options.stop && options.stop(r, g.ids)) {
          g.end = Generated::End::kStopCondition;
        } else if (static_cast<int64_t>(g.ids.size()) < options.max_new_tokens) {
          continue;  // still running
        } else {
          g.end = Generated::End::kMaxTokens;
        }
      }
      running[r] = false;
      --left;
    }
    if (left == 0) break;
    if (options.cancelled && options.cancelled()) return absl::CancelledError("interrupted");
    RWR_RETURN_IF_ERROR(decoder.Advance(next, {}, logits));
  }
  return out;
}

absl::StatusOr<Generated> GenerateTokens(Decoder& decoder, std::span<const int32_t> prompt,
                                         TokenSampler& sampler, const GenerateOptions& options) {
  if (decoder.rows() != 1) {
    return absl::InvalidArgumentError(
        fmt::format("GenerateTokens runs one row; the decoder holds {}", decoder.rows()));
  }
  std::vector<TokenSampler> samplers{sampler};
  RWR_ASSIGN_OR_RETURN(std::vector<Generated> rows,
                       GenerateRows(decoder, prompt, {}, samplers, options));
  sampler = samplers[0];
  return std::move(rows[0]);
}

}  // namespace rwr::trainer
