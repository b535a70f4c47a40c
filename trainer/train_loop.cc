// The training loop; see train_loop.h.
#include "trainer/train_loop.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

#include "common/dir_lock.h"
#include "common/fresh_memory.h"
#include "common/progress.h"
#include "common/sha256.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"
#include "storage/atomic_file.h"
#include "storage/shard.h"
#include "storage/shard_loader.h"
#include "trainer/background_checkpoint.h"
#include "trainer/checkpoint.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_io.h"
#include "trainer/optimizer.h"
#include "trainer/rng.h"
#ifdef RWR_TRAINER_HAVE_CUDA
#include "trainer/mamba_cuda.h"
#include "trainer/nccl_collectives.h"
#endif

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

json YamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json j = json::object();
      for (const auto& kv : node) j[kv.first.as<std::string>()] = YamlToJson(kv.second);
      return j;
    }
    case YAML::NodeType::Sequence: {
      json j = json::array();
      for (const auto& v : node) j.push_back(YamlToJson(v));
      return j;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = node.Scalar();
      if (s == "true" || s == "false") return s == "true";
      try {
        size_t used = 0;
        const long long i = std::stoll(s, &used);
        if (used == s.size()) return i;
      } catch (...) {
      }
      try {
        size_t used = 0;
        const double d = std::stod(s, &used);
        if (used == s.size()) return d;
      } catch (...) {
      }
      return s;
    }
    default:
      return nullptr;
  }
}

double PeakRssGiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / (1024.0 * 1024.0);  // ru_maxrss is KiB on Linux
}

// Host memory this process holds now (resident pages), GiB; 0 where /proc is not there.
double RssGiB() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 30);
}

struct Settings {
  std::string data_dir, eval_dir, out_dir;
  uint64_t data_seed = 0;
  bool shuffle = true;
  int64_t steps = 0, batch_size = 1, grad_accum = 1, seq_len = 0, chunk_len = 0;
  double lr = 3e-4, min_lr = 3e-5, weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8,
         clip_norm = 1.0;
  int64_t warmup_steps = 0, log_every = 1, eval_every = 0, eval_batches = 4, checkpoint_every = 0,
          keep_checkpoints = 3, max_nonfinite = 5, max_steps_this_run = 0;
  double checkpoint_every_s = 1800;
  uint64_t seed = 0;
  int threads = 0;
  bool resume = true;
  std::string device = "auto";  // auto | cpu | cuda
  std::string gemm = "bf16";    // cuda GEMMs: bf16 (tensor cores) | fp32
};

absl::StatusOr<Settings> ReadSettings(const Config& c) {
  Settings s;
  RWR_ASSIGN_OR_RETURN(s.data_dir, c.Get<std::string>("data.dir"));
  RWR_ASSIGN_OR_RETURN(s.eval_dir, c.GetOr<std::string>("data.eval_dir", ""));
  RWR_ASSIGN_OR_RETURN(s.data_seed, c.GetOr<uint64_t>("data.seed", 0));
  RWR_ASSIGN_OR_RETURN(s.shuffle, c.GetOr<bool>("data.shuffle", true));
  RWR_ASSIGN_OR_RETURN(s.out_dir, c.Get<std::string>("train.out_dir"));
  RWR_ASSIGN_OR_RETURN(s.steps, c.Get<int64_t>("train.steps"));
  RWR_ASSIGN_OR_RETURN(s.batch_size, c.Get<int64_t>("train.batch_size"));
  RWR_ASSIGN_OR_RETURN(s.grad_accum, c.Get<int64_t>("train.grad_accum"));
  RWR_ASSIGN_OR_RETURN(s.seq_len, c.Get<int64_t>("train.seq_len"));
  RWR_ASSIGN_OR_RETURN(s.chunk_len, c.Get<int64_t>("train.chunk_len"));
  RWR_ASSIGN_OR_RETURN(s.lr, c.Get<double>("train.lr"));
  RWR_ASSIGN_OR_RETURN(s.min_lr, c.Get<double>("train.min_lr"));
  RWR_ASSIGN_OR_RETURN(s.warmup_steps, c.Get<int64_t>("train.warmup_steps"));
  RWR_ASSIGN_OR_RETURN(s.weight_decay, c.Get<double>("train.weight_decay"));
  RWR_ASSIGN_OR_RETURN(s.beta1, c.Get<double>("train.beta1"));
  RWR_ASSIGN_OR_RETURN(s.beta2, c.Get<double>("train.beta2"));
  RWR_ASSIGN_OR_RETURN(s.eps, c.Get<double>("train.eps"));
  RWR_ASSIGN_OR_RETURN(s.clip_norm, c.Get<double>("train.clip_norm"));
  RWR_ASSIGN_OR_RETURN(s.log_every, c.Get<int64_t>("train.log_every"));
  RWR_ASSIGN_OR_RETURN(s.eval_every, c.Get<int64_t>("train.eval_every"));
  RWR_ASSIGN_OR_RETURN(s.eval_batches, c.Get<int64_t>("train.eval_batches"));
  RWR_ASSIGN_OR_RETURN(s.checkpoint_every, c.Get<int64_t>("train.checkpoint_every"));
  RWR_ASSIGN_OR_RETURN(s.checkpoint_every_s, c.Get<double>("train.checkpoint_every_s"));
  RWR_ASSIGN_OR_RETURN(s.keep_checkpoints, c.Get<int64_t>("train.keep_checkpoints"));
  RWR_ASSIGN_OR_RETURN(s.max_nonfinite, c.Get<int64_t>("train.max_nonfinite"));
  RWR_ASSIGN_OR_RETURN(s.max_steps_this_run, c.Get<int64_t>("train.max_steps_this_run"));
  RWR_ASSIGN_OR_RETURN(s.seed, c.Get<uint64_t>("train.seed"));
  RWR_ASSIGN_OR_RETURN(s.threads, c.Get<int>("train.threads"));
  RWR_ASSIGN_OR_RETURN(s.resume, c.Get<bool>("train.resume"));
  RWR_ASSIGN_OR_RETURN(s.device, c.Get<std::string>("train.device"));
  RWR_ASSIGN_OR_RETURN(s.gemm, c.Get<std::string>("train.gemm_precision"));
  if (s.device != "auto" && s.device != "cpu" && s.device != "cuda") {
    return absl::InvalidArgumentError(
        fmt::format("train.device '{}': expected auto, cpu or cuda", s.device));
  }
  if (s.gemm != "bf16" && s.gemm != "fp32") {
    return absl::InvalidArgumentError(
        fmt::format("train.gemm_precision '{}': expected bf16 or fp32", s.gemm));
  }
  auto positive = [](int64_t v, const char* key) -> absl::Status {
    if (v <= 0)
      return absl::InvalidArgumentError(fmt::format("config key '{}' must be positive", key));
    return absl::OkStatus();
  };
  RWR_RETURN_IF_ERROR(positive(s.steps, "train.steps"));
  RWR_RETURN_IF_ERROR(positive(s.batch_size, "train.batch_size"));
  RWR_RETURN_IF_ERROR(positive(s.grad_accum, "train.grad_accum"));
  RWR_RETURN_IF_ERROR(positive(s.log_every, "train.log_every"));
  RWR_RETURN_IF_ERROR(positive(s.max_nonfinite, "train.max_nonfinite"));
  RWR_RETURN_IF_ERROR(positive(s.eval_batches, "train.eval_batches"));
  // Counts where 0 means "off" or "the default": a negative one would silently mean the same.
  auto non_negative = [](auto v, const char* key, const char* zero) -> absl::Status {
    if (!(v >= 0)) {  // a NaN too
      return absl::InvalidArgumentError(
          fmt::format("config key '{}' must be >= 0 ({}), got {}", key, zero, v));
    }
    return absl::OkStatus();
  };
  RWR_RETURN_IF_ERROR(non_negative(s.threads, "train.threads", "0: every core"));
  RWR_RETURN_IF_ERROR(non_negative(s.seq_len, "train.seq_len", "0: the dataset's"));
  RWR_RETURN_IF_ERROR(non_negative(s.chunk_len, "train.chunk_len", "0: whole rows"));
  RWR_RETURN_IF_ERROR(non_negative(s.warmup_steps, "train.warmup_steps", "0: no warmup"));
  RWR_RETURN_IF_ERROR(non_negative(s.eval_every, "train.eval_every", "0: no evaluation"));
  RWR_RETURN_IF_ERROR(
      non_negative(s.checkpoint_every, "train.checkpoint_every", "0: not by steps"));
  RWR_RETURN_IF_ERROR(non_negative(s.keep_checkpoints, "train.keep_checkpoints", "0: keep all"));
  RWR_RETURN_IF_ERROR(
      non_negative(s.checkpoint_every_s, "train.checkpoint_every_s", "0: by steps only"));
  RWR_RETURN_IF_ERROR(
      non_negative(s.max_steps_this_run, "train.max_steps_this_run", "0: no limit"));
  if (s.lr <= 0 || s.min_lr < 0 || s.min_lr > s.lr) {
    return absl::InvalidArgumentError(
        fmt::format("config: need train.lr > 0 and 0 <= train.min_lr <= train.lr (got lr {}, "
                    "min_lr {})",
                    s.lr, s.min_lr));
  }
  // AdamW divides by 1 - beta^t and by sqrt(v) + eps: a beta of 1 or more, or eps <= 0, turns the
  // first update into NaN weights (which a checkpoint would then keep).
  if (s.beta1 < 0 || s.beta1 >= 1 || s.beta2 < 0 || s.beta2 >= 1 || s.eps <= 0) {
    return absl::InvalidArgumentError(fmt::format(
        "config: need 0 <= train.beta1, train.beta2 < 1 and train.eps > 0 (got beta1 {}, beta2 {}, "
        "eps {})",
        s.beta1, s.beta2, s.eps));
  }
  if (s.weight_decay < 0 || s.clip_norm < 0) {
    return absl::InvalidArgumentError(
        fmt::format("config: need train.weight_decay >= 0 and train.clip_norm >= 0 (0: off) (got "
                    "weight_decay {}, clip_norm {})",
                    s.weight_decay, s.clip_norm));
  }
  if (s.eval_every > 0 && s.eval_dir.empty()) {
    return absl::InvalidArgumentError(fmt::format(
        "train.eval_every {} needs data.eval_dir (a dataset from `rwr data build` to evaluate "
        "on): set it, or train.eval_every=0",
        s.eval_every));
  }
  return s;
}

