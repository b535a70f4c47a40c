// The Mamba-1 LM on one CUDA GPU: the same math, chunking and loss as MambaCpu (mamba_cpu.h),
// with parameters, gradients and AdamW state resident on the device.
//
// Precision: kFp32 keeps activations fp32 and runs fp32 GEMMs (the parity mode the tests compare
// with the CPU path). kBf16 is the training mode: fp32 master weights, gradients and moments, a
// bf16 copy of the weights refreshed by every AdamW step, bf16 activations between kernels, and
// bf16 tensor-core GEMMs accumulating in fp32 — the out_proj GEMM adds straight into the fp32
// residual stream and the weight-gradient GEMMs straight into the fp32 gradients.
//
// Deterministic: the same inputs give the same bits on the same GPU (cuBLAS without atomics, the
// scan kernels' fixed-order reductions, and fixed-order sums for the embedding, norm-weight and
// gradient-norm reductions here).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/communicator.h"
#include "trainer/gemm_choices.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_config.h"
#include "trainer/optimizer.h"
#include "trainer/param_layout.h"

namespace rwr::trainer {

enum class GemmPrecision { kFp32, kBf16 };

class DeviceCollectives;  // nccl_collectives.h

class MambaCuda {
 public:
  // On the current CUDA device. With `collectives` (data parallelism over its ranks, ZeRO-1;
  // must outlive the model), ClipAndStep sums the ranks' gradients, updates only this rank's
  // optimizer_range() of the parameters — the AdamW moments are kept for that range alone — and
  // all-gathers the updated parameters, so every rank again holds them all.
  static absl::StatusOr<std::unique_ptr<MambaCuda>> Create(
      const MambaConfig& config, GemmPrecision precision,
      DeviceCollectives* collectives = nullptr);
  // For generation and evaluation only: no gradient buffer (the parameters' fp32 size, 11 GB at
  // 2.8B) is allocated, and ForwardBackward, DownloadGrads, ClipAndStep and UploadOptimizer are
  // FailedPrecondition errors.
  static absl::StatusOr<std::unique_ptr<MambaCuda>> CreateForInference(const MambaConfig& config,
                                                                       GemmPrecision precision);
  ~MambaCuda();
  MambaCuda(const MambaCuda&) = delete;
  MambaCuda& operator=(const MambaCuda&) = delete;

  const ParamLayout& layout() const { return layout_; }
  absl::Status UploadParams(std::span<const float> params);
  absl::Status DownloadParams(std::span<float> params) const;
  absl::Status DownloadGrads(std::span<float> grads) const;
  // Starts a gradient accumulation: nothing is cleared on the device, each gradient's first
  // writer overwrites it instead (see GradWrites in mamba_cuda.cc). `calls` > 0 says how many
  // ForwardBackward calls it takes: with collectives the last one's backward sums each layer's
  // gradients over the ranks as soon as it has written them, overlapping the layers still to go
  // (SetOverlapGradReduce), and a call past `calls` before ClipAndStep is a FailedPrecondition
  // error. 0: not said; ClipAndStep sums all the gradients before it reads them.
  absl::Status ZeroGrads(int64_t calls = 0);

  // As MambaCpu: the batch is on the host; grads (on the device) += loss_scale·∂loss_sum/∂params.
  // chunk_len <= 0 runs whole rows when they fit in device memory, else the first that fits of
  // half a row, a quarter, ... (rounded up to 16 tokens; found once per row shape, and it depends
  // on the memory free then: set chunk_len for runs that must repeat bit for bit on another
  // machine); a chunk_len that does not fit is an error that says so. After a call that fails,
  // the gradients are undefined until the next ZeroGrads.
  absl::StatusOr<LossSum> ForwardBackward(const TokenBatch& batch, int64_t chunk_len,
                                          float loss_scale);
  absl::StatusOr<LossSum> Forward(const TokenBatch& batch, int64_t chunk_len,
                                  float* host_logits = nullptr);
  // Generation (as MambaCpu::Advance), its sequences' state kept on the device: ResetSequence
  // starts `rows` new ones (the zero state); Advance runs `in` from the state, leaves it after the
  // last tokens and writes the logits that follow each row (rows × V floats) to the host. GEMMs
  // run untimed here (cuBLASLt's first algorithm): prompt lengths vary, each a new shape.
  // A decode step (one token per row) replays a CUDA graph of the step, captured on the first
  // one (and again after the buffers change); the same kernels, so the same bits as without.
  absl::Status ResetSequence(int64_t rows);
  absl::Status Advance(const RowTokens& in, int64_t chunk_len, std::span<float> next_logits);
  // Decode steps through a CUDA graph (default on); off runs every kernel launch as it comes.
  // decode_graphs() turns false by itself where a capture failed (a warning says why).
  void SetDecodeGraphs(bool on);
  bool decode_graphs() const;

