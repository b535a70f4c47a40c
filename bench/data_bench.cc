// data_bench: throughput of the data stage on one core — synthetic QA generation, tokenization,
// and the whole `rwr data build` inner loop (render the template, tokenize, mask, pack, write
// checksummed shards) — in MB of source text per second. Goal (ANCHORS.md): ≥ 50 MB/s per core
// from cache to packed shards. Prints a table; --json FILE writes the numbers.
//
//   build/release/bin/data_bench --tokenizer configs/tokenizer/tokenizer.json --items 256
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "distill/packer.h"
#include "distill/sample_builder.h"
#include "distill/synth.h"
#include "distill/tokenizer.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Row {
  std::string what;
  double seconds;  // median
  double megabytes;
  std::string extra;
};

template <typename Fn>
double MedianSeconds(int repeats, Fn&& fn) {
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const double start = Now();
    fn();
    times.push_back(Now() - start);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("data_bench: synth, tokenize and build throughput on one core (MB/s of text)");
  std::string tokenizer_path = std::string(RWR_SOURCE_DIR) + "/configs/tokenizer/tokenizer.json";
  int64_t items = 256, context_tokens = 4096;
  int repeats = 5;
  std::string json_out;
  std::string scratch = (std::filesystem::temp_directory_path() / "rwr_data_bench").string();
  app.add_option("--tokenizer", tokenizer_path, "tokenizer.json")->capture_default_str();
  app.add_option("--items", items, "Synthetic items per run")->capture_default_str();
  app.add_option("--context-tokens", context_tokens, "Estimated tokens per context")->capture_default_str();
  app.add_option("--repeats", repeats, "Runs per measurement (median reported)")->capture_default_str();
  app.add_option("--scratch", scratch, "Directory for the shards written")->capture_default_str();
  app.add_option("--json", json_out, "Also write the results as JSON");
  CLI11_PARSE(app, argc, argv);

  auto loaded = rwr::distill::Tokenizer::Load(tokenizer_path);
  if (!loaded.ok()) {
    std::fprintf(stderr, "data_bench: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  rwr::distill::Tokenizer tokenizer = std::move(*loaded);
  const int32_t eos = tokenizer.eos_id().value_or(0);

  // Items: synthetic QA with a verified note (the answer's sentence) and a negative for every
  // third, so all three sample kinds are built.
  rwr::distill::SynthOptions synth{.count = items, .context_tokens = context_tokens, .seed = 7};
  std::vector<rwr::distill::RecipeItem> recipe;
  double synth_bytes = 0;
  const double synth_s = MedianSeconds(repeats, [&] {
    recipe.clear();
    synth_bytes = 0;
    for (int64_t i = 0; i < items; ++i) {
      rwr::distill::SynthItem item = rwr::distill::GenerateSynthItem(synth, i);
      synth_bytes += static_cast<double>(item.context.size());
      rwr::distill::RecipeItem r{.id = item.id, .context = std::move(item.context),
                                 .question = std::move(item.question), .answer = item.answer};
      r.note_verified = true;
      r.note = "The answer is " + item.answer + ".";
      if (i % 3 == 0) r.negative_context = r.context.substr(0, r.context.size() / 2);
      recipe.push_back(std::move(r));
    }
  });
  double text_bytes = 0;
  for (const auto& r : recipe) text_bytes += static_cast<double>(r.context.size());

  int64_t token_count = 0;
  std::vector<int32_t> ids;
  const double tokenize_s = MedianSeconds(repeats, [&] {
    rwr::distill::Tokenizer fresh(tokenizer);  // empty word cache each run
    token_count = 0;
    for (const auto& r : recipe) {
      ids.clear();
      fresh.EncodeInto(r.context, &ids);
      token_count += static_cast<int64_t>(ids.size());
    }
  });

  auto plan = rwr::distill::PlanMix(recipe, {}, 0, nullptr);
  double build_bytes = 0;
  rwr::distill::PackerStats stats;
  const double build_s = MedianSeconds(repeats, [&] {
    rwr::distill::Tokenizer fresh(tokenizer);
    rwr::distill::SampleEncoder encoder(
        [&fresh](std::string_view text, std::vector<int32_t>* out) { fresh.EncodeInto(text, out); },
        eos, rwr::distill::SampleTemplate::Default(), rwr::distill::LongSamplePolicy::kTruncate,
        2049);
    auto packer = rwr::distill::Packer::Create({.dir = scratch,
                                                .vocab_size = static_cast<uint64_t>(tokenizer.vocab_size()),
                                                .seq_len = 2048,
                                                .eos_id = eos,
                                                .overwrite = true});
    if (!packer.ok()) {
      std::fprintf(stderr, "data_bench: %s\n", std::string(packer.status().message()).c_str());
      std::exit(1);
    }
    build_bytes = 0;
    for (const auto& p : *plan) {
      const auto& item = recipe[p.item];
      build_bytes += static_cast<double>(
          (p.kind == rwr::distill::SampleKind::kEmpty ? item.negative_context->size() : item.context.size()) +
          item.question.size() + item.answer.size() + item.note.size());
      auto sample = encoder.Encode(item, p.kind);
      if (sample.has_value()) (void)(*packer)->Add(sample->tokens, sample->loss_mask);
    }
    if (absl::Status s = (*packer)->Finish("{}"); !s.ok()) {
      std::fprintf(stderr, "data_bench: %s\n", std::string(s.message()).c_str());
      std::exit(1);
    }
    stats = (*packer)->stats();
  });
  std::filesystem::remove_all(scratch);

  std::vector<Row> rows = {
      {"synth (generate contexts)", synth_s, synth_bytes / 1e6, ""},
      {"tokenize contexts", tokenize_s, text_bytes / 1e6,
       fmt::format("{:.2f} M tokens/s", token_count / tokenize_s / 1e6)},
      {"build: template + tokenize + mask + pack + write shards", build_s, build_bytes / 1e6,
       fmt::format("{} samples, {} rows, {} tokens", stats.samples, stats.rows, stats.tokens)},
  };
  std::printf("data_bench: %lld items of ~%lld tokens, median of %d, one thread, tokenizer %s\n\n",
              static_cast<long long>(items), static_cast<long long>(context_tokens), repeats,
              tokenizer_path.c_str());
  std::printf("| stage | MB of text | seconds | MB/s | |\n|---|---|---|---|---|\n");
  nlohmann::json out = nlohmann::json::array();
  for (const Row& r : rows) {
    std::printf("| %s | %.1f | %.3f | %.1f | %s |\n", r.what.c_str(), r.megabytes, r.seconds,
                r.megabytes / r.seconds, r.extra.c_str());
    out.push_back({{"stage", r.what}, {"megabytes", r.megabytes}, {"seconds", r.seconds},
                   {"mb_per_s", r.megabytes / r.seconds}, {"detail", r.extra}});
  }
  if (!json_out.empty()) std::ofstream(json_out) << out.dump(2) << "\n";
  return 0;
}