TokenBatch View(const storage::Batch& b) {
  return {b.batch_size,     b.seq_len,          b.tokens.data(),
          b.targets.data(), b.loss_mask.data(), b.reset.data()};
}

// With model.init_from or model.config the model comes from that config.json. Inline model keys
// (say from a shared run config) must agree with it: one that differs would show in the logged
// config but not be used.
absl::Status CheckInlineModelKeys(const Config& config, const MambaConfig& model,
                                  const std::string& source) {
  const json inline_keys = YamlToJson(config.root()["model"]);
  const nlohmann::ordered_json used = model.ToHfJson();
  for (const auto& [key, value] : inline_keys.items()) {
    if (key == "init_from" || key == "config" || !used.contains(key)) continue;
    const auto& want = used[key];
    const bool same = value.is_number() && want.is_number()
                          ? std::abs(value.get<double>() - want.get<double>()) <=
                                1e-9 * std::max(1.0, std::abs(want.get<double>()))
                          : value == want;
    if (!same) {
      return absl::InvalidArgumentError(fmt::format(
          "model.{} is {} but the model comes from {}, which has {}: drop the inline model keys "
          "or make them agree",
          key, value.dump(), source, want.dump()));
    }
  }
  return absl::OkStatus();
}

// The sha256 of the tokenizer a dataset was built with (build.tokenizer.sha256), or "".
std::string DataTokenizerSha(const storage::ShardManifest& manifest) {
  const json build = json::parse(manifest.extra_json, nullptr, false);
  if (build.is_discarded() || !build.is_object() || !build.contains("tokenizer") ||
      !build["tokenizer"].is_object()) {
    return "";
  }
  return build["tokenizer"].value("sha256", std::string());
}

// Settings a resumed run changes against the run it continues, as "key old -> new": a changed lr
// or batch size can be meant, but should not go unnoticed.
std::vector<std::string> ChangedSettings(const std::string& old_yaml, const Config& now) {
  absl::StatusOr<Config> old = Config::Parse(old_yaml, "the checkpoint's config");
  std::vector<std::string> changed;
  if (!old.ok()) return changed;
  for (const std::string& key : now.LeafKeys()) {
    absl::StatusOr<std::string> before = old->Get<std::string>(key);
    absl::StatusOr<std::string> after = now.Get<std::string>(key);
    if (before.ok() && after.ok() && *before != *after) {
      changed.push_back(fmt::format("{} {} -> {}", key, *before, *after));
    }
  }
  return changed;
}

// The newest checkpoint in `dir` that loads. One that was completed but lost a file or was cut
// short afterwards is skipped with a warning, so that a requeued job does not fail on it forever;
// if none loads, that is an error (starting afresh would silently drop the run).
struct Resumed {
  std::string dir;
  CheckpointData data;
};

// ListCheckpoints reads an unlistable directory as empty; for the run directory that would start
// the run afresh over the one there (its metrics dropped, new checkpoints mixed with the old).
absl::Status CheckCheckpointsListable(const std::string& dir) {
  std::error_code ec;
  fs::directory_iterator listing(dir, ec);
  if (!ec || ec == std::errc::no_such_file_or_directory) return absl::OkStatus();
  return absl::UnavailableError(fmt::format(
      "cannot list {} ({}): it may hold this run's checkpoints, so the run does not start afresh; "
      "make it a readable directory",
      dir, ec.message()));
}

// The checkpoints rank 0 lists, on every rank: another node's view of a shared file system may
// lag, and every rank must try the same candidates in the same order.
absl::StatusOr<std::vector<std::string>> AgreedListing(const std::string& dir,
                                                       Communicator* comm) {
  std::vector<std::string> all = ListCheckpoints(dir);
  if (comm->world_size() == 1) return all;
  std::string joined;
  for (const std::string& path : all) joined += path + "\n";
  int64_t size = static_cast<int64_t>(joined.size());
  RWR_RETURN_IF_ERROR(comm->BroadcastBytes(
      std::span<std::byte>(reinterpret_cast<std::byte*>(&size), sizeof(size)), 0));
  joined.resize(size);
  RWR_RETURN_IF_ERROR(comm->BroadcastBytes(
      std::span<std::byte>(reinterpret_cast<std::byte*>(joined.data()), joined.size()), 0));
  all.clear();
  for (size_t at = 0; at < joined.size();) {
    const size_t end = joined.find('\n', at);
    all.push_back(joined.substr(at, end - at));
    at = end + 1;
  }
  return all;
}

