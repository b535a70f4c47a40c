// Checkpoint save/list/load; see checkpoint.h.
#include "trainer/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/fresh_memory.h"
#include "common/status.h"
#include "fmt/format.h"
#include "storage/atomic_file.h"
#include "storage/safetensors.h"
#include "trainer/model_io.h"
#include "trainer/param_layout.h"

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Removes a checkpoint (or a leftover) so that no reader ever sees part of it: it leaves the
// listing in one rename to a `.tmp` name, and a crash during the removal that follows leaves
// only what the next save clears. Removing the step directory file by file could leave a
// directory whose DONE outlived its weights.
void RemoveCheckpointDir(const fs::path& dir) {
  std::error_code ec;
  const fs::path aside = dir.string() + ".removing.tmp";
  fs::remove_all(aside, ec);
  fs::rename(dir, aside, ec);
  fs::remove_all(ec ? dir : aside, ec);
}

// The step of a checkpoint directory's name, exactly as CheckpointName writes it: 8 digits, more
// from step 100,000,000 on (a name that only parses, as step_7 or step_000000007, is not one).
std::optional<int64_t> StepOf(const std::string& name) {
  if (name.size() < 13 || name.size() > 23 || name.rfind("step_", 0) != 0) return std::nullopt;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
  }
  const int64_t step = std::stoll(name.substr(5));
  if (CheckpointName(step) != name) return std::nullopt;
  return step;
}

// This rank's files of a checkpoint into `dir`, each written atomically and synced (so that a
// checkpoint called complete survives a power loss or a node crash): the optimizer moments of
// its range, and on the lead rank the model and the trainer state.
absl::Status WriteRankFiles(const fs::path& dir, const CheckpointData& data, int rank, bool lead,
                            const std::atomic<bool>* abandon) {
  if (lead) {
    RWR_RETURN_IF_ERROR(SaveModelDir(dir.string(), data.config, data.params, {.abandon = abandon}));
    RWR_RETURN_IF_ERROR(storage::WriteFileAtomically((dir / "trainer_state.json").string(),
                                                     data.state.ToJson().dump(2) + "\n"));
  }
  storage::SafetensorsWriter opt;
  opt.SetMetadata("range_begin", std::to_string(data.opt_begin));
  opt.SetMetadata("range_end", std::to_string(data.opt_end));
  opt.SetMetadata("step", std::to_string(data.opt_step));
  const int64_t n = data.opt_end - data.opt_begin;
  RWR_RETURN_IF_ERROR(opt.AddFloat("exp_avg", {n}, data.exp_avg));
  RWR_RETURN_IF_ERROR(opt.AddFloat("exp_avg_sq", {n}, data.exp_avg_sq));
  const fs::path opt_path = dir / OptimizerFileName(rank);
  return opt.WriteFile(opt_path.string(), abandon);
}

// Where a checkpoint of `step` is written before it is published.
fs::path TmpDir(const std::string& checkpoints_dir, int64_t step) {
  return fs::path(checkpoints_dir) / (CheckpointName(step) + ".tmp");
}

// Leftovers of interrupted saves and removals cleared, and an empty `tmp` made.
absl::Status PrepareTmp(const std::string& checkpoints_dir, const fs::path& tmp) {
  std::error_code ec;
  fs::create_directories(checkpoints_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        fmt::format("cannot create {}: {}", checkpoints_dir, ec.message()));
  }
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp") fs::remove_all(entry.path(), ec);
  }
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) {
    return absl::UnavailableError(fmt::format("cannot create {}: {}", tmp.string(), ec.message()));
  }
  return absl::OkStatus();
}

// DONE written and synced last (with its directory), then the directory renamed into the listing.
absl::Status Publish(const std::string& checkpoints_dir, const fs::path& tmp,
                     const fs::path& final_dir, int64_t step) {
  RWR_RETURN_IF_ERROR(
      storage::WriteFileAtomically((tmp / "DONE").string(), fmt::format("step {}\n", step)));
  if (fs::exists(final_dir)) RemoveCheckpointDir(final_dir);  // re-save of the same step
  std::error_code ec;
  fs::rename(tmp, final_dir, ec);
  if (ec) {
    return absl::UnavailableError(fmt::format("cannot rename {}: {}", tmp.string(), ec.message()));
  }
  return storage::SyncDirectory(checkpoints_dir);
}

