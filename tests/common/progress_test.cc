// Progress reporter in log mode (not a TTY / CI): periodic lines with rate and ETA, a final line.
#include "common/progress.h"

#include <csignal>
#include <cstdio>
#include <string>

#include "common/shutdown.h"
#include "gtest/gtest.h"

namespace rwr {
namespace {

std::string ReadAll(std::FILE* f) {
  std::rewind(f);
  std::string out;
  char buf[512];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  return out;
}

TEST(ProgressTest, LogModePrintsPeriodicLinesWithRateAndEta) {
  std::FILE* out = std::tmpfile();
  double now = 100.0;
  {
    Progress progress({.label = "distill",
                       .total = 1000,
                       .unit = "items",
                       .mode = ProgressOptions::Mode::kLines,
                       .line_interval_s = 10,
                       .out = out,
                       .clock = [&] { return now; }});
    now = 105;
    progress.Advance(100);  // 5 s since start: under the interval, no line
    now = 110;
    progress.Advance(100);  // 200 items in 10 s → 20/s, 800 left → ETA 40 s
    now = 115;
    progress.Advance(300);  // under the interval again
    now = 120;
    progress.Advance(500);
    progress.Finish();
  }
  const std::string text = ReadAll(out);
  std::fclose(out);
  EXPECT_EQ(text,
            "distill: 200/1000 items (20.0%), 20.0 items/s, ETA 40s\n"
            "distill: 1000/1000 items (100.0%), 50.0 items/s\n"
            "distill: done, 1000 items in 20s (50.0 items/s)\n");
  EXPECT_EQ(text.find('\r'), std::string::npos) << "no carriage returns in a log";
}

TEST(ProgressTest, UnknownTotalShowsCountAndRateOnly) {
  double now = 0;
  Progress progress({.label = "scan", .unit = "files", .mode = ProgressOptions::Mode::kLines,
                     .out = std::tmpfile(), .clock = [&] { return now; }});
  now = 4;
  progress.Advance(8);
  EXPECT_EQ(progress.StatusLine(), "scan: 8 files, 2.0 files/s");
}

TEST(ProgressTest, DurationsAreHumanReadable) {
  EXPECT_EQ(FormatDuration(4.2), "4s");
  EXPECT_EQ(FormatDuration(185), "3m05s");
  EXPECT_EQ(FormatDuration(7620), "2h07m");
  EXPECT_EQ(FormatDuration(-1), "?");
}

TEST(ShutdownTest, SignalSetsTheFlagThatLoopsPoll) {
  ResetShutdownForTesting();
  InstallShutdownHandlers();
  EXPECT_FALSE(ShutdownRequested());
  std::raise(SIGUSR1);
  EXPECT_TRUE(ShutdownRequested());
  EXPECT_EQ(ShutdownSignal(), SIGUSR1);
  ResetShutdownForTesting();
}

}  // namespace
}  // namespace rwr
