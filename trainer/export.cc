// Checkpoint → Hugging Face layout; see export.h.
#include "trainer/export.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <filesystem>
#include <fstream>

#include "common/config.h"
#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "storage/safetensors.h"
#include "trainer/checkpoint.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_io.h"
#include "trainer/rng.h"

namespace rwr::trainer {
namespace {

namespace fs = std::filesystem;

// tokenizer.json of a data directory: the file itself, else the one `rwr data build` recorded in
// manifest.json as build.tokenizer.path (as given then, or relative to the data directory).
std::string TokenizerInDataDir(const fs::path& data_dir) {
  if (fs::is_regular_file(data_dir / "tokenizer.json"))
    return (data_dir / "tokenizer.json").string();
  std::ifstream manifest(data_dir / "manifest.json");
  nlohmann::json m;
  try {
    manifest >> m;
    const nlohmann::json path = m.value("build", nlohmann::json::object())
                                    .value("tokenizer", nlohmann::json::object())
                                    .value("path", nlohmann::json());
    if (path.is_string()) {
      for (const fs::path& p :
           {fs::path(path.get<std::string>()), data_dir / path.get<std::string>()}) {
        if (fs::is_regular_file(p)) return p.string();
      }
    }
  } catch (...) {
  }
  return "";
}

// tokenizer.json for a checkpoint, or "" if none is found. First the data directory the run
// recorded as an absolute path (trainer_state.json data_dir: right from any working directory);
// then the resolved config's tokenizer keys and its data.dir, which may be relative to where the
// run was started (checkpoints written before data_dir existed have only these).
std::string FindTokenizer(const std::string& checkpoint_dir) {
  auto state = ReadTrainerState(checkpoint_dir);
  if (!state.ok()) return "";
  if (!state->data_dir.empty()) {
    std::string found = TokenizerInDataDir(state->data_dir);
    if (!found.empty()) return found;
  }
  auto config = Config::Parse(state->resolved_config_yaml, "checkpoint config");
  if (!config.ok()) return "";
  for (const char* key : {"data.tokenizer", "tokenizer.path", "tokenizer"}) {
    auto value = config->GetOr<std::string>(key, "");
    if (value.ok() && !value->empty() && fs::is_regular_file(*value)) return *value;
  }
  auto data_dir = config->GetOr<std::string>("data.dir", "");
  if (data_dir.ok() && !data_dir->empty()) return TokenizerInDataDir(*data_dir);
  return "";
}

// The tokenizer to copy: the one given, else the checkpoint's; "" only when the user asked for
// the weights alone. A missing tokenizer is an error rather than a warning: an export without one
// does not load as a text model, and the user learns it only at serving time.
absl::StatusOr<std::string> ChooseTokenizer(const ExportOptions& options,
                                            const std::string& checkpoint_dir) {
  if (!options.tokenizer.empty()) {
    if (!fs::is_regular_file(options.tokenizer)) {
      return absl::NotFoundError(fmt::format("--tokenizer {}: no such file", options.tokenizer));
    }
    return options.tokenizer;
  }
  if (options.without_tokenizer) return std::string();
  std::string found = FindTokenizer(checkpoint_dir);
  if (found.empty()) {
    return absl::NotFoundError(fmt::format(
        "{}: no tokenizer.json found through the run's data dir or config; pass --tokenizer FILE, "
        "or --no-tokenizer to export the weights alone",
        checkpoint_dir));
  }
  return found;
}

absl::StatusOr<SaveModelDirOptions> SaveOptionsFor(const ExportOptions& options) {
  SaveModelDirOptions save;
  if (options.dtype == "bf16") {
    save.dtype = storage::DType::kBF16;
  } else if (options.dtype == "fp32") {
    save.dtype = storage::DType::kF32;
  } else {
    return absl::InvalidArgumentError(
        fmt::format("--dtype {}: expected bf16 or fp32", options.dtype));
  }
  if (options.max_shard_bytes == 0) {
    return absl::InvalidArgumentError("max shard size is 0: expected a positive size");
  }
  save.max_shard_bytes = options.max_shard_bytes;
  return save;
}

// rwr_check.safetensors in `dir`: rwr's logits of the weights as exported (read back, so bf16
// rounding is included) on fixed random ids.
absl::Status WriteCheck(const std::string& dir) {
  RWR_ASSIGN_OR_RETURN(LoadedModel exported, LoadModelDir(dir));
  MambaCpu cpu(exported.config);
  const int64_t T = 23;
  Rng rng(7);
  std::vector<int32_t> tokens(T), targets(T, 0);
  std::vector<uint8_t> mask(T, 0), reset(T, 0);
  reset[0] = 1;
  for (auto& t : tokens) t = static_cast<int32_t>(rng.Next() % exported.config.vocab_size);
  std::vector<float> logits(T * exported.config.vocab_size);  // (1, T, V)
  RWR_RETURN_IF_ERROR(cpu.Forward(exported.params,
                                  {1, T, tokens.data(), targets.data(), mask.data(), reset.data()},
                                  0, logits.data())
                          .status());
  storage::SafetensorsWriter check;
  std::vector<int64_t> ids(tokens.begin(), tokens.end());
  RWR_RETURN_IF_ERROR(check.AddInt64("input_ids", {1, T}, ids));
  RWR_RETURN_IF_ERROR(check.AddFloat("logits", {1, T, exported.config.vocab_size}, logits));
  return check.WriteFile((fs::path(dir) / "rwr_check.safetensors").string());
}

// `out` made absolute and without a trailing separator, so that OUT.tmp-<pid> is a sibling
// (not a file inside OUT/) and "." names the directory itself.
fs::path CanonicalOut(const std::string& out) {
  fs::path path = fs::absolute(out).lexically_normal();
  return path.has_filename() ? path : path.parent_path();
}

// rename(2) replaces a missing or empty directory in one step. A non-empty one (overwrite) is
// moved aside first and removed after, so its files go with it and none stays beside the new ones.
absl::Status MoveIntoPlace(const fs::path& tmp, const fs::path& out) {
  std::error_code ec;
  fs::path aside;
  if (fs::exists(out) && !fs::is_empty(out)) {
    aside = out;
    aside += fmt::format(".old-{}", ::getpid());
    fs::rename(out, aside, ec);
    if (ec) {
      return absl::UnavailableError(
          fmt::format("cannot move {} aside: {}", out.string(), ec.message()));
    }
  }
  fs::rename(tmp, out, ec);
  if (ec) {
    std::error_code ignored;
    if (!aside.empty()) fs::rename(aside, out, ignored);  // the old contents back where they were
    return absl::UnavailableError(
        fmt::format("cannot move {} to {}: {}", tmp.string(), out.string(), ec.message()));
  }
  if (!aside.empty()) fs::remove_all(aside, ec);
  return absl::OkStatus();
}

// OUT.tmp-<pid> and OUT.old-<pid> siblings of processes that are gone: a write killed midway
// (kill -9, a node lost) leaves one behind, which nothing else would ever remove.
void RemoveLeftovers(const fs::path& target) {
  std::error_code ec;
  const std::string stem = target.filename().string();
  for (const auto& entry : fs::directory_iterator(target.parent_path(), ec)) {
    const std::string name = entry.path().filename().string();
    for (const std::string prefix : {stem + ".tmp-", stem + ".old-"}) {
      if (!name.starts_with(prefix)) continue;
      const std::string pid = name.substr(prefix.size());
      if (pid.empty() || !std::all_of(pid.begin(), pid.end(), ::isdigit)) continue;
      const pid_t owner = static_cast<pid_t>(std::stoll(pid));
      if (owner != ::getpid() && ::kill(owner, 0) != 0 && errno == ESRCH) {
        fs::remove_all(entry.path(), ec);
      }
    }
  }
}

}  // namespace

absl::Status CheckOutputDir(const std::string& out, bool overwrite) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return absl::OkStatus();
  if (!fs::is_directory(out, ec)) {
    return absl::FailedPreconditionError(fmt::format("{}: exists and is not a directory", out));
  }
  if (overwrite || fs::is_empty(out, ec)) return absl::OkStatus();
  return absl::FailedPreconditionError(fmt::format(
      "{}: directory is not empty; pass --overwrite to replace its contents, or choose another "
      "--out",
      out));
}