// Every rank learns whether every rank's part succeeded, as AgreeOnStatus says: a failure is then
// one every rank ends on in step, printed once, not an MPI_Abort. Without a communicator, `status`.
absl::Status Agree(Communicator* comm, absl::Status status) {
  return comm != nullptr ? AgreeOnStatus(std::move(status), *comm) : status;
}

// Keeps the newest `keep` complete checkpoints up to `saved_step`, the one just written. Those
// past it are left out of the count: they exist only where resume passed them over as
// unreadable, and counting them would delete the readable ones, the one just written included
// (the run could then never resume). The save of their step replaces them.
void PruneCheckpoints(const std::string& checkpoints_dir, int64_t saved_step, int keep) {
  std::vector<std::string> older;  // ascending, the saved step last
  for (const std::string& dir : ListCheckpoints(checkpoints_dir)) {
    if (*StepOf(fs::path(dir).filename().string()) <= saved_step) older.push_back(dir);
  }
  for (size_t i = 0; i + keep < older.size(); ++i) RemoveCheckpointDir(older[i]);
}

}  // namespace

std::string OptimizerFileName(int rank) {
  return fmt::format("optimizer_rank{:05d}.safetensors", rank);
}

absl::StatusOr<TrainerState> ReadTrainerState(const std::string& dir) {
  const std::string path = (fs::path(dir) / "trainer_state.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(fmt::format("{}: missing", path));
  json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    return absl::DataLossError(fmt::format("{}: not valid JSON ({})", path, e.what()));
  }
  return TrainerState::FromJson(j, path);
}

json TrainerState::ToJson() const {
  json j;
  j["step"] = step;
  j["tokens_seen"] = tokens_seen;
  j["nonfinite_in_a_row"] = nonfinite_in_a_row;
  j["data_position"] =
      loader_position_json.empty() ? json(nullptr) : json::parse(loader_position_json);
  j["rng_state"] = std::to_string(rng_state);
  j["world_size"] = world_size;
  j["resolved_config"] = resolved_config_yaml;
  if (!data_dir.empty()) j["data_dir"] = data_dir;
  if (!tokenizer_sha256.empty()) j["tokenizer_sha256"] = tokenizer_sha256;
  j["last_metrics"] = last_metrics;
  return j;
}

absl::StatusOr<TrainerState> TrainerState::FromJson(const json& j, const std::string& source) {
  TrainerState s;
  try {
    s.step = j.at("step").get<int64_t>();
    s.tokens_seen = j.value("tokens_seen", int64_t{0});
    s.nonfinite_in_a_row = j.value("nonfinite_in_a_row", int64_t{0});
    if (j.contains("data_position") && !j["data_position"].is_null()) {
      s.loader_position_json = j["data_position"].dump();
    }
    s.rng_state = std::stoull(j.value("rng_state", std::string("0")));
    s.world_size = j.value("world_size", 1);
    s.resolved_config_yaml = j.value("resolved_config", std::string());
    s.data_dir = j.value("data_dir", std::string());
    s.tokenizer_sha256 = j.value("tokenizer_sha256", std::string());
    s.last_metrics = j.value("last_metrics", json::object());
  } catch (const std::exception& e) {
    return absl::DataLossError(fmt::format("{}: bad trainer state ({})", source, e.what()));
  }
  return s;
}

std::string CheckpointName(int64_t step) { return fmt::format("step_{:08d}", step); }

std::vector<std::string> ListCheckpoints(const std::string& checkpoints_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::string name = entry.path().filename().string();
    auto step = StepOf(name);
    if (!step || !entry.is_directory() || !fs::exists(entry.path() / "DONE")) continue;
    found.emplace_back(*step, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [_, path] : found) out.push_back(path);
  return out;
}

