// RocksDbStore: KvStore over RocksDB column families. Durability and tuning: rocksdb_store.h.
#include "storage/rocksdb_store.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/call_status_rocksdb.h"
#include "fmt/format.h"

namespace rwr::storage {
namespace {

rocksdb::Slice ToSlice(std::string_view bytes) {
  return rocksdb::Slice(bytes.data(), bytes.size());
}

rocksdb::ColumnFamilyOptions FamilyOptions(const std::shared_ptr<rocksdb::Cache>& block_cache) {
  rocksdb::ColumnFamilyOptions options;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = block_cache;
  // Most lookups are "is this request cached?" and on a first run most answers are no: a Bloom
  // filter per SST answers those without reading a data block.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10, /*use_block_based_builder=*/false));
  table.whole_key_filtering = true;
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Text values: LZ4 where data is rewritten often, ZSTD where most of it finally rests.
  options.compression = rocksdb::kLZ4Compression;
  options.bottommost_compression = rocksdb::kZSTD;
  return options;
}

}  // namespace

RocksDbStore::RocksDbStore(std::string path, RocksDbOptions options)
    : path_(std::move(path)), options_(options) {}

RocksDbStore::~RocksDbStore() {
  if (db_ == nullptr) return;
  for (rocksdb::ColumnFamilyHandle* handle : handles_) {
    rocksdb::Status s = db_->DestroyColumnFamilyHandle(handle);
    (void)s;  // a handle-release failure at exit leaves nothing to recover
  }
  rocksdb::Status s = db_->Close();
  (void)s;  // Close only fails if handles are still open; all were released above
}

absl::StatusOr<std::unique_ptr<RocksDbStore>> RocksDbStore::Open(const std::string& path,
                                                                 const RocksDbOptions& options) {
  std::unique_ptr<RocksDbStore> store(new RocksDbStore(path, options));
  std::shared_ptr<rocksdb::Cache> block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);

  rocksdb::DBOptions db_options;
  db_options.create_if_missing = options.create_if_missing && !options.read_only;
  db_options.create_missing_column_families = !options.read_only;
  db_options.info_log_level = rocksdb::WARN_LEVEL;
  db_options.keep_log_file_num = 3;
  db_options.max_background_jobs = 2;

  if (options.read_only && !std::filesystem::exists(std::filesystem::path(path) / "CURRENT")) {
    return absl::NotFoundError(
        fmt::format("{}: no cache here (no RocksDB CURRENT file); check the path", path));
  }

  if (!options.read_only) {
    // Training jobs read a published copy while they run; it stays as published.
    if (std::optional<std::string> source = PublishedFrom(path); source.has_value()) {
      return absl::FailedPreconditionError(fmt::format(
          "{}: a published copy of a cache (`rwr cache publish`), which is read-only; write to "
          "the live cache {} instead",
          path, source->empty() ? "it was published from" : *source));
    }
    std::error_code error;
    std::filesystem::create_directories(path, error);
    if (error) {
      return absl::UnavailableError(
          fmt::format("{}: cannot create the cache directory: {}", path, error.message()));
    }
  }

