// RunDistill: items through note → verify → (negative), every answer via the cache (distill_run.h).
#include "teacher_client/distill_run.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>

#include "common/progress.h"
#include "common/sha256.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "fmt/format.h"
#include "spdlog/spdlog.h"

namespace rwr::teacher {
namespace {

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string OneLine(std::string_view text) {
  std::string line(text);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return line;
}

// One item on its way through the steps. Owned by the callbacks that carry it.
struct ItemState {
  DatasetItem item;
  std::string source;
  v1::ItemRecord record;
  storage::WriteBatch pending;  // the latest teacher answer, written before the next wait
  std::string note;
};
using ItemPtr = std::shared_ptr<ItemState>;

class Distiller : public std::enable_shared_from_this<Distiller> {
 public:
  Distiller(const DistillRunOptions& options, Teacher& teacher, NoteCache& cache)
      : options_(options),
        teacher_(teacher),
        cache_(cache),
        info_(teacher.Info()),
        teacher_down_items_(std::max<int64_t>(kTeacherDownItems, options.items_in_flight)) {}

  void Start(DatasetItem dataset_item, const std::string& path) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++in_flight_;
    }
    auto item = std::make_shared<ItemState>();
    item->source = fmt::format("{}:{}", path, dataset_item.line);
    item->item = std::move(dataset_item);
    v1::ItemRecord& record = item->record;
    record.set_schema_version(kCacheSchemaVersion);
    record.set_id(item->item.id);
    record.set_source(item->source);
    record.set_extra_json(item->item.extra_json);
    record.set_attempts(1);
    absl::StatusOr<std::optional<std::string>> previous =
        cache_.store().Get(storage::Family::kJobs, ItemKey(*item));
    if (!previous.ok()) {
      Fail(item, "cache", std::string(previous.status().message()));
      return;
    }
    v1::ItemRecord old;
    if (previous->has_value() && old.ParseFromString(**previous)) {
      record.set_attempts(old.attempts() + 1);
    }

    v1::CanonicalRequest request = NoteRequestFor(info_, item->item.context, item->item.question);
    NoteTask task{.context = item->item.context, .question = item->item.question};
    auto self = shared_from_this();
    Step<Note>(
        item, "note", std::move(request),
        [](v1::ItemRecord* r, const std::string& key) { r->set_note_key(key); },
        [self, task](TeacherCallback<Note> done) {
          self->teacher_.ExtractNote(task, std::move(done));
        },
        &NoteFromRecord, &CheckNote,
        [](const Note& note, v1::CacheRecord* r) {
          r->mutable_note()->set_note(note.text);
          r->mutable_note()->set_empty(note.empty);
          r->mutable_note()->set_score(note.score);
        },
        [self](ItemPtr it, Note note) { self->AfterNote(std::move(it), std::move(note)); });
  }

