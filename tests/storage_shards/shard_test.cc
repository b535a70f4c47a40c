// Token shards: writer/reader round trip, validation, and damaged files giving clear errors.
#include "storage/shard.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/resident.h"
#include "tests/support/temp_dir.h"

namespace rwr::storage {
namespace {

using ::testing::HasSubstr;

struct Doc {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
};

std::string TempDir(const std::string& name) {
  return rwr::testing::FreshTempDir("shard_test", name);
}

Doc RandomDoc(std::mt19937& rng, uint32_t vocab, int max_len) {
  Doc d;
  int n = 1 + static_cast<int>(rng() % max_len);
  for (int i = 0; i < n; ++i) {
    d.tokens.push_back(rng() % vocab);
    d.mask.push_back(rng() % 3 == 0);
  }
  return d;
}

class ShardRoundTrip : public ::testing::TestWithParam<uint64_t> {};

TEST_P(ShardRoundTrip, RowsDocumentsTokensAndMasksComeBackExactly) {
  const uint64_t vocab = GetParam();
  const std::string path = TempDir("rt" + std::to_string(vocab)) + "/s.rws";
  std::mt19937 rng(7);
  const uint64_t seq_len = 64;
  ShardWriter writer(path, {.vocab_size = vocab, .seq_len = seq_len});
  std::vector<std::vector<Doc>> rows;
  for (int r = 0; r < 40; ++r) {
    writer.BeginRow();
    rows.emplace_back();
    for (;;) {
      Doc d = RandomDoc(rng, static_cast<uint32_t>(vocab), 30);
      if (d.tokens.size() > writer.RowSpaceLeft()) break;
      ASSERT_TRUE(writer.AddDocument(d.tokens, d.mask).ok());
      rows.back().push_back(std::move(d));
    }
  }
  ASSERT_TRUE(writer.Finish().ok());
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  auto reader = ShardReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const ShardHeader& h = (*reader)->header();
  EXPECT_EQ(h.token_dtype, vocab <= 65536 ? 2u : 4u);
  EXPECT_EQ(h.num_rows, rows.size());
  EXPECT_EQ(h.seq_len, seq_len);
  EXPECT_EQ(h.vocab_size, vocab);
  uint64_t docs = 0, loss = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::vector<uint32_t> want_tokens;
    std::vector<uint8_t> want_mask;
    std::vector<uint64_t> want_starts;
    for (const Doc& d : rows[r]) {
      want_starts.push_back(want_tokens.size());
      want_tokens.insert(want_tokens.end(), d.tokens.begin(), d.tokens.end());
      want_mask.insert(want_mask.end(), d.mask.begin(), d.mask.end());
      for (uint8_t m : d.mask) loss += m;
    }
    docs += rows[r].size();
    ASSERT_EQ((*reader)->RowLength(r), want_tokens.size());
    std::vector<int32_t> tokens(want_tokens.size());
    std::vector<uint8_t> mask(want_tokens.size());
    std::vector<uint64_t> starts;
    ASSERT_TRUE((*reader)->ReadRow(r, tokens, mask, &starts).ok());
    EXPECT_EQ(std::vector<uint32_t>(tokens.begin(), tokens.end()), want_tokens);
    EXPECT_EQ(mask, want_mask);
    EXPECT_EQ(starts, want_starts);
  }
  EXPECT_EQ(h.num_documents, docs);
  EXPECT_EQ(h.num_loss_tokens, loss);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ShardRoundTrip, ::testing::Values(50280, 65536, 200000));

TEST(ShardWriter, RejectsBadDocuments) {
  const std::string path = TempDir("reject") + "/s.rws";
  ShardWriter writer(path, {.vocab_size = 100, .seq_len = 8});
  std::vector<uint32_t> ok_tokens = {1, 2, 3};
  std::vector<uint8_t> ok_mask = {0, 1, 1};
  std::vector<uint32_t> out_of_vocab = {1, 100};
  std::vector<uint8_t> two = {0, 0};
  EXPECT_THAT(std::string(writer.AddDocument(out_of_vocab, two).message()),
              HasSubstr("outside vocabulary"));
  EXPECT_THAT(std::string(writer.AddDocument(ok_tokens, two).message()), HasSubstr("loss-mask"));
  std::vector<uint8_t> bad_mask = {0, 2, 1};
  EXPECT_FALSE(writer.AddDocument(ok_tokens, bad_mask).ok());
  ASSERT_TRUE(writer.AddDocument(ok_tokens, ok_mask).ok());
  ASSERT_TRUE(writer.AddDocument(ok_tokens, ok_mask).ok());
  EXPECT_EQ(writer.RowSpaceLeft(), 3u);  // 9 - 6
  std::vector<uint32_t> four = {1, 2, 3, 4};
  std::vector<uint8_t> four_mask = {0, 0, 0, 1};
  EXPECT_THAT(std::string(writer.AddDocument(four, four_mask).message()), HasSubstr("does not fit"));
  writer.BeginRow();
  ASSERT_TRUE(writer.AddDocument(four, four_mask).ok());
  ASSERT_TRUE(writer.Finish().ok());
  auto reader = ShardReader::Open(path);
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->num_rows(), 2u);
  EXPECT_EQ((*reader)->header().num_documents, 3u);
}

