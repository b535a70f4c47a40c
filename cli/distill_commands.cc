// `rwr distill run|serve|submit|status|cancel`: run a JSONL dataset through a teacher into the note
// cache, in this process (run) or as jobs of a long-running service (serve + its clients).
// See docs/cache.md for the cache, keys and the config keys below.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "cli/command.h"
#include "common/call_status_grpc.h"
#include "common/progress.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "fmt/format.h"
#include "rwr/v1/distill.grpc.pb.h"
#include "spdlog/spdlog.h"
#include "storage/atomic_file.h"
#include "storage/rocksdb_store.h"
#include "teacher_client/call_scheduler.h"
#include "teacher_client/channel.h"
#include "teacher_client/distill_run.h"
#include "teacher_client/distill_service.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/note_cache.h"

namespace rwr::cli {
namespace {

constexpr char kDefaultServer[] = "127.0.0.1:7400";

// teacher.* config keys → client options (remote teachers; ignored by builtin:extractive).
absl::StatusOr<teacher::TeacherClientOptions> ClientOptionsFrom(const Config& config) {
  teacher::TeacherClientOptions o;
  RWR_ASSIGN_OR_RETURN(o.concurrency, config.GetOr<int>("distill.concurrency", o.concurrency));
  RWR_ASSIGN_OR_RETURN(o.deadline_s, config.GetOr<double>("teacher.deadline_s", o.deadline_s));
  RWR_ASSIGN_OR_RETURN(o.max_attempts, config.GetOr<int>("teacher.max_attempts", o.max_attempts));
  RWR_ASSIGN_OR_RETURN(o.requests_per_second,
                       config.GetOr<double>("teacher.requests_per_second", o.requests_per_second));
  RWR_ASSIGN_OR_RETURN(o.connect_timeout_s,
                       config.GetOr<double>("teacher.connect_timeout_s", o.connect_timeout_s));
  RWR_ASSIGN_OR_RETURN(o.tls_root_cert_file,
                       config.GetOr<std::string>("teacher.tls_root_cert", o.tls_root_cert_file));
  RWR_ASSIGN_OR_RETURN(o.tls_server_name,
                       config.GetOr<std::string>("teacher.tls_server_name", o.tls_server_name));
  RWR_ASSIGN_OR_RETURN(std::string token_file,
                       config.GetOr<std::string>("teacher.auth_token_file", ""));
  if (!token_file.empty()) {
    RWR_ASSIGN_OR_RETURN(o.bearer_token, teacher::ReadBearerTokenFile(token_file));
  }
  teacher::KServeOptions& k = o.kserve;
  RWR_ASSIGN_OR_RETURN(k.input_tensor,
                       config.GetOr<std::string>("teacher.kserve.input_tensor", k.input_tensor));
  RWR_ASSIGN_OR_RETURN(k.output_tensor,
                       config.GetOr<std::string>("teacher.kserve.output_tensor", k.output_tensor));
  RWR_ASSIGN_OR_RETURN(
      k.max_tokens_tensor,
      config.GetOr<std::string>("teacher.kserve.max_tokens_tensor", k.max_tokens_tensor));
  RWR_ASSIGN_OR_RETURN(
      k.temperature_tensor,
      config.GetOr<std::string>("teacher.kserve.temperature_tensor", k.temperature_tensor));
  RWR_ASSIGN_OR_RETURN(k.seed_tensor,
                       config.GetOr<std::string>("teacher.kserve.seed_tensor", k.seed_tensor));
  RWR_ASSIGN_OR_RETURN(k.sampling.max_tokens,
                       config.GetOr<uint32_t>("teacher.kserve.max_tokens", k.sampling.max_tokens));
  RWR_ASSIGN_OR_RETURN(k.sampling.temperature,
                       config.GetOr<float>("teacher.kserve.temperature", k.sampling.temperature));
  RWR_ASSIGN_OR_RETURN(k.sampling.seed,
                       config.GetOr<uint64_t>("teacher.kserve.seed", k.sampling.seed));
  RWR_ASSIGN_OR_RETURN(k.model_version,
                       config.GetOr<std::string>("teacher.kserve.model_version", k.model_version));
  RWR_ASSIGN_OR_RETURN(k.revision,
                       config.GetOr<std::string>("teacher.kserve.revision", k.revision));
  RWR_ASSIGN_OR_RETURN(k.prompt_template_version,
                       config.GetOr<std::string>("teacher.kserve.prompt_template_version",
                                                 k.prompt_template_version));
  if (o.concurrency < 1 || o.concurrency > teacher::kMaxDistillConcurrency) {
    return absl::InvalidArgumentError(fmt::format("--concurrency {}: must be in 1..{}",
                                                  o.concurrency, teacher::kMaxDistillConcurrency));
  }
  return o;
}

absl::StatusOr<teacher::DatasetOptions> DatasetOptionsFrom(const Config& config,
                                                           const std::string& cache_dir,
                                                           const std::string& quarantine) {
  teacher::DatasetOptions o;
  RWR_ASSIGN_OR_RETURN(std::string mode, config.GetOr<std::string>("distill.on_bad_input", "fail"));
  RWR_ASSIGN_OR_RETURN(o.on_bad_input, teacher::ParseOnBadInput(mode));
  RWR_ASSIGN_OR_RETURN(o.max_record_bytes,
                       config.GetOr<uint64_t>("distill.max_record_bytes", o.max_record_bytes));
  if (o.on_bad_input == teacher::OnBadInput::kSkip) {
    o.quarantine_path = quarantine.empty()
                            ? (std::filesystem::path(cache_dir) / "quarantine.jsonl").string()
                            : quarantine;
  }
  return o;
}

absl::StatusOr<teacher::TeacherOutagePolicy> TeacherOutageFrom(const Config& config) {
  teacher::TeacherOutagePolicy o;
  RWR_ASSIGN_OR_RETURN(o.outage_s, config.GetOr<double>("distill.teacher_outage_s", o.outage_s));
  RWR_ASSIGN_OR_RETURN(o.retry_s, config.GetOr<double>("distill.teacher_retry_s", o.retry_s));
  RWR_RETURN_IF_ERROR(o.Check());
  return o;
}

absl::StatusOr<std::unique_ptr<storage::RocksDbStore>> OpenCacheForWriting(const std::string& dir,
                                                                           const Config& config) {
  RWR_ASSIGN_OR_RETURN(bool sync_writes, config.GetOr<bool>("cache.sync_writes", false));
  return storage::RocksDbStore::Open(dir, {.sync_writes = sync_writes});
}

// Whether storage::WriteFileAtomically(path) can succeed, asked before a run's work rather than
// after it.
absl::Status CheckWritableFile(const std::string& path, std::string_view flag) {
  const std::filesystem::path file(path);
  const std::filesystem::path dir = file.has_parent_path() ? file.parent_path() : ".";
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) {
    return absl::NotFoundError(
        fmt::format("{} {}: directory {} does not exist", flag, path, dir.string()));
  }
  if (std::filesystem::is_directory(file, error)) {
    return absl::InvalidArgumentError(fmt::format("{} {}: is a directory", flag, path));
  }
  if (::access(dir.c_str(), W_OK) != 0) {
    return absl::PermissionDeniedError(
        fmt::format("{} {}: directory {} is not writable", flag, path, dir.string()));
  }
  return absl::OkStatus();
}

// --teacher, checked as the flag is parsed: a target no run or job could use is a usage error
// (exit 2), found before a cache is opened or a job is sent to the service.
CLI::Validator DistillTeacherTarget() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        const absl::Status checked = teacher::CheckDistillTeacher(value);
        return checked.ok() ? std::string() : std::string(checked.message());
      },
      "");
}

