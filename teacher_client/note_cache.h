// NoteCache: the typed teacher cache over a KvStore (docs/cache.md).
//
// Every teacher answer is stored under a key that is the SHA-256 of a canonical encoding of the
// request (task, teacher id + revision, prompt template version, context, question, answer and
// note where the task uses them, sampling params, sample index). The record (rwr.v1.CacheRecord,
// proto/rwr/v1/cache.proto) holds the schema version and the full canonical request next to the
// answer, and Lookup compares both on every read: a record from another schema version, or one
// whose request differs from the one asked (a hash collision, a tampered or corrupt record), is
// reported as such and never returned as a hit.
//
//   notes      key → CacheRecord{note}        TASK_NOTE            (context, question)
//   verdicts   key → CacheRecord{verdict}     TASK_VERIFY          (question, note, answer)
//   negatives  key → CacheRecord{negative}    TASK_REMOVE_EVIDENCE (context, question, answer)
//   jobs       "item/<id>" → ItemRecord;  "job/<id>" → rwr.v1.Job (distill serve)
//   meta       "schema_version" → "1"
//
// The read API for the data stage (ForEachItem / LookupItem) is at the end of this file.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "rwr/v1/cache.pb.h"
#include "storage/kv_store.h"
#include "teacher_client/teacher.h"

namespace rwr::teacher {

inline constexpr uint32_t kCacheSchemaVersion = 1;
inline constexpr char kSchemaVersionKey[] = "schema_version";
inline constexpr char kItemKeyPrefix[] = "item/";
inline constexpr char kJobKeyPrefix[] = "job/";

// The canonical requests for the three tasks under one teacher.
v1::CanonicalRequest NoteRequestFor(const TeacherInfo& teacher, std::string_view context,
                                    std::string_view question, uint32_t sample_index = 0);
v1::CanonicalRequest VerifyRequestFor(const TeacherInfo& teacher, std::string_view question,
                                      std::string_view note, std::string_view answer,
                                      uint32_t sample_index = 0);
v1::CanonicalRequest RemoveEvidenceRequestFor(const TeacherInfo& teacher, std::string_view context,
                                              std::string_view question, std::string_view answer,
                                              uint32_t sample_index = 0);

// The bytes the key is hashed over: a fixed tag, then every field in a fixed order, each as a
// 1-byte field number, a little-endian u64 length and the bytes (numbers as little-endian
// fixed-width integers, floats by their IEEE bits). Independent of protobuf's serializer.
std::string CanonicalEncoding(const v1::CanonicalRequest& request);
std::string CacheKey(const v1::CanonicalRequest& request);  // 32 raw bytes (SHA-256)
std::string KeyHex(std::string_view key);                   // 64 hex characters

storage::Family FamilyFor(v1::TeacherTaskKind task);

struct CacheLookup {
  enum class Outcome {
    kHit,       // record present, same schema, same canonical request
    kMiss,      // no record under the key
    kStale,     // record from another schema version: treat as a miss, overwrite
    kMismatch,  // record answers a different request, or does not parse: collision/tampering
  };
  Outcome outcome = Outcome::kMiss;
  std::string key;         // the request's cache key (32 bytes), whatever the outcome
  v1::CacheRecord record;  // kHit only
  std::string detail;      // kStale / kMismatch: what was wrong, for the log
};

class NoteCache {
 public:
  // Checks meta/schema_version (writing it into an empty writable store); a cache written by
  // another schema version is an error naming both versions. `store` must outlive the cache.
  static absl::StatusOr<std::unique_ptr<NoteCache>> Open(storage::KvStore* store,
                                                         bool writable = true);

  // Store errors (I/O) are errors; anything about the record itself is in the outcome.
  absl::StatusOr<CacheLookup> Lookup(const v1::CanonicalRequest& request) const;

  // Writes the record for `request` (answer = exactly one of the three).
  absl::Status StoreNote(const v1::CanonicalRequest& request, const Note& note);
  absl::Status StoreVerdict(const v1::CanonicalRequest& request, const Verdict& verdict);
  absl::Status StoreNegative(const v1::CanonicalRequest& request, const Negative& negative);
  // The record, built (for StoreX or for a batch written together with an item record).
  static v1::CacheRecord MakeRecord(const v1::CanonicalRequest& request);

  storage::KvStore& store() const { return *store_; }

 private:
  explicit NoteCache(storage::KvStore* store) : store_(store) {}
  absl::Status Put(const v1::CanonicalRequest& request, const v1::CacheRecord& record);

  storage::KvStore* store_;
};

// Record ↔ Teacher answer types.
Note NoteFromRecord(const v1::CacheRecord& record);
Verdict VerdictFromRecord(const v1::CacheRecord& record);
Negative NegativeFromRecord(const v1::CacheRecord& record);

// ---------------------------------------------------------------------------------------------
// Read API for the data stage (`rwr data build`): each distilled item with its note, verdict and
// `empty` negative, straight from the cache (no dataset file needed). Works on a published,
// read-only cache.

struct DistilledItem {
  std::string id;
  std::string source;      // "FILE:LINE" in the dataset it came from
  std::string context;     // c
  std::string question;    // q
  std::string answer;      // a (the reference answer)
  std::string extra_json;  // the input's other fields, as a JSON object ("{}" when none)
  bool kept = false;       // the note passed verification: (c, q, note) belongs in D_f
  std::string note;        // s (kEmptyNote when the teacher found nothing)
  bool note_empty = false;
  double verify_score = 0;
  // c_r, the context with the answer's evidence removed, when this item was chosen for an
  // `empty` negative and the removal succeeded: (c_r, q, note = "empty") belongs in D_e.
  std::optional<std::string> negative_context;
};

// Every item whose distillation finished (kept or dropped; failed items are skipped), in id
// order. `visit` returning an error stops the walk and returns that error. A record that does not
// parse or whose referenced answers are missing is a DATA_LOSS error naming the item.
absl::Status ForEachItem(const storage::KvStore& store,
                         const std::function<absl::Status(const DistilledItem&)>& visit);

// One item by id; std::nullopt when the cache has no finished record for it.
absl::StatusOr<std::optional<DistilledItem>> LookupItem(const storage::KvStore& store,
                                                        std::string_view id);

}  // namespace rwr::teacher