  // Blocks until fewer than `limit` items are in flight (limit 1: none), reporting progress every
  // progress_interval_s meanwhile. Called from the driving thread only.
  void WaitBelow(int64_t limit, Progress* progress) {
    const auto interval = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(options_.progress_interval_s));
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (std::chrono::steady_clock::now() - last_report_ >= interval) {
        lock.unlock();
        Report(progress);
        lock.lock();
        last_report_ = std::chrono::steady_clock::now();
      }
      if (in_flight_ < limit) return;
      changed_.wait_until(lock, last_report_ + interval);
    }
  }

  void Report(Progress* progress) {
    DistillCounts now = Counts();
    if (progress != nullptr) progress->Set(now.items_done);
    if (options_.on_progress) options_.on_progress(now);
  }

  // The item total counted by the check pass, reported with every count from then on.
  void SetTotal(int64_t items) {
    std::lock_guard<std::mutex> lock(mu_);
    counts_.items = items;
  }

  DistillCounts Counts() {
    std::lock_guard<std::mutex> lock(mu_);
    DistillCounts out = counts_;
    out.teacher_calls = teacher_calls_.load();
    out.teacher_answers = teacher_answers_.load();
    out.cache_hits = cache_hits_.load();
    out.cache_rejected = cache_rejected_.load();
    return out;
  }

  int64_t InFlight() {
    std::lock_guard<std::mutex> lock(mu_);
    return in_flight_;
  }

  std::vector<FailedItem> Failed() {
    std::lock_guard<std::mutex> lock(mu_);
    return failed_;
  }

  // Non-empty once the teacher has failed teacher_down_items_ items in a row in a way that says it
  // cannot be used at all (DistillSummary::teacher_unusable).
  absl::Status TeacherUnusable() {
    std::lock_guard<std::mutex> lock(mu_);
    return teacher_unusable_;
  }

 private:
  static std::string ItemKey(const ItemState& item) { return kItemKeyPrefix + item.item.id; }

  static absl::Status CheckNote(const Note& note) {
    if (!note.empty && note.text.find_first_not_of(" \t\r\n") == std::string::npos) {
      return absl::DataLossError("the teacher returned a blank note (not marked empty)");
    }
    return absl::OkStatus();
  }
  static absl::Status CheckVerdict(const Verdict& verdict) {
    if (!std::isfinite(verdict.score) || verdict.score < 0 || verdict.score > 1) {
      return absl::DataLossError(
          fmt::format("the teacher returned a verdict score of {}, outside [0, 1]", verdict.score));
    }
    return absl::OkStatus();
  }
  static absl::Status CheckNegative(const Negative&) { return absl::OkStatus(); }

  // Cache first; on a miss (or an unusable record) ask the teacher, queue the answer for writing,
  // and go on with `next`.
  template <typename Answer>
  void Step(ItemPtr item, const char* stage, v1::CanonicalRequest request,
            void (*set_key)(v1::ItemRecord*, const std::string&),
            std::function<void(TeacherCallback<Answer>)> ask,
            Answer (*from_record)(const v1::CacheRecord&), absl::Status (*check)(const Answer&),
            void (*fill)(const Answer&, v1::CacheRecord*),
            std::function<void(ItemPtr, Answer)> next) {
    absl::StatusOr<CacheLookup> lookup = cache_.Lookup(request);
    if (!lookup.ok()) {
      Fail(item, "cache", std::string(lookup.status().message()));
      return;
    }
    set_key(&item->record, lookup->key);
    if (lookup->outcome == CacheLookup::Outcome::kHit) {
      ++cache_hits_;
      next(std::move(item), from_record(lookup->record));
      return;
    }
    if (lookup->outcome != CacheLookup::Outcome::kMiss) {
      ++cache_rejected_;
      spdlog::warn("item '{}' ({}): {}; asking the teacher again", item->item.id, item->source,
                   lookup->detail);
    }
    // Whatever the previous step got from the teacher is written before waiting on this one.
    if (!FlushPending(item)) return;
    ++teacher_calls_;
    auto self = shared_from_this();
    ask([self, item, stage, request = std::move(request), key = std::move(lookup->key), check, fill,
         next = std::move(next)](absl::StatusOr<Answer> answer) mutable {
      if (!answer.ok()) {
        self->TeacherFailed(answer.status());
        self->Fail(item, stage, std::string(answer.status().message()));
        return;
      }
      self->TeacherAnswered();
      if (absl::Status valid = check(*answer); !valid.ok()) {
        self->Fail(item, stage, std::string(valid.message()));
        return;
      }
      v1::CacheRecord record = NoteCache::MakeRecord(request);
      fill(*answer, &record);
      item->pending.Put(FamilyFor(request.task()), key, record.SerializeAsString());
      next(std::move(item), *std::move(answer));
    });
  }

  void AfterNote(ItemPtr item, Note note) {
    item->note = note.text;
    v1::CanonicalRequest request =
        VerifyRequestFor(info_, item->item.question, item->note, item->item.answer);
    VerifyTask task{
        .question = item->item.question, .note = item->note, .answer = item->item.answer};
    auto self = shared_from_this();
    Step<Verdict>(
        item, "verify", std::move(request),
        [](v1::ItemRecord* r, const std::string& key) { r->set_verdict_key(key); },
        [self, task](TeacherCallback<Verdict> done) {
          self->teacher_.VerifyNote(task, std::move(done));
        },
        &VerdictFromRecord, &CheckVerdict,
        [](const Verdict& verdict, v1::CacheRecord* r) {
          r->mutable_verdict()->set_consistent(verdict.consistent);
          r->mutable_verdict()->set_score(verdict.score);
        },
        [self](ItemPtr it, Verdict verdict) { self->AfterVerify(std::move(it), verdict); });
  }

  void AfterVerify(ItemPtr item, Verdict verdict) {
    if (!verdict.consistent) {
      Finish(std::move(item), v1::ItemRecord::DROPPED, false);
      return;
    }
    if (!SelectedForNegative(item->item.id, options_.negative_fraction)) {
      Finish(std::move(item), v1::ItemRecord::KEPT, false);
      return;
    }
    v1::CanonicalRequest request =
        RemoveEvidenceRequestFor(info_, item->item.context, item->item.question, item->item.answer);
    RemoveEvidenceTask task{.context = item->item.context,
                            .question = item->item.question,
                            .answer = item->item.answer};
    auto self = shared_from_this();
    Step<Negative>(
        item, "remove_evidence", std::move(request),
        [](v1::ItemRecord* r, const std::string& key) { r->set_negative_key(key); },
        [self, task](TeacherCallback<Negative> done) {
          self->teacher_.RemoveEvidence(task, std::move(done));
        },
        &NegativeFromRecord, &CheckNegative,
        [](const Negative& negative, v1::CacheRecord* r) {
          r->mutable_negative()->set_context(negative.context);
          r->mutable_negative()->set_removed_paragraphs(negative.removed_paragraphs);
          r->mutable_negative()->set_answer_still_present(negative.answer_still_present);
        },
        [self](ItemPtr it, Negative negative) {
          const bool usable = !negative.answer_still_present && !negative.context.empty();
          self->Finish(std::move(it), v1::ItemRecord::KEPT, usable);
        });
  }

  bool FlushPending(const ItemPtr& item) {
    if (item->pending.empty()) return true;
    absl::Status written = cache_.store().Write(item->pending);
    item->pending.Clear();
    if (!written.ok()) {
      Fail(item, "cache", std::string(written.message()));
      return false;
    }
    return true;
  }

  // The item's outcome, in one batch with its last teacher answer.
  void Finish(ItemPtr item, v1::ItemRecord::State state, bool usable_negative) {
    item->record.set_state(state);
    item->record.set_updated_unix_ms(NowUnixMs());
    item->pending.Put(storage::Family::kJobs, ItemKey(*item), item->record.SerializeAsString());
    absl::Status written = cache_.store().Write(item->pending);
    item->pending.Clear();
    if (!written.ok()) {
      Record(item, "cache", std::string(written.message()));
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counts_.items_done;
      if (state == v1::ItemRecord::KEPT) ++counts_.notes_kept;
      if (state == v1::ItemRecord::DROPPED) ++counts_.dropped_by_verification;
      if (usable_negative) ++counts_.negatives;
    }
    Done();
  }

  // A failed item: write what was answered so far and the reason; the next run retries it.
  void Fail(ItemPtr item, const std::string& stage, const std::string& reason) {
    item->record.set_state(v1::ItemRecord::FAILED);
    item->record.set_failed_stage(stage);
    item->record.set_failure(OneLine(reason));
    item->record.set_updated_unix_ms(NowUnixMs());
    item->pending.Put(storage::Family::kJobs, ItemKey(*item), item->record.SerializeAsString());
    absl::Status written = cache_.store().Write(item->pending);
    item->pending.Clear();
    Record(item, stage,
           written.ok() ? reason
                        : fmt::format("{} (and the failure could not be recorded: {})", reason,
                                      std::string(written.message())));
  }

  void Record(const ItemPtr& item, const std::string& stage, const std::string& reason) {
    spdlog::warn("item '{}' ({}) failed at {}: {}", item->item.id, item->source, stage,
                 OneLine(reason));
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counts_.items_done;
      ++counts_.failures;
      failed_.push_back({item->item.id, item->source, stage, OneLine(reason)});
    }
    Done();
  }

  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    --in_flight_;
    changed_.notify_all();
  }

  // A teacher down, hung, refusing our token or not serving the API fails every call: counted so
  // the run stops rather than fail (and retry, with backoff) each remaining item in turn — for a
  // large dataset, hours of a Slurm allocation spent writing FAILED records. Any answer, or a
  // failure that is about the request (e.g. INVALID_ARGUMENT), starts the count again. Overload
  // (RESOURCE_EXHAUSTED; the client takes it as backpressure, so it ends an item only once the
  // teacher has answered nothing but overload for a deadline) is neither: a teacher that is up but
  // full is not down, and a refusal is not an answer. A call that waited out its deadline in the
  // teacher's queue while it answered others is overload to the client too, retried without ending;
  // DEADLINE_EXCEEDED arrives here only once the teacher answered nothing for a deadline.
  void TeacherFailed(const absl::Status& status) {
    const absl::StatusCode code = status.code();
    if (code == absl::StatusCode::kResourceExhausted) return;
    const bool unusable =
        code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded ||
        code == absl::StatusCode::kUnauthenticated || code == absl::StatusCode::kPermissionDenied ||
        code == absl::StatusCode::kUnimplemented;
    std::lock_guard<std::mutex> lock(mu_);
    consecutive_unusable_ = unusable ? consecutive_unusable_ + 1 : 0;
    if (consecutive_unusable_ >= teacher_down_items_ && teacher_unusable_.ok()) {
      teacher_unusable_ = absl::Status(
          code,
          fmt::format(
              "the teacher failed {} items in a row with no answer in between; last error: {}",
              consecutive_unusable_, OneLine(std::string(status.message()))));
      changed_.notify_all();
    }
  }
  void TeacherAnswered() {
    ++teacher_answers_;
    std::lock_guard<std::mutex> lock(mu_);
    consecutive_unusable_ = 0;
  }

  const DistillRunOptions& options_;
  Teacher& teacher_;
  NoteCache& cache_;
  const TeacherInfo info_;
  const int64_t teacher_down_items_;
  std::atomic<int64_t> teacher_calls_{0};
  std::atomic<int64_t> teacher_answers_{0};
  std::atomic<int64_t> cache_hits_{0};
  std::atomic<int64_t> cache_rejected_{0};
  std::mutex mu_;
  std::condition_variable changed_;
  int64_t in_flight_ = 0;
  std::chrono::steady_clock::time_point last_report_ = std::chrono::steady_clock::now();
  DistillCounts counts_;
  std::vector<FailedItem> failed_;
  int64_t consecutive_unusable_ = 0;
  absl::Status teacher_unusable_;
};