// --- distill run ---

struct RunFlags {
  CommonOptions common;
  std::string input, teacher, cache, summary_json, quarantine, on_bad_input;
  int concurrency = 0;
  double negative_fraction = 0;
  CLI::Option *concurrency_opt = nullptr, *fraction_opt = nullptr, *bad_input_opt = nullptr;
};

// Sleeps `seconds`, or less if a shutdown signal comes; whether it slept them all.
bool SleepUnlessShutdown(double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    if (ShutdownRequested()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return !ShutdownRequested();
}

// RunDistill, again after a teacher outage (`outage`): a teacher that cannot be reached, or that
// stops the run because it fails every call (DistillSummary::teacher_unusable), is tried again at
// the policy's delays while waiting may mend it; each pass finds the answers of the ones before in
// the cache. The summary is the last pass's. A signal during a wait ends it as an interrupted run.
// A teacher never reached since the run started may be a mistyped address, which looks the same
// as a teacher still starting (UNAVAILABLE): the warnings and the final error say so, naming the
// address.
absl::StatusOr<teacher::DistillSummary> DistillWaitingForTheTeacher(
    const std::string& target, const teacher::TeacherClientOptions& client,
    const teacher::ExtractiveOptions& extractive, const teacher::TeacherOutagePolicy& outage,
    const teacher::DistillRunOptions& run, teacher::NoteCache& cache) {
  std::optional<std::chrono::steady_clock::time_point> down_since;
  double delay_s = 0;
  bool reached = false;  // a connection to the teacher made, once at least, in this run
  teacher::DistillSummary summary;
  auto never_reached = [&](absl::StatusCode code) {
    return teacher::NeverReachedHint(code, reached, target, "this run started");
  };
  while (true) {
    absl::StatusOr<std::unique_ptr<teacher::Teacher>> made =
        teacher::MakeDistillTeacher(target, client, extractive);
    absl::Status unusable = made.status();
    if (made.ok()) {
      reached = true;
      RWR_ASSIGN_OR_RETURN(summary, teacher::RunDistill(run, **made, cache));
      made->reset();  // waits for any callback still running
      if (summary.interrupted || summary.teacher_unusable.ok()) return summary;
      unusable = summary.teacher_unusable;
      if (summary.counts.teacher_answers > 0) {  // it was up in between: a new outage
        down_since.reset();
        delay_s = 0;
      }
    }
    const auto now = std::chrono::steady_clock::now();
    if (!down_since.has_value()) down_since = now;
    const double waited_s = std::chrono::duration<double>(now - *down_since).count();
    if (outage.GivesUp(unusable.code(), waited_s)) {
      const std::string waited =
          waited_s > 0 ? fmt::format("; unusable for {} (distill.teacher_outage_s {})",
                                     FormatDuration(waited_s), outage.outage_s)
                       : "";
      unusable =
          absl::Status(unusable.code(), fmt::format("{}{}{}", std::string(unusable.message()),
                                                    waited, never_reached(unusable.code())));
      if (!made.ok()) return unusable;
      summary.teacher_unusable = unusable;
      return summary;
    }
    delay_s = outage.NextDelay(delay_s);
    // The last wait ends at the limit, for one try there.
    const double sleep_s = std::min(delay_s, outage.outage_s - waited_s);
    spdlog::warn(
        "distill: the teacher cannot be used: {}; trying again in {} (waiting at most {} in all, "
        "distill.teacher_outage_s){}",
        std::string(unusable.message()), FormatDuration(sleep_s), FormatDuration(outage.outage_s),
        never_reached(unusable.code()));
    if (!SleepUnlessShutdown(sleep_s)) {
      spdlog::info("signal {} while waiting for the teacher; rerun to continue", ShutdownSignal());
      summary.interrupted = true;
      summary.teacher_unusable = absl::OkStatus();
      return summary;
    }
  }
}

absl::Status RunDistillCommand(RunFlags& f) {
  FlagToOverride(f.concurrency_opt, f.concurrency, "distill.concurrency", &f.common);
  FlagToOverride(f.fraction_opt, f.negative_fraction, "distill.negative_fraction", &f.common);
  FlagToOverride(f.bad_input_opt, f.on_bad_input, "distill.on_bad_input", &f.common);
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "distill run"));
  RWR_ASSIGN_OR_RETURN(teacher::TeacherClientOptions client, ClientOptionsFrom(config));
  RWR_ASSIGN_OR_RETURN(teacher::ExtractiveOptions extractive,
                       teacher::ExtractiveOptionsFromConfig(config));
  teacher::DistillRunOptions run;
  run.input_path = f.input;
  RWR_ASSIGN_OR_RETURN(run.dataset, DatasetOptionsFrom(config, f.cache, f.quarantine));
  RWR_ASSIGN_OR_RETURN(run.negative_fraction,
                       config.GetOr<double>("distill.negative_fraction", run.negative_fraction));
  RWR_ASSIGN_OR_RETURN(run.items_in_flight,
                       config.GetOr<int>("distill.items_in_flight", 2 * client.concurrency));
  RWR_ASSIGN_OR_RETURN(const teacher::TeacherOutagePolicy outage, TeacherOutageFrom(config));
  if (!std::filesystem::is_regular_file(f.input)) {
    return absl::NotFoundError(fmt::format("--input {}: no such file", f.input));
  }
  if (!f.summary_json.empty()) {
    RWR_RETURN_IF_ERROR(CheckWritableFile(f.summary_json, "--summary-json"));
  }

  RWR_ASSIGN_OR_RETURN(std::unique_ptr<storage::RocksDbStore> store,
                       OpenCacheForWriting(f.cache, config));
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<teacher::NoteCache> cache,
                       teacher::NoteCache::Open(store.get()));
  RWR_ASSIGN_OR_RETURN(
      teacher::DistillSummary summary,
      DistillWaitingForTheTeacher(f.teacher, client, extractive, outage, run, *cache));
  if (summary.interrupted) RecordStoppedEarly();

  std::cout << teacher::SummaryLine(summary) << std::endl;
  constexpr size_t kListed = 20;
  for (size_t i = 0; i < summary.failed.size() && i < kListed; ++i) {
    const teacher::FailedItem& failed = summary.failed[i];
    std::cerr << fmt::format("failed: {} ({}) at {}: {}\n", failed.id, failed.source, failed.stage,
                             failed.reason);
  }
  if (summary.failed.size() > kListed) {
    std::cerr << fmt::format("failed: ... and {} more (all in the summary JSON)\n",
                             summary.failed.size() - kListed);
  }
  if (!f.summary_json.empty()) {
    RWR_RETURN_IF_ERROR(
        storage::WriteFileAtomically(f.summary_json, teacher::SummaryJson(summary).dump(2) + "\n"));
  }
  if (!summary.teacher_unusable.ok() && !summary.interrupted) {
    return absl::UnavailableError(fmt::format(
        "distill run: stopped after {} of {} items: {}; items not started were left alone: check "
        "the teacher ({}) and run the same command again",
        summary.counts.items_done, summary.counts.items,
        std::string(summary.teacher_unusable.message()), f.teacher));
  }
  if (summary.counts.failures > 0 && !summary.interrupted) {
    return absl::UnavailableError(fmt::format(
        "distill run: {} of {} items failed (reasons above{}); run the same command again to "
        "retry them",
        summary.counts.failures, summary.counts.items,
        f.summary_json.empty() ? "" : " and in " + f.summary_json));
  }
  return absl::OkStatus();
}