  // Open every family already in the database (RocksDB requires it) plus ours.
  std::vector<std::string> names;
  rocksdb::Status listed = rocksdb::DB::ListColumnFamilies(db_options, path, &names);
  if (!listed.ok()) names.clear();  // a new database has none yet
  if (std::find(names.begin(), names.end(), rocksdb::kDefaultColumnFamilyName) == names.end()) {
    names.push_back(rocksdb::kDefaultColumnFamilyName);
  }
  for (Family family : kAllFamilies) {
    const std::string name(FamilyName(family));
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      if (options.read_only) {
        return absl::FailedPreconditionError(fmt::format(
            "{}: not an rwr cache (column family '{}' missing); was it made by rwr distill?", path,
            name));
      }
      names.push_back(name);
    }
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) {
    descriptors.emplace_back(name, FamilyOptions(block_cache));
  }

  rocksdb::DB* db = nullptr;
  if (options.read_only) {
    RWR_ROCKSDB(rocksdb::DB::OpenForReadOnly(db_options, path, descriptors, &store->handles_, &db));
  } else {
    rocksdb::Status opened =
        rocksdb::DB::Open(db_options, path, descriptors, &store->handles_, &db);
    if (!opened.ok() && opened.IsIOError() && opened.ToString().find("lock") != std::string::npos) {
      return absl::FailedPreconditionError(fmt::format(
          "{}: the cache is open in another process (one writer at a time; stop the other "
          "rwr distill, or publish a read-only copy with `rwr cache publish`)",
          path));
    }
    RWR_ROCKSDB(opened);
  }
  store->db_.reset(db);
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StatusOr<Family> family = FamilyFromName(names[i]);
    if (family.ok()) store->family_handles_[static_cast<size_t>(*family)] = store->handles_[i];
  }
  return store;
}

absl::Status RocksDbStore::CheckWritable() const {
  if (options_.read_only) {
    return absl::FailedPreconditionError(
        fmt::format("{}: opened read-only (a published cache); writes are refused", path_));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> RocksDbStore::Get(Family family,
                                                             std::string_view key) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), family_handles_[static_cast<size_t>(family)],
                               ToSlice(key), &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  RWR_ROCKSDB(s);
  return std::optional<std::string>(std::move(value));
}

absl::Status RocksDbStore::Put(Family family, std::string_view key, std::string_view value) {
  RWR_RETURN_IF_ERROR(CheckWritable());
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync_writes;
  RWR_ROCKSDB(db_->Put(write_options, family_handles_[static_cast<size_t>(family)], ToSlice(key),
                       ToSlice(value)));
  return absl::OkStatus();
}

absl::Status RocksDbStore::Delete(Family family, std::string_view key) {
  RWR_RETURN_IF_ERROR(CheckWritable());
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync_writes;
  RWR_ROCKSDB(
      db_->Delete(write_options, family_handles_[static_cast<size_t>(family)], ToSlice(key)));
  return absl::OkStatus();
}

absl::Status RocksDbStore::Write(const WriteBatch& batch) {
  RWR_RETURN_IF_ERROR(CheckWritable());
  rocksdb::WriteBatch rocks_batch;
  for (const WriteBatch::Op& op : batch.ops()) {
    rocksdb::ColumnFamilyHandle* handle = family_handles_[static_cast<size_t>(op.family)];
    if (op.is_delete) {
      RWR_ROCKSDB(rocks_batch.Delete(handle, op.key));
    } else {
      RWR_ROCKSDB(rocks_batch.Put(handle, op.key, op.value));
    }
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync_writes;
  RWR_ROCKSDB(db_->Write(write_options, &rocks_batch));
  return absl::OkStatus();
}

absl::Status RocksDbStore::ForEach(Family family, std::string_view prefix,
                                   const KvVisitor& visit) const {
  rocksdb::ReadOptions read_options;
  read_options.fill_cache = false;  // scans (inspect, data build) should not evict hot lookups
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(read_options, family_handles_[static_cast<size_t>(family)]));
  for (it->Seek(ToSlice(prefix)); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    if (!key.starts_with(ToSlice(prefix))) break;
    const rocksdb::Slice value = it->value();
    if (!visit(std::string_view(key.data(), key.size()),
               std::string_view(value.data(), value.size()))) {
      break;
    }
  }
  RWR_ROCKSDB(it->status());
  return absl::OkStatus();
}

absl::Status RocksDbStore::Flush() {
  if (options_.read_only) return absl::OkStatus();
  std::vector<rocksdb::ColumnFamilyHandle*> handles(family_handles_.begin(), family_handles_.end());
  RWR_ROCKSDB(db_->Flush(rocksdb::FlushOptions(), handles));
  return absl::OkStatus();
}

