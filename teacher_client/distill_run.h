// RunDistill: one pass of a JSONL dataset through a teacher into the note cache — the engine of
// `rwr distill run` and of each `rwr distill serve` job (RWR_METHOD.md steps 1-3).
//
// Per item:  note = T(c, q)  →  verdict = verify(q, note, a)  →  kept?  →  for a fixed, seeded
// fraction of kept items: c_r = remove_evidence(c, q, a), the `empty` negative.
// Every step first asks the cache; a miss asks the teacher and the answer is written to the cache
// before the next step starts (the item's final answer together with its ItemRecord, in one atomic
// batch). So a run killed at any point and started again asks the teacher only for what is not yet
// cached, and loses nothing that was written (see docs/cache.md for the durability contract).
//
// An item whose teacher call finally fails (the client has already retried) or whose answer is
// malformed is recorded as FAILED with the stage and the reason (jobs family, "item/<id>") and
// listed in the summary; the next run retries it. Items are independent: one failure never stops
// the run. Up to `items_in_flight` items are in progress at once, which keeps a remote teacher's
// window full (each item has one call outstanding at a time).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "teacher_client/client.h"
#include "teacher_client/dataset.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/note_cache.h"
#include "teacher_client/teacher.h"

namespace rwr::teacher {

struct DistillCounts {
  int64_t items = 0;       // good items in the input (counted by the check pass, then reported)
  int64_t items_done = 0;  // finished this run: kept, dropped or failed
  int64_t notes_kept = 0;
  int64_t dropped_by_verification = 0;
  int64_t negatives = 0;  // usable `empty` negatives (answer removed)
  int64_t failures = 0;
  int64_t teacher_calls = 0;  // tasks sent to the teacher (client retries not counted)
  int64_t teacher_answers = 0;  // of those, answered: a teacher that answers is not down
  int64_t cache_hits = 0;
  int64_t cache_rejected = 0;   // stale or mismatching records, re-asked and overwritten
  int64_t bad_input_lines = 0;  // quarantined lines (--on-bad-input skip)
};

struct FailedItem {
  std::string id;
  std::string source;  // FILE:LINE
  std::string stage;   // note | verify | remove_evidence | cache
  std::string reason;
};

struct DistillSummary {
  DistillCounts counts;
  std::vector<FailedItem> failed;
  bool interrupted = false;  // stopped early (cancel or shutdown signal); rerun to continue
  // Not OK: the run stopped early because the teacher could not be used at all — every call of
  // the last kTeacherDownItems items (or of a window of items in flight, if more) failed with
  // UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED, PERMISSION_DENIED or UNIMPLEMENTED after the
  // client's retries, with no answer in between. Carries the last call's code; the message says
  // how many items failed and the teacher's last error. Items not started yet are left alone (no
  // FAILED records); rerun once the teacher is back.
  absl::Status teacher_unusable;
  double seconds = 0;
  TeacherInfo teacher;
};

struct DistillRunOptions {
  std::string input_path;
  DatasetOptions dataset;
  double negative_fraction = 0.3;  // of kept items; chosen by a hash of the item id
  int items_in_flight = 128;
  // Polled while running; true stops starting new items (those in flight finish). The process's
  // shutdown flag (SIGINT/SIGTERM) is always polled too.
  std::function<bool()> stop_requested;
  // Called on the driving thread once the input is counted (counts.items is the total from this
  // first call on), then about every `progress_interval_s`, and once at the end.
  std::function<void(const DistillCounts&)> on_progress;
  double progress_interval_s = 0.2;
  bool show_progress = true;  // an rwr::Progress bar/lines on stderr
};

// MakeTeacher (client.h) plus the `builtin:NAME` spelling of the in-process teachers
// (`builtin:extractive`), as `rwr distill run --teacher` and distill jobs take it. The in-process
// extractive teacher (builtin:extractive, builtin, extractive) runs with `extractive`
// (ExtractiveOptionsFromConfig), remote teachers with `options`.
absl::StatusOr<std::unique_ptr<Teacher>> MakeDistillTeacher(
    const std::string& target, const TeacherClientOptions& options,
    const ExtractiveOptions& extractive = {});

// The checks MakeDistillTeacher makes of `target` without connecting (CheckTeacherTarget plus the
// builtin:NAME spelling): `rwr distill submit` refuses a target its job could not use.
absl::Status CheckDistillTeacher(const std::string& target);

// Whether `id` is among the `fraction` of items that get an `empty` negative (stable per id).
bool SelectedForNegative(std::string_view id, double fraction);

// How many items in a row must fail on an unusable teacher (see DistillSummary::teacher_unusable)
// before a run stops; a window of items in flight larger than this must fail whole.
inline constexpr int64_t kTeacherDownItems = 16;

// How long distillation waits for a teacher that is down or unreachable before it gives up, and
// how often it tries it meanwhile: `rwr distill run` between its passes over the dataset, `rwr
// distill serve` for the jobs queued for that teacher (config distill.teacher_outage_s and
// distill.teacher_retry_s). The wait is counted from the first failure; a pass that gets answers
// (DistillCounts::teacher_answers) ends it. A pass stops for an unusable teacher only after a
// window of items failed in a row (kTeacherDownItems): a job with fewer items left ends as its
// items decide, FAILED naming them, without a wait.
struct TeacherOutagePolicy {
  double outage_s = 3600;  // 0: give up at the first failure
  double retry_s = 15;     // the first delay; it doubles after each failed try, up to kMaxRetryS
  static constexpr double kMaxRetryS = 300;
  static constexpr double kMaxOutageS = 30 * 86400;  // either value; past it, a config mistake

