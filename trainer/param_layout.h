// The flat parameter layout: every tensor of the model at a fixed offset in one fp32 buffer, in
// Hugging Face names and shapes. Gradients, AdamW moments and (later) ZeRO-1 shards use the same
// layout, so "rank r owns elements [begin, end)" is all a sharded optimizer needs to know.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/model_config.h"

namespace rwr::trainer {

struct ParamSpec {
  std::string name;            // HF name, e.g. "backbone.layers.0.mixer.in_proj.weight"
  std::vector<int64_t> shape;  // HF shape, e.g. [2·Di, D]
  int64_t offset = 0;          // in elements, into the flat buffer
  int64_t size = 0;
  bool weight_decay = true;  // false for norms, biases, A_log, D
};

// Offsets of one layer's tensors (each points into a flat buffer).
struct LayerOffsets {
  int64_t norm, in_proj, conv_weight, conv_bias, x_proj, dt_proj_weight, dt_proj_bias, A_log, D,
      out_proj;
};

class ParamLayout {
 public:
  static ParamLayout ForMamba(const MambaConfig& config);

  const std::vector<ParamSpec>& specs() const { return specs_; }
  int64_t total() const { return total_; }  // elements, padding included
  const ParamSpec* Find(std::string_view name) const;
  int64_t embedding() const { return embedding_; }  // (V, D)
  int64_t norm_f() const { return norm_f_; }        // (D)
  const LayerOffsets& layer(int64_t i) const { return layers_[i]; }

 private:
  std::vector<ParamSpec> specs_;
  std::vector<LayerOffsets> layers_;
  int64_t embedding_ = 0, norm_f_ = 0, total_ = 0;
};

// Original mamba_ssm checkpoints name the embedding "backbone.embedding.weight".
inline constexpr std::string_view kOriginalEmbeddingName = "backbone.embedding.weight";

}  // namespace rwr::trainer
