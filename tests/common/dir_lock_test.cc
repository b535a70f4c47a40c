// DirLock (common/dir_lock.h) between real processes: a second process is refused with the holder
// named (host, pid, Slurm job), and a holder killed with SIGKILL leaves no stale lock.
#include "common/dir_lock.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "fmt/format.h"
#include "tests/support/temp_dir.h"

namespace rwr {
namespace {

constexpr DirLockUse kUse = {.setting = "train.out_dir",
                             .command = "rwr train",
                             .clash = "two runs would overwrite each other's checkpoints"};

// A child process that takes the lock (as Slurm job 4242), tells the parent through a pipe, and
// holds it until it is killed. Returns its pid once it holds the lock (-1 if it could not).
pid_t StartHolder(const std::string& dir) {
  int ready[2];
  if (pipe(ready) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(ready[0]);
    setenv("SLURM_JOB_ID", "4242", 1);
    auto lock = DirLock::Acquire(dir, kUse);
    const char byte = lock.ok() ? '1' : '0';
    (void)!write(ready[1], &byte, 1);
    while (true) pause();
  }
  close(ready[1]);
  char byte = '0';
  const bool held = read(ready[0], &byte, 1) == 1 && byte == '1';
  close(ready[0]);
  if (!held && pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return -1;
  }
  return pid;
}

TEST(DirLock, ASecondProcessIsRefusedAndAKilledHolderLeavesNoStaleLock) {
  const std::string dir = testing::FreshTempDir("dir_lock", "run");
  const pid_t holder = StartHolder(dir);
  ASSERT_GT(holder, 0) << "the child could not take a free lock";

  auto refused = DirLock::Acquire(dir, kUse);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(refused.status().message());
  EXPECT_NE(message.find(fmt::format("train.out_dir {} is in use by another rwr train", dir)),
            std::string::npos)
      << message;
  EXPECT_NE(message.find(fmt::format("pid {}, Slurm job 4242, since ", holder)), std::string::npos)
      << message;
  EXPECT_NE(
      message.find("): two runs would overwrite each other's checkpoints; wait for it to end, "
                   "or give this one another train.out_dir"),
      std::string::npos)
      << message;

  ASSERT_EQ(kill(holder, SIGKILL), 0);
  ASSERT_EQ(waitpid(holder, nullptr, 0), holder);
  auto taken = DirLock::Acquire(dir, kUse);
  EXPECT_TRUE(taken.ok()) << "stale after the holder's SIGKILL: " << taken.status();
}

TEST(DirLock, ReleasedWhenTheHolderGoesAway) {
  const std::string dir = testing::FreshTempDir("dir_lock", "release");
  {
    auto first = DirLock::Acquire(dir, kUse);
    ASSERT_TRUE(first.ok()) << first.status();
  }
  // Another process now finds it free.
  const pid_t holder = StartHolder(dir);
  ASSERT_GT(holder, 0) << "still held after the holder was destroyed";
  kill(holder, SIGKILL);
  waitpid(holder, nullptr, 0);
}

}  // namespace
}  // namespace rwr
