// `rwr generate` and `rwr eval`: a trained model answering questions the RwR way — a note per
// context segment, then an answer from the notes (trainer/recall.h) — on the GPU or the CPU.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "cli/command.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "distill/recall_format.h"
#include "distill/sample_builder.h"
#include "distill/tokenizer.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
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
  cmd->add_option("--segments-at-once", f->recall.segments_at_once,
                  "Segment notes written together (one batch row each; on a GPU many rows cost "
                  "about one); the notes are the same at any value")
      ->capture_default_str()
      ->check(Positive());
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

// The predictions of an eval, one JSON line per item, each appended and synced as soon as its item
// is answered: a killed or requeued eval loses at most the item in progress, and a rerun with the
// same --out reads the lines there, skips their items and goes on.
class PredictionsFile {
 public:
  // Reads what `path` holds (a torn last line, from a kill mid-write, is cut off) and opens it to
  // append. Lines of another model or of ids the dataset lacks are an error: another eval's file.
  static absl::StatusOr<std::unique_ptr<PredictionsFile>> Open(
      const std::string& path, const std::string& model,
      const absl::flat_hash_set<std::string>& dataset_ids) {
    std::unique_ptr<PredictionsFile> file(new PredictionsFile());
    file->path_ = path;
    std::string text;
    if (fs::exists(path)) {
      RWR_ASSIGN_OR_RETURN(text, ReadTextFile(path));
    }
    const size_t whole = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
    if (whole < text.size()) {
      spdlog::warn(
          "{}: its last line was cut short (an eval killed mid-write); it is dropped and "
          "that item answered again",
          path);
    }
    std::istringstream lines(text.substr(0, whole));
    int64_t number = 0;
    for (std::string line; std::getline(lines, line);) {
      ++number;
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("id") || !j["id"].is_string() || !j.contains("model")) {
        return absl::InvalidArgumentError(fmt::format(
            "{}:{}: not a prediction line of rwr eval; choose another --out", path, number));
      }
      if (j["model"] != model) {
        return absl::InvalidArgumentError(
            fmt::format("{}:{}: predictions of model {}, not {}; choose another --out", path,
                        number, j["model"].dump(), model));
      }
      const std::string id = j["id"];
      if (!dataset_ids.contains(id)) {
        return absl::InvalidArgumentError(fmt::format(
            "{}:{}: item '{}' is not in the dataset (another eval's file?); choose another --out",
            path, number, id));
      }
      file->done_ids_.insert(id);
      file->done_.push_back(std::move(j));
    }
    file->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (file->fd_ < 0 || ::ftruncate(file->fd_, static_cast<off_t>(whole)) != 0 ||
        ::lseek(file->fd_, 0, SEEK_END) < 0) {
      return absl::UnavailableError(
          fmt::format("{}: cannot open to append: {}", path, std::strerror(errno)));
    }
    return file;
  }
  ~PredictionsFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  const std::vector<json>& done() const { return done_; }
  bool Has(const std::string& id) const { return done_ids_.contains(id); }

  absl::Status Append(const json& prediction) {
    const std::string line = prediction.dump() + "\n";
    for (size_t at = 0; at < line.size();) {
      const ssize_t n = ::write(fd_, line.data() + at, line.size() - at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        return absl::UnavailableError(
            fmt::format("cannot write {}: {}", path_, std::strerror(errno)));
      }
      at += static_cast<size_t>(n);
    }
    if (::fsync(fd_) != 0) {
      return absl::UnavailableError(fmt::format("cannot sync {}: {}", path_, std::strerror(errno)));
    }
    done_.push_back(prediction);
    return absl::OkStatus();
  }

 private:
  PredictionsFile() = default;
  std::string path_;
  int fd_ = -1;
  std::vector<json> done_;
  absl::flat_hash_set<std::string> done_ids_;
};