  // Whether waiting can mend a teacher that failed with `code`: down, restarting, hung or
  // unreachable (UNAVAILABLE, DEADLINE_EXCEEDED). A refused token or a server that is not a
  // teacher (UNAUTHENTICATED, PERMISSION_DENIED, UNIMPLEMENTED, ...) will not mend by waiting.
  static bool MayComeBack(absl::StatusCode code);
  // Whether a teacher that failed with `code` and has been unusable for `waited_s` is given up:
  // waiting cannot mend it, or it has waited outage_s.
  bool GivesUp(absl::StatusCode code, double waited_s) const {
    return !MayComeBack(code) || waited_s >= outage_s;
  }
  // The delay after a failed try that came `previous_s` after the one before (0: the first).
  double NextDelay(double previous_s) const;
  // Either value out of range, as an error naming the config keys.
  absl::Status Check() const;
};

// The hint added to a teacher's failure where it may be a mistyped address: it failed as an
// unreachable teacher does (TeacherOutagePolicy::MayComeBack: a wrong address looks the same as a
// teacher still starting) and no connection to it was made since `since` ("this run started",
// "the service started"). Empty otherwise — a teacher that answered, even with an error, was
// reached.
std::string NeverReachedHint(absl::StatusCode code, bool reached, std::string_view address,
                             std::string_view since);

// The largest teacher window (distill.concurrency, a job's recipe.concurrency): 2 × it items are
// held in memory at once, and larger values overflowed into negative windows.
inline constexpr int kMaxDistillConcurrency = 65536;

// Errors: bad input in fail mode (FILE:LINE: reason, before any teacher call), an unreadable
// input, an input with no items, an input that changed while the run read it (the counts of its
// two passes differ; what was read is cached), a cache that cannot be written at all. Item failures
// are in the summary, not errors.
absl::StatusOr<DistillSummary> RunDistill(const DistillRunOptions& options, Teacher& teacher,
                                          NoteCache& cache);

// "distill: 1000 items, 912 notes kept, 71 dropped by verification, 270 negatives, 17 failures,
//  2913 teacher calls, 64 cache hits in 12.3s (81.3 items/s)"
std::string SummaryLine(const DistillSummary& summary);
// The --summary-json document: the counts' keys plus failed_items, interrupted, seconds, teacher.
nlohmann::json SummaryJson(const DistillSummary& summary);

}  // namespace rwr::teacher