bool StopRequested(const DistillRunOptions& options) {
  return ShutdownRequested() || (options.stop_requested && options.stop_requested());
}

// `target` with the builtin:NAME spelling taken off ("builtin:extractive" → "extractive").
absl::StatusOr<std::string> WithoutBuiltinPrefix(const std::string& target) {
  constexpr std::string_view kBuiltin = "builtin:";
  if (target.rfind(kBuiltin, 0) != 0) return target;
  std::string name = target.substr(kBuiltin.size());
  if (name != "extractive") {
    return absl::InvalidArgumentError(
        fmt::format("teacher '{}': the built-in teacher is builtin:extractive", target));
  }
  return name;
}

}  // namespace

absl::Status CheckDistillTeacher(const std::string& target) {
  RWR_ASSIGN_OR_RETURN(std::string name, WithoutBuiltinPrefix(target));
  return CheckTeacherTarget(name);
}

absl::StatusOr<std::unique_ptr<Teacher>> MakeDistillTeacher(const std::string& target,
                                                            const TeacherClientOptions& options,
                                                            const ExtractiveOptions& extractive) {
  RWR_ASSIGN_OR_RETURN(std::string name, WithoutBuiltinPrefix(target));
  // Built here rather than by MakeTeacher, which knows no extractive options.
  if (name == "extractive" || name == "builtin") {
    return std::unique_ptr<Teacher>(std::make_unique<ExtractiveTeacher>(extractive));
  }
  return MakeTeacher(target, options);
}