std::vector<std::string> UnpublishedCheckpoints(const std::string& checkpoints_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::string name = entry.path().filename().string();
    // step_NNNNNNNN.tmp; a removal's step_NNNNNNNN.removing.tmp is not one.
    constexpr std::string_view kTmp = ".tmp";
    if (name.size() > kTmp.size() && name.ends_with(kTmp) &&
        StepOf(name.substr(0, name.size() - kTmp.size())) && entry.is_directory(ec)) {
      out.push_back(entry.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<std::string> LatestCheckpoint(const std::string& checkpoints_dir) {
  auto all = ListCheckpoints(checkpoints_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

absl::Status BeginCheckpoint(const std::string& checkpoints_dir, int64_t step, Communicator* comm) {
  const bool lead = comm == nullptr || comm->rank() == 0;
  return Agree(
      comm, lead ? PrepareTmp(checkpoints_dir, TmpDir(checkpoints_dir, step)) : absl::OkStatus());
}

absl::Status WriteCheckpointFiles(const std::string& checkpoints_dir, const CheckpointData& data,
                                  int rank, const std::atomic<bool>* abandon) {
  return WriteRankFiles(TmpDir(checkpoints_dir, data.state.step), data, rank, rank == 0, abandon);
}

absl::StatusOr<std::string> FinishCheckpoint(const std::string& checkpoints_dir, int64_t step,
                                             int keep, absl::Status written, Communicator* comm) {
  const bool lead = comm == nullptr || comm->rank() == 0;
  const fs::path tmp = TmpDir(checkpoints_dir, step);
  const fs::path final_dir = fs::path(checkpoints_dir) / CheckpointName(step);
  written = Agree(comm, std::move(written));
  if (!written.ok()) {
    // Most often a full disk or quota: free what the half-written checkpoint holds, which other
    // jobs on the file system (and the next save) need.
    std::error_code ec;
    if (lead) fs::remove_all(tmp, ec);
    return written;
  }
  RWR_RETURN_IF_ERROR(
      Agree(comm, lead ? Publish(checkpoints_dir, tmp, final_dir, step) : absl::OkStatus()));
  if (lead && keep > 0) PruneCheckpoints(checkpoints_dir, step, keep);
  return final_dir.string();
}

absl::StatusOr<std::string> SaveCheckpoint(const std::string& checkpoints_dir,
                                           const CheckpointData& data, int keep,
                                           Communicator* comm) {
  const int rank = comm != nullptr ? comm->rank() : 0;
  const int64_t step = data.state.step;
  RWR_RETURN_IF_ERROR(BeginCheckpoint(checkpoints_dir, step, comm));
  return FinishCheckpoint(checkpoints_dir, step, keep,
                          WriteCheckpointFiles(checkpoints_dir, data, rank), comm);
}

// The elements [lo, hi) of a F32 tensor holding [begin, end), copied out of the mapped file: only
// the pages of the slice are read, and they leave the resident set as they are copied.
absl::Status CopySlice(const storage::SafetensorsFile& file, std::string_view name, int64_t begin,
                       int64_t end, int64_t lo, int64_t hi, float* out) {
  const storage::TensorInfo* info = file.Find(name);
  if (info == nullptr || info->dtype != storage::DType::kF32 ||
      info->NumElements() != end - begin) {
    return absl::DataLossError(
        fmt::format("{}: {} is not {} F32 values (its range)", file.path(), name, end - begin));
  }
  RWR_ASSIGN_OR_RETURN(std::span<const uint8_t> bytes, file.Bytes(name));
  file.CopyOut(bytes.subspan((lo - begin) * 4, (hi - lo) * 4), out);
  return absl::OkStatus();
}

absl::StatusOr<CheckpointData> LoadCheckpoint(const std::string& dir,
                                              std::optional<ShardRange> range, bool weights) {
  if (!fs::exists(fs::path(dir) / "DONE")) {
    return absl::FailedPreconditionError(
        fmt::format("{}: incomplete checkpoint (no DONE marker)", dir));
  }
  CheckpointData data;
  int64_t total = 0;
  if (weights) {
    RWR_ASSIGN_OR_RETURN(LoadedModel model, LoadModelDir(dir));
    data.config = model.config;
    data.params = std::move(model.params);
    total = static_cast<int64_t>(data.params.size());
  } else {
    RWR_ASSIGN_OR_RETURN(data.config,
                         MambaConfig::FromJsonFile((fs::path(dir) / "config.json").string()));
    total = ParamLayout::ForMamba(data.config).total();
  }
  RWR_ASSIGN_OR_RETURN(data.state, ReadTrainerState(dir));
  // Every rank's file, whichever part this reader needs: a checkpoint missing one is damaged
  // for every reader alike.
  for (int rank = 0; rank < std::max(1, data.state.world_size); ++rank) {
    if (!fs::exists(fs::path(dir) / OptimizerFileName(rank))) {
      return absl::DataLossError(fmt::format("{}: written by {} ranks but {} is missing", dir,
                                             data.state.world_size, OptimizerFileName(rank)));
    }
  }
  const ShardRange want = range.value_or(ShardRange{0, total});
  data.opt_begin = want.begin;
  data.opt_end = want.end;
  data.exp_avg = ZeroedFloats(want.size());  // 22 GB at 2.8B on one rank: paged in by threads
  data.exp_avg_sq = ZeroedFloats(want.size());
  // The moments of `want` from whichever rank files hold them: a run may resume with another
  // number of ranks than wrote the checkpoint (each file's range is in its metadata).
  int64_t covered = 0;
  std::optional<int64_t> step;
  for (int rank = 0;; ++rank) {
    const fs::path path = fs::path(dir) / OptimizerFileName(rank);
    if (!fs::exists(path)) break;
    RWR_ASSIGN_OR_RETURN(auto opt, storage::SafetensorsFile::Open(path.string()));
    int64_t begin = 0, end = 0, file_step = 0;
    try {
      begin = std::stoll(opt->metadata().at("range_begin"));
      end = std::stoll(opt->metadata().at("range_end"));
      file_step = std::stoll(opt->metadata().at("step"));
    } catch (const std::exception&) {
      return absl::DataLossError(fmt::format("{}: optimizer metadata missing", opt->path()));
    }
    if (step && *step != file_step) {
      return absl::DataLossError(
          fmt::format("{}: optimizer step {} disagrees with the other ranks' {}", opt->path(),
                      file_step, *step));
    }
    step = file_step;
    const int64_t lo = std::max(begin, want.begin), hi = std::min(end, want.end);
    if (lo >= hi) continue;
    RWR_RETURN_IF_ERROR(
        CopySlice(*opt, "exp_avg", begin, end, lo, hi, data.exp_avg.data() + (lo - want.begin)));
    RWR_RETURN_IF_ERROR(CopySlice(*opt, "exp_avg_sq", begin, end, lo, hi,
                                  data.exp_avg_sq.data() + (lo - want.begin)));
    covered += hi - lo;
  }
  if (!step) {
    return absl::DataLossError(fmt::format("{}: no {}", dir, OptimizerFileName(0)));
  }
  if (covered != want.size()) {
    return absl::DataLossError(fmt::format(
        "{}: the optimizer files hold {} of the {} moments of [{}, {}) (a rank's file is missing)",
        dir, covered, want.size(), want.begin, want.end));
  }
  data.opt_step = *step;
  return data;
}

absl::StatusOr<std::string> ResolveCheckpointDir(const std::string& path) {
  if (!fs::exists(path)) return absl::NotFoundError(fmt::format("{}: no such directory", path));
  if (fs::exists(fs::path(path) / "DONE")) return path;
  if (StepOf(fs::path(path).filename().string())) {
    return absl::FailedPreconditionError(
        fmt::format("{}: incomplete checkpoint (no DONE marker)", path));
  }
  for (const fs::path& dir : {fs::path(path), fs::path(path) / "checkpoints"}) {
    if (auto latest = LatestCheckpoint(dir.string())) return *latest;
  }
  return absl::NotFoundError(
      fmt::format("{}: no complete checkpoint (step_NNNNNNNN/ with DONE) "
                  "found here or under checkpoints/",
                  path));
}

}  // namespace rwr::trainer
