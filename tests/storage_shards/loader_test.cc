// Shard loader: deterministic order, exact resume, disjoint ranks covering the epoch, batch layout
// (targets, loss mask, resets at document boundaries) and damaged shards named in errors.
#include "storage/shard_loader.h"

#include <filesystem>
#include <fstream>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace rwr::storage {
namespace {

using ::testing::HasSubstr;

std::string TempDir(const std::string& name) {
  return rwr::testing::FreshTempDir("loader_test", name);
}

// A dataset of `rows` rows over `shards` shards. Row g holds two documents: [g+10, 1, 2] with
// loss on the last two tokens and [3, 4, g+10] with loss on the last one, so a batch can be
// traced back to its rows.
std::string MakeDataset(const std::string& name, int rows, int shards, uint64_t seq_len = 8) {
  const std::string dir = TempDir(name);
  ShardManifest manifest;
  manifest.vocab_size = 5000;
  manifest.seq_len = seq_len;
  manifest.pad_id = 0;
  int g = 0;
  for (int s = 0; s < shards; ++s) {
    const std::string file = "shard_" + std::to_string(s) + ".rws";
    ShardWriter writer(dir + "/" + file, {.vocab_size = 5000, .seq_len = seq_len});
    const int n = rows / shards + (s < rows % shards ? 1 : 0);
    for (int r = 0; r < n; ++r, ++g) {
      writer.BeginRow();
      std::vector<uint32_t> a = {static_cast<uint32_t>(g + 10), 1, 2};
      std::vector<uint8_t> am = {0, 1, 1};
      std::vector<uint32_t> b = {3, 4, static_cast<uint32_t>(g + 10)};
      std::vector<uint8_t> bm = {0, 0, 1};
      EXPECT_TRUE(writer.AddDocument(a, am).ok());
      EXPECT_TRUE(writer.AddDocument(b, bm).ok());
    }
    EXPECT_TRUE(writer.Finish().ok());
    manifest.shards.push_back({file, writer.num_rows(), writer.num_documents(), writer.num_tokens(),
                               writer.num_loss_tokens(), writer.payload_sha256_hex()});
  }
  EXPECT_TRUE(manifest.Save(dir).ok());
  return dir;
}

std::unique_ptr<ShardLoader> OpenLoader(const std::string& dir, int64_t B, int rank, int world,
                                        uint64_t seed) {
  auto loader = ShardLoader::Open(
      {.dir = dir, .batch_size = B, .rank = rank, .world_size = world, .seed = seed});
  EXPECT_TRUE(loader.ok()) << loader.status();
  return loader.ok() ? std::move(*loader) : nullptr;
}

std::vector<uint64_t> RowsOf(ShardLoader& loader, int steps) {
  std::vector<uint64_t> rows;
  Batch batch;
  for (int i = 0; i < steps; ++i) {
    EXPECT_TRUE(loader.Next(&batch).ok());
    rows.insert(rows.end(), batch.row_ids.begin(), batch.row_ids.end());
  }
  return rows;
}

TEST(ShardLoader, BatchLayoutShiftsTargetsAndResetsAtDocumentBoundaries) {
  const std::string dir = MakeDataset("layout", 4, 1);
  auto loader = OpenLoader(dir, 1, 0, 1, 3);
  Batch batch;
  ASSERT_TRUE(loader->Next(&batch).ok());
  ASSERT_EQ(batch.batch_size, 1);
  ASSERT_EQ(batch.seq_len, 8);
  const int32_t g = batch.tokens[0];
  EXPECT_EQ(static_cast<uint64_t>(g - 10), batch.row_ids[0]);
  // Row: [g 1 2 | 3 4 g] (6 tokens → 5 positions), padded to 8 with pad 0.
  EXPECT_EQ(batch.tokens, (std::vector<int32_t>{g, 1, 2, 3, 4, 0, 0, 0}));
  EXPECT_EQ(batch.targets, (std::vector<int32_t>{1, 2, 3, 4, g, 0, 0, 0}));
  // mask[t+1]: targets 1 and 2 carry loss, 3 crosses the boundary (and has none), 4 none, g yes.
  EXPECT_EQ(batch.loss_mask, (std::vector<uint8_t>{1, 1, 0, 0, 1, 0, 0, 0}));
  EXPECT_EQ(batch.reset, (std::vector<uint8_t>{1, 0, 0, 1, 0, 1, 0, 0}));
  EXPECT_EQ(batch.lengths, (std::vector<int64_t>{5}));
  EXPECT_EQ(batch.loss_tokens, 3);
}

TEST(ShardLoader, SameSeedSameOrderOtherSeedOrEpochDiffers) {
  const std::string dir = MakeDataset("order", 64, 3);
  auto a = OpenLoader(dir, 4, 0, 1, 42);
  auto b = OpenLoader(dir, 4, 0, 1, 42);
  auto c = OpenLoader(dir, 4, 0, 1, 43);
  const auto rows_a = RowsOf(*a, 32);  // two epochs
  EXPECT_EQ(rows_a, RowsOf(*b, 32));
  EXPECT_NE(rows_a, RowsOf(*c, 32));
  std::vector<uint64_t> epoch0(rows_a.begin(), rows_a.begin() + 64);
  std::vector<uint64_t> epoch1(rows_a.begin() + 64, rows_a.end());
  EXPECT_NE(epoch0, epoch1);
  EXPECT_EQ(std::set<uint64_t>(epoch0.begin(), epoch0.end()).size(), 64u);
  EXPECT_EQ(std::set<uint64_t>(epoch1.begin(), epoch1.end()).size(), 64u);
  EXPECT_EQ(a->position().epoch, 1u);
}

TEST(ShardLoader, EpochOrderIsAFixedPermutation) {
  // Pinned values: the order must not change between builds, machines or standard libraries.
  const auto order = ShardLoader::EpochOrder(10, 1, 0);
  std::vector<uint64_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  for (uint64_t i = 0; i < 10; ++i) EXPECT_EQ(sorted[i], i);
  EXPECT_EQ(order, ShardLoader::EpochOrder(10, 1, 0));
  EXPECT_EQ(ShardLoader::EpochOrder(5, 1, 0, /*shuffle=*/false),
            (std::vector<uint64_t>{0, 1, 2, 3, 4}));
}

TEST(ShardLoader, RanksAreDisjointAndCoverTheEpoch) {
  const std::string dir = MakeDataset("ranks", 48, 2);
  const int world = 4;
  const int64_t B = 3;  // 48 = 4 steps x 4 ranks x 3
  std::set<uint64_t> seen;
  size_t total = 0;
  for (int r = 0; r < world; ++r) {
    auto loader = OpenLoader(dir, B, r, world, 9);
    EXPECT_EQ(loader->steps_per_epoch(), 4u);
    const auto rows = RowsOf(*loader, 4);
    total += rows.size();
    seen.insert(rows.begin(), rows.end());
    EXPECT_EQ(loader->position().epoch, 0u);
  }
  EXPECT_EQ(total, 48u);
  EXPECT_EQ(seen.size(), 48u);  // disjoint and covering
}

TEST(ShardLoader, UnevenDatasetDropsOnlyTheRemainder) {
  const std::string dir = MakeDataset("uneven", 50, 3);  // 50 = 4 steps x 12 + 2
  std::set<uint64_t> seen;
  for (int r = 0; r < 4; ++r) {
    auto loader = OpenLoader(dir, 3, r, 4, 9);
    const auto rows = RowsOf(*loader, 4);
    seen.insert(rows.begin(), rows.end());
  }
  EXPECT_EQ(seen.size(), 48u);
}

TEST(ShardLoader, ResumeFromSavedPositionContinuesExactly) {
  const std::string dir = MakeDataset("resume", 30, 2);
  auto full = OpenLoader(dir, 2, 1, 2, 5);
  std::vector<Batch> expected;
  LoaderPosition saved;
  for (int i = 0; i < 20; ++i) {  // 7 steps per epoch: crosses two epoch boundaries
    Batch batch;
    ASSERT_TRUE(full->Next(&batch).ok());
    if (i == 6) saved = full->position();  // saved at the very end of epoch 0
    if (i > 6) expected.push_back(batch);
  }
  auto parsed = LoaderPosition::FromJson(saved.ToJson());
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, saved);
  auto resumed = OpenLoader(dir, 2, 1, 2, 5);
  ASSERT_TRUE(resumed->Restore(*parsed).ok());
  for (const Batch& want : expected) {
    Batch got;
    ASSERT_TRUE(resumed->Next(&got).ok());
    EXPECT_EQ(got.row_ids, want.row_ids);
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.targets, want.targets);
    EXPECT_EQ(got.loss_mask, want.loss_mask);
    EXPECT_EQ(got.reset, want.reset);
    EXPECT_EQ(got.epoch, want.epoch);
  }
  EXPECT_EQ(resumed->position(), full->position());
}