// The newest checkpoint that every rank can read (each its own optimizer range), or nullopt where
// there is none. All ranks take the same one: a checkpoint one rank cannot read is passed over by
// all.
absl::StatusOr<std::optional<Resumed>> LoadNewestCheckpoint(const std::string& dir,
                                                            const ShardRange& range,
                                                            Communicator* comm) {
  RWR_ASSIGN_OR_RETURN(const std::vector<std::string> all, AgreedListing(dir, comm));
  std::string newest_error;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    // Rank 0's weights are broadcast to the others, who need not read them.
    absl::StatusOr<CheckpointData> data = LoadCheckpoint(*it, range, comm->rank() == 0);
    std::vector<double> failed = {data.ok() ? 0.0 : 1.0};
    RWR_RETURN_IF_ERROR(comm->AllReduceSum(std::span<double>(failed)));
    if (failed[0] == 0) return Resumed{*it, *std::move(data)};
    const std::string why = data.ok() ? std::string("another rank cannot read its part")
                                      : std::string(data.status().message());
    if (newest_error.empty()) newest_error = why;
    spdlog::warn("train: checkpoint {} cannot be read ({}); {}", *it, why,
                 std::next(it) != all.rend() ? "trying the one before" : "none left");
  }
  if (!all.empty()) {  // every rank is here, having tried the same checkpoints together
    return AgreeOnStatus(
        absl::DataLossError(fmt::format(
            "no checkpoint in {} can be read (the newest: {}); remove them or use another "
            "train.out_dir",
            dir, newest_error)),
        *comm);
  }
  return std::optional<Resumed>();
}

// A checkpoint this run can continue: the same model and data of the same tokenizer
// (`tokenizer_sha` is the data's; empty: unknown). The number of ranks may differ: each rank reads
// its optimizer range from whichever rank files hold it, and the data position counts global rows.
absl::Status CheckResumable(const Resumed& resumed, const MambaConfig& model_config,
                            const std::string& tokenizer_sha, const std::string& data_dir) {
  const CheckpointData& ckpt = resumed.data;
  if (ckpt.config.NumParameters() != model_config.NumParameters() ||
      ckpt.config.d_model != model_config.d_model || ckpt.config.n_layer != model_config.n_layer) {
    return absl::FailedPreconditionError(
        fmt::format("checkpoint {} holds a different model ({}) than the config ({}); use another "
                    "train.out_dir",
                    resumed.dir, ckpt.config.Summary(), model_config.Summary()));
  }
  if (!ckpt.state.tokenizer_sha256.empty() && !tokenizer_sha.empty() &&
      ckpt.state.tokenizer_sha256 != tokenizer_sha) {
    return absl::FailedPreconditionError(fmt::format(
        "data {} was built with another tokenizer (sha256 {}) than the data this run trained on "
        "({}): the model's embeddings would mean other tokens",
        data_dir, tokenizer_sha.substr(0, 12), ckpt.state.tokenizer_sha256.substr(0, 12)));
  }
  return absl::OkStatus();
}

// The held-out data must be tokens of the model's vocabulary (a larger one would index past the
// embeddings) and of the training data's tokenizer (else the eval loss measures nothing).
absl::Status CheckEvalData(const storage::ShardManifest& eval, const std::string& eval_dir,
                           const MambaConfig& model_config, const std::string& tokenizer_sha,
                           const std::string& data_dir) {
  if (static_cast<int64_t>(eval.vocab_size) > model_config.vocab_size) {
    return absl::InvalidArgumentError(fmt::format(
        "data.eval_dir {} has vocab {} but the model's vocab_size is {}: build it with the "
        "tokenizer of data.dir",
        eval_dir, eval.vocab_size, model_config.vocab_size));
  }
  const std::string eval_sha = DataTokenizerSha(eval);
  if (!eval_sha.empty() && !tokenizer_sha.empty() && eval_sha != tokenizer_sha) {
    return absl::InvalidArgumentError(fmt::format(
        "data.eval_dir {} was built with another tokenizer (sha256 {}) than data.dir {} ({}): "
        "build both with the same tokenizer",
        eval_dir, eval_sha.substr(0, 12), data_dir, tokenizer_sha.substr(0, 12)));
  }
  return absl::OkStatus();
}

// A model directory's tokenizer.json, where it has one, must be the one the data was built with.
absl::Status CheckModelTokenizer(const std::string& model_dir, const std::string& tokenizer_sha,
                                 const std::string& data_dir) {
  const fs::path tokenizer = fs::path(model_dir) / "tokenizer.json";
  if (!fs::exists(tokenizer) || tokenizer_sha.empty()) return absl::OkStatus();
  RWR_ASSIGN_OR_RETURN(std::string sha, Sha256HexOfFile(tokenizer.string()));
  if (sha == tokenizer_sha) return absl::OkStatus();
  return absl::FailedPreconditionError(fmt::format(
      "{} is not the tokenizer data {} was built with (sha256 {} vs {}): the model's embeddings "
      "would mean other tokens; rebuild the data with it",
      tokenizer.string(), data_dir, sha.substr(0, 12), tokenizer_sha.substr(0, 12)));
}

// metrics.jsonl: one JSON line per step. A run starting at step N first drops the lines past N
// (written after the last checkpoint by a run that was killed, a torn last line among them), so
// that every step appears once.
class MetricsLog {
 public:
  static absl::StatusOr<MetricsLog> Open(const fs::path& path, int64_t start_step) {
    if (std::ifstream in(path); in) {
      std::string kept, line;
      int dropped = 0;
      while (std::getline(in, line)) {
        const json record = json::parse(line, nullptr, false);
        const bool keep = record.is_object() && record.contains("step") &&
                          record["step"].is_number_integer() &&
                          record["step"].get<int64_t>() <= start_step;
        if (keep) {
          kept += line + "\n";
        } else {
          ++dropped;
        }
      }
      if (dropped > 0) {
        RWR_RETURN_IF_ERROR(storage::WriteFileAtomically(path.string(), kept));
        spdlog::warn(
            "train: dropped {} line(s) of {} past step {} (written after the last "
            "checkpoint by a run that did not finish)",
            dropped, path.string(), start_step);
      }
    }
    MetricsLog log;
    log.path_ = path.string();
    log.out_.open(path, std::ios::app);
    if (!log.out_) return absl::UnavailableError(fmt::format("cannot write {}", path.string()));
    return log;
  }
  // A line that cannot be written (a full disk or quota) stops the run: the checkpoint that would
  // follow needs far more room, and a run that went on would leave steps out of the log.
  absl::Status Append(const json& record) {
    out_ << record.dump() << "\n";
    out_.flush();
    if (!out_) {
      return absl::UnavailableError(fmt::format(
          "cannot append step {} to {} ({}): free space there and rerun, which resumes from the "
          "last checkpoint",
          record.value("step", int64_t{-1}), path_, std::strerror(errno)));
    }
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::ofstream out_;
};

#ifdef RWR_TRAINER_HAVE_CUDA
// The GEMM algorithms the GPU model timed (trainer/gemm_choices.h), kept as
// `<out_dir>/gemm_algos.json` so a resumed job runs the kernels of the job it continues (and
// repeats its bits). A file from another GPU type or cuBLASLt version, or one that does not parse,
// is set aside with a warning: the GEMMs are timed afresh and the file rewritten.
class GemmAlgosFile {
 public:
  explicit GemmAlgosFile(fs::path path) : path_(std::move(path)) {}

  void LoadInto(MambaCuda& gpu) {
    std::ifstream in(path_);
    if (!in) return;
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    absl::StatusOr<GemmChoices> choices = GemmChoices::FromJson(text, path_.string());
    absl::Status adopted = choices.ok() ? gpu.AdoptGemmChoices(*choices) : choices.status();
    if (!adopted.ok()) {
      spdlog::warn("train: {}; timing the GEMMs afresh", std::string(adopted.message()));
      return;
    }
    saved_ = *choices;
    spdlog::info("train: {} GEMM algorithms from {}", saved_.algos.size(), path_.string());
  }

