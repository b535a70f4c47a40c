// NoteCache: keys, records and the data-stage read API (see note_cache.h, docs/cache.md).
#include "teacher_client/note_cache.h"

#include <chrono>
#include <cstring>

#include "common/sha256.h"
#include "common/status.h"
#include "fmt/format.h"

namespace rwr::teacher {
namespace {

constexpr char kEncodingTag[] = "rwr-cache-request-v1";

void AppendLittleEndian(std::string* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

std::string FixedBytes(uint64_t value, int bytes) {
  std::string out;
  AppendLittleEndian(&out, value, bytes);
  return out;
}

v1::CanonicalRequest BaseRequest(v1::TeacherTaskKind task, const TeacherInfo& teacher,
                                 uint32_t sample_index) {
  v1::CanonicalRequest request;
  request.set_task(task);
  request.set_teacher_id(teacher.teacher_id);
  request.set_teacher_revision(teacher.revision);
  request.set_prompt_template_version(teacher.prompt_template_version);
  request.mutable_sampling()->set_max_tokens(teacher.sampling.max_tokens);
  request.mutable_sampling()->set_temperature(teacher.sampling.temperature);
  request.mutable_sampling()->set_seed(teacher.sampling.seed);
  request.set_sample_index(sample_index);
  return request;
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint32_t FloatBits(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// Field by field, the fields CanonicalEncoding covers (cheaper than encoding both: no copies).
bool SameCanonicalRequest(const v1::CanonicalRequest& a, const v1::CanonicalRequest& b) {
  return a.task() == b.task() && a.sample_index() == b.sample_index() &&
         a.sampling().max_tokens() == b.sampling().max_tokens() &&
         a.sampling().seed() == b.sampling().seed() &&
         FloatBits(a.sampling().temperature()) == FloatBits(b.sampling().temperature()) &&
         a.teacher_id() == b.teacher_id() && a.teacher_revision() == b.teacher_revision() &&
         a.prompt_template_version() == b.prompt_template_version() &&
         a.question() == b.question() && a.answer() == b.answer() && a.note() == b.note() &&
         a.context() == b.context();
}

}  // namespace

v1::CanonicalRequest NoteRequestFor(const TeacherInfo& teacher, std::string_view context,
                                    std::string_view question, uint32_t sample_index) {
  v1::CanonicalRequest request = BaseRequest(v1::TASK_NOTE, teacher, sample_index);
  request.set_context(std::string(context));
  request.set_question(std::string(question));
  return request;
}

v1::CanonicalRequest VerifyRequestFor(const TeacherInfo& teacher, std::string_view question,
                                      std::string_view note, std::string_view answer,
                                      uint32_t sample_index) {
  v1::CanonicalRequest request = BaseRequest(v1::TASK_VERIFY, teacher, sample_index);
  request.set_question(std::string(question));
  request.set_note(std::string(note));
  request.set_answer(std::string(answer));
  return request;
}

v1::CanonicalRequest RemoveEvidenceRequestFor(const TeacherInfo& teacher, std::string_view context,
                                              std::string_view question, std::string_view answer,
                                              uint32_t sample_index) {
  v1::CanonicalRequest request = BaseRequest(v1::TASK_REMOVE_EVIDENCE, teacher, sample_index);
  request.set_context(std::string(context));
  request.set_question(std::string(question));
  request.set_answer(std::string(answer));
  return request;
}

namespace {

// The canonical byte stream, handed to `sink` piece by piece (a string for CanonicalEncoding, the
// hasher for CacheKey, so the key never copies the context).
template <typename Sink>
void EncodeCanonical(const v1::CanonicalRequest& request, Sink&& sink) {
  auto field = [&](uint8_t number, std::string_view bytes) {
    char header[9];
    header[0] = static_cast<char>(number);
    for (int i = 0; i < 8; ++i)
      header[1 + i] = static_cast<char>((uint64_t{bytes.size()} >> (8 * i)) & 0xff);
    sink(std::string_view(header, sizeof(header)));
    sink(bytes);
  };
  sink(std::string_view(kEncodingTag, sizeof(kEncodingTag)));  // tag and its NUL
  uint32_t temperature_bits = 0;
  const float temperature = request.sampling().temperature();
  std::memcpy(&temperature_bits, &temperature, sizeof(temperature_bits));
  field(1, FixedBytes(static_cast<uint32_t>(request.task()), 4));
  field(2, request.teacher_id());
  field(3, request.teacher_revision());
  field(4, request.prompt_template_version());
  field(5, request.context());
  field(6, request.question());
  field(7, request.answer());
  field(8, request.note());
  field(9, FixedBytes(request.sampling().max_tokens(), 4));
  field(10, FixedBytes(temperature_bits, 4));
  field(11, FixedBytes(request.sampling().seed(), 8));
  field(12, FixedBytes(request.sample_index(), 4));
}

}  // namespace

std::string CanonicalEncoding(const v1::CanonicalRequest& request) {
  std::string out;
  EncodeCanonical(request,
                  [&out](std::string_view bytes) { out.append(bytes.data(), bytes.size()); });
  return out;
}

std::string CacheKey(const v1::CanonicalRequest& request) {
  // One hasher per thread: creating an OpenSSL digest context per key costs more than hashing a
  // few KiB of context.
  thread_local Sha256 hasher;
  EncodeCanonical(request, [](std::string_view bytes) { hasher.Update(bytes); });
  const Sha256Digest digest = hasher.Finish();  // also resets the hasher
  return std::string(reinterpret_cast<const char*>(digest.data()), digest.size());
}

std::string KeyHex(std::string_view key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(key.size() * 2);
  for (unsigned char c : key) {
    hex.push_back(kDigits[c >> 4]);
    hex.push_back(kDigits[c & 0xf]);
  }
  return hex;
}

storage::Family FamilyFor(v1::TeacherTaskKind task) {
  switch (task) {
    case v1::TASK_VERIFY:
      return storage::Family::kVerdicts;
    case v1::TASK_REMOVE_EVIDENCE:
      return storage::Family::kNegatives;
    default:
      return storage::Family::kNotes;
  }
}

absl::StatusOr<std::unique_ptr<NoteCache>> NoteCache::Open(storage::KvStore* store, bool writable) {
  RWR_ASSIGN_OR_RETURN(std::optional<std::string> version,
                       store->Get(storage::Family::kMeta, kSchemaVersionKey));
  const std::string ours = std::to_string(kCacheSchemaVersion);
  if (!version.has_value()) {
    if (writable) {
      RWR_RETURN_IF_ERROR(store->Put(storage::Family::kMeta, kSchemaVersionKey, ours));
    }
  } else if (*version != ours) {
    return absl::FailedPreconditionError(
        fmt::format("the cache has schema version {}, this rwr reads version {}; use a new --cache "
                    "directory (or the rwr that wrote it)",
                    *version, ours));
  }
  return std::unique_ptr<NoteCache>(new NoteCache(store));
}

absl::StatusOr<CacheLookup> NoteCache::Lookup(const v1::CanonicalRequest& request) const {
  CacheLookup lookup;
  lookup.key = CacheKey(request);
  const std::string& key = lookup.key;
  RWR_ASSIGN_OR_RETURN(std::optional<std::string> bytes,
                       store_->Get(FamilyFor(request.task()), key));
  if (!bytes.has_value()) return lookup;  // kMiss
  if (!lookup.record.ParseFromString(*bytes)) {
    lookup.outcome = CacheLookup::Outcome::kMismatch;
    lookup.detail = fmt::format("record {} does not parse (corrupt)", KeyHex(key));
    return lookup;
  }
  if (lookup.record.schema_version() != kCacheSchemaVersion) {
    lookup.outcome = CacheLookup::Outcome::kStale;
    lookup.detail = fmt::format("record {} has schema version {}, expected {}", KeyHex(key),
                                lookup.record.schema_version(), kCacheSchemaVersion);
    return lookup;
  }
  // Compare exactly the fields the key was hashed over.
  const bool answer_matches_task =
      (request.task() == v1::TASK_NOTE && lookup.record.has_note()) ||
      (request.task() == v1::TASK_VERIFY && lookup.record.has_verdict()) ||
      (request.task() == v1::TASK_REMOVE_EVIDENCE && lookup.record.has_negative());
  if (!SameCanonicalRequest(lookup.record.request(), request) || !answer_matches_task) {
    lookup.outcome = CacheLookup::Outcome::kMismatch;
    lookup.detail = fmt::format(
        "record {} answers a different request than the one asked (hash collision or a "
        "tampered record)",
        KeyHex(key));
    return lookup;
  }
  lookup.outcome = CacheLookup::Outcome::kHit;
  return lookup;
}

v1::CacheRecord NoteCache::MakeRecord(const v1::CanonicalRequest& request) {
  v1::CacheRecord record;
  record.set_schema_version(kCacheSchemaVersion);
  *record.mutable_request() = request;
  record.set_created_unix_ms(NowUnixMs());
  return record;
}

absl::Status NoteCache::Put(const v1::CanonicalRequest& request, const v1::CacheRecord& record) {
  return store_->Put(FamilyFor(request.task()), CacheKey(request), record.SerializeAsString());
}

absl::Status NoteCache::StoreNote(const v1::CanonicalRequest& request, const Note& note) {
  v1::CacheRecord record = MakeRecord(request);
  record.mutable_note()->set_note(note.text);
  record.mutable_note()->set_empty(note.empty);
  record.mutable_note()->set_score(note.score);
  return Put(request, record);
}

absl::Status NoteCache::StoreVerdict(const v1::CanonicalRequest& request, const Verdict& verdict) {
  v1::CacheRecord record = MakeRecord(request);
  record.mutable_verdict()->set_consistent(verdict.consistent);
  record.mutable_verdict()->set_score(verdict.score);
  return Put(request, record);
}

absl::Status NoteCache::StoreNegative(const v1::CanonicalRequest& request,
                                      const Negative& negative) {
  v1::CacheRecord record = MakeRecord(request);
  record.mutable_negative()->set_context(negative.context);
  record.mutable_negative()->set_removed_paragraphs(negative.removed_paragraphs);
  record.mutable_negative()->set_answer_still_present(negative.answer_still_present);
  return Put(request, record);
}

Note NoteFromRecord(const v1::CacheRecord& record) {
  return {
      .text = record.note().note(), .empty = record.note().empty(), .score = record.note().score()};
}

Verdict VerdictFromRecord(const v1::CacheRecord& record) {
  return {.consistent = record.verdict().consistent(), .score = record.verdict().score()};
}

Negative NegativeFromRecord(const v1::CacheRecord& record) {
  return {.context = record.negative().context(),
          .removed_paragraphs = record.negative().removed_paragraphs(),
          .answer_still_present = record.negative().answer_still_present()};
}

// --- data-stage read API ---

namespace {

absl::StatusOr<v1::CacheRecord> ReadReferenced(const storage::KvStore& store,
                                               storage::Family family, const std::string& key,
                                               const std::string& id, std::string_view what) {
  RWR_ASSIGN_OR_RETURN(std::optional<std::string> bytes, store.Get(family, key));
  v1::CacheRecord record;
  if (!bytes.has_value() || !record.ParseFromString(*bytes) || CacheKey(record.request()) != key) {
    return absl::DataLossError(fmt::format(
        "cache item '{}': its {} record {} is {}; rerun `rwr distill run` on its dataset", id, what,
        KeyHex(key), bytes.has_value() ? "corrupt or tampered" : "missing"));
  }
  return record;
}

absl::StatusOr<std::optional<DistilledItem>> ItemFromRecord(const storage::KvStore& store,
                                                            std::string_view bytes) {
  v1::ItemRecord item;
  if (!item.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError("cache: an item record in the jobs family does not parse");
  }
  if (item.state() != v1::ItemRecord::KEPT && item.state() != v1::ItemRecord::DROPPED) {
    return std::optional<DistilledItem>();
  }
  RWR_ASSIGN_OR_RETURN(v1::CacheRecord note, ReadReferenced(store, storage::Family::kNotes,
                                                            item.note_key(), item.id(), "note"));
  RWR_ASSIGN_OR_RETURN(
      v1::CacheRecord verdict,
      ReadReferenced(store, storage::Family::kVerdicts, item.verdict_key(), item.id(), "verdict"));
  DistilledItem out;
  out.id = item.id();
  out.source = item.source();
  out.context = note.request().context();
  out.question = note.request().question();
  out.answer = verdict.request().answer();
  out.extra_json = item.extra_json().empty() ? "{}" : item.extra_json();
  out.kept = item.state() == v1::ItemRecord::KEPT;
  out.note = note.note().note();
  out.note_empty = note.note().empty();
  out.verify_score = verdict.verdict().score();
  if (!item.negative_key().empty()) {
    RWR_ASSIGN_OR_RETURN(v1::CacheRecord negative,
                         ReadReferenced(store, storage::Family::kNegatives, item.negative_key(),
                                        item.id(), "negative"));
    if (!negative.negative().answer_still_present() && !negative.negative().context().empty()) {
      out.negative_context = negative.negative().context();
    }
  }
  return std::optional<DistilledItem>(std::move(out));
}

}  // namespace

absl::Status ForEachItem(const storage::KvStore& store,
                         const std::function<absl::Status(const DistilledItem&)>& visit) {
  absl::Status result;
  RWR_RETURN_IF_ERROR(store.ForEach(
      storage::Family::kJobs, kItemKeyPrefix, [&](std::string_view, std::string_view value) {
        absl::StatusOr<std::optional<DistilledItem>> item = ItemFromRecord(store, value);
        if (!item.ok()) {
          result = item.status();
          return false;
        }
        if (!item->has_value()) return true;
        result = visit(**item);
        return result.ok();
      }));
  return result;
}

absl::StatusOr<std::optional<DistilledItem>> LookupItem(const storage::KvStore& store,
                                                        std::string_view id) {
  RWR_ASSIGN_OR_RETURN(
      std::optional<std::string> bytes,
      store.Get(storage::Family::kJobs, std::string(kItemKeyPrefix) + std::string(id)));
  if (!bytes.has_value()) return std::optional<DistilledItem>();
  return ItemFromRecord(store, *bytes);
}

}  // namespace rwr::teacher
