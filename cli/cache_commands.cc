// `rwr cache inspect|publish`: look inside a note cache (counts per family, schema version, item
// states, sample records), and publish a read-only RocksDB checkpoint of it for training jobs.
// See docs/cache.md.
#include <iostream>
#include <string>

#include "cli/command.h"
#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "rwr/v1/distill.pb.h"
#include "storage/rocksdb_store.h"
#include "teacher_client/note_cache.h"

namespace rwr::cli {
namespace {

using nlohmann::json;

std::string Shorten(const std::string& text, size_t limit) {
  if (text.size() <= limit) return text;
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80)
    --cut;  // UTF-8 boundary
  return text.substr(0, cut) + fmt::format("… ({} bytes)", text.size());
}

json RecordSample(std::string_view key, std::string_view value, size_t limit) {
  v1::CacheRecord record;
  if (!record.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
    return {{"key", teacher::KeyHex(key)}, {"error", "does not parse"}};
  }
  const v1::CanonicalRequest& r = record.request();
  json request = {{"task", v1::TeacherTaskKind_Name(r.task())},
                  {"teacher_id", r.teacher_id()},
                  {"teacher_revision", r.teacher_revision()},
                  {"prompt_template_version", r.prompt_template_version()}};
  if (!r.context().empty()) request["context"] = Shorten(r.context(), limit);
  if (!r.question().empty()) request["question"] = Shorten(r.question(), limit);
  if (!r.answer().empty()) request["answer"] = Shorten(r.answer(), limit);
  if (!r.note().empty()) request["note"] = Shorten(r.note(), limit);
  json answer;
  if (record.has_note()) {
    answer = {{"note", Shorten(record.note().note(), limit)},
              {"empty", record.note().empty()},
              {"score", record.note().score()}};
  } else if (record.has_verdict()) {
    answer = {{"consistent", record.verdict().consistent()}, {"score", record.verdict().score()}};
  } else if (record.has_negative()) {
    answer = {{"context", Shorten(record.negative().context(), limit)},
              {"removed_paragraphs", record.negative().removed_paragraphs()},
              {"answer_still_present", record.negative().answer_still_present()}};
  }
  const bool intact = teacher::CacheKey(r) == key;
  return {{"key", teacher::KeyHex(key)},
          {"schema_version", record.schema_version()},
          {"intact", intact},
          {"request", request},
          {"answer", answer}};
}

struct InspectFlags {
  CommonOptions common;
  std::string dir;
  bool json_output = false;
  int samples = 2;
};

absl::Status InspectCommand(InspectFlags& f) {
  if (f.common.log_level == "info") f.common.log_level = "warn";  // the report is the output
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "cache inspect"));
  (void)config;
  if (f.samples < 0) return absl::InvalidArgumentError("--samples must be >= 0");
  // Read-only: works on a published copy, and beside a running writer (as of the open).
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<storage::RocksDbStore> store,
                       storage::RocksDbStore::Open(f.dir, {.read_only = true}));
  RWR_ASSIGN_OR_RETURN(std::optional<std::string> version,
                       store->Get(storage::Family::kMeta, teacher::kSchemaVersionKey));
  json report;
  report["path"] = f.dir;
  if (version.has_value()) {
    char* end = nullptr;
    const long number = std::strtol(version->c_str(), &end, 10);
    report["schema_version"] =
        (end != version->c_str() && *end == '\0') ? json(number) : json(*version);
  } else {
    report["schema_version"] = nullptr;
  }
  json families = json::object();
  json samples = json::object();
  for (storage::Family family : storage::kAllFamilies) {
    RWR_ASSIGN_OR_RETURN(int64_t count, store->Count(family));
    families[std::string(storage::FamilyName(family))] = count;
  }
  for (storage::Family family :
       {storage::Family::kNotes, storage::Family::kVerdicts, storage::Family::kNegatives}) {
    json list = json::array();
    RWR_RETURN_IF_ERROR(
        store->ForEach(family, "", [&](std::string_view key, std::string_view value) {
          if (static_cast<int>(list.size()) >= f.samples) return false;
          list.push_back(RecordSample(key, value, 160));
          return true;
        }));
    samples[std::string(storage::FamilyName(family))] = list;
  }
  // Item outcomes and jobs (jobs family).
  json items = {{"kept", 0}, {"dropped", 0}, {"failed", 0}};
  json failed_samples = json::array();
  RWR_RETURN_IF_ERROR(
      store->ForEach(storage::Family::kJobs, teacher::kItemKeyPrefix,
                     [&](std::string_view, std::string_view value) {
                       v1::ItemRecord item;
                       if (!item.ParseFromArray(value.data(), static_cast<int>(value.size())))
                         return true;
                       if (item.state() == v1::ItemRecord::KEPT)
                         items["kept"] = items["kept"].get<int64_t>() + 1;
                       if (item.state() == v1::ItemRecord::DROPPED)
                         items["dropped"] = items["dropped"].get<int64_t>() + 1;
                       if (item.state() == v1::ItemRecord::FAILED) {
                         items["failed"] = items["failed"].get<int64_t>() + 1;
                         if (static_cast<int>(failed_samples.size()) < std::max(f.samples, 5)) {
                           failed_samples.push_back({{"id", item.id()},
                                                     {"source", item.source()},
                                                     {"stage", item.failed_stage()},
                                                     {"reason", item.failure()},
                                                     {"attempts", item.attempts()}});
                         }
                       }
                       return true;
                     }));
  json jobs = json::array();
  RWR_RETURN_IF_ERROR(
      store->ForEach(storage::Family::kJobs, teacher::kJobKeyPrefix,
                     [&](std::string_view, std::string_view value) {
                       v1::Job job;
                       if (job.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
                         jobs.push_back({{"job_id", job.job_id()},
                                         {"state", v1::Job::State_Name(job.state())},
                                         {"dataset", job.dataset_path()},
                                         {"items_done", job.counts().items_done()},
                                         {"items", job.counts().items()},
                                         {"cancel_requested", job.cancel_requested()},
                                         {"waiting", job.waiting()}});
                       }
                       return true;
                     }));
  report["families"] = families;
  report["items"] = items;
  report["failed_items"] = failed_samples;
  report["jobs"] = jobs;
  report["samples"] = samples;

  if (f.json_output) {
    std::cout << report.dump(2) << std::endl;
    return absl::OkStatus();
  }
  std::cout << fmt::format("cache {}: schema version {}\n", f.dir,
                           version.has_value() ? *version : "(none: not written by rwr distill)");
  for (storage::Family family : storage::kAllFamilies) {
    const std::string name(storage::FamilyName(family));
    std::cout << fmt::format("  {:<10} {:>10}\n", name, families[name].get<int64_t>());
  }
  std::cout << fmt::format("items: {} kept, {} dropped by verification, {} failed\n",
                           items["kept"].get<int64_t>(), items["dropped"].get<int64_t>(),
                           items["failed"].get<int64_t>());
  for (const json& failed : failed_samples) {
    std::cout << fmt::format("  failed {} ({}) at {}: {}\n", failed["id"].get<std::string>(),
                             failed["source"].get<std::string>(),
                             failed["stage"].get<std::string>(),
                             failed["reason"].get<std::string>());
  }
  for (const json& job : jobs) {
    const uint64_t total = job["items"].get<uint64_t>();
    const uint64_t done = job["items_done"].get<uint64_t>();
    const std::string state = job["state"].get<std::string>();
    // items is 0 until the service reports the dataset's total (queued, or saved while running).
    const std::string progress =
        total > 0
            ? fmt::format("{}/{} items", done, total)
            : fmt::format("{} items done{}", done,
                          state == "QUEUED" || state == "RUNNING" ? " (total not known yet)" : "");
    const bool cancelling = state == "RUNNING" && job["cancel_requested"].get<bool>();
    // The service's last word on a job waiting for its teacher, as persisted.
    const std::string waiting = job["waiting"].get<std::string>();
    std::cout << fmt::format("job {} {}{}: {}, {}{}\n", job["job_id"].get<std::string>(), state,
                             cancelling ? " (cancel requested)" : "", progress,
                             job["dataset"].get<std::string>(),
                             state == "QUEUED" && !waiting.empty() ? "; waiting: " + waiting : "");
  }
  for (auto& [family, list] : samples.items()) {
    for (const json& sample : list) {
      std::cout << fmt::format("sample {} {}{}:\n  request {}\n  answer  {}\n", family,
                               sample["key"].get<std::string>().substr(0, 16),
                               sample.value("intact", true) ? "" : " (NOT INTACT: key mismatch)",
                               sample.value("request", json::object()).dump(),
                               sample.value("answer", json::object()).dump());
    }
  }
  return absl::OkStatus();
}

