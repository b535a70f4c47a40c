// RocksDbStore: the KvStore on disk — one RocksDB database, one column family per cache family
// (notes, verdicts, negatives, jobs, meta), plus `rwr cache publish` (a RocksDB checkpoint).
//
// Durability contract (also in docs/cache.md):
//   * The write-ahead log is always on. Every write that returned OK (Put, Delete, Write) is in
//     the WAL before it returns, so it survives the process being killed at any moment
//     (kill -9, OOM killer, a crash): RocksDB replays the WAL on the next Open.
//   * Power loss or a kernel crash: only writes made with `sync_writes = true` (each write fsyncs
//     the WAL before returning), or written before a successful Sync(), are guaranteed. With the
//     default `sync_writes = false` the last few writes may be lost, never a torn batch: a
//     WriteBatch is one WAL record and recovery keeps whole records only.
//   * `sync_writes` is the option that trades the power-loss guarantee for speed (an fsync per
//     write costs ~0.1-10 ms depending on the disk). Losing a cached teacher answer only costs a
//     repeated teacher call, so the cache defaults to false; `rwr distill` calls Sync() at the
//     end of a run and on clean shutdown.
//
// Tuning, chosen on purpose (see docs/cache.md): point lookups dominate (every teacher call first
// asks the cache, and most first-run lookups miss), so every family has a 10 bits/key Bloom
// filter (~1% false positives) over whole keys; values are note/context text, which compresses
// well: LZ4 on the upper levels (cheap), ZSTD on the bottommost level (most bytes live there).
// One shared 64 MiB LRU block cache. One process opens a database read-write at a time (RocksDB's
// LOCK file); any number may open a published checkpoint read-only. A published checkpoint carries
// kPublishedMarkerFile, and Open refuses it for writing: what training jobs read stays as
// published.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "storage/kv_store.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace rwr::storage {

// Written by PublishCheckpoint into the published copy; its `source: DIR` line names the cache it
// was published from. Open(.., {read_only = false}) refuses a directory that holds it.
inline constexpr char kPublishedMarkerFile[] = "RWR_PUBLISHED";

struct RocksDbOptions {
  bool read_only = false;         // open an existing database (or checkpoint) for reading only
  bool create_if_missing = true;  // ignored when read_only
  bool sync_writes = false;       // fsync the WAL on every write (power-loss durable, slower)
  size_t block_cache_bytes = 64 << 20;
};

class RocksDbStore final : public KvStore {
 public:
  static absl::StatusOr<std::unique_ptr<RocksDbStore>> Open(const std::string& path,
                                                            const RocksDbOptions& options = {});
  ~RocksDbStore() override;
  RocksDbStore(const RocksDbStore&) = delete;
  RocksDbStore& operator=(const RocksDbStore&) = delete;

  absl::StatusOr<std::optional<std::string>> Get(Family family,
                                                 std::string_view key) const override;
  absl::Status Put(Family family, std::string_view key, std::string_view value) override;
  absl::Status Delete(Family family, std::string_view key) override;
  absl::Status Write(const WriteBatch& batch) override;
  absl::Status ForEach(Family family, std::string_view prefix,
                       const KvVisitor& visit) const override;
  absl::Status Flush() override;
  absl::Status Sync() override;

  // A consistent, openable copy of the database at `target_dir` (which must not exist; missing
  // parents are created), made of hard links where the file system allows, and marked published
  // (kPublishedMarkerFile). Built in a sibling directory and renamed into place, so `target_dir`
  // never exists without its marker. The copy opens with Open(.., {read_only = true}) only.
  absl::Status Checkpoint(const std::string& target_dir);

  const std::string& path() const { return path_; }
  bool read_only() const { return options_.read_only; }

 private:
  RocksDbStore(std::string path, RocksDbOptions options);
  absl::Status CheckWritable() const;

  std::string path_;
  RocksDbOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // every opened family, default included
  std::array<rocksdb::ColumnFamilyHandle*, kAllFamilies.size()> family_handles_{};
};

// `rwr cache publish SRC --to DST`: opens SRC read-write (fails clearly if another process holds
// it, or if SRC is itself a published copy), checkpoints it to DST, and checks that DST opens
// read-only.
absl::Status PublishCheckpoint(const std::string& source_dir, const std::string& target_dir);

// The cache `dir` was published from when `dir` is a published copy ("" when its marker does not
// say), nullopt when it is not one.
std::optional<std::string> PublishedFrom(const std::string& dir);

}  // namespace rwr::storage