  // Writes the file when the model's choices differ from what it holds (new shapes timed, or an
  // adopted algorithm cuBLASLt refused and timed afresh).
  absl::Status SaveNew(const MambaCuda& gpu) {
    GemmChoices choices = gpu.gemm_choices();
    if (choices == saved_) return absl::OkStatus();
    RWR_RETURN_IF_ERROR(storage::WriteFileAtomically(path_.string(), choices.ToJson()));
    saved_ = std::move(choices);
    return absl::OkStatus();
  }

 private:
  fs::path path_;
  GemmChoices saved_;
};
#endif

}  // namespace

Config DefaultTrainConfig() {
  auto parsed = Config::Parse(R"(
train:
  steps: 100
  batch_size: 4
  grad_accum: 1
  seq_len: 0
  chunk_len: 0
  lr: 1.0e-3
  min_lr: 1.0e-4
  warmup_steps: 10
  weight_decay: 0.1
  beta1: 0.9
  beta2: 0.95
  eps: 1.0e-8
  clip_norm: 1.0
  log_every: 1
  eval_every: 0
  eval_batches: 4
  checkpoint_every: 0
  checkpoint_every_s: 1800
  keep_checkpoints: 3
  max_nonfinite: 5
  max_steps_this_run: 0
  seed: 0
  threads: 0
  resume: true
  device: auto
  gemm_precision: bf16
)",
                              "train defaults");
  return *parsed;
}

absl::StatusOr<MambaConfig> ModelConfigFromRunConfig(const Config& config) {
  // Checked here rather than in Train: `rwr model init` (and the benches) read the model through
  // this too, and would otherwise build another model than the inline keys they log.
  if (config.Has("model.init_from")) {
    RWR_ASSIGN_OR_RETURN(std::string dir, config.Get<std::string>("model.init_from"));
    RWR_ASSIGN_OR_RETURN(MambaConfig model,
                         MambaConfig::FromJsonFile((fs::path(dir) / "config.json").string()));
    RWR_RETURN_IF_ERROR(CheckInlineModelKeys(config, model, dir));
    return model;
  }
  if (config.Has("model.config")) {
    RWR_ASSIGN_OR_RETURN(std::string path, config.Get<std::string>("model.config"));
    RWR_ASSIGN_OR_RETURN(MambaConfig model, MambaConfig::FromJsonFile(path));
    RWR_RETURN_IF_ERROR(CheckInlineModelKeys(config, model, path));
    return model;
  }
  YAML::Node node = config.root()["model"];
  if (!node.IsDefined() || !node.IsMap()) {
    return absl::InvalidArgumentError(
        "config has no model: section (give model.init_from: DIR, model.config: config.json, or "
        "the HF keys inline as in configs/models/tiny.yaml)");
  }
  return MambaConfig::FromJson(YamlToJson(node), "config section 'model'");
}

namespace {

#ifdef RWR_TRAINER_HAVE_CUDA
// Frees the host's copies of the weights and AdamW moments once the GPU holds them: until the first
// checkpoint copies them back from the GPU, the host needs none. At 2.8B that is 11 GB of weights
// and 22 GB / ranks of moments per rank, times the ranks of a node.
void ReleaseHostCopies(std::vector<float>& params, AdamW& adamw) {
  params = std::vector<float>();
  adamw.exp_avg() = std::vector<float>();
  adamw.exp_avg_sq() = std::vector<float>();
}
#endif

// When a checkpoint is written: beside the steps that follow it (train.checkpoint_every), at the
// run's last step, or at a stop (a signal, max_steps_this_run); the last two are published before
// the run ends.
enum class SaveWhen { kBesideTheSteps, kAtTheEnd, kAtAStop };

// The GPU side of a run, owned by Train (see there).
struct GpuSide {
#ifdef RWR_TRAINER_HAVE_CUDA
  std::unique_ptr<DeviceCollectives> collectives;  // declared first: it outlives the model
  std::unique_ptr<MambaCuda> model;
#endif
};

// What a run starts from that each rank finds on its own, before any collective: the settings,
// the model config, the data (opened and checked) and the run directory (locked by rank 0, and
// checked). The errors users meet most are found here, alike on every rank, so the ranks agree on
// them (AgreeOnStatus) and stop together with one message instead of through Abort.
struct RunInputs {
  Settings s;
  MambaConfig model_config;
  std::string init_from;
  std::unique_ptr<storage::ShardLoader> loader, eval_loader;
  storage::LoaderPosition eval_start;  // every evaluation reads the same first batches
  std::string tokenizer_sha;
  std::optional<DirLock> run_lock;  // rank 0's, held until Train returns
};

}  // namespace

absl::Status CheckTrainSettings(const Config& config) { return ReadSettings(config).status(); }