absl::Status RocksDbStore::Sync() {
  if (options_.read_only) return absl::OkStatus();
  RWR_ROCKSDB(db_->SyncWAL());
  return absl::OkStatus();
}

absl::Status RocksDbStore::Checkpoint(const std::string& target_dir) {
  namespace fs = std::filesystem;
  fs::path target(target_dir);
  if (!target.has_filename()) target = target.parent_path();  // "DIR/" names DIR
  std::error_code error;
  if (fs::exists(target, error)) {
    return absl::AlreadyExistsError(
        fmt::format("{}: already exists; publish needs a new directory (remove it or pick another)",
                    target_dir));
  }
  // A publish target several levels down (`--to /scratch/run7/cache`) is normal; create its
  // parents as `mkdir -p` would.
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  fs::create_directories(parent, error);
  if (error) {
    return absl::UnavailableError(fmt::format("{}: cannot create its parent directory {}: {}",
                                              target_dir, parent.string(), error.message()));
  }
  // Built beside the target and renamed into place when marked: a publish killed midway leaves
  // TARGET.publishing-PID behind, never a target without its marker.
  const fs::path staging =
      parent / fmt::format("{}.publishing-{}", target.filename().string(), ::getpid());
  fs::remove_all(staging, error);
  fs::remove_all(staging.string() + ".tmp", error);  // RocksDB's own staging directory
  absl::Status made = [&]() -> absl::Status {
    rocksdb::Checkpoint* raw = nullptr;
    RWR_ROCKSDB(rocksdb::Checkpoint::Create(db_.get(), &raw));
    std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
    // log_size_for_flush = 0: flush memtables first, so the copy needs no WAL replay.
    RWR_ROCKSDB(checkpoint->CreateCheckpoint(staging.string(), /*log_size_for_flush=*/0));
    const fs::path marker = staging / kPublishedMarkerFile;
    {
      std::ofstream out(marker, std::ios::trunc);
      out << "rwr cache publish: a read-only copy of a cache; rwr refuses to open it for writing\n"
          << "source: " << fs::absolute(path_).lexically_normal().string() << "\n";
      if (!out.flush()) {
        return absl::UnavailableError(fmt::format("{}: cannot write", marker.string()));
      }
    }
    std::error_code renamed;
    fs::rename(staging, target, renamed);
    if (renamed) {
      return absl::UnavailableError(
          fmt::format("{}: cannot move the copy into place: {}", target_dir, renamed.message()));
    }
    return absl::OkStatus();
  }();
  if (!made.ok()) fs::remove_all(staging, error);
  return made;
}

std::optional<std::string> PublishedFrom(const std::string& dir) {
  std::ifstream in(std::filesystem::path(dir) / kPublishedMarkerFile);
  if (!in) return std::nullopt;
  constexpr std::string_view kSource = "source: ";
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(kSource, 0) == 0) return line.substr(kSource.size());
  }
  return std::string();
}

absl::Status PublishCheckpoint(const std::string& source_dir, const std::string& target_dir) {
  if (!std::filesystem::exists(std::filesystem::path(source_dir) / "CURRENT")) {
    return absl::NotFoundError(
        fmt::format("{}: no cache here (no RocksDB CURRENT file)", source_dir));
  }
  if (std::optional<std::string> source = PublishedFrom(source_dir); source.has_value()) {
    return absl::FailedPreconditionError(
        fmt::format("{}: already a published copy (of {}); publish the live cache instead",
                    source_dir, source->empty() ? "another cache" : *source));
  }
  {
    RWR_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbStore> source,
                         RocksDbStore::Open(source_dir, {.create_if_missing = false}));
    RWR_RETURN_IF_ERROR(source->Checkpoint(target_dir));
  }
  // The published copy must open the way a training job will open it.
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbStore> published,
                       RocksDbStore::Open(target_dir, {.read_only = true}));
  return absl::OkStatus();
}

}  // namespace rwr::storage
