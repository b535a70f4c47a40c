// The Mamba-1 LM on one CUDA GPU: the same math, chunking and loss as MambaCpu (mamba_cpu.h),
// with parameters, gradients and AdamW state resident on the device. GEMMs go through cuBLAS
// (fp32 in/out; bf16 tensor cores with fp32 accumulation in kBf16 mode), the selective scan and
// conv1d through scan_kernels' CUDA kernels, the rest through small kernels here.
//
// Not deterministic bit for bit: the embedding and norm-weight gradients are accumulated with
// atomics (the CPU path is the deterministic reference).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_config.h"
#include "trainer/optimizer.h"
#include "trainer/param_layout.h"

namespace rwr::trainer {

enum class GemmPrecision { kFp32, kBf16 };

class MambaCuda {
 public:
  static absl::StatusOr<std::unique_ptr<MambaCuda>> Create(const MambaConfig& config,
                                                           GemmPrecision precision);
  ~MambaCuda();
  MambaCuda(const MambaCuda&) = delete;
  MambaCuda& operator=(const MambaCuda&) = delete;

  const ParamLayout& layout() const { return layout_; }
  absl::Status UploadParams(std::span<const float> params);
  absl::Status DownloadParams(std::span<float> params) const;
  absl::Status DownloadGrads(std::span<float> grads) const;
  absl::Status ZeroGrads();

  // As MambaCpu: the batch is on the host; grads (on the device) += loss_scale·∂loss_sum/∂params.
  absl::StatusOr<LossSum> ForwardBackward(const TokenBatch& batch, int64_t chunk_len,
                                          float loss_scale);
  absl::StatusOr<LossSum> Forward(const TokenBatch& batch, int64_t chunk_len,
                                  float* host_logits = nullptr);

  // Global-norm clipping and one AdamW update on the device. Returns the pre-clip norm; a
  // non-finite norm skips the update (the caller counts it).
  absl::StatusOr<double> ClipAndStep(double clip_norm, double lr, const AdamWOptions& options);

  // AdamW state (moments over the whole flat layout and the update count), for checkpoints.
  absl::Status DownloadOptimizer(std::vector<float>* exp_avg, std::vector<float>* exp_avg_sq,
                                 int64_t* step) const;
  absl::Status UploadOptimizer(std::span<const float> exp_avg, std::span<const float> exp_avg_sq,
                               int64_t step);

  // Bytes of device memory this model holds at most so far (its own allocations).
  int64_t peak_bytes() const;

  struct Impl;

 private:
  MambaCuda() = default;
  ParamLayout layout_;
  std::unique_ptr<Impl> impl_;
};

bool CudaDeviceAvailable();

}  // namespace rwr::trainer
