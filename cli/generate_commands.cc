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
#include "common/dir_lock.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/sha256.h"
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
  // What decides the answers (recorded with every prediction of an eval, so that a rerun never
  // mixes in answers of other weights or settings): the model directory and its weight files'
  // sizes and times, the tokenizer's and the template's SHA-256, the generation settings.
  json settings;
};

// "model.safetensors 1234 bytes 1732800000" for each weight file of a model directory.
std::string WeightFiles(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (!name.ends_with(".safetensors") || name == "rwr_check.safetensors") continue;
    std::error_code ec;
    const auto written = fs::last_write_time(entry.path(), ec).time_since_epoch();
    files.push_back(
        fmt::format("{} {} bytes {}", name, entry.file_size(ec),
                    std::chrono::duration_cast<std::chrono::nanoseconds>(written).count()));
  }
  std::sort(files.begin(), files.end());
  std::string all;
  for (const std::string& f : files) all += (all.empty() ? "" : "; ") + f;
  return all;
}

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
  trainer::RecallOptions recall = f.recall;
  recall.cancelled = [] { return ShutdownRequested(); };
  RWR_ASSIGN_OR_RETURN(const std::string tokenizer_sha, Sha256HexOfFile(tokenizer_path));
  loaded->settings = {{"model", fs::weakly_canonical(loaded->model_dir).string()},
                      {"weights", WeightFiles(loaded->model_dir)},
                      {"tokenizer_sha256", tokenizer_sha},
                      {"template_sha256", Sha256Hex(sample_template.ToYaml())},
                      {"device", loaded->decoder->device()},
                      {"segment_tokens", f.recall.segment_tokens},
                      {"max_note_tokens", f.recall.max_note_tokens},
                      {"max_answer_tokens", f.recall.max_answer_tokens},
                      {"temperature", f.recall.sampling.temperature},
                      {"top_p", f.recall.sampling.top_p},
                      {"seed", f.recall.sampling.seed}};
  loaded->recaller = std::make_unique<trainer::Recaller>(*loaded->decoder, std::move(tokenizer),
                                                         std::move(format), recall);
  return loaded;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in || !fs::is_regular_file(path)) {
    return absl::NotFoundError(fmt::format("{}: not a file that can be read", path));
  }
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
// same --out reads the lines there, skips their items and goes on. One eval writes a file at a
// time (DirLock on FILE.lock).
class PredictionsFile {
 public:
  // Locks `path`, reads what it holds (a torn last line, from a kill mid-write, is cut off) and
  // opens it to append. Lines written with other settings, of ids the dataset lacks, or twice,
  // are an error: another eval's file, or one edited by hand.
  static absl::StatusOr<std::unique_ptr<PredictionsFile>> Open(
      const std::string& path, const json& settings,
      const absl::flat_hash_set<std::string>& dataset_ids) {
    RWR_ASSIGN_OR_RETURN(
        DirLock lock,
        DirLock::AcquireForFile(path, {.setting = "--out",
                                       .command = "rwr eval",
                                       .clash = "two evals appending to one file would answer "
                                                "items twice"}));
    std::unique_ptr<PredictionsFile> file(new PredictionsFile(std::move(lock)));
    file->path_ = path;
    file->fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (file->fd_ < 0) {
      return absl::UnavailableError(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    }
    RWR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
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
      if (!j.is_object() || !j.contains("id") || !j["id"].is_string() || !j.contains("settings") ||
          !j["settings"].is_object()) {
        return absl::InvalidArgumentError(fmt::format(
            "{}:{}: not a prediction line of rwr eval; choose another --out", path, number));
      }
      for (const auto& [key, value] : settings.items()) {
        if (j["settings"].value(key, json()) != value) {
          return absl::InvalidArgumentError(fmt::format(
              "{}:{}: answered with {} {}, this run has {}; use the same settings or choose "
              "another --out",
              path, number, key, j["settings"].value(key, json()).dump(), value.dump()));
        }
      }
      const std::string id = j["id"];
      if (!dataset_ids.contains(id)) {
        return absl::InvalidArgumentError(fmt::format(
            "{}:{}: item '{}' is not in the dataset (another eval's file?); choose another --out",
            path, number, id));
      }
      if (!file->done_ids_.insert(id).second) {
        return absl::InvalidArgumentError(
            fmt::format("{}:{}: item '{}' answered twice; choose another --out", path, number, id));
      }
      file->done_.push_back(std::move(j));
    }
    if (::ftruncate(file->fd_, static_cast<off_t>(whole)) != 0 ||
        ::lseek(file->fd_, 0, SEEK_END) < 0) {
      return absl::UnavailableError(
          fmt::format("{}: cannot open to append: {}", path, std::strerror(errno)));
    }
    return file;
  }
  ~PredictionsFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  // The lines the file held when opened (this run's appends are not kept: only their ids).
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
    done_ids_.insert(prediction["id"].get<std::string>());
    return absl::OkStatus();
  }

 private:
  explicit PredictionsFile(DirLock lock) : lock_(std::move(lock)) {}
  DirLock lock_;  // one writer of the file (FILE.lock)
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
             const json& settings) {
  const trainer::AnswerScore score = trainer::ScoreAnswer(r.answer, item.answer);
  return json{{"id", item.id},
              {"question", item.question},
              {"reference", item.answer},
              {"answer", r.answer},
              {"note", r.note},
              {"segments", SegmentsJson(r)},
              {"exact", score.exact},
              {"contains", score.contains},
              {"context_tokens", r.context_tokens},
              {"settings", settings}};
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
    // not after an hour of answers. Only ids and offsets stay in memory; an item's text is read
    // again when its turn comes (long-context datasets run to gigabytes).
    struct Entry {
      std::string id;
      int64_t offset;
    };
    std::vector<Entry> items;
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
            items.push_back({item.id, at.offset});
          }
          return absl::OkStatus();
        }));
    if (items.empty()) return absl::InvalidArgumentError(fmt::format("{}: no items", o->input));
    // The model first: a run that cannot load it leaves no --out behind.
    RWR_ASSIGN_OR_RETURN(auto loaded, LoadRecall(o->model));
    std::unique_ptr<PredictionsFile> out;
    EvalTally tally;
    absl::flat_hash_set<std::string> this_run;  // the items of this run (--limit)
    for (const Entry& item : items) this_run.insert(item.id);
    if (!o->out.empty()) {
      RWR_ASSIGN_OR_RETURN(out, PredictionsFile::Open(o->out, loaded->settings, ids));
      for (const json& done : out->done()) {
        if (this_run.contains(done["id"].get<std::string>())) tally.Add(done);
      }
      if (tally.items > 0) {
        spdlog::info("eval: {} holds {} of the {} items answered; answering the rest", o->out,
                     tally.items, items.size());
      }
    }
    std::vector<const Entry*> todo;
    for (const Entry& item : items) {
      if (out == nullptr || !out->Has(item.id)) todo.push_back(&item);
    }
    Progress progress(
        {.label = "eval", .total = static_cast<int64_t>(todo.size()), .unit = "items"});
    for (const Entry* entry : todo) {
      RWR_ASSIGN_OR_RETURN(const distill::RecipeItem item, source.ReadAt(entry->offset));
      if (item.id != entry->id) {
        return absl::DataLossError(
            fmt::format("{} changed while eval was reading it (item '{}' is no longer at byte {})",
                        o->input, entry->id, entry->offset));
      }
      absl::StatusOr<trainer::RecallResult> r =
          ShutdownRequested() ? absl::CancelledError("interrupted")
                              : loaded->recaller->Answer(item.context, item.question);
      if (absl::IsCancelled(r.status())) {  // a shutdown signal: the item in progress is dropped
        progress.Finish("interrupted");
        RecordStoppedEarly();
        std::cout << fmt::format("eval: interrupted with {} of {} items answered{}\n", tally.items,
                                 items.size(),
                                 out ? "; run the same command again to answer the rest" : "");
        return absl::OkStatus();
      }
      RWR_RETURN_IF_ERROR(r.status());
      const json prediction = Predict(item, *r, loaded->settings);
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