void AddRun(CLI::App* group) {
  auto* f = NewFlags<RunFlags>();
  CLI::App* cmd = group->add_subcommand(
      "run",
      "Distill a JSONL dataset (id, context, question, answer) into the note cache: per item a "
      "note, its verification against the answer, and for a fraction of kept items an `empty` "
      "negative. Every teacher answer is cached; killed and rerun, it asks the teacher only for "
      "what is missing. Failed items are listed (exit 1) and retried by the next run. A teacher "
      "that is down is waited for (config distill.teacher_outage_s, default 3600 s; "
      "distill.teacher_retry_s, 15 s, doubling).");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("--input", f->input, "Dataset JSONL file")->required();
  cmd->add_option("--teacher", f->teacher,
                  "rwr://HOST:PORT (rwr teacher serve; rwrs:// with TLS), "
                  "kserve://HOST:PORT/MODEL (KServe v2 / Triton), or builtin:extractive "
                  "(in process, no server)")
      ->required()
      ->check(DistillTeacherTarget());
  cmd->add_option("--cache", f->cache, "Cache directory (RocksDB; created if missing)")->required();
  f->concurrency_opt =
      cmd->add_option("--concurrency", f->concurrency,
                      "Teacher calls in flight (config distill.concurrency; default 64)");
  f->fraction_opt = cmd->add_option(
      "--negative-fraction", f->negative_fraction,
      "Fraction of kept items that also get an `empty` negative (config distill.negative_fraction; "
      "default 0.3)");
  f->bad_input_opt = cmd->add_option("--on-bad-input", f->on_bad_input,
                                     "fail (default): stop at the first bad line, before any "
                                     "teacher call; skip: quarantine bad lines and go on")
                         ->check(CLI::IsMember({"fail", "skip"}));
  cmd->add_option("--quarantine", f->quarantine,
                  "With --on-bad-input skip: file for rejected lines and reasons "
                  "(default CACHE/quarantine.jsonl)");
  cmd->add_option("--summary-json", f->summary_json,
                  "Write the summary (items, notes_kept, dropped_by_verification, negatives, "
                  "failures, teacher_calls, cache_hits, failed_items, ...) as JSON");
  SetAction(cmd, [f] { return RunDistillCommand(*f); });
}

