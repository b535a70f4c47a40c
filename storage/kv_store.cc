// KvStore helpers shared by every implementation, and MemoryKvStore.
#include "storage/kv_store.h"

#include <utility>

#include "fmt/format.h"

namespace rwr::storage {

std::string_view FamilyName(Family family) {
  switch (family) {
    case Family::kNotes:
      return "notes";
    case Family::kVerdicts:
      return "verdicts";
    case Family::kNegatives:
      return "negatives";
    case Family::kJobs:
      return "jobs";
    case Family::kMeta:
      return "meta";
  }
  return "unknown";
}

absl::StatusOr<Family> FamilyFromName(std::string_view name) {
  for (Family family : kAllFamilies) {
    if (FamilyName(family) == name) return family;
  }
  return absl::InvalidArgumentError(fmt::format(
      "unknown cache family '{}'; expected notes, verdicts, negatives, jobs or meta", name));
}

void WriteBatch::Put(Family family, std::string_view key, std::string_view value) {
  ops_.push_back({family, false, std::string(key), std::string(value)});
}

void WriteBatch::Delete(Family family, std::string_view key) {
  ops_.push_back({family, true, std::string(key), std::string()});
}

absl::StatusOr<int64_t> KvStore::Count(Family family) const {
  int64_t count = 0;
  absl::Status status = ForEach(family, "", [&count](std::string_view, std::string_view) {
    ++count;
    return true;
  });
  if (!status.ok()) return status;
  return count;
}

absl::StatusOr<std::optional<std::string>> MemoryKvStore::Get(Family family,
                                                              std::string_view key) const {
  absl::MutexLock lock(&mutex_);
  const Map& map = families_[static_cast<size_t>(family)];
  auto it = map.find(key);
  if (it == map.end()) return std::optional<std::string>();
  return std::optional<std::string>(it->second);
}

absl::Status MemoryKvStore::Put(Family family, std::string_view key, std::string_view value) {
  absl::MutexLock lock(&mutex_);
  families_[static_cast<size_t>(family)].insert_or_assign(std::string(key), std::string(value));
  return absl::OkStatus();
}

absl::Status MemoryKvStore::Delete(Family family, std::string_view key) {
  absl::MutexLock lock(&mutex_);
  Map& map = families_[static_cast<size_t>(family)];
  auto it = map.find(key);
  if (it != map.end()) map.erase(it);
  return absl::OkStatus();
}

absl::Status MemoryKvStore::Write(const WriteBatch& batch) {
  absl::MutexLock lock(&mutex_);  // one lock for the whole batch: readers see all or nothing
  for (const WriteBatch::Op& op : batch.ops()) {
    Map& map = families_[static_cast<size_t>(op.family)];
    if (op.is_delete) {
      map.erase(op.key);
    } else {
      map.insert_or_assign(op.key, op.value);
    }
  }
  return absl::OkStatus();
}

absl::Status MemoryKvStore::ForEach(Family family, std::string_view prefix,
                                    const KvVisitor& visit) const {
  // Copy the matching range under the lock, visit without it: a snapshot, and the visitor may
  // write to the store.
  std::vector<std::pair<std::string, std::string>> snapshot;
  {
    absl::MutexLock lock(&mutex_);
    const Map& map = families_[static_cast<size_t>(family)];
    for (auto it = map.lower_bound(prefix); it != map.end(); ++it) {
      if (std::string_view(it->first).substr(0, prefix.size()) != prefix) break;
      snapshot.emplace_back(it->first, it->second);
    }
  }
  for (const auto& [key, value] : snapshot) {
    if (!visit(key, value)) break;
  }
  return absl::OkStatus();
}

}  // namespace rwr::storage
