// `rwr data synth|build|inspect`: generate the synthetic long-context QA set, turn a dataset (and
// the teacher's cached notes) into token shards, and look inside a shard directory.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "cli/command.h"
#include "common/dir_lock.h"
#include "common/progress.h"
#include "common/sha256.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "absl/container/flat_hash_map.h"
#include "distill/packer.h"
#include "distill/sample_builder.h"
#include "distill/synth.h"
#include "distill/template.h"
#include "distill/tokenizer.h"
#include "fmt/format.h"
#include "fmt/ranges.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
#include "storage/shard.h"
#include "storage/shard_loader.h"
#if RWR_DATA_HAVE_CACHE
#include "storage/rocksdb_store.h"
#include "teacher_client/note_cache.h"
#endif

namespace rwr::cli {
namespace {

struct SynthFlags {
  CommonOptions common;
  std::string out;
  int64_t count = 0, context_tokens = 0, min_context_tokens = 0, distractors = 0;
  uint64_t seed = 0;
  double tokens_per_word = 0;
  std::string answer_position;
  CLI::Option *count_opt, *tokens_opt, *min_opt, *distractors_opt, *seed_opt, *position_opt,
      *tpw_opt;
};

absl::Status RunSynth(SynthFlags& f) {
  FlagToOverride(f.count_opt, f.count, "data.count", &f.common);
  FlagToOverride(f.tokens_opt, f.context_tokens, "data.context_tokens", &f.common);
  FlagToOverride(f.min_opt, f.min_context_tokens, "data.min_context_tokens", &f.common);
  FlagToOverride(f.distractors_opt, f.distractors, "data.distractors", &f.common);
  FlagToOverride(f.seed_opt, f.seed, "data.seed", &f.common);
  FlagToOverride(f.position_opt, f.answer_position, "data.answer_position", &f.common);
  FlagToOverride(f.tpw_opt, f.tokens_per_word, "data.tokens_per_word", &f.common);
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "data synth"));
  distill::SynthOptions options;
  RWR_ASSIGN_OR_RETURN(options.count, config.GetOr<int64_t>("data.count", options.count));
  RWR_ASSIGN_OR_RETURN(options.context_tokens,
                       config.GetOr<int64_t>("data.context_tokens", options.context_tokens));
  RWR_ASSIGN_OR_RETURN(options.min_context_tokens,
                       config.GetOr<int64_t>("data.min_context_tokens", 0));
  RWR_ASSIGN_OR_RETURN(options.distractors,
                       config.GetOr<int>("data.distractors", options.distractors));
  RWR_ASSIGN_OR_RETURN(options.seed, config.GetOr<uint64_t>("data.seed", options.seed));
  RWR_ASSIGN_OR_RETURN(options.tokens_per_word,
                       config.GetOr<double>("data.tokens_per_word", options.tokens_per_word));
  RWR_ASSIGN_OR_RETURN(std::string position,
                       config.GetOr<std::string>("data.answer_position", "uniform"));
  if (position == "uniform") {
    options.answer_position = -1;
  } else {
    char* end = nullptr;
    options.answer_position = std::strtod(position.c_str(), &end);
    if (end == position.c_str() || *end != '\0' || options.answer_position < 0) {
      return absl::InvalidArgumentError(fmt::format(
          "--answer-position '{}': expected 'uniform' or a depth in [0, 1]", position));
    }
  }
  RWR_RETURN_IF_ERROR(distill::ValidateSynthOptions(options));
  // Before generating anything: the final rename onto a directory would fail only at the end.
  if (std::filesystem::is_directory(f.out)) {
    return absl::InvalidArgumentError(
        fmt::format("--out {}: is a directory; give the path of a JSONL file", f.out));
  }
  RWR_RETURN_IF_ERROR(distill::WriteSynthJsonl(f.out, options));
  spdlog::info("data synth: wrote {} items of ~{} tokens to {}", options.count,
               options.context_tokens, f.out);
  return absl::OkStatus();
}

