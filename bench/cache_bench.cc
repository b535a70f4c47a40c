// cache_bench: what a cache hit costs `rwr distill` (goal < 10 µs). Fills a RocksDB note cache
// (and a MemoryKvStore) with N note records of a realistic size, then times NoteCache::Lookup —
// key hashing, the store read, record parse and the canonical-request check — for hits and misses
// in random order. Median of R rounds; prints a table, optionally JSON.
//
//   cache_bench [--records 20000] [--context-bytes 4096] [--rounds 10] [--dir /tmp/x] [--json F]
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "storage/rocksdb_store.h"
#include "teacher_client/note_cache.h"

namespace {

using rwr::teacher::CacheLookup;
using rwr::teacher::NoteCache;

struct Row {
  std::string store;
  std::string what;
  double median_us;
  double min_us;
};

std::string RandomText(std::mt19937_64& rng, size_t bytes) {
  static const char* kWords[] = {"harbour",    "keeper", "granite", "storm",  "market", "bread",
                                 "lighthouse", "quay",   "north",   "winter", "boat",   "dawn"};
  std::string text;
  while (text.size() < bytes) {
    text += kWords[rng() % 12];
    text += (rng() % 9 == 0) ? ". " : " ";
  }
  text.resize(bytes);
  return text;
}

// Median and min over rounds of the per-lookup time (µs) of looking up every request once.
std::pair<double, double> TimeLookups(const NoteCache& cache,
                                      const std::vector<rwr::v1::CanonicalRequest>& requests,
                                      CacheLookup::Outcome expected, int rounds) {
  std::vector<double> per_op;
  std::vector<size_t> order(requests.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937_64 rng(7);
  for (int round = 0; round < rounds; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    const auto start = std::chrono::steady_clock::now();
    for (size_t i : order) {
      absl::StatusOr<CacheLookup> lookup = cache.Lookup(requests[i]);
      if (!lookup.ok() || lookup->outcome != expected) {
        std::cerr << "cache_bench: unexpected lookup outcome\n";
        std::exit(1);
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    per_op.push_back(seconds * 1e6 / static_cast<double>(requests.size()));
  }
  std::sort(per_op.begin(), per_op.end());
  return {per_op[per_op.size() / 2], per_op.front()};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("cache_bench: cost of a note-cache hit and miss (NoteCache::Lookup)");
  int records = 20000;
  int context_bytes = 4096;
  int rounds = 10;
  std::string dir = (std::filesystem::temp_directory_path() / "rwr_cache_bench").string();
  std::string json_path;
  app.add_option("--records", records, "Records in the cache")->capture_default_str();
  app.add_option("--context-bytes", context_bytes, "Context size per record")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "Timed rounds (median reported)")->capture_default_str();
  app.add_option("--dir", dir, "Scratch directory for the RocksDB cache (removed first)")
      ->capture_default_str();
  app.add_option("--json", json_path, "Also write the results as JSON");
  CLI11_PARSE(app, argc, argv);

  std::mt19937_64 rng(42);
  const rwr::teacher::TeacherInfo teacher{
      .teacher_id = "extractive-bm25", .revision = "1", .prompt_template_version = "extractive-v1"};
  std::vector<rwr::v1::CanonicalRequest> hits, misses;
  for (int i = 0; i < records; ++i) {
    const std::string context = RandomText(rng, context_bytes);
    const std::string question = fmt::format("Who keeps the light of harbour {}?", i);
    hits.push_back(rwr::teacher::NoteRequestFor(teacher, context, question));
    misses.push_back(rwr::teacher::NoteRequestFor(teacher, context, question + " (unseen)"));
  }
  const rwr::teacher::Note note{.text = RandomText(rng, 240), .score = 3.5};

  std::vector<Row> rows;
  auto measure = [&](const std::string& name, rwr::storage::KvStore* store) {
    auto cache = NoteCache::Open(store);
    if (!cache.ok()) {
      std::cerr << "cache_bench: " << cache.status().message() << "\n";
      std::exit(1);
    }
    for (const auto& request : hits) {
      if (!(*cache)->StoreNote(request, note).ok()) std::exit(1);
    }
    if (!store->Flush().ok()) std::exit(1);
    TimeLookups(**cache, hits, CacheLookup::Outcome::kHit, 1);  // warm the block cache
    auto [hit_median, hit_min] = TimeLookups(**cache, hits, CacheLookup::Outcome::kHit, rounds);
    rows.push_back({name, "hit", hit_median, hit_min});
    auto [miss_median, miss_min] =
        TimeLookups(**cache, misses, CacheLookup::Outcome::kMiss, rounds);
    rows.push_back({name, "miss", miss_median, miss_min});
  };

  std::filesystem::remove_all(dir);
  {
    auto rocks = rwr::storage::RocksDbStore::Open(dir);
    if (!rocks.ok()) {
      std::cerr << "cache_bench: " << rocks.status().message() << "\n";
      return 1;
    }
    measure("rocksdb", rocks->get());
  }
  std::filesystem::remove_all(dir);
  rwr::storage::MemoryKvStore memory;
  measure("memory", &memory);

  // The key alone: SHA-256 over the canonical encoding (dominated by the context's bytes).
  std::vector<double> key_us;
  for (int round = 0; round < rounds; ++round) {
    const auto start = std::chrono::steady_clock::now();
    size_t sink = 0;
    for (const auto& request : hits) sink += rwr::teacher::CacheKey(request)[0];
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    key_us.push_back(seconds * 1e6 / static_cast<double>(hits.size()) + (sink == 42 ? 1e-12 : 0));
  }
  std::sort(key_us.begin(), key_us.end());
  rows.push_back({"-", "key only (SHA-256)", key_us[key_us.size() / 2], key_us.front()});

  std::cout << fmt::format("cache_bench: {} records, {}-byte contexts, median of {} rounds\n",
                           records, context_bytes, rounds);
  std::cout << fmt::format("{:<8} {:<20} {:>12} {:>12}\n", "store", "lookup", "median µs",
                           "min µs");
  nlohmann::json json = nlohmann::json::array();
  for (const Row& row : rows) {
    std::cout << fmt::format("{:<8} {:<20} {:>12.2f} {:>12.2f}\n", row.store, row.what,
                             row.median_us, row.min_us);
    json.push_back({{"store", row.store},
                    {"lookup", row.what},
                    {"median_us", row.median_us},
                    {"min_us", row.min_us},
                    {"records", records},
                    {"context_bytes", context_bytes}});
  }
  if (!json_path.empty()) std::ofstream(json_path) << json.dump(2) << "\n";
  return 0;
}
