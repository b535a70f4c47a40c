// The KvStore contract (storage/kv_store.h), run unchanged against every implementation:
// MemoryKvStore always, RocksDbStore where the build has services. RocksDB-only behaviour
// (reopen, read-only, checkpoint, kill -9 survival) follows the shared suite.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "storage/kv_store.h"
#if RWR_TEST_ROCKSDB
#include "storage/rocksdb_store.h"
#endif

namespace rwr::storage {
namespace {

namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  const fs::path dir =
      fs::path(testing::TempDir()) / ("kv_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  return dir.string();
}

// Key with a fixed width so lexicographic order is numeric order.
std::string NumberedKey(int i) {
  std::string digits = std::to_string(i);
  return std::string(8 - digits.size(), '0') + digits;
}

struct StoreFactory {
  std::string name;
  std::function<std::unique_ptr<KvStore>(const std::string& dir)> make;
};
void PrintTo(const StoreFactory& factory, std::ostream* out) { *out << factory.name; }

class KvStoreContractTest : public testing::TestWithParam<StoreFactory> {
 protected:
  void SetUp() override {
    std::string test_name = testing::UnitTest::GetInstance()->current_test_info()->name();
    std::replace(test_name.begin(), test_name.end(), '/', '_');
    dir_ = FreshDir(GetParam().name + "_" + test_name);
    store_ = GetParam().make(dir_);
    ASSERT_NE(store_, nullptr);
  }
  void TearDown() override {
    store_.reset();
    fs::remove_all(dir_);
  }
  std::optional<std::string> Read(Family family, std::string_view key) {
    absl::StatusOr<std::optional<std::string>> value = store_->Get(family, key);
    EXPECT_TRUE(value.ok()) << value.status();
    return value.ok() ? *value : std::nullopt;
  }
  std::vector<std::string> Keys(Family family, std::string_view prefix) {
    std::vector<std::string> keys;
    EXPECT_TRUE(store_
                    ->ForEach(family, prefix,
                              [&](std::string_view key, std::string_view) {
                                keys.emplace_back(key);
                                return true;
                              })
                    .ok());
    return keys;
  }