void AddSynth(CLI::App* group) {
  auto* f = NewFlags<SynthFlags>();
  CLI::App* cmd = group->add_subcommand(
      "synth",
      "Generate synthetic long-context QA (JSONL: id, context, question, answer + metadata): "
      "sessions, records and reports about many people, one question whose answer is stated "
      "once, hard distractors. Same seed, same file.");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("--out", f->out, "Output JSONL file")->required();
  f->count_opt = cmd->add_option("--count", f->count, "Items to generate (config data.count; default 64)");
  f->tokens_opt = cmd->add_option("--context-tokens", f->context_tokens,
                                  "Context length in estimated tokens, 100..4000000 "
                                  "(config data.context_tokens; default 2048)");
  f->min_opt = cmd->add_option("--min-context-tokens", f->min_context_tokens,
                               "If set, each item's length is uniform in [this, --context-tokens]");
  f->distractors_opt = cmd->add_option(
      "--distractors", f->distractors,
      "Hard distractor paragraphs per item: same attribute of another person, other attributes "
      "of the same person (default 6; fewer in very short contexts)");
  f->seed_opt = cmd->add_option("--seed", f->seed, "Random seed (config data.seed; default 1)");
  f->position_opt = cmd->add_option("--answer-position", f->answer_position,
                                    "Depth of the answer: 'uniform' (default) or a fraction in "
                                    "[0, 1] (0 = start of the context)");
  f->tpw_opt = cmd->add_option("--tokens-per-word", f->tokens_per_word,
                               "Words-to-tokens estimate behind --context-tokens (default 1.3, "
                               "what the shipped tokenizer measures on this text)");
  SetAction(cmd, [f] { return RunSynth(*f); });
}

// ---------------------------------------------------------------------------------------------
// rwr data build

struct BuildFlags {
  CommonOptions common;
  std::string input, cache, tokenizer, out, layout, long_samples, template_file;
  int64_t seq_len = 0;
  bool overwrite = false;
  CLI::Option *input_opt, *cache_opt, *tokenizer_opt, *out_opt, *seq_opt, *layout_opt, *long_opt,
      *template_opt;
};

// Far above any trainable row (docs/benchmarks.md: 1M tokens on one H200), and low enough that
// seq_len + 1 and the row arithmetic cannot overflow (--seq-len 9223372036854775807 crashed).
constexpr int64_t kMaxSeqLen = (int64_t{1} << 31) - 2;

Config BuildDefaults() {
  auto parsed = Config::Parse(R"(
build:
  # tokenizer: not set here; unset, TokenizerPath (cli/command.h) finds the shipped one
  seq_len: 2048
  layout: packed          # packed | one_per_row
  long_samples: truncate  # truncate | drop | keep (keep needs one_per_row)
  shard_tokens: 16777216  # a new shard past this many tokens
  template: ""            # YAML sample template; "" = the default (distill/template.h)
recipe:
  seed: 0
  ratio: {note: 0.6, empty: 0.2, plain: 0.2}
)",
                              "data build defaults");
  return *parsed;
}

#if RWR_DATA_HAVE_CACHE
distill::RecipeItem FromDistilled(const teacher::DistilledItem& d) {
  distill::RecipeItem item{.id = d.id, .context = d.context, .question = d.question,
                           .answer = d.answer};
  item.note_verified = d.kept && !d.note_empty;
  item.note = d.note;
  item.negative_context = d.negative_context;
  return item;
}
#endif