namespace {

absl::StatusOr<RunInputs> OpenRunInputs(const Config& config, Communicator* comm) {
  RunInputs in;
  RWR_ASSIGN_OR_RETURN(in.s, ReadSettings(config));
  const Settings& s = in.s;

  SetCpuThreads(s.threads, comm->local_size());
  RWR_ASSIGN_OR_RETURN(in.model_config, ModelConfigFromRunConfig(config));
  if (config.Has("model.init_from")) {
    RWR_ASSIGN_OR_RETURN(in.init_from, config.Get<std::string>("model.init_from"));
  }
  const fs::path out_dir = s.out_dir;
  const std::string checkpoints_dir = (out_dir / "checkpoints").string();

  storage::LoaderOptions loader_options;
  loader_options.dir = s.data_dir;
  loader_options.batch_size = s.batch_size;
  loader_options.seq_len = s.seq_len;
  loader_options.rank = comm->rank();
  loader_options.world_size = comm->world_size();
  loader_options.seed = s.data_seed;
  loader_options.shuffle = s.shuffle;
  RWR_ASSIGN_OR_RETURN(in.loader, storage::ShardLoader::Open(loader_options));
  if (static_cast<int64_t>(in.loader->manifest().vocab_size) > in.model_config.vocab_size) {
    return absl::InvalidArgumentError(fmt::format(
        "data {} has vocab {} but the model's vocab_size is {}: use a model config matching the "
        "tokenizer",
        s.data_dir, in.loader->manifest().vocab_size, in.model_config.vocab_size));
  }
  in.tokenizer_sha = DataTokenizerSha(in.loader->manifest());
  // Opened (and its shards checked) once, now rather than at the first evaluation.
  if (!s.eval_dir.empty()) {
    storage::LoaderOptions eval_options = loader_options;
    eval_options.dir = s.eval_dir;
    eval_options.shuffle = false;
    RWR_ASSIGN_OR_RETURN(in.eval_loader, storage::ShardLoader::Open(eval_options));
    in.eval_start = in.eval_loader->position();
    RWR_RETURN_IF_ERROR(CheckEvalData(in.eval_loader->manifest(), s.eval_dir, in.model_config,
                                      in.tokenizer_sha, s.data_dir));
  }
  // Taken (the directory created) before the directory is looked at, so that two runs started
  // together cannot both find it empty. One process (rank 0) speaks for the job.
  if (comm->rank() == 0) {
    RWR_ASSIGN_OR_RETURN(
        DirLock lock,
        DirLock::Acquire(s.out_dir,
                         {.setting = "train.out_dir",
                          .command = "rwr train",
                          .clash = "two runs in one directory would overwrite each other's "
                                   "checkpoints"}));
    in.run_lock.emplace(std::move(lock));
  }
  RWR_RETURN_IF_ERROR(CheckCheckpointsListable(checkpoints_dir));
  if (!s.resume &&
      (!ListCheckpoints(checkpoints_dir).empty() ||
       (fs::exists(out_dir / "metrics.jsonl") && fs::file_size(out_dir / "metrics.jsonl") > 0))) {
    return absl::FailedPreconditionError(fmt::format(
        "train.out_dir {} already holds a run; train.resume=false starts a new one: give it a new "
        "train.out_dir (or remove {})",
        s.out_dir, s.out_dir));
  }
  return in;
}

absl::StatusOr<TrainResult> TrainOnRanks(const Config& config, Communicator* comm,
                                         GpuSide* side) {
  absl::StatusOr<RunInputs> opened = OpenRunInputs(config, comm);
  RWR_RETURN_IF_ERROR(AgreeOnStatus(opened.status(), *comm));
  const Settings& s = opened->s;
  const MambaConfig& model_config = opened->model_config;
  const std::string& init_from = opened->init_from;
  const std::string& tokenizer_sha = opened->tokenizer_sha;
  storage::ShardLoader* loader = opened->loader.get();
  storage::ShardLoader* eval_loader = opened->eval_loader.get();
  const storage::LoaderPosition& eval_start = opened->eval_start;
  const fs::path out_dir = s.out_dir;
  const std::string checkpoints_dir = (out_dir / "checkpoints").string();

  MambaCpu model(model_config);
  const ParamLayout& layout = model.layout();
  const ShardRange range = ShardRange::For(layout.total(), comm->rank(), comm->world_size());
  AdamW adamw(layout, {s.beta1, s.beta2, s.eps, s.weight_decay}, range);

  // Start: newest readable checkpoint, else init_from, else a fresh initialisation.
  std::vector<float> params;
  TrainerState state;
  state.world_size = comm->world_size();
  Rng rng(s.seed);
  std::optional<Resumed> resumed;
  if (s.resume) {
    RWR_ASSIGN_OR_RETURN(resumed, LoadNewestCheckpoint(checkpoints_dir, range, comm));
  }
  // From here to the weights' broadcast each rank works on its own; they agree there.
  absl::Status started = [&]() -> absl::Status {
    if (resumed) {
      CheckpointData& ckpt = resumed->data;
      RWR_RETURN_IF_ERROR(CheckResumable(*resumed, model_config, tokenizer_sha, s.data_dir));
      if (ckpt.state.world_size != comm->world_size()) {
        spdlog::info("train: {} was written by {} ranks; this run has {} (optimizer re-sharded)",
                     resumed->dir, ckpt.state.world_size, comm->world_size());
      }
      if (const auto changed = ChangedSettings(ckpt.state.resolved_config_yaml, config);
          !changed.empty()) {
        spdlog::warn("train: resuming with changed settings: {}", fmt::join(changed, ", "));
      }
      params = std::move(ckpt.params);
      adamw.exp_avg() = std::move(ckpt.exp_avg);
      adamw.exp_avg_sq() = std::move(ckpt.exp_avg_sq);
      adamw.set_step(ckpt.opt_step);
      state = ckpt.state;
      state.world_size = comm->world_size();
      rng.set_state(state.rng_state);
      if (!state.loader_position_json.empty()) {
        RWR_ASSIGN_OR_RETURN(auto position,
                             storage::LoaderPosition::FromJson(state.loader_position_json));
        RWR_RETURN_IF_ERROR(loader->Restore(position));
      }
      spdlog::info("train: resuming from {} (step {})", resumed->dir, state.step);
    } else if (!init_from.empty()) {
      RWR_RETURN_IF_ERROR(CheckModelTokenizer(init_from, tokenizer_sha, s.data_dir));
      RWR_RETURN_IF_ERROR(LoadWeights(init_from, model_config, &params));
      spdlog::info("train: starting from weights in {}", init_from);
    } else {
      params = InitParams(model_config, s.seed);
      spdlog::info("train: starting from a fresh initialisation (seed {})", s.seed);
    }
    return absl::OkStatus();
  }();
  RWR_RETURN_IF_ERROR(AgreeOnStatus(started, *comm));
  state.resolved_config_yaml = config.ToYaml();
  state.data_dir = fs::absolute(s.data_dir).lexically_normal().string();
  state.tokenizer_sha256 = tokenizer_sha;
  TrainResult result;
  result.start_step = result.final_step = state.step;
  if (resumed) result.last_checkpoint = resumed->dir;
  if (state.step >= s.steps) {  // rerun of a finished run: nothing to redo, nothing to rewrite
    if (state.step > s.steps) {
      spdlog::warn("train: train.steps {} is below the run's step {}", s.steps, state.step);
    }
    spdlog::info("train: {} is already at step {}: nothing to do", s.out_dir, state.step);
    result.nothing_to_do = true;
    return result;
  }
  params.resize(layout.total());  // a resumed rank other than 0 read no weights
  RWR_RETURN_IF_ERROR(comm->Broadcast(params, 0));

  // Where the steps run: the CUDA model (parameters, gradients and AdamW state on the GPU, one
  // GPU per rank, the ranks' gradients summed over NCCL) or the CPU reference.
  bool use_cuda = false;
#ifdef RWR_TRAINER_HAVE_CUDA
  std::unique_ptr<MambaCuda>& gpu = side->model;
  std::unique_ptr<DeviceCollectives>& collectives = side->collectives;
  // Each rank keeps its own: ranks time the GEMMs apart, and a resumed rank must run what it ran.
  GemmAlgosFile gemm_algos(out_dir / (comm->rank() == 0
                                          ? std::string("gemm_algos.json")
                                          : fmt::format("gemm_algos.rank{:05d}.json", comm->rank())));
  use_cuda = s.device == "cuda" ||
             (s.device == "auto" && CudaDeviceAvailable() && model_config.d_state == 16);
  if (comm->world_size() > 1) {  // `auto` decides per rank: one without a GPU would not match
    std::vector<double> on_gpu = {use_cuda ? 1.0 : 0.0};
    RWR_RETURN_IF_ERROR(comm->AllReduceSum(std::span<double>(on_gpu)));
    if (on_gpu[0] != 0 && on_gpu[0] != comm->world_size()) {
      // Every rank took this branch (the sum is theirs): they end in step, printed once.
      return AgreeOnStatus(
          absl::FailedPreconditionError(fmt::format(
              "{} of {} ranks found a GPU (train.device={}): every rank must train on the same "
              "kind of device; check the GPUs of the nodes, or set train.device",
              on_gpu[0], comm->world_size(), s.device)),
          *comm);
    }
  }
  if (use_cuda) {
    RWR_RETURN_IF_ERROR(SelectCudaDevice(*comm));
    if (comm->world_size() > 1) {
      RWR_ASSIGN_OR_RETURN(collectives, DeviceCollectives::Create(*comm));
    }
    RWR_ASSIGN_OR_RETURN(
        gpu, MambaCuda::Create(model_config,
                               s.gemm == "fp32" ? GemmPrecision::kFp32 : GemmPrecision::kBf16,
                               collectives.get()));
    gemm_algos.LoadInto(*gpu);
    RWR_RETURN_IF_ERROR(gpu->UploadParams(params));
    if (resumed) {
      RWR_RETURN_IF_ERROR(gpu->UploadOptimizer(adamw.exp_avg(), adamw.exp_avg_sq(), adamw.step()));
    }
    ReleaseHostCopies(params, adamw);
  }
#else
  if (s.device == "cuda") {
    return absl::UnimplementedError(
        "train.device=cuda: this build has no CUDA (configure with RWR_CUDA=ON)");
  }
#endif
  spdlog::info("train: running on {}{}",
               use_cuda ? fmt::format("CUDA ({} GEMMs)", s.gemm) : "the CPU",
               comm->world_size() > 1
                   ? fmt::format(", {} ranks ({}; each updates 1/{} of the parameters)",
                                 comm->world_size(), use_cuda ? "NCCL" : "MPI",
                                 comm->world_size())
                   : "");
  // Checked: on a full file system the run stops here, not after hours of steps at the first
  // checkpoint. Rank 0 writes the run directory's files.
  if (comm->rank() == 0) {
    RWR_RETURN_IF_ERROR(storage::WriteFileAtomically((out_dir / "config.yaml").string(),
                                                     state.resolved_config_yaml + "\n"));
  }
  spdlog::info("train: model {}; data {} ({} rows); {} steps of {}×{}×{} rows",
               model_config.Summary(), s.data_dir, loader->dataset_rows(), s.steps, s.batch_size,
               s.grad_accum, comm->world_size());

  std::optional<MetricsLog> metrics;
  if (comm->rank() == 0) {
    RWR_ASSIGN_OR_RETURN(metrics, MetricsLog::Open(out_dir / "metrics.jsonl", state.step));
  }
  const LrSchedule schedule{s.lr, s.min_lr, s.warmup_steps, s.steps};
  std::vector<float> grads(use_cuda ? 0 : layout.total());  // the CPU path's; the GPU has its own
  std::vector<storage::Batch> micro(s.grad_accum);
  bool first = true;
  int64_t steps_this_run = 0;
  const auto run_start = std::chrono::steady_clock::now();
  auto window_start = run_start;
  int64_t window_tokens = 0, window_steps = 0;
  // Seconds the steps paused for a checkpoint (its copy, and a wait for the one before) since the
  // last metrics line: the next line says so beside its lower tokens/s.
  double checkpoint_pause_s = 0;
  // The step of the newest checkpoint on disk: a stop right after a checkpoint, or a resumed run
  // stopped before its first step, writes none again.
  int64_t saved_step = resumed ? state.step : -1;
  auto finish = [&](bool interrupted) {
    result.interrupted = interrupted;
    result.final_step = state.step;
    result.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
    return result;
  };

  // A failure on this rank alone — a row that does not read, a metrics line or GEMM choices that
  // cannot be written — is kept here rather than returned at once, where the other ranks would
  // wait for this one in their next collective: it rides on the next all-reduce that every rank
  // makes at the same point (the stop flag, a step's loss-token count, an evaluation's sums,
  // before a checkpoint), where every rank learns of it and they all end in step (AgreeOnStatus).
  absl::Status rank_failure;

  // The checkpoint whose files are being written beside the steps, one at a time. Every rank
  // starts and finishes it at the same points, so it is set or not alike on all of them.
  std::unique_ptr<BackgroundCheckpoint> writing;
  auto last_checkpoint_start = run_start;  // train.checkpoint_every_s counts from here
  bool checkpoint_due = false;             // by time, agreed in stop_agreed
  // The last checkpoint's copy, whose buffers the next one reuses: their pages are resident, and
  // a copy into fresh ones spends most of its time faulting them in (docs/benchmarks.md). On the
  // GPU the host held them at the last checkpoint anyway, so the run's peak is the same; on the
  // CPU this is a second copy of the live weights and moments, held from the first checkpoint
  // on (the synchronous save before it lent the live vectors instead).
  CheckpointData spare;
  double copy_seconds = 0;    // the pause of the steps for `writing`'s copy of the state
  bool beside_steps = false;  // `writing` was started to be written while the steps go on

  // Ends `writing`: waits for this rank's part, then publishes it where every rank's is in
  // (collective), keeps its buffers for the next copy and says so. Returns the agreed failure.
  auto end_writing = [&]() -> absl::Status {
    const std::unique_ptr<BackgroundCheckpoint> done = std::move(writing);
    absl::StatusOr<std::string> published = done->Finish();
    spare = done->TakeData();
    if (!published.ok()) return published.status();
    result.last_checkpoint = *published;
    saved_step = done->step();
    spdlog::info("train: checkpoint {} (copied in {:.1f} s, written in {:.1f} s{})",
                 result.last_checkpoint, copy_seconds, done->write_seconds(),
                 beside_steps && done->written_beside() ? " while the steps went on" : "");
    return absl::OkStatus();
  };

  // Publishes `writing` once every rank's part is written (waiting for this rank's).
  auto finish_writing = [&]() -> absl::Status {
    if (!writing) return absl::OkStatus();
    if (beside_steps && !writing->Written()) {
      spdlog::info("train: waiting for the checkpoint of step {} to be written", writing->step());
    }
    return end_writing();
  };

  // A stop's checkpoint (a signal, max_steps_this_run) supersedes an older one still being
  // written: that one is given up (within 64 MiB of writing, or the file flush under way) rather
  // than waited for, so that a stop writes one checkpoint in Slurm's grace, not two (the run's last
  // checkpoint waits: every checkpoint a finished run was asked for is there). Where every rank's
  // part was in after all, it is published. Its failure is agreed (AgreeOnStatus: failed on every
  // rank or on none), so every rank goes on alike; a rank whose own write had failed says why.
  auto give_up_writing = [&]() {
    if (!writing) return;  // (save calls it only for an older step than this one)
    const int64_t step = writing->step();
    writing->Abandon();
    const absl::Status own = writing->Join();
    if (!own.ok() && !absl::IsCancelled(own)) {
      spdlog::warn(
          "train: the checkpoint of step {} failed on this rank ({}); step {}'s is written "
          "instead",
          step, std::string(own.message()), state.step);
    }
    if (!end_writing().ok()) {
      spdlog::info(
          "train: the checkpoint of step {}, still being written, is given up for step "
          "{}'s",
          step, state.step);
    }
  };

  // An error every rank ends on at the same point (AgreeOnStatus) publishes the checkpoint being
  // written first where it can: it is the newest state a rerun can start from (after a run of
  // non-finite steps, the last good one).
  auto end_in_step = [&](absl::Status agreed) -> absl::Status {
    if (agreed.ok()) return agreed;
    if (absl::Status published = finish_writing(); !published.ok()) {
      spdlog::warn("train: the checkpoint being written is not kept: {}",
                   std::string(published.message()));
    }
    return agreed;
  };

  // rank_failure agreed at a point every rank reaches: OK, or the failure every rank ends on.
  auto agree_on_rank_failure = [&]() { return end_in_step(AgreeOnStatus(rank_failure, *comm)); };

  // This step's state as a checkpoint holds it, in the last checkpoint's buffers (`spare`):
  // copied from the GPU, or of the CPU's live vectors, which the next steps change. Only rank 0
  // writes the weights.
  auto copy_state = [&]() -> absl::StatusOr<CheckpointData> {
    const bool lead = comm->rank() == 0;
    CheckpointData data{model_config, {}, range.begin, range.end, {}, {}, adamw.step(), state};
    data.state.loader_position_json = loader->position().ToJson();
    data.state.rng_state = rng.state();
    if (lead) data.params = std::move(spare.params);
    data.exp_avg = std::move(spare.exp_avg);
    data.exp_avg_sq = std::move(spare.exp_avg_sq);
#ifdef RWR_TRAINER_HAVE_CUDA
    if (gpu) {
      if (lead) {
        if (static_cast<int64_t>(data.params.size()) != layout.total()) {
          data.params = ZeroedFloats(layout.total());
        }
        RWR_RETURN_IF_ERROR(gpu->DownloadParams(data.params));
      }
      RWR_RETURN_IF_ERROR(gpu->DownloadOptimizer(&data.exp_avg, &data.exp_avg_sq, &data.opt_step));
      return data;
    }
#endif
    if (lead) data.params.assign(params.begin(), params.end());
    // Before the first update AdamW has no moments yet: they are zero.
    const size_t n = static_cast<size_t>(range.end - range.begin);
    auto copy_moments = [n](const std::vector<float>& from, std::vector<float>& to) {
      if (from.empty()) {
        to.assign(n, 0.f);
      } else {
        to.assign(from.begin(), from.end());
      }
    };
    copy_moments(adamw.exp_avg(), data.exp_avg);
    copy_moments(adamw.exp_avg_sq(), data.exp_avg_sq);
    return data;
  };

  // A checkpoint of this step: beside the next steps, or published before it returns (the run's
  // last, a stop's). One is written at a time: the one before is published first, except that a
  // stop gives it up (give_up_writing).
  auto save = [&](SaveWhen when) -> absl::Status {
    const bool wait = when != SaveWhen::kBesideTheSteps;
    if (saved_step != state.step && !(writing && writing->step() == state.step)) {
      if (when == SaveWhen::kAtAStop) give_up_writing();
      RWR_RETURN_IF_ERROR(finish_writing());
      const auto copy_start = std::chrono::steady_clock::now();
      last_checkpoint_start = copy_start;
      RWR_ASSIGN_OR_RETURN(CheckpointData data, copy_state());
      copy_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - copy_start).count();
      RWR_ASSIGN_OR_RETURN(writing,
                           BackgroundCheckpoint::Start(checkpoints_dir, std::move(data),
                                                       static_cast<int>(s.keep_checkpoints), comm));
      beside_steps = !wait;
#ifdef RWR_TRAINER_HAVE_CUDA
      // The shapes evals timed, too; each rank's own file, agreed as the checkpoint's parts are.
      if (gpu) RWR_RETURN_IF_ERROR(end_in_step(AgreeOnStatus(gemm_algos.SaveNew(*gpu), *comm)));
#endif
    }
    return wait ? finish_writing() : absl::OkStatus();
  };