  std::string dir_;
  std::unique_ptr<KvStore> store_;
};

TEST_P(KvStoreContractTest, GetOfAbsentKeyIsNulloptNotError) {
  EXPECT_EQ(Read(Family::kNotes, "missing"), std::nullopt);
}

TEST_P(KvStoreContractTest, PutThenGetReturnsTheValueAndOverwriteReplacesIt) {
  ASSERT_TRUE(store_->Put(Family::kNotes, "k", "v1").ok());
  EXPECT_EQ(Read(Family::kNotes, "k"), "v1");
  ASSERT_TRUE(store_->Put(Family::kNotes, "k", "v2").ok());
  EXPECT_EQ(Read(Family::kNotes, "k"), "v2");
}

TEST_P(KvStoreContractTest, FamiliesAreSeparateKeySpaces) {
  for (Family family : kAllFamilies) {
    ASSERT_TRUE(store_->Put(family, "same-key", std::string(FamilyName(family))).ok());
  }
  for (Family family : kAllFamilies) {
    EXPECT_EQ(Read(family, "same-key"), std::string(FamilyName(family)));
    EXPECT_EQ(*store_->Count(family), 1);
  }
  ASSERT_TRUE(store_->Delete(Family::kVerdicts, "same-key").ok());
  EXPECT_EQ(Read(Family::kVerdicts, "same-key"), std::nullopt);
  EXPECT_EQ(Read(Family::kNotes, "same-key"), "notes");
}

TEST_P(KvStoreContractTest, BinaryKeysAndValuesRoundTrip) {
  const std::string key("a\0b\xff", 4);
  const std::string value("\0\x01\x02 text \xfe", 11);
  ASSERT_TRUE(store_->Put(Family::kMeta, key, value).ok());
  ASSERT_TRUE(store_->Put(Family::kMeta, "", "empty key").ok());
  EXPECT_EQ(Read(Family::kMeta, key), value);
  EXPECT_EQ(Read(Family::kMeta, std::string("a", 1)), std::nullopt);
  EXPECT_EQ(Read(Family::kMeta, ""), "empty key");
  const std::string big(1 << 20, 'x');
  ASSERT_TRUE(store_->Put(Family::kNegatives, "big", big).ok());
  EXPECT_EQ(Read(Family::kNegatives, "big"), big);
}

TEST_P(KvStoreContractTest, DeleteOfAbsentKeyIsOk) {
  EXPECT_TRUE(store_->Delete(Family::kJobs, "never-written").ok());
  ASSERT_TRUE(store_->Put(Family::kJobs, "k", "v").ok());
  ASSERT_TRUE(store_->Delete(Family::kJobs, "k").ok());
  EXPECT_EQ(Read(Family::kJobs, "k"), std::nullopt);
}

TEST_P(KvStoreContractTest, ForEachIsOrderedAndRespectsPrefixAndEarlyStop) {
  for (const char* key : {"item/b", "job/1", "item/a", "item/c", "itex", "item"}) {
    ASSERT_TRUE(store_->Put(Family::kJobs, key, "v").ok());
  }
  EXPECT_EQ(Keys(Family::kJobs, "item/"), (std::vector<std::string>{"item/a", "item/b", "item/c"}));
  EXPECT_EQ(Keys(Family::kJobs, ""),
            (std::vector<std::string>{"item", "item/a", "item/b", "item/c", "itex", "job/1"}));
  EXPECT_TRUE(Keys(Family::kJobs, "zzz").empty());
  int visited = 0;
  ASSERT_TRUE(store_
                  ->ForEach(Family::kJobs, "",
                            [&](std::string_view, std::string_view) { return ++visited < 2; })
                  .ok());
  EXPECT_EQ(visited, 2);
}

TEST_P(KvStoreContractTest, ForEachSeesASnapshotAndTheVisitorMayWrite) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->Put(Family::kNotes, NumberedKey(i), "old").ok());
  int visited = 0;
  ASSERT_TRUE(store_
                  ->ForEach(Family::kNotes, "",
                            [&](std::string_view key, std::string_view value) {
                              EXPECT_EQ(value, "old");
                              ++visited;
                              // Writes from inside the visitor: allowed, not seen by this walk.
                              EXPECT_TRUE(
                                  store_->Put(Family::kNotes, std::string(key), "new").ok());
                              EXPECT_TRUE(store_->Put(Family::kNotes, "zz-added", "new").ok());
                              return true;
                            })
                  .ok());
  EXPECT_EQ(visited, 5);
  EXPECT_EQ(Read(Family::kNotes, NumberedKey(0)), "new");
  EXPECT_EQ(*store_->Count(Family::kNotes), 6);
}

TEST_P(KvStoreContractTest, WriteBatchAppliesAcrossFamiliesInOrder) {
  ASSERT_TRUE(store_->Put(Family::kVerdicts, "doomed", "x").ok());
  WriteBatch batch;
  batch.Put(Family::kNotes, "n", "note");
  batch.Put(Family::kJobs, "item/1", "done");
  batch.Delete(Family::kVerdicts, "doomed");
  batch.Put(Family::kMeta, "k", "first");
  batch.Put(Family::kMeta, "k", "second");  // later op on the same key wins
  batch.Put(Family::kNegatives, "gone", "x");
  batch.Delete(Family::kNegatives, "gone");
  ASSERT_TRUE(store_->Write(batch).ok());
  EXPECT_EQ(Read(Family::kNotes, "n"), "note");
  EXPECT_EQ(Read(Family::kJobs, "item/1"), "done");
  EXPECT_EQ(Read(Family::kVerdicts, "doomed"), std::nullopt);
  EXPECT_EQ(Read(Family::kMeta, "k"), "second");
  EXPECT_EQ(Read(Family::kNegatives, "gone"), std::nullopt);
  EXPECT_TRUE(store_->Write(WriteBatch()).ok()) << "an empty batch is a no-op";
}