// The build's items, from --input joined with --cache, or --cache alone, or --input alone. Only an
// index stays in memory (id, whether a verified note and a negative exist, where to read the item
// again); Fetch reads one item's text back while encoding, so memory does not grow with contexts.
class ItemIndex {
 public:
  using Position = distill::JsonlRecipeSource::Position;
  static absl::StatusOr<std::unique_ptr<ItemIndex>> Open(const std::string& input,
                                                         const std::string& cache) {
    std::unique_ptr<ItemIndex> index(new ItemIndex());
    if (input.empty() && cache.empty()) {
      return absl::InvalidArgumentError("give --input FILE.jsonl, --cache DIR or both");
    }
    // id → its line in --input (0 for an item of the cache alone), for the duplicate's message.
    absl::flat_hash_map<std::string, int64_t> first_line;
    auto add = [&](const distill::RecipeItem& item, int64_t offset, int64_t line,
                   bool in_cache) -> absl::Status {
      if (auto [first, inserted] = first_line.emplace(item.id, line); !inserted) {
        if (line == 0) {
          return absl::InvalidArgumentError(
              fmt::format("item id '{}' appears twice in {}; ids must be unique", item.id, cache));
        }
        return absl::InvalidArgumentError(
            fmt::format("{}:{}: item id '{}' appears again (first on line {}); ids must be unique",
                        input, line, item.id, first->second));
      }
      distill::RecipeItem light{.id = item.id};
      light.note_verified = item.note_verified;
      if (item.negative_context.has_value()) light.negative_context.emplace();
      index->light_.push_back(std::move(light));
      index->offsets_.push_back(offset);
      index->in_cache_.push_back(in_cache);
      return absl::OkStatus();
    };
    if (!input.empty()) index->jsonl_ = std::make_unique<distill::JsonlRecipeSource>(input);
    if (!cache.empty()) {
#if RWR_DATA_HAVE_CACHE
      if (!std::filesystem::exists(cache)) {
        return absl::NotFoundError(fmt::format("--cache {}: no such directory", cache));
      }
      RWR_ASSIGN_OR_RETURN(index->store_, storage::RocksDbStore::Open(cache, {.read_only = true}));
      if (input.empty()) {
        RWR_RETURN_IF_ERROR(teacher::ForEachItem(*index->store_, [&](const teacher::DistilledItem& d) {
          return add(FromDistilled(d), -1, 0, true);
        }));
        return index;
      }
      RWR_RETURN_IF_ERROR(index->jsonl_->ForEachWithPosition(
          [&](const distill::RecipeItem& item, const Position& at) -> absl::Status {
            RWR_ASSIGN_OR_RETURN(auto found, teacher::LookupItem(*index->store_, item.id));
            if (!found.has_value()) ++index->not_in_cache_;
            return add(found.has_value() ? FromDistilled(*found) : item, at.offset, at.line,
                       found.has_value());
          }));
      return index;
#else
      return absl::UnimplementedError(
          "--cache needs an rwr built with RWR_SERVICES=ON (RocksDB); this build has no cache "
          "support");
#endif
    }
    RWR_RETURN_IF_ERROR(index->jsonl_->ForEachWithPosition(
        [&](const distill::RecipeItem& item, const Position& at) {
          return add(item, at.offset, at.line, false);
        }));
    return index;
  }

  // Ids and which kinds each item can give: what PlanMix needs.
  const std::vector<distill::RecipeItem>& light() const { return light_; }
  int64_t not_in_cache() const { return not_in_cache_; }

  absl::StatusOr<distill::RecipeItem> Fetch(size_t i) {
#if RWR_DATA_HAVE_CACHE
    if (in_cache_[i]) {
      RWR_ASSIGN_OR_RETURN(auto found, teacher::LookupItem(*store_, light_[i].id));
      if (!found.has_value()) {
        return absl::DataLossError(fmt::format(
            "item '{}' disappeared from the cache during the build", light_[i].id));
      }
      return FromDistilled(*found);
    }
#endif
    return jsonl_->ReadAt(offsets_[i]);
  }

 private:
  ItemIndex() = default;
  std::vector<distill::RecipeItem> light_;
  std::vector<int64_t> offsets_;
  std::vector<bool> in_cache_;
  int64_t not_in_cache_ = 0;
  std::unique_ptr<distill::JsonlRecipeSource> jsonl_;
#if RWR_DATA_HAVE_CACHE
  std::unique_ptr<storage::RocksDbStore> store_;
#endif
};

