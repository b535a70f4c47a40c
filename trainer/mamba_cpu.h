// The Mamba-1 language model on the CPU, fp32: forward and backward written by hand. This is the
// reference the CUDA path is checked against, and what `rwr train` runs where there is no GPU.
//
// Per layer (x: residual stream (B, T, D)):
//   xn = RMSNorm(x)·w            (B, T, D)
//   xz = xn · in_projᵀ           (B, T, 2Di)   u = xz[..., :Di], z = xz[..., Di:]
//   uc = SiLU(conv1d(u) + b)     (B, T, Di)    causal depthwise, width W     (scan_kernels/)
//   xdbl = uc · x_projᵀ          (B, T, R+2S)  dt_low | B | C
//   dtraw = dt_low · dt_projᵀ    (B, T, Di)    softplus(dtraw + dt_bias) inside the scan
//   y = scan(uc, Δ, A=−exp(A_log), B, C, D)·SiLU(z)   (B, T, Di)              (scan_kernels/)
//   x += y · out_projᵀ           (B, T, D)
// then hn = RMSNorm(x)·norm_f, logits = hn · embᵀ (tied head), masked cross-entropy.
//
// Loss: sum over (b, t) of loss_mask[b, t]·(−log softmax(logits[b, t])[targets[b, t]]); callers
// divide by the number of loss tokens (of the whole global batch) through `loss_scale`. The
// cross-entropy runs over blocks of rows and touches only rows that carry loss (unless logits are
// asked for), so (B·T, V) probabilities are never materialised.
//
// Long samples: T is processed in chunks of `chunk_len` tokens. The forward pass keeps only the
// conv and scan states at chunk boundaries; the backward pass walks the chunks last to first,
// recomputing each chunk's activations from its boundary states and carrying the state gradients
// backward. Memory grows with the chunk, not with T; results equal the unchunked ones up to fp32
// rounding (the scan accumulates in fp64).
//
// Deterministic: every output element is computed by one thread in a fixed order, so results do
// not depend on the thread count (resume is bit-exact).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/model_config.h"
#include "trainer/param_layout.h"

namespace rwr::trainer {

// A micro-batch as the loader produces it (storage/shard_loader.h), by pointer.
struct TokenBatch {
  int64_t batch = 0;                   // B
  int64_t seq_len = 0;                 // T
  const int32_t* tokens = nullptr;     // (B, T) input ids
  const int32_t* targets = nullptr;    // (B, T) next-token ids
  const uint8_t* loss_mask = nullptr;  // (B, T) 1 where targets carry loss
  const uint8_t* reset = nullptr;      // (B, T) optional: document starts (state zeroed before t)
};

// One layer's recurrent state between two tokens of a sequence: the conv window (B, Di, W−1) and
// the scan state (B, Di, S). A sequence's state (one per layer) is what generation carries from
// token to token.
struct LayerRecurrence {
  std::vector<float> conv;
  std::vector<float> ssm;
};
using SequenceState = std::vector<LayerRecurrence>;

// Tokens of several sequences for one Advance: `rows` rows of equal length, row-major. Rows of
// unequal length are left-padded by the caller, with a reset at each row's first real token
// (`resets`, rows × T, optional): the state is zeroed there, so the padding leaves no trace.
struct RowTokens {
  std::span<const int32_t> tokens;
  int64_t rows = 1;
  std::span<const uint8_t> resets;
};

// `in` checked for a model of `vocab` ids (rows of equal length, resets of the same size, ids in
// the vocabulary, `logits_size` == rows × vocab) and laid out as the TokenBatch both models run:
// targets unused, no loss anywhere (`no_loss`, the caller's, holds the mask).
absl::StatusOr<TokenBatch> RowsAsBatch(const RowTokens& in, int64_t vocab, size_t logits_size,
                                       std::vector<uint8_t>* no_loss);

struct LossSum {
  double loss_sum = 0;  // Σ masked token losses
  int64_t tokens = 0;   // Σ loss_mask
};

class MambaCpu {
 public:
  explicit MambaCpu(const MambaConfig& config);

  const MambaConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }

  // Forward only. `logits`, when given, receives (B, T, V) for every position.
  absl::StatusOr<LossSum> Forward(std::span<const float> params, const TokenBatch& batch,
                                  int64_t chunk_len, float* logits = nullptr) const;

  // Generation. NewSequence is the state of `rows` sequences before their first token; Advance
  // runs `in` (rows × T tokens) from `state`, leaves `state` after the last of them and writes the
  // logits that follow each row's last token (rows × V floats) to `next_logits`. A prompt and
  // then each generated token are one call each; however a sequence is split into calls, the
  // logits equal those of one Forward over it (up to fp32 rounding), and a row's results do not
  // depend on the other rows (to the bit).
  SequenceState NewSequence(int64_t rows = 1) const;
  absl::Status Advance(std::span<const float> params, const RowTokens& in, int64_t chunk_len,
                       SequenceState& state, std::span<float> next_logits) const;

  // Forward and backward: grads += loss_scale · ∂(loss_sum)/∂params (same layout as params).
  absl::StatusOr<LossSum> ForwardBackward(std::span<const float> params, const TokenBatch& batch,
                                          int64_t chunk_len, float loss_scale,
                                          std::span<float> grads) const;

 private:
  absl::Status Check(std::span<const float> params, const TokenBatch& batch) const;

  MambaConfig config_;
  ParamLayout layout_;
};

// Sets the number of CPU threads the model uses (OpenMP); 0 leaves the default (a thread per core
// it may use), or, where `ranks_on_host` ranks share the host, its share of those cores.
void SetCpuThreads(int threads, int ranks_on_host = 1);

}  // namespace rwr::trainer
