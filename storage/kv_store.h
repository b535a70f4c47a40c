// KvStore: the ordered key-value store behind the teacher cache (see docs/cache.md). Five column
// families — notes, verdicts, negatives, jobs, meta — each its own ordered key space; single-key
// Get/Put/Delete, atomic write batches across families, prefix iteration, Flush and Sync.
//
// Two implementations pass one contract test (tests/cache/kv_store_contract_test.cc):
//   MemoryKvStore (below; always built; tests and throwaway runs)
//   RocksDbStore  (storage/rocksdb_store.h; RWR_SERVICES builds only; the real cache)
//
// Contract, for every implementation:
//   * Thread-safe: any method may be called from any thread at the same time.
//   * A Put/Delete/Write that returned OK is visible to every later Get and ForEach.
//   * Write(batch) is atomic: a reader or a restart sees all of the batch or none of it.
//   * ForEach walks a consistent snapshot in ascending byte order of keys; the callback may call
//     back into the store (including writes, which the snapshot does not see).
//   * Keys and values are arbitrary bytes (embedded NULs included); the empty key is valid.
//   * Durability is per implementation: MemoryKvStore keeps nothing past the process;
//     RocksDbStore's contract is written in rocksdb_store.h and docs/cache.md.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace rwr::storage {

enum class Family : uint8_t { kNotes = 0, kVerdicts, kNegatives, kJobs, kMeta };
inline constexpr std::array<Family, 5> kAllFamilies = {
    Family::kNotes, Family::kVerdicts, Family::kNegatives, Family::kJobs, Family::kMeta};

std::string_view FamilyName(Family family);  // "notes", "verdicts", ...
absl::StatusOr<Family> FamilyFromName(std::string_view name);

// Operations applied together by KvStore::Write, in order (a later op on the same key wins).
class WriteBatch {
 public:
  struct Op {
    Family family;
    bool is_delete;
    std::string key;
    std::string value;  // empty for deletes
  };

  void Put(Family family, std::string_view key, std::string_view value);
  void Delete(Family family, std::string_view key);
  void Clear() { ops_.clear(); }
  bool empty() const { return ops_.empty(); }
  size_t size() const { return ops_.size(); }
  const std::vector<Op>& ops() const { return ops_; }

 private:
  std::vector<Op> ops_;
};

// Called for each entry; return false to stop early.
using KvVisitor = std::function<bool(std::string_view key, std::string_view value)>;

class KvStore {
 public:
  virtual ~KvStore() = default;

  // The value, std::nullopt if the key is absent, or an error (I/O, corruption).
  virtual absl::StatusOr<std::optional<std::string>> Get(Family family,
                                                         std::string_view key) const = 0;
  virtual absl::Status Put(Family family, std::string_view key, std::string_view value) = 0;
  virtual absl::Status Delete(Family family, std::string_view key) = 0;  // absent key: OK
  virtual absl::Status Write(const WriteBatch& batch) = 0;

  // Entries whose key starts with `prefix` ("" = all), ascending, from one snapshot.
  virtual absl::Status ForEach(Family family, std::string_view prefix,
                               const KvVisitor& visit) const = 0;

  // Exact number of keys in `family` (walks the family; meant for inspection, not hot paths).
  absl::StatusOr<int64_t> Count(Family family) const;

  // Flush: move buffered writes into the store's files (RocksDB: memtables → SST).
  // Sync: make every acknowledged write survive power loss (RocksDB: fsync the WAL).
  virtual absl::Status Flush() = 0;
  virtual absl::Status Sync() = 0;
};

// In-process store: one ordered map per family behind a mutex. Nothing survives the process.
class MemoryKvStore final : public KvStore {
 public:
  absl::StatusOr<std::optional<std::string>> Get(Family family,
                                                 std::string_view key) const override;
  absl::Status Put(Family family, std::string_view key, std::string_view value) override;
  absl::Status Delete(Family family, std::string_view key) override;
  absl::Status Write(const WriteBatch& batch) override;
  absl::Status ForEach(Family family, std::string_view prefix,
                       const KvVisitor& visit) const override;
  absl::Status Flush() override { return absl::OkStatus(); }
  absl::Status Sync() override { return absl::OkStatus(); }

 private:
  using Map = std::map<std::string, std::string, std::less<>>;
  mutable absl::Mutex mutex_;
  std::array<Map, kAllFamilies.size()> families_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace rwr::storage