TEST_P(KvStoreContractTest, ReadersNeverSeeHalfABatch) {
  // A writer flips two keys in different families together; readers must always see them equal.
  ASSERT_TRUE(store_->Put(Family::kNotes, "pair", "0").ok());
  ASSERT_TRUE(store_->Put(Family::kVerdicts, "pair", "0").ok());
  std::atomic<bool> done{false};
  std::atomic<int> torn{0};
  std::thread reader([&] {
    while (!done.load()) {
      // Read note, then verdict: with atomic batches the verdict is never older than the note.
      auto note = store_->Get(Family::kNotes, "pair");
      auto verdict = store_->Get(Family::kVerdicts, "pair");
      if (!note.ok() || !verdict.ok() || !note->has_value() || !verdict->has_value() ||
          std::stoi(**verdict) < std::stoi(**note)) {
        ++torn;
      }
    }
  });
  for (int i = 1; i <= 300; ++i) {
    WriteBatch batch;
    // Note first: a non-atomic store would let a reader see the new note with the old verdict.
    batch.Put(Family::kNotes, "pair", std::to_string(i));
    batch.Put(Family::kVerdicts, "pair", std::to_string(i));
    ASSERT_TRUE(store_->Write(batch).ok());
  }
  done = true;
  reader.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(Read(Family::kNotes, "pair"), "300");
}

TEST_P(KvStoreContractTest, ConcurrentWritersLoseNothing) {
  constexpr int kThreads = 4, kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        EXPECT_TRUE(store_->Put(Family::kNotes, NumberedKey(t * kPerThread + i), "v").ok());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(*store_->Count(Family::kNotes), kThreads * kPerThread);
}

TEST_P(KvStoreContractTest, FlushAndSyncSucceedAndKeepData) {
  ASSERT_TRUE(store_->Put(Family::kNotes, "k", "v").ok());
  ASSERT_TRUE(store_->Flush().ok());
  ASSERT_TRUE(store_->Sync().ok());
  EXPECT_EQ(Read(Family::kNotes, "k"), "v");
}

std::vector<StoreFactory> Factories() {
  std::vector<StoreFactory> factories = {
      {"memory", [](const std::string&) { return std::make_unique<MemoryKvStore>(); }}};
#if RWR_TEST_ROCKSDB
  factories.push_back({"rocksdb", [](const std::string& dir) -> std::unique_ptr<KvStore> {
                         auto store = RocksDbStore::Open(dir);
                         EXPECT_TRUE(store.ok()) << store.status();
                         return store.ok() ? std::move(*store) : nullptr;
                       }});
#endif
  return factories;
}

INSTANTIATE_TEST_SUITE_P(AllStores, KvStoreContractTest, testing::ValuesIn(Factories()),
                         [](const testing::TestParamInfo<StoreFactory>& info) {
                           return info.param.name;
                         });

#if RWR_TEST_ROCKSDB
// --- RocksDB-only: persistence, read-only opening, checkpoints, crash survival ---

TEST(RocksDbStoreTest, DataSurvivesCloseAndReopen) {
  const std::string dir = FreshDir("reopen");
  {
    auto store = RocksDbStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    WriteBatch batch;
    batch.Put(Family::kNotes, "n", "note");
    batch.Put(Family::kJobs, "j", "job");
    ASSERT_TRUE((*store)->Write(batch).ok());
  }
  auto store = RocksDbStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(**(*store)->Get(Family::kNotes, "n"), "note");
  EXPECT_EQ(**(*store)->Get(Family::kJobs, "j"), "job");
  fs::remove_all(dir);
}

TEST(RocksDbStoreTest, SecondWriterIsRefusedWithAClearMessage) {
  const std::string dir = FreshDir("lock");
  auto first = RocksDbStore::Open(dir);
  ASSERT_TRUE(first.ok());
  auto second = RocksDbStore::Open(dir);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(std::string(second.status().message()).find("open in another process"),
            std::string::npos)
      << second.status();
  fs::remove_all(dir);
}

TEST(RocksDbStoreTest, ReadOnlyOpenOfMissingCacheIsNotFound) {
  auto store = RocksDbStore::Open(FreshDir("absent"), {.read_only = true});
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound);
}

