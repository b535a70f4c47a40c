// Token generation: a prompt runs once, then each new token is one step of the model's recurrent
// state, so a token costs the same at any length of what came before. A Decoder holds one
// sequence at a time; MakeDecoder picks the CPU model or, where one is present, the GPU.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/status.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_config.h"
#include "trainer/rng.h"

namespace rwr::trainer {

// A model that generates: `rows()` sequences at a time, their recurrent state inside. Rows run
// together cost about one on a GPU (a step reads the weights once), and each row's results do
// not depend on the others (to the bit on the CPU; to the GEMMs' rounding on the GPU).
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual int64_t vocab_size() const = 0;
  virtual std::string device() const = 0;  // "cpu" or "cuda (bf16)", for logs
  int64_t rows() const { return rows_; }
  // Starts `rows` new sequences (the zero state).
  absl::Status Reset(int64_t rows = 1) {
    RWR_RETURN_IF_ERROR(ResetRows(rows));
    rows_ = rows;
    return absl::OkStatus();
  }
  // Runs rows() × T tokens (row-major; `resets` as RowTokens') from the sequences' state, leaves
  // it after the last of them and writes the logits that follow each row (rows() × vocab_size).
  // However a sequence is split into calls, the logits are those of one forward pass over it.
  virtual absl::Status Advance(std::span<const int32_t> tokens, std::span<const uint8_t> resets,
                               std::span<float> next_logits) = 0;
  absl::Status Advance(std::span<const int32_t> tokens, std::span<float> next_logits) {
    return Advance(tokens, {}, next_logits);
  }

 protected:
  virtual absl::Status ResetRows(int64_t rows) = 0;

 private:
  int64_t rows_ = 1;
};

// The CPU model (fp32). `params` must outlive the decoder.
std::unique_ptr<Decoder> MakeCpuDecoder(const MambaConfig& config, std::span<const float> params);

// device: "cpu", "cuda" or "auto" (the GPU where one is present and the model fits the CUDA path,
// else the CPU); precision of the GPU's GEMMs and activations: "bf16" or "fp32". A "cuda" the
// build or the machine cannot give is an error.
absl::StatusOr<std::unique_ptr<Decoder>> MakeDecoder(const MambaConfig& config,
                                                     std::span<const float> params,
                                                     const std::string& device,
                                                     const std::string& precision);

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
  std::vector<int32_t> stop_ids;  // ends a row's generation, itself not kept (end of text)
  // Called after each token a row keeps, with the row and everything it generated so far; true
  // ends that row's generation.
  std::function<bool(int64_t row, std::span<const int32_t> generated)> stop;
  // Asked before each step; true ends the generation with Cancelled (a shutdown signal).
  std::function<bool()> cancelled;
};

struct Generated {
  std::vector<int32_t> ids;  // the new tokens (no stop id)
  enum class End { kStopId, kStopCondition, kMaxTokens } end = End::kMaxTokens;
};

// Runs the prompts (decoder.rows() rows of equal length, at least one token; `resets` as
// RowTokens', for left-padded rows) from the decoder's sequences and generates after them, each
// row with its own sampler (samplers.size() == rows: a row samples as it would alone). Rows that
// have ended are fed their last token until every row has; what they generate then is dropped
// (so the sequences' state afterwards is of no further use with several rows; with one it is
// after the prompt and every generated token but the last).
absl::StatusOr<std::vector<Generated>> GenerateRows(Decoder& decoder,
                                                    std::span<const int32_t> prompts,
                                                    std::span<const uint8_t> resets,
                                                    std::vector<TokenSampler>& samplers,
                                                    const GenerateOptions& options);

// One row: GenerateRows for a decoder of one row.
absl::StatusOr<Generated> GenerateTokens(Decoder& decoder, std::span<const int32_t> prompt,
                                         TokenSampler& sampler, const GenerateOptions& options);

}  // namespace rwr::trainer