TEST(ShardLoader, ResumeWithAnotherWorldSizeContinuesTheSamePermutation) {
  const std::string dir = MakeDataset("reshape", 40, 2);
  auto one = OpenLoader(dir, 4, 0, 1, 11);
  const auto all = RowsOf(*one, 10);  // the whole epoch in order
  auto first = OpenLoader(dir, 2, 0, 2, 11);
  RowsOf(*first, 3);  // 12 rows consumed globally
  LoaderPosition position = first->position();
  EXPECT_EQ(position.rows_consumed, 12u);
  auto r0 = OpenLoader(dir, 4, 0, 1, 11);
  ASSERT_TRUE(r0->Restore(position).ok());
  const auto rest = RowsOf(*r0, 7);
  EXPECT_EQ(rest, std::vector<uint64_t>(all.begin() + 12, all.end()));
}

TEST(ShardLoader, RestoreRejectsOtherSeedOrData) {
  const std::string dir = MakeDataset("reject", 10, 1);
  auto loader = OpenLoader(dir, 1, 0, 1, 1);
  EXPECT_FALSE(loader->Restore({.seed = 2, .epoch = 0, .rows_consumed = 0, .dataset_rows = 10}).ok());
  EXPECT_FALSE(loader->Restore({.seed = 1, .epoch = 0, .rows_consumed = 0, .dataset_rows = 11}).ok());
  EXPECT_TRUE(loader->Restore({.seed = 1, .epoch = 3, .rows_consumed = 4, .dataset_rows = 10}).ok());
  EXPECT_FALSE(LoaderPosition::FromJson("{\"seed\": 1}").ok());
}

