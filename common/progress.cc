#include "common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string_view>

#include "fmt/format.h"
#include "common/process.h"

namespace rwr {
namespace {
bool RunningUnderCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string_view(ci) != "" && std::string_view(ci) != "0" &&
         std::string_view(ci) != "false";
}

std::string FormatRate(double per_second) {
  if (per_second >= 1e6) return fmt::format("{:.2f}M", per_second / 1e6);
  if (per_second >= 1e4) return fmt::format("{:.1f}k", per_second / 1e3);
  return fmt::format("{:.1f}", per_second);
}
}  // namespace

std::string FormatDuration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
}

Progress::Progress(ProgressOptions options) : options_(std::move(options)) {
  enabled_ = options_.all_ranks || ProcessRank() == 0;
  switch (options_.mode) {
    case ProgressOptions::Mode::kBar: bar_ = true; break;
    case ProgressOptions::Mode::kLines: bar_ = false; break;
    case ProgressOptions::Mode::kAuto:
      bar_ = !RunningUnderCi() && isatty(fileno(options_.out)) == 1;
      break;
  }
  start_s_ = Now();
  last_report_s_ = start_s_;
}

Progress::~Progress() { Finish(); }

double Progress::Now() const {
  if (options_.clock) return options_.clock();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void Progress::Advance(int64_t n) { Set(done_ + n); }

void Progress::Set(int64_t done) {
  done_ = done;
  MaybeReport();
}

void Progress::SetTotal(int64_t total) { options_.total = total; }

std::string Progress::StatusLine() const {
  const double elapsed = std::max(Now() - start_s_, 1e-9);
  const double rate = done_ / elapsed;
  std::string line = fmt::format("{}: {}", options_.label, done_);
  if (options_.total > 0) {
    line += fmt::format("/{} {} ({:.1f}%)", options_.total, options_.unit,
                        100.0 * done_ / options_.total);
  } else {
    line += " " + options_.unit;
  }
  line += fmt::format(", {} {}/s", FormatRate(rate), options_.unit);
  if (options_.total > 0 && rate > 0 && done_ < options_.total) {
    line += ", ETA " + FormatDuration((options_.total - done_) / rate);
  }
  return line;
}

void Progress::MaybeReport() {
  if (!enabled_ || finished_) return;
  const double now = Now();
  const double interval = bar_ ? options_.bar_interval_s : options_.line_interval_s;
  if (now - last_report_s_ < interval) return;
  last_report_s_ = now;
  if (bar_) {
    constexpr int kWidth = 30;
    const int filled = options_.total > 0
                           ? static_cast<int>(kWidth * std::min<double>(1.0, double(done_) / options_.total))
                           : 0;
    std::fprintf(options_.out, "\r\033[K[%s%s] %s", std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), StatusLine().c_str());
  } else {
    std::fprintf(options_.out, "%s\n", StatusLine().c_str());
  }
  std::fflush(options_.out);
}

void Progress::Finish(std::string_view outcome) {
  if (!enabled_ || finished_) return;
  finished_ = true;
  const double elapsed = std::max(Now() - start_s_, 1e-9);
  std::fprintf(options_.out, "%s%s: %.*s, %lld %s in %s (%s %s/s)\n", bar_ ? "\r\033[K" : "",
               options_.label.c_str(), static_cast<int>(outcome.size()), outcome.data(),
               static_cast<long long>(done_), options_.unit.c_str(),
               FormatDuration(elapsed).c_str(), FormatRate(done_ / elapsed).c_str(),
               options_.unit.c_str());
  std::fflush(options_.out);
}

}  // namespace rwr