absl::Status WriteWholeDirectory(const std::string& out, bool overwrite,
                                 const std::function<absl::Status(const std::string& dir)>& fill) {
  RWR_RETURN_IF_ERROR(CheckOutputDir(out, overwrite));
  const fs::path target = CanonicalOut(out);
  RemoveLeftovers(target);
  fs::path tmp = target;
  tmp += fmt::format(".tmp-{}", ::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec)
    return absl::UnavailableError(fmt::format("cannot create {}: {}", tmp.string(), ec.message()));
  absl::Status status = fill(tmp.string());
  if (status.ok()) status = MoveIntoPlace(tmp, target);
  if (!status.ok()) fs::remove_all(tmp, ec);
  return status;
}

absl::StatusOr<ExportResult> ExportCheckpoint(const ExportOptions& options) {
  // Every input is checked before anything is written: a failed export leaves no OUT behind.
  RWR_RETURN_IF_ERROR(CheckOutputDir(options.out, options.overwrite));
  RWR_ASSIGN_OR_RETURN(const SaveModelDirOptions save, SaveOptionsFor(options));
  ExportResult result;
  RWR_ASSIGN_OR_RETURN(result.checkpoint, ResolveCheckpointDir(options.checkpoint));
  RWR_ASSIGN_OR_RETURN(const LoadedModel model, LoadModelDir(result.checkpoint));
  RWR_ASSIGN_OR_RETURN(result.tokenizer_source, ChooseTokenizer(options, result.checkpoint));

  RWR_RETURN_IF_ERROR(WriteWholeDirectory(
      options.out, options.overwrite, [&](const std::string& dir) -> absl::Status {
        RWR_RETURN_IF_ERROR(SaveModelDir(dir, model.config, model.params, save));
        if (!result.tokenizer_source.empty()) {
          std::error_code ec;
          fs::copy_file(result.tokenizer_source, fs::path(dir) / "tokenizer.json", ec);
          if (ec) {
            return absl::UnavailableError(
                fmt::format("cannot copy {}: {}", result.tokenizer_source, ec.message()));
          }
        }
        if (options.write_check) RWR_RETURN_IF_ERROR(WriteCheck(dir));
        return absl::OkStatus();
      }));
  for (const auto& entry : fs::directory_iterator(options.out)) {
    result.files.push_back(entry.path().filename().string());
  }
  std::sort(result.files.begin(), result.files.end());
  return result;
}

}  // namespace rwr::trainer
