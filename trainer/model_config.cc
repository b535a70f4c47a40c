// MambaConfig parsing and HF config.json output; see model_config.h.
#include "trainer/model_config.h"

#include <cmath>
#include <fstream>

#include "common/status.h"
#include "fmt/format.h"

namespace rwr::trainer {
namespace {

using json = nlohmann::json;

template <typename T>
absl::Status Take(const json& j, const char* key, T* out, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return absl::OkStatus();
  try {
    *out = j[key].get<T>();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        fmt::format("{}: key '{}' has the wrong type ({})", source, key, e.what()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MambaConfig::Validate() const {
  auto bad = [](const std::string& what) {
    return absl::InvalidArgumentError(fmt::format("model config: {}", what));
  };
  if (d_model <= 0) return bad("hidden_size (d_model) must be positive");
  if (n_layer <= 0) return bad("num_hidden_layers (n_layer) must be positive");
  if (vocab_size <= 0) return bad("vocab_size must be positive");
  if (d_state <= 0 || d_inner <= 0 || dt_rank <= 0)
    return bad("state_size, intermediate_size and time_step_rank must be positive");
  if (d_conv < 2 || d_conv > 4)
    return bad(fmt::format("conv_kernel {} unsupported (2..4)", d_conv));
  if (use_bias)
    return bad(
        "use_bias: true (bias on in_proj/out_proj) is not supported; Mamba checkpoints use false");
  if (!use_conv_bias)
    return bad("use_conv_bias: false is not supported; Mamba checkpoints use true");
  if (!tie_embeddings)
    return bad(
        "tie_word_embeddings: false is not supported; Mamba ties the LM head to the embeddings");
  if (norm_eps <= 0) return bad("layer_norm_epsilon must be positive");
  if (time_step_min <= 0 || time_step_max < time_step_min)
    return bad("need 0 < time_step_min <= time_step_max");
  if (time_step_init_scheme != "random" && time_step_init_scheme != "constant")
    return bad("time_step_init_scheme must be 'random' or 'constant'");
  return absl::OkStatus();
}

int64_t MambaConfig::NumParameters() const {
  const int64_t per_layer = d_model                        // norm
                            + 2 * d_inner * d_model        // in_proj
                            + d_inner * d_conv + d_inner   // conv1d weight + bias
                            + xdbl_dim() * d_inner         // x_proj
                            + d_inner * dt_rank + d_inner  // dt_proj weight + bias
                            + d_inner * d_state + d_inner  // A_log, D
                            + d_model * d_inner;           // out_proj
  return vocab_size * d_model + n_layer * per_layer + d_model;
}

absl::StatusOr<MambaConfig> MambaConfig::FromJson(const json& j, const std::string& source) {
  if (!j.is_object())
    return absl::InvalidArgumentError(fmt::format("{}: not a JSON object", source));
  MambaConfig c;
  const bool original = j.contains("d_model") && !j.contains("hidden_size");
  if (original) {
    // state-spaces/mamba MambaConfig: d_model, n_layer, vocab_size, ssm_cfg{d_state,d_conv,expand,
    // dt_rank,...}, rms_norm, residual_in_fp32, pad_vocab_size_multiple, tie_embeddings.
    RWR_RETURN_IF_ERROR(Take(j, "d_model", &c.d_model, source));
    RWR_RETURN_IF_ERROR(Take(j, "n_layer", &c.n_layer, source));
    RWR_RETURN_IF_ERROR(Take(j, "vocab_size", &c.vocab_size, source));
    int64_t multiple = 8;
    RWR_RETURN_IF_ERROR(Take(j, "pad_vocab_size_multiple", &multiple, source));
    if (multiple > 1 && c.vocab_size % multiple != 0)
      c.vocab_size += multiple - c.vocab_size % multiple;
    RWR_RETURN_IF_ERROR(Take(j, "residual_in_fp32", &c.residual_in_fp32, source));
    RWR_RETURN_IF_ERROR(Take(j, "tie_embeddings", &c.tie_embeddings, source));
    if (j.contains("ssm_cfg") && j["ssm_cfg"].is_object()) {
      const json& s = j["ssm_cfg"];
      if (s.contains("layer") && s["layer"] != "Mamba1") {
        return absl::InvalidArgumentError(
            fmt::format("{}: ssm_cfg.layer {} is not Mamba1", source, s["layer"].dump()));
      }
      RWR_RETURN_IF_ERROR(Take(s, "d_state", &c.d_state, source));
      RWR_RETURN_IF_ERROR(Take(s, "d_conv", &c.d_conv, source));
      RWR_RETURN_IF_ERROR(Take(s, "expand", &c.expand, source));
      if (s.contains("dt_rank") && s["dt_rank"].is_number())
        c.dt_rank = s["dt_rank"].get<int64_t>();
      RWR_RETURN_IF_ERROR(Take(s, "dt_min", &c.time_step_min, source));
      RWR_RETURN_IF_ERROR(Take(s, "dt_max", &c.time_step_max, source));
      RWR_RETURN_IF_ERROR(Take(s, "dt_init_floor", &c.time_step_floor, source));
      RWR_RETURN_IF_ERROR(Take(s, "dt_scale", &c.time_step_scale, source));
      RWR_RETURN_IF_ERROR(Take(s, "dt_init", &c.time_step_init_scheme, source));
      RWR_RETURN_IF_ERROR(Take(s, "conv_bias", &c.use_conv_bias, source));
      RWR_RETURN_IF_ERROR(Take(s, "bias", &c.use_bias, source));
    }
  } else {
    if (j.contains("model_type") && j["model_type"] != "mamba") {
      return absl::InvalidArgumentError(fmt::format("{}: model_type {} is not \"mamba\" (Mamba-1)",
                                                    source, j["model_type"].dump()));
    }
    RWR_RETURN_IF_ERROR(Take(j, "hidden_size", &c.d_model, source));
    RWR_RETURN_IF_ERROR(Take(j, "num_hidden_layers", &c.n_layer, source));
    RWR_RETURN_IF_ERROR(Take(j, "vocab_size", &c.vocab_size, source));
    RWR_RETURN_IF_ERROR(Take(j, "state_size", &c.d_state, source));
    RWR_RETURN_IF_ERROR(Take(j, "conv_kernel", &c.d_conv, source));
    RWR_RETURN_IF_ERROR(Take(j, "expand", &c.expand, source));
    RWR_RETURN_IF_ERROR(Take(j, "intermediate_size", &c.d_inner, source));
    if (j.contains("time_step_rank") && j["time_step_rank"].is_number()) {
      c.dt_rank = j["time_step_rank"].get<int64_t>();
    }
    RWR_RETURN_IF_ERROR(Take(j, "layer_norm_epsilon", &c.norm_eps, source));
    RWR_RETURN_IF_ERROR(Take(j, "use_bias", &c.use_bias, source));
    RWR_RETURN_IF_ERROR(Take(j, "use_conv_bias", &c.use_conv_bias, source));
    RWR_RETURN_IF_ERROR(Take(j, "residual_in_fp32", &c.residual_in_fp32, source));
    RWR_RETURN_IF_ERROR(Take(j, "tie_word_embeddings", &c.tie_embeddings, source));
    RWR_RETURN_IF_ERROR(Take(j, "bos_token_id", &c.bos_token_id, source));
    RWR_RETURN_IF_ERROR(Take(j, "eos_token_id", &c.eos_token_id, source));
    RWR_RETURN_IF_ERROR(Take(j, "pad_token_id", &c.pad_token_id, source));
    RWR_RETURN_IF_ERROR(Take(j, "time_step_min", &c.time_step_min, source));
    RWR_RETURN_IF_ERROR(Take(j, "time_step_max", &c.time_step_max, source));
    RWR_RETURN_IF_ERROR(Take(j, "time_step_floor", &c.time_step_floor, source));
    RWR_RETURN_IF_ERROR(Take(j, "time_step_scale", &c.time_step_scale, source));
    RWR_RETURN_IF_ERROR(Take(j, "time_step_init_scheme", &c.time_step_init_scheme, source));
    RWR_RETURN_IF_ERROR(Take(j, "initializer_range", &c.initializer_range, source));
    RWR_RETURN_IF_ERROR(Take(j, "rescale_prenorm_residual", &c.rescale_prenorm_residual, source));
    if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
      return absl::InvalidArgumentError(
          fmt::format("{}: hidden_act {} unsupported (silu only)", source, j["hidden_act"].dump()));
    }
  }
  if (c.d_inner == 0) c.d_inner = c.expand * c.d_model;
  if (c.dt_rank == 0) c.dt_rank = (c.d_model + 15) / 16;
  if (absl::Status s = c.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(fmt::format("{}: {}", source, std::string(s.message())));
  }
  return c;
}

const std::vector<std::string>& MambaConfig::KnownKeys() {
  static const std::vector<std::string> keys = {
      // Hugging Face MambaConfig (read by FromJson).
      "hidden_size", "num_hidden_layers", "vocab_size", "state_size", "conv_kernel", "expand",
      "intermediate_size", "time_step_rank", "layer_norm_epsilon", "use_bias", "use_conv_bias",
      "residual_in_fp32", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
      "time_step_min", "time_step_max", "time_step_floor", "time_step_scale",
      "time_step_init_scheme", "initializer_range", "rescale_prenorm_residual", "hidden_act",
      "model_type",
      // Informational HF keys (accepted, not used).
      "architectures", "use_cache", "torch_dtype", "dtype", "transformers_version", "use_mambapy",
      // Original state-spaces/mamba config.
      "d_model", "n_layer", "pad_vocab_size_multiple", "tie_embeddings", "rms_norm",
      "fused_add_norm", "ssm_cfg.layer", "ssm_cfg.d_state", "ssm_cfg.d_conv", "ssm_cfg.expand",
      "ssm_cfg.dt_rank", "ssm_cfg.dt_min", "ssm_cfg.dt_max", "ssm_cfg.dt_init_floor",
      "ssm_cfg.dt_scale", "ssm_cfg.dt_init", "ssm_cfg.conv_bias", "ssm_cfg.bias"};
  return keys;
}

absl::StatusOr<MambaConfig> MambaConfig::FromJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(fmt::format("model config {}: cannot open", path));
  json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        fmt::format("model config {}: not valid JSON ({})", path, e.what()));
  }
  return FromJson(j, path);
}

nlohmann::ordered_json MambaConfig::ToHfJson() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"MambaForCausalLM"};
  j["model_type"] = "mamba";
  j["hidden_size"] = d_model;
  j["num_hidden_layers"] = n_layer;
  j["vocab_size"] = vocab_size;
  j["intermediate_size"] = d_inner;
  j["expand"] = expand;
  j["state_size"] = d_state;
  j["conv_kernel"] = d_conv;
  j["time_step_rank"] = dt_rank;
  j["use_bias"] = use_bias;
  j["use_conv_bias"] = use_conv_bias;
  j["hidden_act"] = "silu";
  j["layer_norm_epsilon"] = norm_eps;
  j["residual_in_fp32"] = residual_in_fp32;
  j["tie_word_embeddings"] = tie_embeddings;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["pad_token_id"] = pad_token_id;
  j["time_step_min"] = time_step_min;
  j["time_step_max"] = time_step_max;
  j["time_step_floor"] = time_step_floor;
  j["time_step_scale"] = time_step_scale;
  j["time_step_init_scheme"] = time_step_init_scheme;
  j["initializer_range"] = initializer_range;
  // Always false in the file: transformers applies rescale_prenorm_residual (out_proj /= sqrt(L))
  // inside _init_weights even to weights it has just loaded, so `true` would change the model on
  // load (seen with transformers 5.17). rwr's own init applies the rescaling itself.
  j["rescale_prenorm_residual"] = false;
  j["use_cache"] = true;
  j["torch_dtype"] = "float32";
  return j;
}

std::string MambaConfig::Summary() const {
  return fmt::format("D {}, L {}, V {}, Di {}, S {}, R {}, W {}: {:.2f}M parameters", d_model,
                     n_layer, vocab_size, d_inner, d_state, dt_rank, d_conv, NumParameters() / 1e6);
}

}  // namespace rwr::trainer