void AddInspect(CLI::App* group) {
  auto* f = NewFlags<InspectFlags>();
  CLI::App* cmd = group->add_subcommand(
      "inspect",
      "Counts per family, schema version, item outcomes (failed items with reasons), distill "
      "jobs and sample records of a cache (opened read-only)");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("dir", f->dir, "Cache directory")->required();
  cmd->add_flag("--json", f->json_output,
                "Print JSON: schema_version, families (name -> count), items, failed_items, jobs, "
                "samples");
  cmd->add_option("--samples", f->samples, "Sample records per family")->capture_default_str();
  SetAction(cmd, [f] { return InspectCommand(*f); });
}

struct PublishFlags {
  CommonOptions common;
  std::string dir;
  std::string to;
};

absl::Status PublishCommand(PublishFlags& f) {
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "cache publish"));
  (void)config;
  RWR_RETURN_IF_ERROR(storage::PublishCheckpoint(f.dir, f.to));
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<storage::RocksDbStore> published,
                       storage::RocksDbStore::Open(f.to, {.read_only = true}));
  std::string counts;
  for (storage::Family family : storage::kAllFamilies) {
    RWR_ASSIGN_OR_RETURN(int64_t count, published->Count(family));
    counts +=
        fmt::format("{}{} {}", counts.empty() ? "" : ", ", count, storage::FamilyName(family));
  }
  std::cout << fmt::format("published {} to {} (read-only checkpoint: {})", f.dir, f.to, counts)
            << std::endl;
  return absl::OkStatus();
}

void AddPublish(CLI::App* group) {
  auto* f = NewFlags<PublishFlags>();
  CLI::App* cmd = group->add_subcommand(
      "publish",
      "Publish a consistent read-only copy of a cache (a RocksDB checkpoint; hard links where "
      "possible) for training jobs. The source must not be open in another process.");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("dir", f->dir, "Cache directory to publish")->required();
  cmd->add_option("--to", f->to,
                  "New directory for the published copy (must not exist; missing parent "
                  "directories are created). rwr refuses to open the copy for writing.")
      ->required();
  SetAction(cmd, [f] { return PublishCommand(*f); });
}

}  // namespace

void RegisterCacheCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand("cache", "Inspect and publish the teacher's note cache");
  group->require_subcommand(1);
  AddInspect(group);
  AddPublish(group);
}

}  // namespace rwr::cli