// --- distill serve ---

struct ServeFlags {
  CommonOptions common;
  std::string listen = kDefaultServer;
  std::string cache;
  std::string token_file;
};

absl::Status ServeCommand(ServeFlags& f) {
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "distill serve"));
  teacher::DistillServerOptions options;
  options.listen = f.listen;
  if (!f.token_file.empty()) {
    RWR_ASSIGN_OR_RETURN(options.auth_token, teacher::ReadBearerTokenFile(f.token_file));
  }
  RWR_ASSIGN_OR_RETURN(options.client, ClientOptionsFrom(config));
  RWR_ASSIGN_OR_RETURN(options.extractive, teacher::ExtractiveOptionsFromConfig(config));
  RWR_ASSIGN_OR_RETURN(options.dataset, DatasetOptionsFrom(config, f.cache, ""));
  RWR_ASSIGN_OR_RETURN(options.default_negative_fraction,
                       config.GetOr<double>("distill.negative_fraction", 0.3));
  RWR_ASSIGN_OR_RETURN(options.teacher_outage, TeacherOutageFrom(config));
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<storage::RocksDbStore> store,
                       OpenCacheForWriting(f.cache, config));
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<teacher::DistillServer> server,
                       teacher::DistillServer::Start(options, store.get()));
  const std::string host = f.listen.substr(0, f.listen.rfind(':'));
  spdlog::info("distill serve: listening on {}:{}, cache {}", host, server->port(), f.cache);
  std::cout << fmt::format("listening on {}:{}", host, server->port()) << std::endl;
  while (!ShutdownRequested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  spdlog::info("distill serve: signal {}; stopping (a running job resumes on the next start)",
               ShutdownSignal());
  server->Shutdown();
  return absl::OkStatus();
}

