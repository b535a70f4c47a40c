// Cache keys and records (teacher_client/note_cache.h): every key field matters, the canonical
// request is checked on read (tampered, colliding, stale and corrupt records are never hits), and
// the data-stage read API returns what distill stored.
#include "teacher_client/note_cache.h"

#include <set>

#include "gtest/gtest.h"

namespace rwr::teacher {
namespace {

using storage::Family;
using storage::MemoryKvStore;
using Outcome = CacheLookup::Outcome;

TeacherInfo TestTeacher() {
  return {.teacher_id = "extractive-bm25",
          .revision = "1",
          .prompt_template_version = "rwr-prompts-v1",
          .sampling = {.max_tokens = 128, .temperature = 0.5f, .seed = 7}};
}

TEST(CacheKeyTest, KeyIsSha256OfTheCanonicalEncodingAndStable) {
  const v1::CanonicalRequest request = NoteRequestFor(TestTeacher(), "ctx", "q?");
  const std::string key = CacheKey(request);
  EXPECT_EQ(key.size(), 32u);
  EXPECT_EQ(key, CacheKey(NoteRequestFor(TestTeacher(), "ctx", "q?")));
  // Pinned (computed independently in Python from the documented encoding, docs/cache.md): a
  // change to the encoding silently orphans every existing cache, so it must be deliberate.
  EXPECT_EQ(KeyHex(key), "10cad8e6fd8709f7a1fb7aed629e97d21d1c0b2716eb8107681708271b5a1f71");
}

TEST(CacheKeyTest, EveryFieldOfTheRequestChangesTheKey) {
  const TeacherInfo base = TestTeacher();
  std::set<std::string> keys;
  auto add = [&](const v1::CanonicalRequest& request) { keys.insert(CacheKey(request)); };
  add(NoteRequestFor(base, "ctx", "q"));
  TeacherInfo other = base;
  other.teacher_id = "other";
  add(NoteRequestFor(other, "ctx", "q"));
  other = base;
  other.revision = "2";
  add(NoteRequestFor(other, "ctx", "q"));
  other = base;
  other.prompt_template_version = "v2";
  add(NoteRequestFor(other, "ctx", "q"));
  other = base;
  other.sampling.max_tokens = 129;
  add(NoteRequestFor(other, "ctx", "q"));
  other = base;
  other.sampling.temperature = 0.25f;
  add(NoteRequestFor(other, "ctx", "q"));
  other = base;
  other.sampling.seed = 8;
  add(NoteRequestFor(other, "ctx", "q"));
  add(NoteRequestFor(base, "ctx2", "q"));
  add(NoteRequestFor(base, "ctx", "q2"));
  add(NoteRequestFor(base, "ctx", "q", /*sample_index=*/1));
  add(VerifyRequestFor(base, "q", "note", "a"));
  add(VerifyRequestFor(base, "q", "note2", "a"));
  add(VerifyRequestFor(base, "q", "note", "a2"));
  add(RemoveEvidenceRequestFor(base, "ctx", "q", "a"));
  add(RemoveEvidenceRequestFor(base, "ctx", "q", "a2"));
  EXPECT_EQ(keys.size(), 15u);
  // Length-prefixed fields: moving bytes between adjacent fields changes the key.
  EXPECT_NE(CacheKey(NoteRequestFor(base, "ab", "c")), CacheKey(NoteRequestFor(base, "a", "bc")));
}

class NoteCacheTest : public testing::Test {
 protected:
  void SetUp() override {
    auto cache = NoteCache::Open(&store_);
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::move(*cache);
  }
  MemoryKvStore store_;
  std::unique_ptr<NoteCache> cache_;
};

TEST_F(NoteCacheTest, OpenWritesTheSchemaVersionAndRejectsAnother) {
  EXPECT_EQ(**store_.Get(Family::kMeta, kSchemaVersionKey), "1");
  ASSERT_TRUE(store_.Put(Family::kMeta, kSchemaVersionKey, "99").ok());
  auto reopened = NoteCache::Open(&store_);
  ASSERT_FALSE(reopened.ok());
  EXPECT_NE(std::string(reopened.status().message()).find("schema version 99"), std::string::npos);
}

TEST_F(NoteCacheTest, StoredAnswersReadBackAsHits) {
  const auto note_request = NoteRequestFor(TestTeacher(), "The sky is blue.", "Sky colour?");
  ASSERT_TRUE(cache_->StoreNote(note_request, {.text = "The sky is blue.", .score = 2.5}).ok());
  const auto verify_request =
      VerifyRequestFor(TestTeacher(), "Sky colour?", "The sky is blue.", "blue");
  ASSERT_TRUE(cache_->StoreVerdict(verify_request, {.consistent = true, .score = 1}).ok());
  const auto negative_request =
      RemoveEvidenceRequestFor(TestTeacher(), "The sky is blue.", "Sky colour?", "blue");
  ASSERT_TRUE(
      cache_->StoreNegative(negative_request, {.context = "", .removed_paragraphs = 1}).ok());

  auto note = cache_->Lookup(note_request);
  ASSERT_TRUE(note.ok());
  ASSERT_EQ(note->outcome, Outcome::kHit);
  EXPECT_EQ(NoteFromRecord(note->record).text, "The sky is blue.");
  EXPECT_DOUBLE_EQ(NoteFromRecord(note->record).score, 2.5);
  auto verdict = cache_->Lookup(verify_request);
  ASSERT_EQ(verdict->outcome, Outcome::kHit);
  EXPECT_TRUE(VerdictFromRecord(verdict->record).consistent);
  auto negative = cache_->Lookup(negative_request);
  ASSERT_EQ(negative->outcome, Outcome::kHit);
  EXPECT_EQ(NegativeFromRecord(negative->record).removed_paragraphs, 1u);
  EXPECT_EQ(cache_->Lookup(NoteRequestFor(TestTeacher(), "other", "q"))->outcome, Outcome::kMiss);
  EXPECT_EQ(*store_.Count(Family::kNotes), 1);
  EXPECT_EQ(*store_.Count(Family::kVerdicts), 1);
  EXPECT_EQ(*store_.Count(Family::kNegatives), 1);
}

TEST_F(NoteCacheTest, TamperedRecordIsDetectedNotReturned) {
  const auto request = NoteRequestFor(TestTeacher(), "context", "question");
  ASSERT_TRUE(cache_->StoreNote(request, {.text = "true note"}).ok());
  const std::string key = CacheKey(request);
  v1::CacheRecord record;
  ASSERT_TRUE(record.ParseFromString(**store_.Get(Family::kNotes, key)));
  record.mutable_request()->set_context("a different context");  // what a collision looks like
  record.mutable_note()->set_note("forged note");
  ASSERT_TRUE(store_.Put(Family::kNotes, key, record.SerializeAsString()).ok());
  auto lookup = cache_->Lookup(request);
  ASSERT_TRUE(lookup.ok());
  EXPECT_EQ(lookup->outcome, Outcome::kMismatch);
  EXPECT_NE(lookup->detail.find("different request"), std::string::npos) << lookup->detail;
}

TEST_F(NoteCacheTest, AnswerOfTheWrongKindIsAMismatch) {
  const auto request = NoteRequestFor(TestTeacher(), "context", "question");
  v1::CacheRecord record = NoteCache::MakeRecord(request);
  record.mutable_verdict()->set_consistent(true);  // a verdict where a note belongs
  ASSERT_TRUE(store_.Put(Family::kNotes, CacheKey(request), record.SerializeAsString()).ok());
  EXPECT_EQ(cache_->Lookup(request)->outcome, Outcome::kMismatch);
}

TEST_F(NoteCacheTest, CorruptBytesAreAMismatchAndOtherSchemaIsStale) {
  const auto request = NoteRequestFor(TestTeacher(), "context", "question");
  ASSERT_TRUE(store_.Put(Family::kNotes, CacheKey(request), "\xff\xff not a proto").ok());
  EXPECT_EQ(cache_->Lookup(request)->outcome, Outcome::kMismatch);
  v1::CacheRecord record = NoteCache::MakeRecord(request);
  record.mutable_note()->set_note("old");
  record.set_schema_version(0);
  ASSERT_TRUE(store_.Put(Family::kNotes, CacheKey(request), record.SerializeAsString()).ok());
  EXPECT_EQ(cache_->Lookup(request)->outcome, Outcome::kStale);
}

TEST_F(NoteCacheTest, ForEachItemJoinsItemRecordsWithTheirAnswers) {
  const TeacherInfo teacher = TestTeacher();
  // Item "a": kept, with a negative. Item "b": dropped. Item "c": failed (skipped by the walk).
  const auto note_a = NoteRequestFor(teacher, "Paris is in France.", "Where is Paris?");
  const auto verify_a =
      VerifyRequestFor(teacher, "Where is Paris?", "Paris is in France.", "France");
  const auto negative_a =
      RemoveEvidenceRequestFor(teacher, "Paris is in France.", "Where is Paris?", "France");
  ASSERT_TRUE(cache_->StoreNote(note_a, {.text = "Paris is in France."}).ok());
  ASSERT_TRUE(cache_->StoreVerdict(verify_a, {.consistent = true, .score = 1}).ok());
  ASSERT_TRUE(
      cache_->StoreNegative(negative_a, {.context = "(nothing)", .removed_paragraphs = 1}).ok());
  const auto note_b = NoteRequestFor(teacher, "Cats purr.", "Where is Rome?");
  const auto verify_b = VerifyRequestFor(teacher, "Where is Rome?", "empty", "Italy");
  ASSERT_TRUE(cache_->StoreNote(note_b, {.text = "empty", .empty = true}).ok());
  ASSERT_TRUE(cache_->StoreVerdict(verify_b, {.consistent = false, .score = 0}).ok());

  auto put_item = [&](const std::string& id, v1::ItemRecord::State state, const std::string& note,
                      const std::string& verdict, const std::string& negative) {
    v1::ItemRecord item;
    item.set_schema_version(kCacheSchemaVersion);
    item.set_id(id);
    item.set_state(state);
    item.set_source("data.jsonl:" + id);
    item.set_note_key(note);
    item.set_verdict_key(verdict);
    item.set_negative_key(negative);
    if (id == "a") item.set_extra_json(R"({"topic":"geo"})");
    ASSERT_TRUE(store_.Put(Family::kJobs, kItemKeyPrefix + id, item.SerializeAsString()).ok());
  };
  put_item("a", v1::ItemRecord::KEPT, CacheKey(note_a), CacheKey(verify_a), CacheKey(negative_a));
  put_item("b", v1::ItemRecord::DROPPED, CacheKey(note_b), CacheKey(verify_b), "");
  put_item("c", v1::ItemRecord::FAILED, "", "", "");
  ASSERT_TRUE(store_.Put(Family::kJobs, "job/x", "not an item").ok());  // other jobs keys ignored

  std::vector<DistilledItem> items;
  ASSERT_TRUE(ForEachItem(store_, [&](const DistilledItem& item) {
                items.push_back(item);
                return absl::OkStatus();
              }).ok());
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].id, "a");
  EXPECT_TRUE(items[0].kept);
  EXPECT_EQ(items[0].context, "Paris is in France.");
  EXPECT_EQ(items[0].question, "Where is Paris?");
  EXPECT_EQ(items[0].answer, "France");
  EXPECT_EQ(items[0].note, "Paris is in France.");
  EXPECT_EQ(items[0].extra_json, R"({"topic":"geo"})");
  ASSERT_TRUE(items[0].negative_context.has_value());
  EXPECT_EQ(*items[0].negative_context, "(nothing)");
  EXPECT_EQ(items[1].id, "b");
  EXPECT_FALSE(items[1].kept);
  EXPECT_TRUE(items[1].note_empty);
  EXPECT_FALSE(items[1].negative_context.has_value());
  EXPECT_EQ(items[1].extra_json, "{}");

  auto one = LookupItem(store_, "a");
  ASSERT_TRUE(one.ok() && one->has_value());
  EXPECT_EQ((*one)->answer, "France");
  EXPECT_FALSE(LookupItem(store_, "c")->has_value()) << "failed items are not returned";
  EXPECT_FALSE(LookupItem(store_, "zzz")->has_value());

  // A referenced answer that went missing is DATA_LOSS naming the item.
  ASSERT_TRUE(store_.Delete(Family::kVerdicts, CacheKey(verify_a)).ok());
  absl::Status walk = ForEachItem(store_, [](const DistilledItem&) { return absl::OkStatus(); });
  EXPECT_EQ(walk.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(walk.message()).find("'a'"), std::string::npos) << walk;
}

}  // namespace
}  // namespace rwr::teacher