TEST(ShardLoader, LongRowsKeptWholeGrowTheBatchOrFailWhenNotAllowed) {
  const std::string dir = TempDir("long");
  ShardWriter writer(dir + "/s.rws",
                     {.vocab_size = 100, .seq_len = 4, .row_layout = RowLayout::kOnePerRow});
  std::vector<uint32_t> tokens(21, 5);
  std::vector<uint8_t> mask(21, 1);
  ASSERT_TRUE(writer.AddDocument(tokens, mask).ok());
  ASSERT_TRUE(writer.Finish().ok());
  ShardManifest m{.vocab_size = 100, .seq_len = 4, .row_layout = RowLayout::kOnePerRow};
  m.shards.push_back({"s.rws", 1, 1, 21, 21, ""});
  ASSERT_TRUE(m.Save(dir).ok());
  auto loader = ShardLoader::Open({.dir = dir});
  ASSERT_TRUE(loader.ok()) << loader.status();
  Batch batch;
  ASSERT_TRUE((*loader)->Next(&batch).ok());
  EXPECT_EQ(batch.seq_len, 20);
  EXPECT_EQ(batch.loss_tokens, 20);
  auto strict = ShardLoader::Open({.dir = dir, .allow_long_rows = false});
  ASSERT_TRUE(strict.ok());
  absl::Status s = (*strict)->Next(&batch);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("s.rws"));
}

TEST(ShardLoader, DamagedShardFailsOpenNamingTheFile) {
  const std::string dir = MakeDataset("damaged", 12, 3);
  const std::string victim = dir + "/shard_1.rws";
  std::filesystem::resize_file(victim, std::filesystem::file_size(victim) - 64);
  auto loader = ShardLoader::Open({.dir = dir});
  ASSERT_FALSE(loader.ok());
  EXPECT_EQ(loader.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(loader.status().message()), HasSubstr("shard_1.rws"));
  EXPECT_THAT(std::string(loader.status().message()), HasSubstr("truncated"));

  std::filesystem::remove(victim);
  auto missing = ShardLoader::Open({.dir = dir});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("shard_1.rws"));
  EXPECT_FALSE(ShardLoader::Open({.dir = dir + "/none"}).ok());
}

// A packed dataset is read at its own seq_len: shorter would cut rows, longer would only pad.
TEST(ShardLoader, PackedDatasetNeedsItsOwnSeqLen) {
  const std::string dir = MakeDataset("seqlen", 4, 1, /*seq_len=*/8);
  auto shorter = ShardLoader::Open({.dir = dir, .seq_len = 4});
  ASSERT_FALSE(shorter.ok());
  EXPECT_THAT(std::string(shorter.status().message()), HasSubstr("--seq-len 4"));
  auto longer = ShardLoader::Open({.dir = dir, .seq_len = 16});
  ASSERT_FALSE(longer.ok());
  EXPECT_THAT(std::string(longer.status().message()), HasSubstr("padding"));
  auto same = ShardLoader::Open({.dir = dir, .seq_len = 8});
  ASSERT_TRUE(same.ok());
  Batch batch;
  ASSERT_TRUE((*same)->Next(&batch).ok());
  EXPECT_EQ(batch.seq_len, 8);
}

TEST(ShardLoader, TooFewRowsForOneStepIsAnError) {
  const std::string dir = MakeDataset("few", 3, 1);
  auto loader = ShardLoader::Open({.dir = dir, .batch_size = 2, .world_size = 2});
  EXPECT_FALSE(loader.ok());
}

}  // namespace
}  // namespace rwr::storage
