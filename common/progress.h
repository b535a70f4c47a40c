// Progress of long work: a live bar on a terminal, periodic one-line updates in a log or under CI
// (CI=true, or stderr not a TTY), each with rate and ETA. Only rank 0 reports unless told otherwise.
//
//   Progress progress({.label = "distill", .total = items.size(), .unit = "items"});
//   for (...) { ...; progress.Advance(); }
//   progress.Finish();
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>

namespace rwr {

struct ProgressOptions {
  std::string label = "progress";
  int64_t total = 0;            // 0 when unknown: no percentage or ETA
  std::string unit = "items";
  enum class Mode { kAuto, kBar, kLines } mode = Mode::kAuto;
  double line_interval_s = 10;  // between lines in kLines mode
  double bar_interval_s = 0.1;  // between bar redraws
  std::FILE* out = stderr;
  bool all_ranks = false;
  std::function<double()> clock;  // seconds; defaults to a steady clock (tests inject one)
};

class Progress {
 public:
  explicit Progress(ProgressOptions options);
  ~Progress();  // Finish() if not yet finished
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void Advance(int64_t n = 1);
  void Set(int64_t done);
  void SetTotal(int64_t total);
  // Final line with the totals and the overall rate: "distill: done, 500 items in 4s (…)";
  // `outcome` replaces "done" for a run that ends otherwise ("interrupted").
  void Finish(std::string_view outcome = "done");

  int64_t done() const { return done_; }
  // "distill: 500/1000 items (50.0%), 123.4 items/s, ETA 4s" — what a line shows now.
  std::string StatusLine() const;

 private:
  void MaybeReport();
  double Now() const;

  ProgressOptions options_;
  bool enabled_;
  bool bar_;
  bool finished_ = false;
  int64_t done_ = 0;
  double start_s_;
  double last_report_s_;
};

std::string FormatDuration(double seconds);  // "4s", "3m05s", "2h07m"

}  // namespace rwr