void AddServe(CLI::App* group) {
  auto* f = NewFlags<ServeFlags>();
  CLI::App* cmd = group->add_subcommand(
      "serve",
      "Run the distillation service (rwr.v1.DistillService): jobs submitted with `rwr distill "
      "submit` run one at a time into the cache, are persisted there, and resume after a "
      "restart; a job whose teacher is down waits for it (config distill.teacher_outage_s, "
      "default 3600 s; distill.teacher_retry_s, 15 s, doubling). Stops on SIGINT/SIGTERM.");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("--listen", f->listen, "HOST:PORT to serve on")->capture_default_str();
  cmd->add_option("--cache", f->cache, "Cache directory (RocksDB; created if missing)")->required();
  cmd->add_option("--auth-token-file", f->token_file,
                  "File with a bearer token every client must send (--auth-token-file on "
                  "submit/status/cancel); the service has no TLS: keep it on a private network")
      ->check(CLI::ExistingFile);
  SetAction(cmd, [f] { return ServeCommand(*f); });
}

// --- clients: submit, status, cancel ---

absl::StatusOr<std::unique_ptr<v1::DistillService::Stub>> Connect(const std::string& server) {
  RWR_RETURN_IF_ERROR(teacher::CheckHostPort(server, /*allow_port_zero=*/false, "--server"));
  return v1::DistillService::NewStub(
      grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
}

// `authorization: Bearer <token>` from `token_file`, when one is given.
absl::Status Authorize(grpc::ClientContext* context, const std::string& token_file) {
  if (token_file.empty()) return absl::OkStatus();
  RWR_ASSIGN_OR_RETURN(std::string token, teacher::ReadBearerTokenFile(token_file));
  context->AddMetadata("authorization", "Bearer " + token);
  return absl::OkStatus();
}

void SetDeadline(grpc::ClientContext* context, double seconds) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
}

// The RPC's failure as one line that names the server.
absl::Status RpcFailed(const grpc::Status& status, const std::string& server,
                       std::string_view what) {
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::UnavailableError(fmt::format(
        "{}: no distill service answering at {} ({}); start one with `rwr distill serve`", what,
        server, status.error_message()));
  }
  if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    // A server that is up but is not a distill service, e.g. `rwr teacher serve` (gRPC's answer
    // carries no message).
    return absl::FailedPreconditionError(fmt::format(
        "{}: {} does not serve rwr.v1.DistillService (is it a teacher or another server?); point "
        "--server at `rwr distill serve`",
        what, server));
  }
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      fmt::format("{}: {}", what, status.error_message()));
}

