// The tests' scratch directories (tests/support/temp_dir.h) go away with the process that made
// them, unless RWR_KEEP_TEST_DIRS=1; a forked child's exit removes its own and leaves its
// parent's alone.
#include "tests/support/temp_dir.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"

namespace rwr::testing {
namespace {

namespace fs = std::filesystem;

// Runs `body` in a forked child that then exits normally (static destructors run); returns the
// child's exit status.
template <typename F>
int InChild(F body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    body();
    std::exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// The child writes the path of the directory it made to `record` (the parent's scratch dir).
void MakeOneAndRecord(const fs::path& record, bool unique) {
  const fs::path dir =
      unique ? UniqueTempDir("rwr-temp-dir-test") : fs::path(FreshTempDir("temp_dir", "child"));
  std::FILE* f = std::fopen(record.c_str(), "w");
  std::fputs(dir.c_str(), f);
  std::fclose(f);
}

std::string ReadFile(const fs::path& path) {
  std::string text;
  if (std::FILE* f = std::fopen(path.c_str(), "r")) {
    char buf[4096];
    const size_t n = std::fread(buf, 1, sizeof(buf), f);
    text.assign(buf, n);
    std::fclose(f);
  }
  return text;
}

TEST(ScratchDirs, AreRemovedWhenTheirProcessExits) {
  const fs::path record = fs::path(FreshTempDir("temp_dir", "record")) / "made";
  for (const bool unique : {false, true}) {
    ASSERT_EQ(InChild([&] {
                ::unsetenv("RWR_KEEP_TEST_DIRS");
                MakeOneAndRecord(record, unique);
              }),
              0);
    const std::string made = ReadFile(record);
    ASSERT_FALSE(made.empty());
    EXPECT_FALSE(fs::exists(made)) << made << (unique ? " (mkdtemp)" : " (fresh)");
  }
}

TEST(ScratchDirs, AreKeptWhenAsked) {
  const fs::path record = fs::path(FreshTempDir("temp_dir", "record_kept")) / "made";
  ASSERT_EQ(InChild([&] {
              ::setenv("RWR_KEEP_TEST_DIRS", "1", 1);
              MakeOneAndRecord(record, true);
            }),
            0);
  const std::string made = ReadFile(record);
  ASSERT_FALSE(made.empty());
  EXPECT_TRUE(fs::is_directory(made)) << made;
  fs::remove_all(made);
}

TEST(ScratchDirs, AForkedChildLeavesItsParentsAlone) {
  const std::string mine = FreshTempDir("temp_dir", "parent");
  ASSERT_EQ(InChild([] {}), 0);  // the child inherits the registry, then exits normally
  EXPECT_TRUE(fs::is_directory(mine));
}

}  // namespace
}  // namespace rwr::testing