  // A stop every rank agrees on: a signal reaches the ranks at different moments, and a rank that
  // stopped alone would leave the others waiting in a collective. One rank: the signal itself.
  // The same sum says whether every rank has written its part of the checkpoint under way, which
  // is then published.
  // Rank 0's clock, too, says whether train.checkpoint_every_s has passed since the last
  // checkpoint began (or the run started): the step then ends with one (checkpoint_due).
  auto stop_agreed = [&]() -> absl::StatusOr<bool> {
    const bool time_due =
        comm->rank() == 0 && s.checkpoint_every_s > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint_start)
                .count() >= s.checkpoint_every_s;
    std::vector<double> flags = {ShutdownRequested() ? 1.0 : 0.0, rank_failure.ok() ? 0.0 : 1.0,
                                 writing && !writing->Written() ? 1.0 : 0.0, time_due ? 1.0 : 0.0};
    RWR_RETURN_IF_ERROR(comm->AllReduceSum(std::span<double>(flags)));
    if (flags[1] > 0) return agree_on_rank_failure();
    if (writing && flags[2] == 0) RWR_RETURN_IF_ERROR(finish_writing());
    if (flags[3] > 0) checkpoint_due = true;
    return flags[0] > 0;
  };
  auto signal_text = [] {
    return ShutdownRequested() ? fmt::format("signal {}", ShutdownSignal())
                               : std::string("a signal to another rank");
  };

  // The held-out loss, or nullopt where a shutdown signal came before it was done: a long
  // evaluation would otherwise spend the grace Slurm gives before SIGKILL, and the checkpoint of
  // the step just done is what that grace is for. (The step's record then has no eval_loss.)
  auto evaluate = [&]() -> absl::StatusOr<std::optional<double>> {
    if (absl::Status restored = eval_loader->Restore(eval_start); !restored.ok())
      rank_failure.Update(std::move(restored));  // agreed at the first stop flag or the sums
    std::vector<double> sums = {0, 0};
    storage::Batch batch;
    for (int64_t i = 0; i < s.eval_batches; ++i) {
      RWR_ASSIGN_OR_RETURN(const bool stop, stop_agreed());
      if (stop) {
        spdlog::warn("train: {} during the evaluation at step {}; evaluation abandoned",
                     signal_text(), state.step);
        return std::optional<double>();
      }
      if (absl::Status read = eval_loader->Next(&batch); !read.ok()) {
        rank_failure.Update(std::move(read));  // agreed at the next stop flag or the sums below
        continue;
      }
      LossSum part;
#ifdef RWR_TRAINER_HAVE_CUDA
      if (gpu) {
        RWR_ASSIGN_OR_RETURN(part, gpu->Forward(View(batch), s.chunk_len));
      } else
#endif
      {
        RWR_ASSIGN_OR_RETURN(part, model.Forward(params, View(batch), s.chunk_len));
      }
      sums[0] += part.loss_sum;
      sums[1] += static_cast<double>(part.tokens);
    }
    sums.push_back(rank_failure.ok() ? 0.0 : 1.0);
    RWR_RETURN_IF_ERROR(comm->AllReduceSum(std::span<double>(sums)));
    if (sums[2] > 0) return agree_on_rank_failure();
    return sums[1] > 0 ? sums[0] / sums[1] : 0.0;
  };

  while (state.step < s.steps) {
    RWR_ASSIGN_OR_RETURN(const bool stop, stop_agreed());
    if (stop || (s.max_steps_this_run > 0 && steps_this_run >= s.max_steps_this_run)) {
      spdlog::warn("train: {} at step {}; {}",
                   stop ? signal_text() : std::string("max_steps_this_run reached"),
                   state.step,
                   steps_this_run == 0 ? "no step done, nothing to checkpoint; exiting"
                                       : "checkpointing and exiting");
      if (steps_this_run > 0) RWR_RETURN_IF_ERROR(save(SaveWhen::kAtAStop));
      return finish(/*interrupted=*/true);
    }
    // Micro-batches first: the loss is normalised by the loss tokens of the whole global batch.
    std::vector<double> counts = {0, 0};  // loss tokens; ranks whose rows did not read
    int64_t positions = 0;
    for (auto& mb : micro) {
      if (absl::Status read = loader->Next(&mb); !read.ok()) {
        rank_failure.Update(std::move(read));
        counts[1] = 1;
        break;
      }
      counts[0] += static_cast<double>(mb.loss_tokens);
      positions += mb.batch_size * mb.seq_len;
    }
    RWR_RETURN_IF_ERROR(comm->AllReduceSum(std::span<double>(counts)));
    if (counts[1] > 0) return agree_on_rank_failure();
    std::vector<double> loss_sum = {0};
    const float scale = counts[0] > 0 ? static_cast<float>(1.0 / counts[0]) : 0.f;
    const double lr = schedule.At(state.step);
    double grad_norm = 0;
    bool gpu_nonfinite = false;
#ifdef RWR_TRAINER_HAVE_CUDA
    if (gpu) {
      // Told the number of calls, the last one sums the gradients over the ranks beside its
      // backward.
      RWR_RETURN_IF_ERROR(gpu->ZeroGrads(static_cast<int64_t>(micro.size())));
      for (const auto& mb : micro) {
        RWR_ASSIGN_OR_RETURN(LossSum part, gpu->ForwardBackward(View(mb), s.chunk_len, scale));
        loss_sum[0] += part.loss_sum;
      }
    } else
#endif
    {
      std::fill(grads.begin(), grads.end(), 0.f);
      for (const auto& mb : micro) {
        RWR_ASSIGN_OR_RETURN(LossSum part,
                             model.ForwardBackward(params, View(mb), s.chunk_len, scale, grads));
        loss_sum[0] += part.loss_sum;
      }
      RWR_RETURN_IF_ERROR(comm->AllReduceSum(std::span<float>(grads)));
    }
    RWR_RETURN_IF_ERROR(comm->AllReduceSum(std::span<double>(loss_sum)));
    const double loss = counts[0] > 0 ? loss_sum[0] / counts[0] : 0.0;
#ifdef RWR_TRAINER_HAVE_CUDA
    // The GPU step clips and updates in one go and reports a non-finite gradient norm instead.
    if (gpu && std::isfinite(loss) && counts[0] > 0) {
      RWR_ASSIGN_OR_RETURN(
          grad_norm, gpu->ClipAndStep(s.clip_norm, lr, {s.beta1, s.beta2, s.eps, s.weight_decay}));
      gpu_nonfinite = !std::isfinite(grad_norm);
    }
#endif
    bool skipped = false;
    if (!std::isfinite(loss) || gpu_nonfinite || (!use_cuda && !AllFinite(grads))) {
      ++state.nonfinite_in_a_row;
      skipped = true;
      spdlog::warn(
          "train: step {}: non-finite loss or gradient; update skipped ({} in a row, abort at {})",
          state.step + 1, state.nonfinite_in_a_row, s.max_nonfinite);
      if (state.nonfinite_in_a_row >= s.max_nonfinite) {
        // The loss and the gradient norm are the ranks' reduced ones: every rank stops here.
        return end_in_step(AgreeOnStatus(
            absl::AbortedError(fmt::format(
                "{} steps in a row had a non-finite loss or gradient (last at step {}): lower "
                "train.lr or check the data; the last checkpoint is intact",
                state.nonfinite_in_a_row, state.step + 1)),
            *comm));
      }
    } else if (counts[0] == 0) {
      skipped = true;
      spdlog::warn("train: step {}: no loss tokens in the batch; update skipped", state.step + 1);
    } else if (use_cuda) {
      state.nonfinite_in_a_row = 0;  // updated above
    } else {
      state.nonfinite_in_a_row = 0;
      grad_norm = GlobalNorm(grads);
      ClipByGlobalNorm(grads, grad_norm, s.clip_norm);
      adamw.Step(params, grads, lr);
      RWR_RETURN_IF_ERROR(comm->AllGather(params));
    }
#ifdef RWR_TRAINER_HAVE_CUDA
    if (absl::Status saved = gpu ? gemm_algos.SaveNew(*gpu) : absl::OkStatus(); !saved.ok())
      rank_failure.Update(std::move(saved));
#endif
    ++state.step;
    ++steps_this_run;
    const int64_t step_tokens = positions * comm->world_size();
    state.tokens_seen += step_tokens;
    result.tokens += step_tokens;
    window_tokens += step_tokens;
    ++window_steps;
    if (first) result.first_loss = loss;
    first = false;
    result.last_loss = loss;

    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - window_start).count();
    const double tokens_per_s = seconds > 0 ? window_tokens / seconds : 0;
    json record = {{"step", state.step},
                   {"loss", loss},
                   {"lr", lr},
                   {"grad_norm", grad_norm},
                   {"tokens", state.tokens_seen},
                   {"tokens_per_s", tokens_per_s},
                   // MFU is 6·N·tokens/s over the H100's 790 TFLOP/s bf16 rate (ANCHORS.md): a GPU
                   // number. The CPU path has no comparable peak, so it records null.
                   {"mfu", nullptr},
                   {"peak_mem_gib", PeakRssGiB()},
                   {"host_gib", RssGiB()},
                   {"loss_tokens", counts[0]},
                   {"skipped", skipped},
                   {"epoch", loader->position().epoch}};
    if (checkpoint_pause_s > 0) {  // the step's tokens/s counts it
      record["checkpoint_pause_s"] = checkpoint_pause_s;
      checkpoint_pause_s = 0;
    }
