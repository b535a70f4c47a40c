// ParamLayout for the Mamba-1 LM; see param_layout.h.
#include "trainer/param_layout.h"

#include "fmt/format.h"

namespace rwr::trainer {

ParamLayout ParamLayout::ForMamba(const MambaConfig& c) {
  ParamLayout layout;
  constexpr int64_t kAlign = 16;  // 64-byte aligned tensors
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay) {
    int64_t size = 1;
    for (int64_t d : shape) size *= d;
    ParamSpec spec{std::move(name), std::move(shape), layout.total_, size, decay};
    layout.total_ += (size + kAlign - 1) / kAlign * kAlign;
    layout.specs_.push_back(spec);
    return spec.offset;
  };
  const int64_t D = c.d_model, Di = c.d_inner, S = c.d_state, R = c.dt_rank, W = c.d_conv;
  layout.embedding_ = add("backbone.embeddings.weight", {c.vocab_size, D}, true);
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = fmt::format("backbone.layers.{}.", i);
    LayerOffsets o{};
    o.norm = add(p + "norm.weight", {D}, false);
    o.in_proj = add(p + "mixer.in_proj.weight", {2 * Di, D}, true);
    o.conv_weight = add(p + "mixer.conv1d.weight", {Di, 1, W}, true);
    o.conv_bias = add(p + "mixer.conv1d.bias", {Di}, false);
    o.x_proj = add(p + "mixer.x_proj.weight", {R + 2 * S, Di}, true);
    o.dt_proj_weight = add(p + "mixer.dt_proj.weight", {Di, R}, true);
    o.dt_proj_bias = add(p + "mixer.dt_proj.bias", {Di}, false);
    o.A_log = add(p + "mixer.A_log", {Di, S}, false);
    o.D = add(p + "mixer.D", {Di}, false);
    o.out_proj = add(p + "mixer.out_proj.weight", {D, Di}, true);
    layout.layers_.push_back(o);
  }
  layout.norm_f_ = add("backbone.norm_f.weight", {D}, false);
  return layout;
}

const ParamSpec* ParamLayout::Find(std::string_view name) const {
  for (const ParamSpec& s : specs_) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

}  // namespace rwr::trainer
