// `rwr generate` and `rwr eval`: a trained model answering questions the RwR way — a note per
// context segment, then an answer from the notes (trainer/recall.h) — on the GPU or the CPU.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "cli/command.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/status.h"
#include "distill/recall_format.h"
#include "distill/sample_builder.h"
#include "distill/tokenizer.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
#include "storage/shard.h"
#include "trainer/checkpoint.h"
#include "trainer/model_io.h"
#include "trainer/recall.h"

namespace rwr::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// What both commands share: which model, tokenizer and template, and how to generate.
struct ModelFlags {
  std::string log_level = "info";
  std::string model;
  std::string tokenizer;
  std::string template_file;
  trainer::RecallOptions recall;
  int threads = 0;
  std::string device = "auto";
  std::string precision = "bf16";
};

void AddModelFlags(CLI::App* cmd, ModelFlags* f) {
  AddLogLevelOption(cmd, &f->log_level);
  cmd->add_option("--model", f->model,
                  "Model directory in the HF layout (rwr export, rwr model init), or a checkpoint, "
                  "checkpoints/ or run directory (its newest complete checkpoint)")
      ->required();
  cmd->add_option("--tokenizer", f->tokenizer,
                  "tokenizer.json (default: the one in --model's directory)");
  cmd->add_option("--template", f->template_file,
                  "Sample template YAML the model was trained with (default: rwr's built-in "
                  "template, as rwr data build uses)");
  cmd->add_option("--segment-tokens", f->recall.segment_tokens,
                  "Context tokens per note pass; a longer context gets a note per segment and an "
                  "answer from the notes (0: the whole context in one pass)")
      ->capture_default_str()
      ->check(NonNegative());
  cmd->add_option("--max-note-tokens", f->recall.max_note_tokens, "Tokens a note may take")
      ->capture_default_str()
      ->check(Positive());
  cmd->add_option("--max-answer-tokens", f->recall.max_answer_tokens, "Tokens an answer may take")
      ->capture_default_str()
      ->check(Positive());
  cmd->add_option("--temperature", f->recall.sampling.temperature,
                  "Sampling temperature (0: greedy, the most likely token)")
      ->capture_default_str()
      ->check(NonNegative());
  cmd->add_option("--top-p", f->recall.sampling.top_p,
                  "Sample among the most likely tokens holding this share of the probability")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0).description("in (0, 1]"));
  cmd->add_option("--seed", f->recall.sampling.seed, "Sampling seed (with --temperature > 0)")
      ->capture_default_str()
      ->check(NonNegative());
  cmd->add_option("--device", f->device,
                  "cpu, cuda or auto (the GPU where there is one and the model fits the CUDA "
                  "path: state_size 16)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  cmd->add_option("--precision", f->precision,
                  "On the GPU: bf16 (GEMMs and activations, as training runs) or fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--threads", f->threads, "CPU threads on the CPU (0: every core)")
      ->capture_default_str()
      ->check(NonNegative());
}

// The model, its tokenizer and the template's reading of it, loaded once per command.
struct LoadedRecall {
  trainer::LoadedModel model;
  std::unique_ptr<trainer::Decoder> decoder;
  std::string model_dir;
  std::unique_ptr<trainer::Recaller> recaller;
};