absl::Status RunBuild(BuildFlags& f) {
  FlagToOverride(f.input_opt, f.input, "build.input", &f.common);
  FlagToOverride(f.cache_opt, f.cache, "build.cache", &f.common);
  FlagToOverride(f.tokenizer_opt, f.tokenizer, "build.tokenizer", &f.common);
  FlagToOverride(f.out_opt, f.out, "build.out", &f.common);
  FlagToOverride(f.seq_opt, f.seq_len, "build.seq_len", &f.common);
  FlagToOverride(f.layout_opt, f.layout, "build.layout", &f.common);
  FlagToOverride(f.long_opt, f.long_samples, "build.long_samples", &f.common);
  FlagToOverride(f.template_opt, f.template_file, "build.template", &f.common);
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, BuildDefaults(), "data build"));
  RWR_ASSIGN_OR_RETURN(std::string input, config.GetOr<std::string>("build.input", ""));
  RWR_ASSIGN_OR_RETURN(std::string cache, config.GetOr<std::string>("build.cache", ""));
  RWR_ASSIGN_OR_RETURN(std::string tokenizer_path, TokenizerPath(config, "build.tokenizer"));
  RWR_ASSIGN_OR_RETURN(std::string out, config.GetOr<std::string>("build.out", ""));
  if (out.empty()) return absl::InvalidArgumentError("--out DIR is required");
  RWR_RETURN_IF_ERROR(distill::CheckDatasetDir(out, f.overwrite));  // before any long work
  RWR_ASSIGN_OR_RETURN(int64_t seq_len, config.Get<int64_t>("build.seq_len"));
  if (seq_len < 8 || seq_len > kMaxSeqLen) {
    return absl::InvalidArgumentError(
        fmt::format("--seq-len {}: expected 8 to {} training positions per row", seq_len,
                    kMaxSeqLen));
  }
  RWR_ASSIGN_OR_RETURN(std::string layout_name, config.Get<std::string>("build.layout"));
  storage::RowLayout layout;
  if (layout_name == "packed") layout = storage::RowLayout::kPacked;
  else if (layout_name == "one_per_row") layout = storage::RowLayout::kOnePerRow;
  else return absl::InvalidArgumentError(fmt::format("--layout '{}': expected packed or one_per_row", layout_name));
  RWR_ASSIGN_OR_RETURN(std::string policy_name, config.Get<std::string>("build.long_samples"));
  RWR_ASSIGN_OR_RETURN(distill::LongSamplePolicy policy, distill::ParseLongSamplePolicy(policy_name));
  if (policy == distill::LongSamplePolicy::kKeep && layout != storage::RowLayout::kOnePerRow) {
    return absl::InvalidArgumentError(
        "--long-samples keep needs --layout one_per_row (a packed row holds at most seq_len + 1 tokens)");
  }
  RWR_ASSIGN_OR_RETURN(int64_t shard_tokens, config.Get<int64_t>("build.shard_tokens"));
  RWR_ASSIGN_OR_RETURN(std::string template_file, config.GetOr<std::string>("build.template", ""));
  distill::SampleTemplate sample_template = distill::SampleTemplate::Default();
  if (!template_file.empty()) {
    RWR_ASSIGN_OR_RETURN(sample_template, distill::SampleTemplate::LoadFile(template_file));
  }
  distill::MixRatios ratios;
  RWR_ASSIGN_OR_RETURN(ratios.note, config.Get<double>("recipe.ratio.note"));
  RWR_ASSIGN_OR_RETURN(ratios.empty, config.Get<double>("recipe.ratio.empty"));
  RWR_ASSIGN_OR_RETURN(ratios.plain, config.Get<double>("recipe.ratio.plain"));
  RWR_ASSIGN_OR_RETURN(uint64_t recipe_seed, config.Get<uint64_t>("recipe.seed"));
  // Explicit ratios are a contract; the defaults give way to what the source can provide.
  bool ratios_set = std::any_of(f.common.overrides.begin(), f.common.overrides.end(),
                                [](const std::string& s) { return s.starts_with("recipe.ratio"); });
  if (!f.common.config_path.empty()) {
    RWR_ASSIGN_OR_RETURN(Config file, Config::LoadFile(f.common.config_path));
    ratios_set |= file.Has("recipe.ratio");
  }

  RWR_ASSIGN_OR_RETURN(distill::Tokenizer tokenizer, distill::Tokenizer::Load(tokenizer_path));
  const std::optional<int32_t> eos = tokenizer.eos_id();
  if (!eos.has_value()) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: no <|endoftext|> token; the sample template ends each sample with it", tokenizer_path));
  }
  RWR_ASSIGN_OR_RETURN(std::string tokenizer_sha, Sha256HexOfFile(tokenizer_path));
  // Padding (loader side, never on disk): GPT-NeoX's <|padding|> where the tokenizer has it.
  const int32_t pad_id = tokenizer.token_to_id("<|padding|>").value_or(*eos);

  // Held until the manifest is written: a second build into `out` is refused from here on.
  // (After CheckDatasetDir, so that a directory of the user's files never gets a .lock.)
  RWR_ASSIGN_OR_RETURN(
      const DirLock out_lock,
      DirLock::Acquire(out, {.setting = "--out",
                             .command = "rwr data build",
                             .clash = "two builds in one directory overwrite each other's shards"}));

  const auto start = std::chrono::steady_clock::now();
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<ItemIndex> index, ItemIndex::Open(input, cache));
  const std::vector<distill::RecipeItem>& items = index->light();
  const int64_t not_in_cache = index->not_in_cache();
  if (items.empty()) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: no items (empty, or only blank lines)", input.empty() ? "--cache " + cache : input));
  }
  spdlog::info("data build: {} items{}", items.size(),
               not_in_cache > 0 ? fmt::format(" ({} not in the cache: plain only)", not_in_cache) : "");

  // Kinds the source cannot provide: drop them from default ratios, refuse explicit ones.
  distill::MixCounts counts;
  RWR_ASSIGN_OR_RETURN(auto plan, distill::PlanMix(items, ratios, recipe_seed, &counts));
  double* ratio_of[3] = {&ratios.note, &ratios.empty, &ratios.plain};
  bool adjusted = false;
  for (int k = 0; k < 3; ++k) {
    if (*ratio_of[k] > 0 && counts.available[k] == 0) {
      const auto kind = distill::SampleKindName(static_cast<distill::SampleKind>(k));
      if (ratios_set) {
        return absl::InvalidArgumentError(fmt::format(
            "recipe.ratio.{} is {} but the input has no {} samples{}; set recipe.ratio.{}=0", kind,
            *ratio_of[k], kind, cache.empty() ? " (no --cache given)" : "", kind));
      }
      spdlog::warn("data build: no '{}' samples available; building without them", kind);
      *ratio_of[k] = 0;
      adjusted = true;
    }
  }
  if (adjusted) {
    RWR_ASSIGN_OR_RETURN(plan, distill::PlanMix(items, ratios, recipe_seed, &counts));
  }

  RWR_ASSIGN_OR_RETURN(auto packer,
                       distill::Packer::Create({.dir = out,
                                                .vocab_size = static_cast<uint64_t>(tokenizer.vocab_size()),
                                                .seq_len = static_cast<uint64_t>(seq_len),
                                                .row_layout = layout,
                                                .shard_tokens = static_cast<uint64_t>(shard_tokens),
                                                .eos_id = *eos,
                                                .pad_id = pad_id,
                                                .overwrite = f.overwrite}));
  distill::SampleEncoder encoder(
      [&tokenizer](std::string_view text, std::vector<int32_t>* ids) { tokenizer.EncodeInto(text, ids); },
      *eos, sample_template, policy, seq_len + 1);
  int64_t truncated = 0, dropped = 0, text_bytes = 0;
  int64_t built[3] = {0, 0, 0};
  Progress progress({.label = "data build", .total = static_cast<int64_t>(plan.size()), .unit = "samples"});
  for (const distill::PlannedSample& planned : plan) {
    if (ShutdownRequested()) {
      return absl::CancelledError("data build: interrupted; no manifest written, run it again");
    }
    RWR_ASSIGN_OR_RETURN(const distill::RecipeItem item, index->Fetch(planned.item));
    if ((planned.kind == distill::SampleKind::kEmpty && !item.negative_context.has_value()) ||
        (planned.kind == distill::SampleKind::kNote && !item.note_verified)) {
      return absl::DataLossError(fmt::format(
          "item '{}' changed while the build was reading it (its note or negative is gone)", item.id));
    }
    text_bytes += static_cast<int64_t>(item.context.size() + item.question.size() + item.answer.size());
    std::optional<distill::EncodedSample> sample = encoder.Encode(item, planned.kind);
    if (!sample.has_value()) {
      ++dropped;
    } else {
      truncated += sample->truncated;
      built[static_cast<int>(planned.kind)]++;
      RWR_RETURN_IF_ERROR(packer->Add(sample->tokens, sample->loss_mask));
    }
    progress.Advance();
  }
  progress.Finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Absolute: `data inspect` (and a person) reads them from wherever the dataset is looked at.
  auto absolute = [](const std::string& path) {
    return path.empty() ? path : std::filesystem::absolute(path).lexically_normal().string();
  };
  nlohmann::ordered_json build;
  build["input"] = absolute(input);
  build["cache"] = absolute(cache);
  build["tokenizer"] = {{"path", absolute(tokenizer_path)}, {"sha256", tokenizer_sha},
                        {"vocab_size", tokenizer.vocab_size()}, {"eos_id", *eos}};
  build["template"] = sample_template.ToYaml();
  build["long_samples"] = policy_name;
  build["recipe"] = {{"seed", recipe_seed},
                     {"ratio", {{"note", ratios.note}, {"empty", ratios.empty}, {"plain", ratios.plain}}},
                     {"available", {{"note", counts.available[0]}, {"empty", counts.available[1]},
                                    {"plain", counts.available[2]}}},
                     {"samples", {{"note", built[0]}, {"empty", built[1]}, {"plain", built[2]}}}};
  build["items"] = items.size();
  build["items_not_in_cache"] = not_in_cache;
  build["samples_truncated"] = truncated;
  build["samples_dropped"] = dropped;
  RWR_RETURN_IF_ERROR(packer->Finish(build.dump()));
  const distill::PackerStats& stats = packer->stats();
  if (truncated > 0 || dropped > 0) {
    spdlog::warn("data build: {} samples longer than seq_len + 1 = {}: {} truncated, {} dropped "
                 "(--long-samples {})",
                 truncated + dropped, seq_len + 1, truncated, dropped, policy_name);
  }
  spdlog::info("data build: {} samples (note {}, empty {}, plain {}) → {} rows, {} tokens ({:.1f}% "
               "with loss), {} shards in {} ({:.1f} MB/s of text)",
               stats.samples, built[0], built[1], built[2], stats.rows, stats.tokens,
               stats.tokens > 0 ? 100.0 * stats.loss_tokens / stats.tokens : 0.0, stats.shards, out,
               seconds > 0 ? text_bytes / seconds / 1e6 : 0.0);
  return absl::OkStatus();
}