bool SelectedForNegative(std::string_view id, double fraction) {
  if (fraction <= 0) return false;
  if (fraction >= 1) return true;
  const Sha256Digest digest = Sha256Of(fmt::format("rwr-negative:{}", id));
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value = (value << 8) | digest[i];
  return static_cast<double>(value) / 18446744073709551616.0 < fraction;
}

absl::StatusOr<DistillSummary> RunDistill(const DistillRunOptions& options, Teacher& teacher,
                                          NoteCache& cache) {
  if (options.negative_fraction < 0 || options.negative_fraction > 1) {
    return absl::InvalidArgumentError(fmt::format(
        "distill.negative_fraction is {}; it must be in [0, 1]", options.negative_fraction));
  }
  const auto start = std::chrono::steady_clock::now();
  DistillSummary summary;
  summary.teacher = teacher.Info();

  // Pass 1: check every line before the first teacher call (fail mode stops here), count items.
  // A large dataset takes a while: a signal or a cancel is honoured here too, not only once the
  // count is done (a Slurm job's SIGTERM is followed by SIGKILL after KillWait).
  int64_t total = 0;
  int64_t rejected = 0;
  {
    DatasetReader check(options.input_path, options.dataset);
    while (true) {
      RWR_ASSIGN_OR_RETURN(std::optional<DatasetItem> item, check.Next());
      if (!item.has_value()) break;
      ++total;
      if (total % 1024 == 0 && StopRequested(options)) {
        spdlog::info("{}: stopped while checking the input ({} items so far); rerun to continue",
                     options.input_path, total);
        summary.interrupted = true;
        summary.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        return summary;
      }
    }
    rejected = check.lines_rejected();
    if (total == 0) {
      // Nothing to distill is a wrong path, a truncated file or a failed generator, not a success
      // for the next stage to build on.
      return absl::InvalidArgumentError(
          rejected > 0 ? fmt::format("{}: no usable items: all {} non-blank lines are bad{}",
                                     options.input_path, rejected,
                                     options.dataset.quarantine_path.empty()
                                         ? ""
                                         : " (see " + options.dataset.quarantine_path + ")")
                       : fmt::format("{}: no items (the file is empty or holds only blank lines)",
                                     options.input_path));
    }
    if (rejected > 0) {
      spdlog::warn(
          "{}: {} bad lines skipped{}", options.input_path, rejected,
          options.dataset.quarantine_path.empty()
              ? ""
              : fmt::format(", written with their reasons to {}", options.dataset.quarantine_path));
    }
  }
  spdlog::info("distill: {} items from {}, teacher {} (revision {}, prompts {})", total,
               options.input_path, summary.teacher.teacher_id, summary.teacher.revision,
               summary.teacher.prompt_template_version);

  // Pass 2: the good items (bad ones skipped silently; pass 1 reported them).
  DatasetOptions quiet = options.dataset;
  quiet.on_bad_input = OnBadInput::kSkip;
  quiet.quarantine_path.clear();
  DatasetReader reader(options.input_path, quiet);
  auto distiller = std::make_shared<Distiller>(options, teacher, cache);
  distiller->SetTotal(total);
  std::unique_ptr<Progress> progress;
  if (options.show_progress) {
    progress = std::make_unique<Progress>(
        ProgressOptions{.label = "distill", .total = total, .unit = "items"});
  }
  Progress* bar = progress.get();
  // The total at once (`rwr distill status` shows N/M and an ETA), not after the first interval.
  distiller->Report(bar);
  const int64_t window = std::max(1, options.items_in_flight);
  while (true) {
    distiller->WaitBelow(window, bar);
    if (absl::Status unusable = distiller->TeacherUnusable(); !unusable.ok()) {
      spdlog::warn("distill: stopping: {}; finishing the {} items in flight",
                   std::string(unusable.message()), distiller->InFlight());
      break;
    }
    // Read before the stop is looked at: a stop asked for once the last item has started stops
    // nothing, and the run is complete.
    RWR_ASSIGN_OR_RETURN(std::optional<DatasetItem> item, reader.Next());
    if (!item.has_value()) break;
    if (StopRequested(options)) {
      summary.interrupted = true;
      // Said at once: draining a slow teacher's window takes a while and must not look like a
      // hang. Each item in flight waits on one teacher call.
      const std::string cause =
          ShutdownRequested() ? fmt::format("signal {}", ShutdownSignal()) : "stop requested";
      spdlog::info("{}: finishing the {} calls in flight, then stopping; rerun to continue", cause,
                   distiller->InFlight());
      break;
    }
    distiller->Start(*std::move(item), options.input_path);
  }
  distiller->WaitBelow(1, bar);
  distiller->Report(bar);
  summary.teacher_unusable = distiller->TeacherUnusable();
  // A run stopped early must not claim it is done.
  if (progress) {
    progress->Finish(summary.interrupted              ? "interrupted"
                     : !summary.teacher_unusable.ok() ? "stopped"
                                                      : "done");
  }

  summary.counts = distiller->Counts();
  summary.counts.bad_input_lines = rejected;
  summary.failed = distiller->Failed();
  std::sort(summary.failed.begin(), summary.failed.end(),
            [](const FailedItem& a, const FailedItem& b) { return a.id < b.id; });
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Power-loss durability for everything this run wrote (see docs/cache.md).
  RWR_RETURN_IF_ERROR(cache.store().Sync());
  // Read to the end, the second pass must have seen what the first counted: a file rewritten,
  // truncated or appended to in between would otherwise end as a success that skipped (or never
  // checked) part of it.
  const bool read_whole = !summary.interrupted && summary.teacher_unusable.ok();
  if (read_whole && (reader.items_read() != total || reader.lines_rejected() != rejected)) {
    return absl::FailedPreconditionError(fmt::format(
        "{} changed while the run read it ({} items and {} bad lines when checked, {} and {} "
        "when read); what was read is cached: run again on the finished file",
        options.input_path, total, rejected, reader.items_read(), reader.lines_rejected()));
  }
  return summary;
}