TEST(RocksDbStoreTest, PublishedCheckpointOpensReadOnlyWithAllDataAndRefusesWrites) {
  const std::string dir = FreshDir("publish_src");
  const std::string published = FreshDir("publish_dst");
  {
    auto store = RocksDbStore::Open(dir);
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 100; ++i) {
      ASSERT_TRUE((*store)->Put(Family::kNotes, NumberedKey(i), "note " + std::to_string(i)).ok());
    }
    ASSERT_TRUE((*store)->Put(Family::kMeta, "schema_version", "1").ok());
  }
  ASSERT_TRUE(PublishCheckpoint(dir, published).ok());
  EXPECT_EQ(PublishCheckpoint(dir, published).code(), absl::StatusCode::kAlreadyExists);

  // Two readers at once (e.g. two training ranks), while the source stays writable.
  auto reader1 = RocksDbStore::Open(published, {.read_only = true});
  auto reader2 = RocksDbStore::Open(published, {.read_only = true});
  ASSERT_TRUE(reader1.ok()) << reader1.status();
  ASSERT_TRUE(reader2.ok()) << reader2.status();
  EXPECT_EQ(*(*reader1)->Count(Family::kNotes), 100);
  EXPECT_EQ(**(*reader2)->Get(Family::kNotes, NumberedKey(42)), "note 42");
  EXPECT_EQ(**(*reader1)->Get(Family::kMeta, "schema_version"), "1");
  EXPECT_EQ((*reader1)->Put(Family::kNotes, "x", "y").code(),
            absl::StatusCode::kFailedPrecondition);
  auto source = RocksDbStore::Open(dir);
  ASSERT_TRUE(source.ok()) << "publishing must not leave the source locked";
  ASSERT_TRUE((*source)->Put(Family::kNotes, "later", "v").ok());
  EXPECT_EQ(**(*reader1)->Get(Family::kNotes, NumberedKey(0)), "note 0");
  EXPECT_EQ(*(*reader1)->Get(Family::kNotes, "later"), std::nullopt) << "a checkpoint is frozen";
  fs::remove_all(dir);
  fs::remove_all(published);
}