void AddBuild(CLI::App* group) {
  auto* f = NewFlags<BuildFlags>();
  CLI::App* cmd = group->add_subcommand(
      "build",
      "Build token shards for training: items from --input (JSONL) and/or the teacher cache "
      "(--cache), mixed per the RwR recipe (verified notes, `empty` negatives, plain samples at "
      "recipe.ratio.*), rendered through the sample template (loss on note + answer), tokenized "
      "and packed into rows of --seq-len + 1 tokens. Writes DIR/shard_*.rws and DIR/manifest.json.");
  AddCommonOptions(cmd, &f->common);
  f->input_opt = cmd->add_option("--input", f->input, "Dataset JSONL (id, context, question, answer)");
  f->cache_opt = cmd->add_option("--cache", f->cache,
                                 "Teacher cache directory written by `rwr distill run` (notes, "
                                 "verdicts, negatives)");
  f->tokenizer_opt = cmd->add_option(
      "--tokenizer", f->tokenizer,
      fmt::format("tokenizer.json (config build.tokenizer; {})", kBundledTokenizerHelp));
  f->out_opt = cmd->add_option("--out", f->out,
                               "Output directory for the shards: new, empty, what a killed build "
                               "left, or a dataset (with --overwrite); one build at a time");
  f->seq_opt = cmd->add_option("--seq-len", f->seq_len,
                               fmt::format("Training positions per row, 8..{} (default 2048)",
                                           kMaxSeqLen));
  f->layout_opt = cmd->add_option("--layout", f->layout,
                                  "packed (several samples per row, default) or one_per_row");
  f->long_opt = cmd->add_option("--long-samples", f->long_samples,
                                "Samples over seq_len + 1 tokens: truncate (drop the start of the "
                                "context, default), drop, or keep (needs one_per_row)");
  f->template_opt = cmd->add_option("--template", f->template_file,
                                    "Sample template YAML (see docs/formats.md); default "
                                    "context → question → Note: s → Answer: a <eos>");
  cmd->add_flag("--overwrite", f->overwrite, "Replace a dataset already in --out");
  SetAction(cmd, [f] { return RunBuild(*f); });
}

