// Mamba-1 language model configuration: read from a Hugging Face config.json (model_type mamba),
// from the original state-spaces/mamba config.json (d_model, n_layer, ssm_cfg), or from the
// `model:` mapping of an rwr YAML config (Hugging Face key names); written as HF config.json.
//
// Dimension vocabulary (shape comments everywhere): D d_model, Di d_inner = expand·D,
// S d_state, R dt_rank, W conv width, V vocab (padded), L layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace rwr::trainer {

struct MambaConfig {
  int64_t d_model = 0;     // D  (hidden_size)
  int64_t n_layer = 0;     // L  (num_hidden_layers)
  int64_t vocab_size = 0;  // V  (already padded; vocab_size in HF)
  int64_t d_state = 16;    // S  (state_size)
  int64_t d_conv = 4;      // W  (conv_kernel)
  int64_t expand = 2;
  int64_t d_inner = 0;        // Di (intermediate_size; expand·D when absent)
  int64_t dt_rank = 0;        // R  (time_step_rank; ceil(D/16) when absent or "auto")
  double norm_eps = 1e-5;     // layer_norm_epsilon
  bool use_bias = false;      // in_proj / out_proj bias (rwr supports false only)
  bool use_conv_bias = true;  // (rwr supports true only)
  bool residual_in_fp32 = true;
  bool tie_embeddings = true;  // (rwr supports true only)
  int64_t bos_token_id = 0, eos_token_id = 0, pad_token_id = 0;
  // Initialisation (rwr model init): dt bias so softplus(bias) is log-uniform in [min, max],
  // clamped below at floor; dt_proj weight uniform ±R^-0.5·scale ("random") or constant.
  double time_step_min = 0.001, time_step_max = 0.1, time_step_floor = 1e-4, time_step_scale = 1.0;
  std::string time_step_init_scheme = "random";
  double initializer_range = 0.1;  // HF key kept for export; rwr init uses std 0.02 (see init)
  bool rescale_prenorm_residual = true;

  absl::Status Validate() const;
  int64_t NumParameters() const;
  int64_t xdbl_dim() const { return dt_rank + 2 * d_state; }  // R + 2S

  // Hugging Face (model_type "mamba") or original mamba_ssm config (d_model/n_layer/ssm_cfg).
  static absl::StatusOr<MambaConfig> FromJson(const nlohmann::json& json,
                                              const std::string& source);
  static absl::StatusOr<MambaConfig> FromJsonFile(const std::string& path);
  // The keys a written-out model section may hold (dotted below ssm_cfg): what FromJson reads in
  // either naming, plus the informational keys of HF config.json files. An inline `model:`
  // section of a run config is checked against it; config.json files are not (HF adds keys).
  static const std::vector<std::string>& KnownKeys();
  nlohmann::ordered_json ToHfJson() const;  // keys from RWR_METHOD.md, model_type "mamba"
  std::string Summary() const;  // "D 48, L 3, V 997, Di 96, S 16, R 3, W 4: 0.23M parameters"
};

}  // namespace rwr::trainer