std::string NeverReachedHint(absl::StatusCode code, bool reached, std::string_view address,
                             std::string_view since) {
  if (reached || !TeacherOutagePolicy::MayComeBack(code)) return "";
  return fmt::format("; it has not been reached once since {}: is {} the teacher's address?", since,
                     address);
}

bool TeacherOutagePolicy::MayComeBack(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded;
}

double TeacherOutagePolicy::NextDelay(double previous_s) const {
  return previous_s > 0 ? std::min(2 * previous_s, std::max(kMaxRetryS, retry_s)) : retry_s;
}

absl::Status TeacherOutagePolicy::Check() const {
  if (outage_s >= 0 && outage_s <= kMaxOutageS && retry_s > 0 && retry_s <= kMaxOutageS)
    return absl::OkStatus();
  return absl::InvalidArgumentError(
      fmt::format("distill.teacher_outage_s ({}) must be in [0, {}] and distill.teacher_retry_s "
                  "({}) in (0, {}]",
                  outage_s, kMaxOutageS, retry_s, kMaxOutageS));
}

std::string SummaryLine(const DistillSummary& summary) {
  const DistillCounts& c = summary.counts;
  std::string line = fmt::format(
      "distill: {} items, {} notes kept, {} dropped by verification, {} negatives, {} failures, "
      "{} teacher calls, {} cache hits in {:.1f}s ({:.1f} items/s)",
      c.items, c.notes_kept, c.dropped_by_verification, c.negatives, c.failures, c.teacher_calls,
      c.cache_hits, summary.seconds,
      summary.seconds > 0 ? static_cast<double>(c.items_done) / summary.seconds : 0.0);
  if (c.bad_input_lines > 0) line += fmt::format(", {} bad input lines skipped", c.bad_input_lines);
  if (c.cache_rejected > 0) line += fmt::format(", {} cache records rejected", c.cache_rejected);
  if (summary.interrupted) {
    line += fmt::format("; interrupted after {} of {} items (rerun to continue)", c.items_done,
                        c.items);
  }
  if (!summary.teacher_unusable.ok()) {
    line += fmt::format("; stopped after {} of {} items: {}", c.items_done, c.items,
                        std::string(summary.teacher_unusable.message()));
  }
  return line;
}

nlohmann::json SummaryJson(const DistillSummary& summary) {
  const DistillCounts& c = summary.counts;
  nlohmann::json failed = nlohmann::json::array();
  for (const FailedItem& item : summary.failed) {
    failed.push_back(
        {{"id", item.id}, {"source", item.source}, {"stage", item.stage}, {"reason", item.reason}});
  }
  return {{"items", c.items},
          {"items_done", c.items_done},
          {"notes_kept", c.notes_kept},
          {"dropped_by_verification", c.dropped_by_verification},
          {"negatives", c.negatives},
          {"failures", c.failures},
          {"teacher_calls", c.teacher_calls},
          {"cache_hits", c.cache_hits},
          {"cache_rejected", c.cache_rejected},
          {"bad_input_lines", c.bad_input_lines},
          {"failed_items", failed},
          {"interrupted", summary.interrupted},
          {"teacher_unusable", std::string(summary.teacher_unusable.message())},
          {"seconds", summary.seconds},
          {"teacher",
           {{"id", summary.teacher.teacher_id},
            {"revision", summary.teacher.revision},
            {"prompt_template_version", summary.teacher.prompt_template_version}}}};
}

}  // namespace rwr::teacher