std::string JobLine(const v1::Job& job) {
  const v1::JobCounts& c = job.counts();
  std::string line = fmt::format(
      "{} {}{} ", job.job_id(), v1::Job::State_Name(job.state()),
      job.state() == v1::Job::RUNNING && job.cancel_requested() ? " (cancel requested)" : "");
  if (c.items() > 0) {
    line += fmt::format("{}/{} items ({:.1f}%)", c.items_done(), c.items(),
                        100.0 * c.items_done() / c.items());
  } else {
    // JobCounts.items is 0 until the service has counted the dataset; "N/0 items" would read as
    // N done of an empty dataset.
    const bool active = job.state() == v1::Job::QUEUED || job.state() == v1::Job::RUNNING;
    line += fmt::format("{} items done{}", c.items_done(), active ? " (total not known yet)" : "");
  }
  line += fmt::format(
      ", {} kept, {} dropped, {} negatives, {} failures, {} teacher calls, {} cache hits",
      c.notes_kept(), c.dropped_by_verification(), c.negatives(), c.failures(), c.teacher_calls(),
      c.cache_hits());
  if (job.state() == v1::Job::RUNNING) {
    line += fmt::format(", {:.1f} items/s", job.items_per_second());
    if (job.eta_seconds() >= 0) line += ", ETA " + FormatDuration(job.eta_seconds());
  }
  line += fmt::format(" · {} · {}", job.dataset_path(), job.teacher());
  if (job.state() == v1::Job::QUEUED && !job.waiting().empty())
    line += " · waiting: " + job.waiting();
  if (!job.error().empty()) line += " · error: " + job.error();
  return line;
}

std::string JobJson(const v1::Job& job) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  (void)google::protobuf::util::MessageToJsonString(job, &json, options);
  return json;
}

struct SubmitFlags {
  CommonOptions common;
  std::string server = kDefaultServer;
  std::string input, teacher, job_id, token_file;
  double negative_fraction = 0.3;
  uint32_t concurrency = 0;
  bool wait = false;
  double stall_timeout_s = 30;
  CLI::Option* fraction_opt = nullptr;
};

absl::Status WatchUntilDone(v1::DistillService::Stub& stub, const std::string& server,
                            const std::string& job_id, bool json, const std::string& token_file,
                            double stall_timeout_s);

constexpr char kStallTimeoutHelp[] =
    "With --wait/--watch: give up (exit 1) when the service sends nothing for this many seconds "
    "(it sends the job every second; a hung node or a dropped network otherwise blocks forever)";

absl::Status SubmitCommand(SubmitFlags& f) {
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "distill submit"));
  RWR_ASSIGN_OR_RETURN(auto stub, Connect(f.server));
  v1::SubmitJobRequest request;
  request.set_dataset_path(std::filesystem::absolute(f.input).string());
  request.set_teacher(f.teacher);
  request.set_job_id(f.job_id);
  if (f.fraction_opt->count() > 0 || f.concurrency > 0) {
    RWR_ASSIGN_OR_RETURN(double fraction, config.GetOr<double>("distill.negative_fraction", 0.3));
    request.mutable_recipe()->set_negative_fraction(
        f.fraction_opt->count() > 0 ? f.negative_fraction : fraction);
    request.mutable_recipe()->set_concurrency(f.concurrency);
  }
  grpc::ClientContext context;
  SetDeadline(&context, 10);
  RWR_RETURN_IF_ERROR(Authorize(&context, f.token_file));
  v1::Job job;
  grpc::Status status = stub->SubmitJob(&context, request, &job);
  if (!status.ok()) return RpcFailed(status, f.server, "distill submit");
  std::cout << "submitted " << job.job_id() << std::endl;
  if (f.wait) {
    return WatchUntilDone(*stub, f.server, job.job_id(), false, f.token_file, f.stall_timeout_s);
  }
  return absl::OkStatus();
}