  // The chunk length the last call used.
  int64_t last_chunk_len() const;
  // Caps the device memory this model may hold (0: the device's); past it an allocation fails
  // as if the device were full. For tests of the chunk fitting, and to share a GPU.
  void SetMemoryBudget(int64_t bytes);

  // Global-norm clipping and one AdamW update on the device. Returns the pre-clip norm (of the
  // gradients summed over the ranks); a non-finite norm skips the update on every rank (the
  // caller counts it). With collectives, the gradients outside optimizer_range() are left
  // undefined (DownloadGrads before it, and before the accumulation's last call where ZeroGrads
  // was told the number of calls).
  absl::StatusOr<double> ClipAndStep(double clip_norm, double lr, const AdamWOptions& options);

  // With collectives: whether the updated parameters' all-gather overlaps the next call's
  // forward (default), each layer waiting only for its own parameters, or ClipAndStep waits for
  // all of it (to measure the difference).
  void SetOverlapParamGather(bool on);
  // With collectives: whether the accumulation's last ForwardBackward sums the gradients over
  // the ranks layer by layer as its backward goes (default; needs ZeroGrads(calls)), or
  // ClipAndStep sums them all at once (to measure the difference; also while phase timing is on).
  void SetOverlapGradReduce(bool on);
  // Whether AdamW runs bucket by bucket on a second stream (with collectives each bucket followed
  // by its all-gather), overlapping the next call's forward, each layer waiting only for its own
  // parameters (default), or in line at the end of ClipAndStep (to measure the difference; also
  // while phase timing is on). The same bits either way.
  void SetOverlapOptimizer(bool on);

  // The parameters whose AdamW moments this model keeps: the whole layout on one rank.
  ShardRange optimizer_range() const;
  // AdamW state (moments over optimizer_range() and the update count), for checkpoints. Vectors
  // of the right size are reused (their resident pages copy 5x faster than fresh ones).
  absl::Status DownloadOptimizer(std::vector<float>* exp_avg, std::vector<float>* exp_avg_sq,
                                 int64_t* step) const;
  absl::Status UploadOptimizer(std::span<const float> exp_avg, std::span<const float> exp_avg_sq,
                               int64_t step);

  // The cuBLASLt algorithm each GEMM shape run so far was timed to (trainer/gemm_runner.h), and
  // adopting such choices from an earlier process on the same GPU type and cuBLASLt version (else
  // FailedPrecondition): the same algorithms give the same bits, a new timing may not.
  GemmChoices gemm_choices() const;
  absl::Status AdoptGemmChoices(const GemmChoices& choices);

  // Bytes of device memory this model holds at most so far (its own allocations).
  int64_t peak_bytes() const;

  // Whether the backward keeps the normed input, conv output and Δraw of every layer where the
  // memory left after a call's buffers allows (default on), instead of recomputing them; the
  // results are the same bits either way. Off: recompute as on a full GPU (tests, A/B runs).
  void SetKeepActivations(bool on);

  // Optional GPU time per kind of work, for benchmarks: with timing on, CUDA events bracket every
  // GPU call. TakePhaseTimes returns milliseconds since the last take (and starts a new tally) per
  // kind — "gemm", "scan", "conv", "norm", "head" (cross-entropy and its row gathers), "other"
  // (copies, embedding, small gradient sums), "optimizer" — and per detail under "kind.detail"
  // keys ("gemm.in_proj.dw", "scan.bwd", "norm.recompute", ...), which split their kind.
  void SetPhaseTiming(bool on);
  absl::StatusOr<std::map<std::string, double>> TakePhaseTimes();

  struct Impl;

 private:
  MambaCuda() = default;
  static absl::StatusOr<std::unique_ptr<MambaCuda>> Make(const MambaConfig& config,
                                                         GemmPrecision precision,
                                                         DeviceCollectives* collectives,
                                                         bool training);
  ParamLayout layout_;
  std::unique_ptr<Impl> impl_;
};

bool CudaDeviceAvailable();

}  // namespace rwr::trainer