// Scores over prediction lines (those of earlier runs of the same eval included).
struct EvalTally {
  int64_t items = 0, exact = 0, contains = 0, notes = 0, empty_notes = 0;
  void Add(const json& prediction) {
    ++items;
    exact += prediction.value("exact", false);
    contains += prediction.value("contains", false);
    for (const json& s : prediction.value("segments", json::array())) {
      (s.value("empty", false) ? empty_notes : notes) += 1;
    }
  }
  std::string Line() const {
    const double n = std::max<double>(1, static_cast<double>(items));
    return fmt::format(
        "{} items, exact {} ({:.1f}%), contains {} ({:.1f}%); segment notes {} written, {} empty",
        items, exact, 100.0 * exact / n, contains, 100.0 * contains / n, notes, empty_notes);
  }
};

json Predict(const distill::RecipeItem& item, const trainer::RecallResult& r,
             const std::string& model) {
  const std::string got = NormalizeAnswer(r.answer), want = NormalizeAnswer(item.answer);
  return json{
      {"id", item.id},
      {"question", item.question},
      {"reference", item.answer},
      {"answer", r.answer},
      {"note", r.note},
      {"segments", SegmentsJson(r)},
      {"exact", got == want},
      {"contains", !want.empty() && (" " + got + " ").find(" " + want + " ") != std::string::npos},
      {"context_tokens", r.context_tokens},
      {"model", model}};
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
      "articles). --out gets one JSON line per item (id, answer, reference, notes, scores) as\n"
      "soon as it is answered; run the same command again after a kill, a SIGTERM or a Slurm\n"
      "requeue and it answers only the items not in --out yet. On SIGTERM/SIGUSR1 it stops after\n"
      "the item in progress and exits 0.");
  AddModelFlags(cmd, &o->model);
  cmd->add_option("--input", o->input, "Dataset JSONL (id, context, question, answer)")->required();
  cmd->add_option("--out", o->out,
                  "Predictions JSONL, appended item by item; an existing one is continued");
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
    const std::string model = fs::absolute(o->model.model).lexically_normal().string();
    std::unique_ptr<PredictionsFile> out;
    EvalTally tally;
    if (!o->out.empty()) {
      RWR_ASSIGN_OR_RETURN(out, PredictionsFile::Open(o->out, model, ids));
      for (const json& done : out->done()) tally.Add(done);
      if (tally.items > 0) {
        spdlog::info("eval: {} holds {} answered items; answering the rest", o->out, tally.items);
      }
    }
    std::vector<const distill::RecipeItem*> todo;
    for (const distill::RecipeItem& item : items) {
      if (out == nullptr || !out->Has(item.id)) todo.push_back(&item);
    }
    RWR_ASSIGN_OR_RETURN(auto loaded, LoadRecall(o->model));
    Progress progress(
        {.label = "eval", .total = static_cast<int64_t>(todo.size()), .unit = "items"});
    for (const distill::RecipeItem* item : todo) {
      if (ShutdownRequested()) {
        progress.Finish("interrupted");
        std::cout << fmt::format("eval: interrupted with {} of {} items answered{}\n", tally.items,
                                 items.size(),
                                 out ? "; run the same command again to answer the rest" : "");
        return absl::OkStatus();
      }
      RWR_ASSIGN_OR_RETURN(trainer::RecallResult r,
                           loaded->recaller->Answer(item->context, item->question));
      const json prediction = Predict(*item, r, model);
      if (out != nullptr) RWR_RETURN_IF_ERROR(out->Append(prediction));
      tally.Add(prediction);
      progress.Advance();
    }
    progress.Finish();
    std::cout << "eval: " << tally.Line() << (o->out.empty() ? "" : "; predictions in " + o->out)
              << "\n";
    return absl::OkStatus();
  });
}

}  // namespace

void RegisterGenerateCommands(CLI::App& app) {
  RegisterGenerate(app);
  RegisterEval(app);
}

}  // namespace rwr::cli