void AddSubmit(CLI::App* group) {
  auto* f = NewFlags<SubmitFlags>();
  CLI::App* cmd =
      group->add_subcommand("submit", "Submit a distillation job to `rwr distill serve`");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("--server", f->server, "The service's HOST:PORT")->capture_default_str();
  cmd->add_option("--input", f->input, "Dataset JSONL (a path the service can read)")->required();
  cmd->add_option("--teacher", f->teacher,
                  "rwr://HOST:PORT, kserve://HOST:PORT/MODEL or builtin:extractive (its "
                  "spelling checked before the job is sent)")
      ->required()
      ->check(DistillTeacherTarget());
  cmd->add_option("--job-id", f->job_id, "Job id (default: the service picks one)");
  f->fraction_opt = cmd->add_option(
      "--negative-fraction", f->negative_fraction,
      "Fraction of kept items that get an `empty` negative (default: the service's)");
  cmd->add_option("--concurrency", f->concurrency,
                  "Teacher calls in flight (default: the service's)");
  cmd->add_flag("--wait", f->wait,
                "Follow the job's progress until it ends; exit 1 unless it succeeded");
  cmd->add_option("--stall-timeout", f->stall_timeout_s, kStallTimeoutHelp)
      ->capture_default_str()
      ->check(Positive());
  cmd->add_option("--auth-token-file", f->token_file, "File with the service's bearer token")
      ->check(CLI::ExistingFile);
  SetAction(cmd, [f] { return SubmitCommand(*f); });
}

absl::Status WatchUntilDone(v1::DistillService::Stub& stub, const std::string& server,
                            const std::string& job_id, bool json, const std::string& token_file,
                            double stall_timeout_s) {
  grpc::ClientContext context;
  RWR_RETURN_IF_ERROR(Authorize(&context, token_file));
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  request.set_interval_ms(1000);
  // The service writes the job every interval. A stream that goes quiet is a service that hangs
  // (stopped, swapping, wedged) or a network that dropped without a reset: the stream would wait
  // forever, and `submit --wait` would hold its Slurm allocation until the time limit.
  const auto stall = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(stall_timeout_s));
  std::mutex mu;
  std::condition_variable done_cv;
  auto last_update = std::chrono::steady_clock::now();
  bool done = false;
  bool stalled = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!done) {
      if (std::chrono::steady_clock::now() - last_update >= stall) {
        stalled = true;
        context.TryCancel();
        return;
      }
      done_cv.wait_for(lock, std::chrono::milliseconds(100));
    }
  });
  std::unique_ptr<grpc::ClientReader<v1::Job>> reader = stub.WatchJob(&context, request);
  v1::Job job;
  bool any = false;
  while (reader->Read(&job)) {
    {
      std::lock_guard<std::mutex> lock(mu);
      last_update = std::chrono::steady_clock::now();
    }
    any = true;
    std::cout << (json ? JobJson(job) : JobLine(job)) << std::endl;
    if (ShutdownRequested()) {
      context.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  done_cv.notify_all();
  watchdog.join();
  if (ShutdownRequested()) return absl::OkStatus();
  if (stalled) {
    return absl::DeadlineExceededError(fmt::format(
        "distill status --watch: no update from the service at {} for {}s (hung, or the network "
        "to it is down); job {} may still be running: check with `rwr distill status`",
        server, stall_timeout_s, job_id));
  }
  if (!status.ok()) return RpcFailed(status, server, "distill status --watch");
  if (!any) return absl::UnavailableError("distill status --watch: the stream ended without a job");
  if (job.state() != v1::Job::SUCCEEDED) {
    return absl::AbortedError(fmt::format("job {} ended {}{}", job_id,
                                          v1::Job::State_Name(job.state()),
                                          job.error().empty() ? "" : ": " + job.error()));
  }
  return absl::OkStatus();
}

struct StatusFlags {
  CommonOptions common;
  std::string server = kDefaultServer;
  std::string job_id;
  std::string token_file;
  bool watch = false;
  bool json = false;
  double stall_timeout_s = 30;
};

absl::Status StatusCommand(StatusFlags& f) {
  f.common.log_level = f.common.log_level == "info" ? "warn" : f.common.log_level;
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "distill status"));
  RWR_ASSIGN_OR_RETURN(auto stub, Connect(f.server));
  if (f.job_id.empty()) {
    if (f.watch) return absl::InvalidArgumentError("distill status --watch needs a JOB_ID");
    grpc::ClientContext context;
    SetDeadline(&context, 10);
    RWR_RETURN_IF_ERROR(Authorize(&context, f.token_file));
    v1::ListJobsResponse response;
    grpc::Status status = stub->ListJobs(&context, v1::ListJobsRequest(), &response);
    if (!status.ok()) return RpcFailed(status, f.server, "distill status");
    if (f.json) {
      std::string out = "[";
      for (int i = 0; i < response.jobs_size(); ++i)
        out += (i ? "," : "") + JobJson(response.jobs(i));
      std::cout << out << "]" << std::endl;
    } else if (response.jobs_size() == 0) {
      std::cout << "no jobs" << std::endl;
    } else {
      for (const v1::Job& job : response.jobs()) std::cout << JobLine(job) << std::endl;
    }
    return absl::OkStatus();
  }
  if (f.watch) {
    return WatchUntilDone(*stub, f.server, f.job_id, f.json, f.token_file, f.stall_timeout_s);
  }
  grpc::ClientContext context;
  SetDeadline(&context, 10);
  RWR_RETURN_IF_ERROR(Authorize(&context, f.token_file));
  v1::GetJobRequest request;
  request.set_job_id(f.job_id);
  v1::Job job;
  grpc::Status status = stub->GetJob(&context, request, &job);
  if (!status.ok()) return RpcFailed(status, f.server, "distill status");
  std::cout << (f.json ? JobJson(job) : JobLine(job)) << std::endl;
  return absl::OkStatus();
}