TEST(ShardWriter, OnePerRowKeepsLongDocumentsWhole) {
  const std::string path = TempDir("one") + "/s.rws";
  ShardWriter writer(path, {.vocab_size = 100, .seq_len = 4, .row_layout = RowLayout::kOnePerRow});
  std::vector<uint32_t> long_doc(50, 7);
  std::vector<uint8_t> mask(50, 1);
  ASSERT_TRUE(writer.AddDocument(long_doc, mask).ok());
  EXPECT_FALSE(writer.AddDocument(long_doc, mask).ok());  // second document in the same row
  writer.BeginRow();
  ASSERT_TRUE(writer.AddDocument(long_doc, mask).ok());
  ASSERT_TRUE(writer.Finish().ok());
  auto reader = ShardReader::Open(path);
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->RowLength(1), 50u);
}

TEST(ShardWriter, EmptyShardIsAnError) {
  ShardWriter writer(TempDir("empty") + "/s.rws", {.vocab_size = 10, .seq_len = 4});
  EXPECT_FALSE(writer.Finish().ok());
}

// Writes a small valid shard and returns its bytes.
std::string WriteSmallShard(const std::string& path) {
  ShardWriter writer(path, {.vocab_size = 1000, .seq_len = 16});
  for (int r = 0; r < 5; ++r) {
    writer.BeginRow();
    std::vector<uint32_t> t = {1u + r, 2, 3, 4, 5};
    std::vector<uint8_t> m = {0, 0, 1, 1, 1};
    EXPECT_TRUE(writer.AddDocument(t, m).ok());
  }
  EXPECT_TRUE(writer.Finish().ok());
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

TEST(ShardReader, DamagedFilesAreDataLossNamingTheFile) {
  const std::string path = TempDir("damage") + "/s.rws";
  const std::string good = WriteSmallShard(path);
  ASSERT_TRUE(ShardReader::Open(path).ok());

  struct Case {
    std::string name;
    std::string bytes;
    std::string expect;
  };
  std::vector<Case> cases;
  cases.push_back({"truncated", good.substr(0, good.size() - 70), "truncated"});
  cases.push_back({"header only", good.substr(0, 100), "truncated"});
  cases.push_back({"empty", "", "truncated"});
  cases.push_back({"trailing", good + "xx", "trailing"});
  std::string flipped = good;
  flipped[sizeof(ShardHeader) + 70] ^= 0x10;
  cases.push_back({"payload bit flip", flipped, "checksum"});
  std::string magic = good;
  magic[0] = 'X';
  cases.push_back({"bad magic", magic, "magic"});
  std::string count = good;
  count[offsetof(ShardHeader, num_tokens)] ^= 0x01;
  cases.push_back({"header field", count, "header check"});
  for (const Case& c : cases) {
    WriteBytes(path, c.bytes);
    auto reader = ShardReader::Open(path);
    ASSERT_FALSE(reader.ok()) << c.name;
    EXPECT_EQ(reader.status().code(), absl::StatusCode::kDataLoss) << c.name;
    EXPECT_THAT(std::string(reader.status().message()), HasSubstr(path)) << c.name;
    EXPECT_THAT(std::string(reader.status().message()), HasSubstr(c.expect)) << c.name;
  }
  auto missing = ShardReader::Open(path + ".nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(ShardReader, UnverifiedTokenOutsideVocabularyIsCaughtOnRead) {
  const std::string path = TempDir("vocab") + "/s.rws";
  std::string bytes = WriteSmallShard(path);
  ShardHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  // Token 0 of row 2 becomes 0xFFFF (> vocab 1000); skip the checksum to reach ReadRow.
  const uint64_t at = h.tokens_offset + 2 * 10;
  bytes[at] = '\xff';
  bytes[at + 1] = '\xff';
  WriteBytes(path, bytes);
  EXPECT_FALSE(ShardReader::Open(path).ok());
  auto reader = ShardReader::Open(path, {.verify_checksum = false});
  ASSERT_TRUE(reader.ok()) << reader.status();
  std::vector<int32_t> tokens(5);
  std::vector<uint8_t> mask(5);
  EXPECT_TRUE((*reader)->ReadRow(1, tokens, mask).ok());
  absl::Status s = (*reader)->ReadRow(2, tokens, mask);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr(path));
  EXPECT_THAT(std::string(s.message()), HasSubstr("outside vocabulary"));
}

TEST(ShardManifest, SavesAndLoads) {
  const std::string dir = TempDir("manifest");
  ShardManifest m;
  m.vocab_size = 50280;
  m.seq_len = 2048;
  m.row_layout = RowLayout::kOnePerRow;
  m.eos_id = 0;
  m.pad_id = 1;
  m.shards.push_back({"shard_00000.rws", 3, 4, 500, 50, "ab"});
  m.shards.push_back({"shard_00001.rws", 2, 2, 100, 10, "cd"});
  m.extra_json = R"({"tokenizer":"x"})";
  ASSERT_TRUE(m.Save(dir).ok());
  auto loaded = ShardManifest::Load(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->row_layout, RowLayout::kOnePerRow);
  EXPECT_EQ(loaded->TotalRows(), 5u);
  EXPECT_EQ(loaded->TotalTokens(), 600u);
  EXPECT_EQ(loaded->TotalLossTokens(), 60u);
  EXPECT_EQ(loaded->shards[1].file, "shard_00001.rws");
  EXPECT_EQ(loaded->pad_id, 1);
  EXPECT_THAT(loaded->extra_json, HasSubstr("tokenizer"));
  EXPECT_EQ(ShardManifest::Load(dir + "/nope").status().code(), absl::StatusCode::kNotFound);
}

// A shard checked at open and read row by row stays out of the resident set (mapped_pages.h): a
// dataset is checksummed whole at open and read whole every epoch, by every rank.
TEST(ShardReader, CheckedAndReadRowsLeaveTheResidentSet) {
  const std::string path = TempDir("resident") + "/big.rws";
  constexpr uint32_t kVocab = 100000;  // 4-byte tokens
  constexpr uint64_t kSeqLen = 4096;
  ShardWriter writer(path, {.vocab_size = kVocab, .seq_len = kSeqLen});
  std::vector<uint32_t> tokens(kSeqLen + 1);
  std::vector<uint8_t> mask(kSeqLen + 1, 1);
  for (int row = 0; row < 4096; ++row) {  // 16 M tokens: 64 MiB of tokens, 16 MiB of masks
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = (row * 7919 + i * 31) % kVocab;
    writer.BeginRow();
    ASSERT_TRUE(writer.AddDocument(tokens, mask).ok());
  }
  ASSERT_TRUE(writer.Finish().ok());
  ASSERT_GE(rwr::testing::ResidentFileBytes(), 0) << "no RssFile in /proc/self/status";
  constexpr int64_t kSlack = int64_t{8} << 20;

  int64_t before = rwr::testing::ResidentFileBytes();
  auto reader = ShardReader::Open(path, {.verify_checksum = true});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_LT(rwr::testing::ResidentFileBytes() - before, kSlack) << "at open";

  // Rows through a reader that did not walk the file at open.
  auto unchecked = ShardReader::Open(path, {.verify_checksum = false});
  ASSERT_TRUE(unchecked.ok()) << unchecked.status();
  before = rwr::testing::ResidentFileBytes();
  std::vector<int32_t> row_tokens(kSeqLen + 1);
  std::vector<uint8_t> row_mask(kSeqLen + 1);
  for (uint64_t row = 0; row < (*unchecked)->num_rows(); ++row) {
    ASSERT_TRUE((*unchecked)->ReadRow(row, row_tokens, row_mask).ok());
    ASSERT_EQ(static_cast<uint32_t>(row_tokens[5]), (row * 7919 + 5 * 31) % kVocab) << row;
  }
  EXPECT_LT(rwr::testing::ResidentFileBytes() - before, kSlack) << "rows read";
}

}  // namespace
}  // namespace rwr::storage