// A cache with a few notes at a fresh directory, closed again.
std::string SmallCache(const std::string& name) {
  const std::string dir = FreshDir(name);
  auto store = RocksDbStore::Open(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  if (store.ok()) {
    for (int i = 0; i < 10; ++i) {
      EXPECT_TRUE((*store)->Put(Family::kNotes, NumberedKey(i), "note").ok());
    }
  }
  return dir;
}

TEST(RocksDbStoreTest, PublishCreatesMissingParentDirectoriesOfTheTarget) {
  const std::string source = SmallCache("deep_src");
  const fs::path root = FreshDir("deep_dst");
  const fs::path target = root / "scratch" / "run7" / "cache";
  const absl::Status published = PublishCheckpoint(source, target.string());
  ASSERT_TRUE(published.ok()) << published;
  auto copy = RocksDbStore::Open(target.string(), {.read_only = true});
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(*(*copy)->Count(Family::kNotes), 10);
  // Built beside the target and renamed into place: nothing else is left in its parent.
  std::vector<std::string> beside;
  for (const fs::directory_entry& entry : fs::directory_iterator(target.parent_path())) {
    beside.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(beside, std::vector<std::string>{"cache"});
  // "DIR/" names DIR, as a shell user types it.
  ASSERT_TRUE(PublishCheckpoint(source, (root / "other" / "copy/").string()).ok());
  EXPECT_TRUE(fs::exists(root / "other" / "copy" / "CURRENT"));
  fs::remove_all(source);
  fs::remove_all(root);
}

TEST(RocksDbStoreTest, PublishUnderAFileIsOneLineNamingTheParent) {
  const std::string source = SmallCache("blocked_src");
  const fs::path root = FreshDir("blocked_dst");
  fs::create_directories(root);
  { std::ofstream(root / "file") << "not a directory"; }
  const absl::Status published =
      PublishCheckpoint(source, (root / "file" / "sub" / "copy").string());
  ASSERT_FALSE(published.ok());
  const std::string message(published.message());
  EXPECT_NE(message.find("cannot create its parent directory " + (root / "file" / "sub").string()),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find("rocksdb"), std::string::npos) << "a raw RocksDB error: " << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  fs::remove_all(source);
  fs::remove_all(root);
}

TEST(RocksDbStoreTest, PublishedCopyIsRefusedForWritingNamingTheLiveCache) {
  const std::string source = SmallCache("marked_src");
  const std::string published = FreshDir("marked_dst");
  ASSERT_TRUE(PublishCheckpoint(source, published).ok());
  EXPECT_EQ(PublishedFrom(published), fs::absolute(source).lexically_normal().string());
  EXPECT_EQ(PublishedFrom(source), std::nullopt);
  std::vector<std::string> files_before;
  for (const fs::directory_entry& entry : fs::directory_iterator(published)) {
    files_before.push_back(entry.path().filename().string());
  }
  std::sort(files_before.begin(), files_before.end());

  // Every writer opens the cache through RocksDbStore::Open: distill run, distill serve, publish.
  auto writer = RocksDbStore::Open(published);
  ASSERT_FALSE(writer.ok());
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(writer.status().message());
  EXPECT_NE(message.find("a published copy"), std::string::npos) << message;
  EXPECT_NE(
      message.find("write to the live cache " + fs::absolute(source).lexically_normal().string()),
      std::string::npos)
      << message;
  EXPECT_EQ(PublishCheckpoint(published, FreshDir("marked_again")).code(),
            absl::StatusCode::kFailedPrecondition);

  std::vector<std::string> files_after;
  for (const fs::directory_entry& entry : fs::directory_iterator(published)) {
    files_after.push_back(entry.path().filename().string());
  }
  std::sort(files_after.begin(), files_after.end());
  EXPECT_EQ(files_after, files_before) << "a refused open must leave the copy untouched";
  auto reader = RocksDbStore::Open(published, {.read_only = true});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ(*(*reader)->Count(Family::kNotes), 10);
  auto live = RocksDbStore::Open(source);
  EXPECT_TRUE(live.ok()) << "the live cache stays writable: " << live.status();
  fs::remove_all(source);
  fs::remove_all(published);
}

TEST(RocksDbStoreTest, EveryAcknowledgedWriteSurvivesKillDashNine) {
  // A child process writes (default options: WAL on, no fsync) and reports each acknowledged key
  // through a pipe; the parent SIGKILLs it mid-stream, reopens, and finds every reported key.
  const std::string dir = FreshDir("kill9");
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(pipe_fds[0]);
    auto store = RocksDbStore::Open(dir);
    if (!store.ok()) _exit(3);
    for (int i = 0;; ++i) {
      WriteBatch batch;  // a batch across families, as distill writes a finished item
      batch.Put(Family::kNotes, NumberedKey(i), std::string(200, 'n'));
      batch.Put(Family::kJobs, NumberedKey(i), "done");
      if (!(*store)->Write(batch).ok()) _exit(4);
      if (write(pipe_fds[1], &i, sizeof(i)) != sizeof(i)) _exit(5);
    }
  }
  close(pipe_fds[1]);
  int last_acknowledged = -1, value = 0;
  while (last_acknowledged < 2000 && read(pipe_fds[0], &value, sizeof(value)) == sizeof(value)) {
    last_acknowledged = value;
  }
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  close(pipe_fds[0]);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early with " << WEXITSTATUS(status);
  ASSERT_GE(last_acknowledged, 2000);

  auto store = RocksDbStore::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  for (int i = 0; i <= last_acknowledged; ++i) {
    auto note = (*store)->Get(Family::kNotes, NumberedKey(i));
    auto job = (*store)->Get(Family::kJobs, NumberedKey(i));
    ASSERT_TRUE(note.ok() && note->has_value()) << "acknowledged key " << i << " lost";
    ASSERT_TRUE(job.ok() && job->has_value()) << "half a batch for key " << i;
  }
  // Whatever the child wrote after its last report is either wholly there or wholly absent.
  const int64_t notes = *(*store)->Count(Family::kNotes);
  EXPECT_EQ(notes, *(*store)->Count(Family::kJobs));
  fs::remove_all(dir);
}
#endif

}  // namespace
}  // namespace rwr::storage