void AddStatus(CLI::App* group) {
  auto* f = NewFlags<StatusFlags>();
  CLI::App* cmd = group->add_subcommand(
      "status", "Show the jobs of `rwr distill serve` (all, or one with its counts, rate and ETA)");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("job_id", f->job_id, "Job to show (default: list every job)");
  cmd->add_option("--server", f->server, "The service's HOST:PORT")->capture_default_str();
  cmd->add_flag("--watch", f->watch,
                "Follow the job (a line a second) until it ends; exit 1 unless it succeeded");
  cmd->add_flag("--json", f->json, "Print the job(s) as JSON (rwr.v1.Job field names)");
  cmd->add_option("--stall-timeout", f->stall_timeout_s, kStallTimeoutHelp)
      ->capture_default_str()
      ->check(Positive());
  cmd->add_option("--auth-token-file", f->token_file, "File with the service's bearer token")
      ->check(CLI::ExistingFile);
  SetAction(cmd, [f] { return StatusCommand(*f); });
}

struct CancelFlags {
  CommonOptions common;
  std::string server = kDefaultServer;
  std::string job_id;
  std::string token_file;
};

absl::Status CancelCommand(CancelFlags& f) {
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), "distill cancel"));
  RWR_ASSIGN_OR_RETURN(auto stub, Connect(f.server));
  grpc::ClientContext context;
  SetDeadline(&context, 10);
  RWR_RETURN_IF_ERROR(Authorize(&context, f.token_file));
  v1::CancelJobRequest request;
  request.set_job_id(f.job_id);
  v1::Job job;
  grpc::Status status = stub->CancelJob(&context, request, &job);
  if (!status.ok()) return RpcFailed(status, f.server, "distill cancel");
  std::cout << JobLine(job) << std::endl;
  if (job.state() == v1::Job::RUNNING) {
    std::cout << fmt::format(
                     "cancel requested: {} starts no more items and ends CANCELLED once those in "
                     "flight finish, or as its items decide if all had started (`rwr distill "
                     "status {} --watch` follows it)",
                     job.job_id(), job.job_id())
              << std::endl;
  }
  return absl::OkStatus();
}

void AddCancel(CLI::App* group) {
  auto* f = NewFlags<CancelFlags>();
  CLI::App* cmd = group->add_subcommand(
      "cancel", "Cancel a job of `rwr distill serve` (a running job finishes the items in flight)");
  AddCommonOptions(cmd, &f->common);
  cmd->add_option("job_id", f->job_id, "Job to cancel")->required();
  cmd->add_option("--server", f->server, "The service's HOST:PORT")->capture_default_str();
  cmd->add_option("--auth-token-file", f->token_file, "File with the service's bearer token")
      ->check(CLI::ExistingFile);
  SetAction(cmd, [f] { return CancelCommand(*f); });
}

}  // namespace

void RegisterDistillCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand(
      "distill", "Teacher stage: notes, verification and `empty` negatives into the note cache");
  group->require_subcommand(1);
  AddRun(group);
  AddServe(group);
  AddSubmit(group);
  AddStatus(group);
  AddCancel(group);
}

}  // namespace rwr::cli
