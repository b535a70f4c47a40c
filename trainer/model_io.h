// Loading and saving a model directory in the Hugging Face layout (config.json +
// model.safetensors or shards with model.safetensors.index.json) to and from the flat fp32
// parameter buffer (trainer/param_layout.h). Both embedding namings are read
// (`backbone.embeddings.weight`, HF; `backbone.embedding.weight`, original mamba_ssm); every
// tensor's shape is checked against the config; a missing or mis-shaped tensor is an error
// naming it. A tied `lm_head.weight`, if stored, must equal the embeddings and is otherwise
// ignored.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/safetensors.h"
#include "trainer/model_config.h"
#include "trainer/param_layout.h"

namespace rwr::trainer {

struct LoadedModel {
  MambaConfig config;
  std::vector<float> params;  // ParamLayout::ForMamba(config) layout
};

// Reads DIR/config.json (HF or original format) and the weights.
absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir);
// Reads weights for `config` from DIR into `params` (resized to the layout).
absl::Status LoadWeights(const std::string& dir, const MambaConfig& config,
                         std::vector<float>* params);

struct SaveModelDirOptions {
  storage::DType dtype = storage::DType::kF32;  // F32 or BF16 (F16 accepted)
  uint64_t max_shard_bytes = 0;                 // 0: one file
  const std::atomic<bool>* abandon = nullptr;   // storage::SafetensorsWriter::WriteFile's
};

// Writes config.json (HF keys) and the weights in HF names into DIR (created if needed).
absl::Status SaveModelDir(const std::string& dir, const MambaConfig& config,
                          std::span<const float> params, const SaveModelDirOptions& options = {});

// Mamba's initialisation (mamba_ssm / HF): embeddings N(0, 0.02); in/x/out projections
// N(0, 0.02) (out_proj rescaled by 1/sqrt(L) when rescale_prenorm_residual); conv1d
// U(±1/sqrt(W)) (PyTorch's default for the depthwise conv, bias likewise); dt_proj weight
// U(±R^-0.5·scale) ("random") or constant R^-0.5·scale; dt bias = softplus⁻¹(dt), dt log-uniform
// in [time_step_min, time_step_max] clamped to ≥ time_step_floor; A_log = log(1..S); D = 1;
// norms 1. Deterministic in `seed` (own generator, same on every platform).
std::vector<float> InitParams(const MambaConfig& config, uint64_t seed);

}  // namespace rwr::trainer