#ifdef RWR_TRAINER_HAVE_CUDA
    if (gpu) {
      record["mfu"] =
          6.0 * static_cast<double>(model_config.NumParameters()) * tokens_per_s / 790e12;
      record["peak_mem_gib"] = static_cast<double>(gpu->peak_bytes()) / (1 << 30);  // device
      record["peak_host_gib"] = PeakRssGiB();
    }
#endif
    if (s.eval_every > 0 && !s.eval_dir.empty() &&
        (state.step % s.eval_every == 0 || state.step == s.steps)) {
      RWR_ASSIGN_OR_RETURN(std::optional<double> eval_loss, evaluate());
      if (eval_loss) {
        record["eval_loss"] = *eval_loss;
        result.last_eval_loss = *eval_loss;
      }
    }
    state.last_metrics = record;
    if (absl::Status appended = metrics ? metrics->Append(record) : absl::OkStatus();
        !appended.ok())
      rank_failure.Update(std::move(appended));  // rank 0's file only
    if (state.step % s.log_every == 0 || state.step == s.steps || state.step == 1) {
      // The steps left at the pace of those since the last line (checkpoints and evaluations
      // included).
      const std::string eta =
          state.step < s.steps && window_steps > 0
              ? fmt::format("  ETA {}", FormatDuration(seconds / static_cast<double>(window_steps) *
                                                       static_cast<double>(s.steps - state.step)))
              : "";
      spdlog::info(
          "step {}/{}  loss {:.4f}{}  lr {:.3e}  grad_norm {:.3f}  {:.0f} tok/s{}  peak {:.2f} "
          "GiB{}",
          state.step, s.steps, loss,
          record.contains("eval_loss")
              ? fmt::format("  eval {:.4f}", record["eval_loss"].get<double>())
              : "",
          lr, grad_norm, tokens_per_s,
          record["mfu"].is_number()
              ? fmt::format("  MFU {:.1f}%", 100 * record["mfu"].get<double>())
              : "",
          record["peak_mem_gib"].get<double>(), eta);
      window_start = now;
      window_tokens = 0;
      window_steps = 0;
    }
    const bool by_steps = s.checkpoint_every > 0 && state.step % s.checkpoint_every == 0;
    const bool by_time = std::exchange(checkpoint_due, false);
    if ((by_steps || by_time) && state.step < s.steps) {
      // Not past a step the metrics lack, nor with a rank's failure pending.
      RWR_RETURN_IF_ERROR(agree_on_rank_failure());
      const auto pause_start = std::chrono::steady_clock::now();
      RWR_RETURN_IF_ERROR(save(SaveWhen::kBesideTheSteps));
      checkpoint_pause_s +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - pause_start).count();
    }
  }
  RWR_RETURN_IF_ERROR(agree_on_rank_failure());  // from the last step
  RWR_RETURN_IF_ERROR(save(SaveWhen::kAtTheEnd));
  return finish(/*interrupted=*/false);
}

}  // namespace

absl::StatusOr<TrainResult> Train(const Config& config, Communicator* comm) {
  // The GPU model and the NCCL communicator live here, so that a rank failing alone ends the job
  // (Abort) before their teardown, which may wait for the other ranks — who wait in a collective
  // for this one.
  GpuSide side;
  absl::StatusOr<TrainResult> result = TrainOnRanks(config, comm, &side);
  if (!result.ok() && comm->world_size() > 1 && !IsAgreedFailure(result.status())) {
    spdlog::error("train: {}", std::string(result.status().message()));
    comm->Abort(1);
  }
  return result;
}

}  // namespace rwr::trainer
