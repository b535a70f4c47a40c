// The registry of config keys; see config_keys.h.
#include "cli/config_keys.h"

#include <algorithm>

#include "trainer/model_config.h"
#include "trainer/train_loop.h"

namespace rwr::cli {
namespace {

// The keys read by name outside the trainer's defaults, by section (keep in step with the
// commands that read them; cli_test's source scan fails when one is missing here).
constexpr const char* kKeys[] = {
    // rwr data build
    "build.cache", "build.input", "build.layout", "build.long_samples", "build.out",
    "build.seq_len", "build.shard_tokens", "build.template", "build.tokenizer",
    // the note cache (distill, data build)
    "cache.sync_writes",
    // rwr data synth, then rwr train (data.dir, eval_dir, seed, shuffle); data.tokenizer and
    // tokenizer(.path) are where `rwr export` also looks for a run's tokenizer
    "data.answer_position", "data.context_tokens", "data.count", "data.dir", "data.distractors",
    "data.eval_dir", "data.min_context_tokens", "data.seed", "data.shuffle", "data.tokenizer",
    "data.tokens_per_word", "tokenizer", "tokenizer.path",
    // rwr distill run / serve
    "distill.concurrency", "distill.items_in_flight", "distill.max_record_bytes",
    "distill.negative_fraction", "distill.on_bad_input", "distill.teacher_outage_s",
    "distill.teacher_retry_s",
    // rwr data build's recipe
    "recipe.ratio.empty", "recipe.ratio.note", "recipe.ratio.plain", "recipe.seed",
    // teacher clients and servers
    "teacher.auth_token_file", "teacher.connect_timeout_s", "teacher.deadline_s",
    "teacher.extractive.keep_fraction", "teacher.extractive.max_sentences",
    "teacher.extractive.min_coverage", "teacher.extractive.note_budget_bytes",
    "teacher.extractive.verify_threshold", "teacher.kserve.input_tensor",
    "teacher.kserve.max_tokens", "teacher.kserve.max_tokens_tensor", "teacher.kserve.model_version",
    "teacher.kserve.output_tensor", "teacher.kserve.prompt_template_version",
    "teacher.kserve.revision", "teacher.kserve.seed", "teacher.kserve.seed_tensor",
    "teacher.kserve.temperature", "teacher.kserve.temperature_tensor", "teacher.max_attempts",
    "teacher.requests_per_second", "teacher.tls_root_cert", "teacher.tls_server_name",
    // rwr train, rwr model init (besides the train defaults and the model's own keys)
    "train.out_dir", "model.config", "model.init_from"};

}  // namespace

const std::vector<std::string>& KnownConfigKeys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> all(std::begin(kKeys), std::end(kKeys));
    for (std::string& key : trainer::DefaultTrainConfig().LeafKeys()) all.push_back(std::move(key));
    for (const std::string& key : trainer::MambaConfig::KnownKeys()) all.push_back("model." + key);
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    return all;
  }();
  return keys;
}

absl::Status CheckConfigKeys(const Config& config, std::string_view command) {
  const std::vector<std::string>& known = KnownConfigKeys();
  return config.CheckKeys(
      [&](const std::string& key) { return std::binary_search(known.begin(), known.end(), key); },
      known, command);
}

}  // namespace rwr::cli