// ---------------------------------------------------------------------------------------------
// rwr data inspect

struct InspectFlags {
  CommonOptions common;
  std::string dir, tokenizer;
  bool json = false;
  int64_t row = 0;
  bool no_verify = false;
};

// Text of `ids` with the loss-carrying spans wrapped in ⟦ ⟧.
std::string MarkLoss(distill::Tokenizer* tokenizer, const std::vector<int32_t>& ids,
                     const std::vector<uint8_t>& mask, std::string* loss_text) {
  std::string out;
  size_t i = 0;
  while (i < ids.size()) {
    size_t j = i;
    while (j < ids.size() && mask[j] == mask[i]) ++j;
    std::vector<int32_t> span(ids.begin() + i, ids.begin() + j);
    std::string text = tokenizer != nullptr ? tokenizer->Decode(span)
                                            : fmt::format("{}", fmt::join(span, " "));
    if (mask[i]) {
      out += "⟦" + text + "⟧";
      *loss_text += text;
    } else {
      out += text;
    }
    i = j;
  }
  return out;
}

absl::Status RunInspect(InspectFlags& f) {
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "data inspect"));
  (void)config;
  RWR_ASSIGN_OR_RETURN(storage::ShardManifest manifest, storage::ShardManifest::Load(f.dir));
  nlohmann::json build = nlohmann::json::parse(manifest.extra_json, nullptr, false);
  if (build.is_discarded()) build = nlohmann::json::object();
  std::string tokenizer_path = f.tokenizer;
  if (tokenizer_path.empty() && build.contains("tokenizer")) {
    tokenizer_path = build["tokenizer"].value("path", "");
  }
  std::optional<distill::Tokenizer> tokenizer;
  std::string tokenizer_note;
  if (!tokenizer_path.empty()) {
    auto loaded = distill::Tokenizer::Load(tokenizer_path);
    if (loaded.ok()) tokenizer.emplace(std::move(*loaded));
    else tokenizer_note = std::string(loaded.status().message());
  }

  uint64_t rows = 0, docs = 0, tokens = 0, loss = 0, longest_row = 0;
  std::vector<std::unique_ptr<storage::ShardReader>> readers;
  nlohmann::ordered_json shards = nlohmann::json::array();
  for (const auto& entry : manifest.shards) {
    const std::string path = (std::filesystem::path(f.dir) / entry.file).string();
    RWR_ASSIGN_OR_RETURN(auto reader, storage::ShardReader::Open(path, {.verify_checksum = !f.no_verify}));
    const storage::ShardHeader& h = reader->header();
    RWR_RETURN_IF_ERROR(storage::CheckShardMatchesManifest(path, h, entry, manifest));
    rows += h.num_rows;
    docs += h.num_documents;
    tokens += h.num_tokens;
    loss += h.num_loss_tokens;
    for (uint64_t r = 0; r < h.num_rows; ++r) longest_row = std::max(longest_row, reader->RowLength(r));
    shards.push_back({{"file", entry.file}, {"rows", h.num_rows}, {"documents", h.num_documents},
                      {"tokens", h.num_tokens}, {"loss_tokens", h.num_loss_tokens},
                      {"token_dtype", h.token_dtype == 2 ? "uint16" : "uint32"}});
    readers.push_back(std::move(reader));
  }
  // The sample: the first document of global row --row.
  if (f.row < 0 || static_cast<uint64_t>(f.row) >= rows) {
    return absl::InvalidArgumentError(fmt::format("--row {} outside [0, {})", f.row, rows));
  }
  uint64_t local = static_cast<uint64_t>(f.row);
  size_t s = 0;
  while (local >= readers[s]->num_rows()) local -= readers[s++]->num_rows();
  const uint64_t n = readers[s]->RowLength(local);
  std::vector<int32_t> row_tokens(n);
  std::vector<uint8_t> row_mask(n);
  std::vector<uint64_t> starts;
  RWR_RETURN_IF_ERROR(readers[s]->ReadRow(local, row_tokens, row_mask, &starts));
  const uint64_t doc_end = starts.size() > 1 ? starts[1] : n;
  std::vector<int32_t> doc(row_tokens.begin(), row_tokens.begin() + doc_end);
  std::vector<uint8_t> doc_mask(row_mask.begin(), row_mask.begin() + doc_end);
  std::string loss_text;
  const std::string marked = MarkLoss(tokenizer ? &*tokenizer : nullptr, doc, doc_mask, &loss_text);

  const double loss_fraction = tokens > 0 ? static_cast<double>(loss) / tokens : 0;
  const bool packed = manifest.row_layout == storage::RowLayout::kPacked;
  const double fill = packed && rows > 0 ? static_cast<double>(tokens) / (rows * (manifest.seq_len + 1)) : 1;
  if (f.json) {
    nlohmann::ordered_json j;
    j["dir"] = f.dir;
    j["vocab_size"] = manifest.vocab_size;
    j["seq_len"] = manifest.seq_len;
    j["row_layout"] = packed ? "packed" : "one_per_row";
    j["eos_id"] = manifest.eos_id;
    j["pad_id"] = manifest.pad_id;
    j["shards"] = shards.size();
    j["rows"] = rows;
    j["documents"] = docs;
    j["tokens"] = tokens;
    j["loss_tokens"] = loss;
    j["loss_fraction"] = loss_fraction;
    j["row_fill"] = fill;
    j["longest_row"] = longest_row;
    j["checksums_verified"] = !f.no_verify;
    j["shard_files"] = shards;
    j["build"] = build;
    j["sample"] = {{"row", f.row}, {"documents_in_row", starts.size()}, {"tokens", doc.size()},
                   {"loss_tokens", std::count(doc_mask.begin(), doc_mask.end(), 1)},
                   {"ids", doc}, {"loss_mask", doc_mask},
                   {"text", tokenizer ? tokenizer->Decode(doc) : ""}, {"loss_text", loss_text}};
    std::cout << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::cout << fmt::format("dataset {}\n", f.dir)
            << fmt::format("  shards {}   rows {}   documents {}   layout {}   seq_len {}\n",
                           shards.size(), rows, docs, packed ? "packed" : "one_per_row", manifest.seq_len)
            << fmt::format("  tokens {}   loss tokens {} ({:.2f}%)   row fill {:.1f}%   longest row {}\n",
                           tokens, loss, 100 * loss_fraction, 100 * fill, longest_row)
            << fmt::format("  vocab {}   eos {}   checksums {}\n", manifest.vocab_size,
                           manifest.eos_id, f.no_verify ? "not verified" : "verified");
  if (build.contains("recipe")) {
    const auto& samples = build["recipe"]["samples"];
    std::cout << fmt::format("  samples: note {}   empty {}   plain {}   truncated {}   dropped {}\n",
                             samples.value("note", 0), samples.value("empty", 0),
                             samples.value("plain", 0), build.value("samples_truncated", 0),
                             build.value("samples_dropped", 0));
  }
  std::cout << fmt::format("\nrow {}, document 1 of {} ({} tokens; loss on ⟦…⟧){}:\n", f.row,
                           starts.size(), doc.size(),
                           tokenizer ? "" : " — ids shown, tokenizer unavailable: " + tokenizer_note)
            << marked << "\n";
  return absl::OkStatus();
}

void AddInspect(CLI::App* group) {
  auto* f = NewFlags<InspectFlags>();
  CLI::App* cmd = group->add_subcommand(
      "inspect",
      "Summarize a shard directory (counts, tokens, loss-token fraction, row fill; checksums "
      "verified) and show one decoded sample with its loss spans marked ⟦…⟧.");
  f->common.log_level = "warn";  // before AddCommonOptions, which shows the default in --help
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("dir", f->dir, "Dataset directory written by `rwr data build`")->required();
  cmd->add_flag("--json", f->json, "Print JSON instead of text");
  cmd->add_option("--row", f->row, "Row whose first document to show (default 0)");
  cmd->add_option("--tokenizer", f->tokenizer,
                  "tokenizer.json to decode with (default: the one recorded at build time)");
  cmd->add_flag("--no-verify", f->no_verify, "Skip the SHA-256 check of each shard");
  SetAction(cmd, [f] { return RunInspect(*f); });
}

}  // namespace

void RegisterDataCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand("data", "Synthetic data, token shards and their inspection");
  group->require_subcommand(1);
  AddSynth(group);
  AddBuild(group);
  AddInspect(group);
}

}  // namespace rwr::cli
