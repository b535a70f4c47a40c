// Model directory load/save and initialisation; see model_io.h.
#include "trainer/model_io.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "common/fresh_memory.h"
#include "common/status.h"
#include "fmt/format.h"
#include "storage/atomic_file.h"
#include "trainer/rng.h"

namespace rwr::trainer {

namespace fs = std::filesystem;

absl::Status LoadWeights(const std::string& dir, const MambaConfig& config,
                         std::vector<float>* params) {
  RWR_ASSIGN_OR_RETURN(auto model, storage::SafetensorsModel::Open(dir));
  const ParamLayout layout = ParamLayout::ForMamba(config);
  *params = ZeroedFloats(layout.total());  // 11 GB at 2.8B: paged in by several threads
  for (const ParamSpec& spec : layout.specs()) {
    std::string name = spec.name;
    const storage::TensorInfo* info = model->Find(name);
    if (info == nullptr && name == "backbone.embeddings.weight") {
      name = std::string(kOriginalEmbeddingName);
      info = model->Find(name);
    }
    if (info == nullptr) {
      return absl::NotFoundError(fmt::format("{}: tensor '{}' missing (expected shape {})", dir,
                                             spec.name, storage::ShapeString(spec.shape)));
    }
    if (info->shape != spec.shape) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: tensor '{}' has shape {}, the config ({}) needs {}", dir, name,
          storage::ShapeString(info->shape), config.Summary(), storage::ShapeString(spec.shape)));
    }
    RWR_RETURN_IF_ERROR(
        model->ReadFloatInto(name, std::span<float>(params->data() + spec.offset, spec.size)));
  }
  return absl::OkStatus();
}

absl::StatusOr<LoadedModel> LoadModelDir(const std::string& dir) {
  LoadedModel loaded;
  RWR_ASSIGN_OR_RETURN(loaded.config,
                       MambaConfig::FromJsonFile((fs::path(dir) / "config.json").string()));
  RWR_RETURN_IF_ERROR(LoadWeights(dir, loaded.config, &loaded.params));
  return loaded;
}

absl::Status SaveModelDir(const std::string& dir, const MambaConfig& config,
                          std::span<const float> params, const SaveModelDirOptions& options) {
  const ParamLayout layout = ParamLayout::ForMamba(config);
  if (static_cast<int64_t>(params.size()) != layout.total()) {
    return absl::InvalidArgumentError("SaveModelDir: parameter buffer does not match the config");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(fmt::format("cannot create {}: {}", dir, ec.message()));
  std::vector<storage::NamedTensor> tensors;
  for (const ParamSpec& spec : layout.specs()) {
    tensors.push_back({spec.name, spec.shape, params.subspan(spec.offset, spec.size)});
  }
  storage::SaveModelOptions save;
  save.dtype = options.dtype;
  save.max_shard_bytes = options.max_shard_bytes;
  save.abandon = options.abandon;
  RWR_RETURN_IF_ERROR(storage::SaveModel(dir, tensors, save).status());
  nlohmann::ordered_json j = config.ToHfJson();
  j["torch_dtype"] = options.dtype == storage::DType::kBF16  ? "bfloat16"
                     : options.dtype == storage::DType::kF16 ? "float16"
                                                             : "float32";
  return storage::WriteFileAtomically((fs::path(dir) / "config.json").string(), j.dump(2) + "\n");
}

std::vector<float> InitParams(const MambaConfig& c, uint64_t seed) {
  const ParamLayout layout = ParamLayout::ForMamba(c);
  std::vector<float> p = ZeroedFloats(layout.total());  // 11 GB at 2.8B: paged in by threads
  // Counter-based streams: block k of elements at offset o draws from Rng(seed, o + k·4096), so
  // the result is the same for any thread count (2.8B parameters initialise in seconds).
  constexpr int64_t kBlock = 4096;
  auto stream = [seed](int64_t index) {
    return Rng(seed * 0x9e3779b97f4a7c15ULL ^
               (static_cast<uint64_t>(index) * 0xd1b54a32d192ed03ULL));
  };
  auto normal = [&](int64_t offset, int64_t n, double std) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n; b += kBlock) {
      Rng rng = stream(offset + b);
      for (int64_t i = b; i < std::min(n, b + kBlock); ++i)
        p[offset + i] = static_cast<float>(rng.Normal() * std);
    }
  };
  auto uniform = [&](int64_t offset, int64_t n, double bound) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n; b += kBlock) {
      Rng rng = stream(offset + b);
      for (int64_t i = b; i < std::min(n, b + kBlock); ++i) {
        p[offset + i] = static_cast<float>((2 * rng.Uniform() - 1) * bound);
      }
    }
  };
  Rng rng = stream(-1);  // dt bias draws (small)
  const int64_t D = c.d_model, Di = c.d_inner, S = c.d_state, R = c.dt_rank, W = c.d_conv;
  normal(layout.embedding(), c.vocab_size * D, 0.02);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const LayerOffsets& o = layout.layer(l);
    for (int64_t i = 0; i < D; ++i) p[o.norm + i] = 1.f;
    normal(o.in_proj, 2 * Di * D, 0.02);
    uniform(o.conv_weight, Di * W, 1.0 / std::sqrt(static_cast<double>(W)));
    uniform(o.conv_bias, Di, 1.0 / std::sqrt(static_cast<double>(W)));
    normal(o.x_proj, (R + 2 * S) * Di, 0.02);
    const double dt_std = std::pow(static_cast<double>(R), -0.5) * c.time_step_scale;
    if (c.time_step_init_scheme == "constant") {
      for (int64_t i = 0; i < Di * R; ++i) p[o.dt_proj_weight + i] = static_cast<float>(dt_std);
    } else {
      uniform(o.dt_proj_weight, Di * R, dt_std);
    }
    const double lo = std::log(c.time_step_min), hi = std::log(c.time_step_max);
    for (int64_t i = 0; i < Di; ++i) {
      double dt = std::exp(rng.Uniform() * (hi - lo) + lo);
      dt = std::max(dt, c.time_step_floor);
      p[o.dt_proj_bias + i] = static_cast<float>(dt + std::log(-std::expm1(-dt)));  // softplus⁻¹
    }
    for (int64_t d = 0; d < Di; ++d) {
      for (int64_t s = 0; s < S; ++s)
        p[o.A_log + d * S + s] = static_cast<float>(std::log(s + 1.0));
      p[o.D + d] = 1.f;
    }
    const double out_std =
        c.rescale_prenorm_residual ? 0.02 / std::sqrt(static_cast<double>(c.n_layer)) : 0.02;
    normal(o.out_proj, D * Di, out_std);
  }
  for (int64_t i = 0; i < D; ++i) p[layout.norm_f() + i] = 1.f;
  return p;
}

}  // namespace rwr::trainer