absl::StatusOr<std::unique_ptr<LoadedRecall>> LoadRecall(const ModelFlags& f) {
  if (f.recall.sampling.top_p <= 0) {
    return absl::InvalidArgumentError("--top-p must be in (0, 1]");
  }
  auto loaded = std::make_unique<LoadedRecall>();
  loaded->model_dir = f.model;
  if (!fs::exists(fs::path(f.model) / "config.json")) {
    RWR_ASSIGN_OR_RETURN(loaded->model_dir, trainer::ResolveCheckpointDir(f.model));
  }
  std::string tokenizer_path = f.tokenizer;
  if (tokenizer_path.empty()) {
    tokenizer_path = (fs::path(loaded->model_dir) / "tokenizer.json").string();
    if (!fs::is_regular_file(tokenizer_path)) {
      return absl::NotFoundError(fmt::format(
          "{} has no tokenizer.json (a checkpoint has none; rwr export copies it): pass "
          "--tokenizer FILE",
          loaded->model_dir));
    }
  }
  RWR_ASSIGN_OR_RETURN(distill::Tokenizer tokenizer, distill::Tokenizer::Load(tokenizer_path));
  distill::SampleTemplate sample_template = distill::SampleTemplate::Default();
  if (!f.template_file.empty()) {
    RWR_ASSIGN_OR_RETURN(sample_template, distill::SampleTemplate::LoadFile(f.template_file));
  }
  RWR_ASSIGN_OR_RETURN(distill::RecallFormat format, distill::RecallFormat::From(sample_template));
  RWR_ASSIGN_OR_RETURN(loaded->model, trainer::LoadModelDir(loaded->model_dir));
  if (tokenizer.vocab_size() > loaded->model.config.vocab_size) {
    return absl::InvalidArgumentError(
        fmt::format("{} has {} ids but the model {} only {}: not the tokenizer it was trained with",
                    tokenizer_path, tokenizer.vocab_size(), loaded->model_dir,
                    loaded->model.config.vocab_size));
  }
  trainer::SetCpuThreads(f.threads);
  RWR_ASSIGN_OR_RETURN(
      loaded->decoder,
      trainer::MakeDecoder(loaded->model.config, loaded->model.params, f.device, f.precision));
  spdlog::info("{}: {} on {}; tokenizer {}; template {}", loaded->model_dir,
               loaded->model.config.Summary(), loaded->decoder->device(), tokenizer_path,
               sample_template.name);
  loaded->recaller = std::make_unique<trainer::Recaller>(*loaded->decoder, std::move(tokenizer),
                                                         std::move(format), f.recall);
  return loaded;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(fmt::format("{}: cannot read the file", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

json SegmentsJson(const trainer::RecallResult& r) {
  json segments = json::array();
  for (const trainer::SegmentNote& s : r.segments) {
    segments.push_back({{"first_token", s.first_token},
                        {"tokens", s.tokens},
                        {"note", s.note},
                        {"empty", s.empty}});
  }
  return segments;
}

// Answers are compared the way QA benchmarks do: lower case, punctuation and articles dropped,
// blanks collapsed.
std::string NormalizeAnswer(std::string_view text) {
  std::string words;
  std::string word;
  auto flush = [&] {
    if (!word.empty() && word != "a" && word != "an" && word != "the") {
      words += (words.empty() ? "" : " ") + word;
    }
    word.clear();
  };
  for (unsigned char c : text) {
    if (std::isalnum(c) || c >= 0x80) {
      word += static_cast<char>(std::tolower(c));
    } else if (std::isspace(c)) {
      flush();
    }  // punctuation: dropped, inside a word too ("U.S." → "us")
  }
  flush();
  return words;
}

void RegisterGenerate(CLI::App& app) {
  struct Options {
    ModelFlags model;
    std::string question, context, context_file;
    bool as_json = false;
  };
  auto* o = NewFlags<Options>();
  CLI::App* cmd = app.add_subcommand(
      "generate", "Answer a question about a context the RwR way: notes, then the answer");
  cmd->footer(
      "The context is split into --segment-tokens segments; for each the model writes a note for\n"
      "the question (or the template's empty note), and then answers from the notes that are not\n"
      "empty. A context that fits one segment is answered in one pass. On the GPU where there\n"
      "is one (--device), else the CPU.\n"
      "Example: rwr generate --model runs/quickstart/export --context-file ctx.txt \\\n"
      "           --question \"Where did Ada move?\"");
  AddModelFlags(cmd, &o->model);
  cmd->add_option("--question", o->question, "The question")->required();
  CLI::Option* context = cmd->add_option("--context", o->context, "The context, as text");
  cmd->add_option("--context-file", o->context_file, "A file whose text is the context")
      ->excludes(context);
  cmd->add_flag("--json", o->as_json, "Print one JSON object (notes, answer, counts) instead");
  SetAction(cmd, [o]() -> absl::Status {
    RWR_RETURN_IF_ERROR(InitLogging({.level = o->model.log_level}));
    std::string context_text = o->context;
    if (!o->context_file.empty()) {
      RWR_ASSIGN_OR_RETURN(context_text, ReadTextFile(o->context_file));
    }
    if (context_text.empty()) {
      return absl::InvalidArgumentError("no context: give --context TEXT or --context-file FILE");
    }
    RWR_ASSIGN_OR_RETURN(auto loaded, LoadRecall(o->model));
    const auto started = std::chrono::steady_clock::now();
    RWR_ASSIGN_OR_RETURN(
        trainer::RecallResult r,
        loaded->recaller->Answer(
            context_text, o->question, [&](const trainer::SegmentNote& s, size_t k, size_t count) {
              spdlog::info("segment {}/{} (tokens {}-{}): {}", k + 1, count, s.first_token,
                           s.first_token + s.tokens - 1, s.empty ? "empty note" : "note written");
            }));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (o->as_json) {
      std::cout << json{{"question", o->question},     {"context_tokens", r.context_tokens},
                        {"segments", SegmentsJson(r)}, {"note", r.note},
                        {"answer", r.answer},          {"generated_tokens", r.generated_tokens},
                        {"seconds", seconds}}
                       .dump()
                << "\n";
      return absl::OkStatus();
    }
    for (size_t k = 0; k < r.segments.size(); ++k) {
      std::cout << fmt::format("segment {}/{}: {}\n", k + 1, r.segments.size(),
                               r.segments[k].empty ? "(empty)" : r.segments[k].note);
    }
    std::cout << "note: " << r.note << "\nanswer: " << r.answer << "\n";
    std::cout << fmt::format("({} context tokens, {} generated, {:.1f} s)\n", r.context_tokens,
                             r.generated_tokens, seconds);
    return absl::OkStatus();
  });
}

void RegisterEval(CLI::App& app) {
  struct Options {
    ModelFlags model;
    std::string input, out;
    int64_t limit = 0;
  };
  auto* o = NewFlags<Options>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Answer every question of a dataset the RwR way and score the answers");
  cmd->footer(
      "Reads JSONL items {id, context, question, answer} (the format rwr distill and rwr data\n"
      "build read), answers each as rwr generate does, and reports exact match and contains\n"
      "(the normalized reference inside the normalized answer; lower case, no punctuation or\n"
      "articles). --out writes one JSON line per item: id, answer, reference, notes, scores.");
  AddModelFlags(cmd, &o->model);
  cmd->add_option("--input", o->input, "Dataset JSONL (id, context, question, answer)")->required();
  cmd->add_option("--out", o->out, "Predictions JSONL (written whole at the end)");
  cmd->add_option("--limit", o->limit, "Only the first N items (0: all)")
      ->capture_default_str()
      ->check(NonNegative());
  SetAction(cmd, [o]() -> absl::Status {
    RWR_RETURN_IF_ERROR(InitLogging({.level = o->model.log_level}));
    // Every item is read (and checked) before the model runs, so a bad line fails in a second,
    // not after an hour of answers.
    std::vector<distill::RecipeItem> items;
    absl::flat_hash_set<std::string> ids;
    distill::JsonlRecipeSource source(o->input);
    RWR_RETURN_IF_ERROR(source.ForEachWithPosition(
        [&](const distill::RecipeItem& item, const distill::JsonlRecipeSource::Position& at) {
          if (!ids.insert(item.id).second) {
            return absl::InvalidArgumentError(
                fmt::format("{}:{}: item id '{}' appears again; ids must be unique", o->input,
                            at.line, item.id));
          }
          if (o->limit == 0 || static_cast<int64_t>(items.size()) < o->limit) {
            items.push_back(item);
          }
          return absl::OkStatus();
        }));
    if (items.empty()) return absl::InvalidArgumentError(fmt::format("{}: no items", o->input));
    RWR_ASSIGN_OR_RETURN(auto loaded, LoadRecall(o->model));
    std::string predictions;
    int64_t exact = 0, contains = 0, notes = 0, empty_notes = 0;
    Progress progress(
        {.label = "eval", .total = static_cast<int64_t>(items.size()), .unit = "items"});
    for (const distill::RecipeItem& item : items) {
      RWR_ASSIGN_OR_RETURN(trainer::RecallResult r,
                           loaded->recaller->Answer(item.context, item.question));
      const std::string got = NormalizeAnswer(r.answer), want = NormalizeAnswer(item.answer);
      const bool is_exact = got == want;
      const bool has =
          !want.empty() && (" " + got + " ").find(" " + want + " ") != std::string::npos;
      exact += is_exact;
      contains += has;
      for (const trainer::SegmentNote& s : r.segments) (s.empty ? empty_notes : notes) += 1;
      predictions += json{{"id", item.id},
                          {"question", item.question},
                          {"reference", item.answer},
                          {"answer", r.answer},
                          {"note", r.note},
                          {"segments", SegmentsJson(r)},
                          {"exact", is_exact},
                          {"contains", has},
                          {"context_tokens", r.context_tokens}}
                         .dump() +
                     "\n";
      progress.Advance();
    }
    progress.Finish();
    if (!o->out.empty()) RWR_RETURN_IF_ERROR(storage::WriteFileAtomically(o->out, predictions));
    const double n = static_cast<double>(items.size());
    std::cout << fmt::format(
        "eval: {} items, exact {} ({:.1f}%), contains {} ({:.1f}%); segment notes {} written, {} "
        "empty{}\n",
        items.size(), exact, 100.0 * exact / n, contains, 100.0 * contains / n, notes, empty_notes,
        o->out.empty() ? "" : "; predictions in " + o->out);
    return absl::OkStatus();
  });
}

}  // namespace

void RegisterGenerateCommands(CLI::App& app) {
  RegisterGenerate(app);
  RegisterEval(app);
}

}  // namespace rwr::cli
