// DistillServer: rwr.v1.DistillService over the note cache (see distill_service.h).
#include "teacher_client/distill_service.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "common/progress.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "fmt/chrono.h"
#include "fmt/format.h"
#include "rwr/v1/distill.grpc.pb.h"
#include "spdlog/spdlog.h"
#include "teacher_client/channel.h"
#include "teacher_client/distill_run.h"
#include "teacher_client/note_cache.h"

namespace rwr::teacher {
namespace {

// A job no longer waiting for its teacher: the line and the clock the wait kept.
void ClearWaiting(v1::Job& job) {
  job.clear_waiting();
  job.clear_waiting_since_unix_ms();
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool Terminal(v1::Job::State state) {
  return state == v1::Job::SUCCEEDED || state == v1::Job::FAILED || state == v1::Job::CANCELLED;
}

bool ValidJobId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

std::string UtcTime(int64_t unix_ms) {
  return fmt::format("{:%Y-%m-%d %H:%M:%S} UTC",
                     fmt::gmtime(static_cast<std::time_t>(unix_ms / 1000)));
}

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

}  // namespace

class DistillServer::Impl final : public v1::DistillService::Service {
  using Clock = std::chrono::steady_clock;
  // A teacher that stopped a job and may come back: when the next job may try it, the delay that
  // led to that try (TeacherOutagePolicy::NextDelay) and the last failure's reason.
  struct Outage {
    Clock::time_point retry_at;
    int64_t retry_at_unix_ms = 0;  // the same moment, for the jobs' `waiting` lines
    double delay_s = 0;
    std::string reason;
    absl::StatusCode code = absl::StatusCode::kUnavailable;  // reason's
  };

 public:
  Impl(const DistillServerOptions& options, storage::KvStore* store)
      : options_(options), store_(store) {}

  absl::Status Init() {
    RWR_RETURN_IF_ERROR(CheckHostPort(options_.listen, /*allow_port_zero=*/true, "--listen"));
    RWR_ASSIGN_OR_RETURN(cache_, NoteCache::Open(store_));
    // Jobs from earlier runs of the service: unfinished ones are queued again, in submission order.
    std::vector<v1::Job> unfinished;
    absl::Status parse_error;
    RWR_RETURN_IF_ERROR(store_->ForEach(
        storage::Family::kJobs, kJobKeyPrefix, [&](std::string_view key, std::string_view value) {
          v1::Job job;
          if (!job.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
            parse_error = absl::DataLossError(
                fmt::format("cache: job record '{}' does not parse", std::string(key)));
            return false;
          }
          jobs_[job.job_id()] = job;
          if (!Terminal(job.state())) unfinished.push_back(job);
          return true;
        }));
    RWR_RETURN_IF_ERROR(parse_error);
    std::sort(unfinished.begin(), unfinished.end(), [](const v1::Job& a, const v1::Job& b) {
      return a.created_unix_ms() != b.created_unix_ms() ? a.created_unix_ms() < b.created_unix_ms()
                                                        : a.job_id() < b.job_id();
    });
    for (const v1::Job& job : unfinished) {
      if (job.cancel_requested()) {
        // Cancelled while it ran, and the service died before the job stopped: the cancel holds.
        spdlog::info("distill serve: job {} was cancelled while it ran; recorded CANCELLED",
                     job.job_id());
        v1::Job& cancelled = jobs_[job.job_id()];
        cancelled.set_state(v1::Job::CANCELLED);
        ClearWaiting(cancelled);
        cancelled.set_items_per_second(0);
        cancelled.set_eta_seconds(0);
        cancelled.set_updated_unix_ms(NowUnixMs());
        RWR_RETURN_IF_ERROR(Persist(cancelled));
        continue;
      }
      spdlog::info("distill serve: resuming job {} ({}, was {})", job.job_id(), job.dataset_path(),
                   v1::Job::State_Name(job.state()));
      v1::Job& queued = jobs_[job.job_id()];
      queued.set_state(v1::Job::QUEUED);
      queued.set_items_per_second(0);  // the stopped run's, not this one's
      queued.set_eta_seconds(-1);
      if (!queued.waiting().empty()) {  // the stopped service's next try; waiting_since counts on
        queued.clear_waiting();
        RWR_RETURN_IF_ERROR(Persist(queued));  // `rwr cache inspect` reads the record
      }
      queue_.push_back(job.job_id());
    }

    grpc::ServerBuilder builder;
    // gRPC sets SO_REUSEPORT by default: a second server on a port in use would then start
    // too, and the two would split the clients between them.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddListeningPort(options_.listen, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
    if (server_ == nullptr || port_ == 0) {
      return absl::UnavailableError(fmt::format(
          "distill serve: cannot listen on {} (in use, or not a HOST:PORT this machine has)",
          options_.listen));
    }
    worker_ = std::thread([this] { WorkerLoop(); });
    return absl::OkStatus();
  }

  int port() const { return port_; }

  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return;
      stopping_ = true;
      changed_.notify_all();
    }
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    if (worker_.joinable()) worker_.join();
    absl::Status synced = store_->Sync();
    if (!synced.ok())
      spdlog::warn("distill serve: cache sync at shutdown failed: {}",
                   std::string(synced.message()));
  }

  // --- RPCs ---

  grpc::Status CheckToken(const grpc::ServerContext* context) const {
    if (options_.auth_token.empty()) return grpc::Status::OK;
    const auto& metadata = context->client_metadata();
    auto it = metadata.find("authorization");
    const std::string expected = "Bearer " + options_.auth_token;
    if (it == metadata.end() || std::string(it->second.data(), it->second.size()) != expected) {
      return {grpc::StatusCode::UNAUTHENTICATED,
              "missing or wrong bearer token (pass the service's token with --auth-token-file)"};
    }
    return grpc::Status::OK;
  }

  grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                         v1::Job* response) override {
    if (grpc::Status auth = CheckToken(context); !auth.ok()) return auth;
    std::error_code error;
    if (request->dataset_path().empty() ||
        !std::filesystem::is_regular_file(request->dataset_path(), error)) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("dataset '{}' is not a readable file on the service's machine",
                          request->dataset_path())};
    }
    if (request->teacher().empty()) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              "teacher is empty; expected rwr://HOST:PORT, kserve://HOST:PORT/MODEL or "
              "builtin:extractive"};
    }
    v1::Recipe recipe = request->recipe();
    if (!request->has_recipe()) recipe.set_negative_fraction(options_.default_negative_fraction);
    if (recipe.negative_fraction() < 0 || recipe.negative_fraction() > 1) {
      return {
          grpc::StatusCode::INVALID_ARGUMENT,
          fmt::format("recipe.negative_fraction {} is outside [0, 1]", recipe.negative_fraction())};
    }
    if (recipe.concurrency() > static_cast<uint32_t>(kMaxDistillConcurrency)) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("recipe.concurrency {} is above the limit of {} teacher calls in flight",
                          recipe.concurrency(), kMaxDistillConcurrency)};
    }
    if (!recipe.overrides().empty()) {
      return {grpc::StatusCode::UNIMPLEMENTED,
              "recipe.overrides are not supported by this service; set negative_fraction and "
              "concurrency, or configure the service"};
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (ShuttingDown()) return {grpc::StatusCode::UNAVAILABLE, "the service is shutting down"};
    std::string id = request->job_id();
    if (id.empty()) {
      do {
        id = fmt::format("job-{}-{}", NowUnixMs(), ++job_counter_);
      } while (jobs_.count(id) > 0);
    } else if (!ValidJobId(id)) {
      return {grpc::StatusCode::INVALID_ARGUMENT,
              fmt::format("job id '{}': use 1-64 letters, digits, '-', '_' or '.'", id)};
    } else if (auto existing = jobs_.find(id); existing != jobs_.end()) {
      // Refused in every state: a job id names one submission and its record for good.
      return {grpc::StatusCode::ALREADY_EXISTS,
              fmt::format("job '{}' exists already ({}); submit under a new --job-id", id,
                          v1::Job::State_Name(existing->second.state()))};
    }
    v1::Job job;
    job.set_job_id(id);
    job.set_state(v1::Job::QUEUED);
    job.set_dataset_path(std::filesystem::absolute(request->dataset_path()).string());
    job.set_teacher(request->teacher());
    *job.mutable_recipe() = recipe;
    job.set_eta_seconds(-1);
    job.set_created_unix_ms(NowUnixMs());
    job.set_updated_unix_ms(job.created_unix_ms());
    if (auto outage = outages_.find(job.teacher()); outage != outages_.end())
      MarkWaiting(job, outage->second);
    // Durable before acknowledged.
    if (absl::Status saved = Persist(job); !saved.ok()) return ToGrpc(saved);
    jobs_[id] = job;
    queue_.push_back(id);
    changed_.notify_all();
    spdlog::info("distill serve: job {} queued ({}, teacher {})", id, job.dataset_path(),
                 job.teacher());
    *response = job;
    return grpc::Status::OK;
  }

  grpc::Status GetJob(grpc::ServerContext* context, const v1::GetJobRequest* request,
                      v1::Job* response) override {
    if (grpc::Status auth = CheckToken(context); !auth.ok()) return auth;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(request->job_id());
    if (it == jobs_.end()) return NotFound(request->job_id());
    *response = it->second;
    return grpc::Status::OK;
  }

  grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest*,
                        v1::ListJobsResponse* response) override {
    if (grpc::Status auth = CheckToken(context); !auth.ok()) return auth;
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<const v1::Job*> sorted;
    for (const auto& [id, job] : jobs_) sorted.push_back(&job);
    std::sort(sorted.begin(), sorted.end(), [](const v1::Job* a, const v1::Job* b) {
      return a->created_unix_ms() < b->created_unix_ms();
    });
    for (const v1::Job* job : sorted) *response->add_jobs() = *job;
    return grpc::Status::OK;
  }

  grpc::Status WatchJob(grpc::ServerContext* context, const v1::WatchJobRequest* request,
                        grpc::ServerWriter<v1::Job>* writer) override {
    if (grpc::Status auth = CheckToken(context); !auth.ok()) return auth;
    const auto interval =
        std::chrono::milliseconds(request->interval_ms() > 0 ? request->interval_ms() : 1000);
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      auto it = jobs_.find(request->job_id());
      if (it == jobs_.end()) return NotFound(request->job_id());
      const v1::Job job = it->second;
      lock.unlock();
      if (!writer->Write(job)) return grpc::Status::OK;  // the client went away
      if (Terminal(job.state())) return grpc::Status::OK;
      lock.lock();
      const auto until = std::chrono::steady_clock::now() + interval;
      const v1::Job::State seen = job.state();
      changed_.wait_until(lock, until, [&] {
        auto now = jobs_.find(request->job_id());
        return stopping_ || context->IsCancelled() ||
               (now != jobs_.end() && now->second.state() != seen);
      });
      if (context->IsCancelled()) return {grpc::StatusCode::CANCELLED, "watch cancelled"};
      if (stopping_) return {grpc::StatusCode::UNAVAILABLE, "the service is shutting down"};
    }
  }

  grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                         v1::Job* response) override {
    if (grpc::Status auth = CheckToken(context); !auth.ok()) return auth;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(request->job_id());
    if (it == jobs_.end()) return NotFound(request->job_id());
    v1::Job& job = it->second;
    if (Terminal(job.state())) {
      // Answered as an error so that a script's `cancel && ...` does not read it as cancelled.
      return {grpc::StatusCode::FAILED_PRECONDITION,
              fmt::format("job '{}' already ended {}; nothing to cancel", job.job_id(),
                          v1::Job::State_Name(job.state()))};
    }
    if (job.state() == v1::Job::QUEUED) {
      queue_.erase(std::remove(queue_.begin(), queue_.end(), job.job_id()), queue_.end());
      job.set_state(v1::Job::CANCELLED);
      ClearWaiting(job);
      job.set_updated_unix_ms(NowUnixMs());
      if (absl::Status saved = Persist(job); !saved.ok()) return ToGrpc(saved);
      DropUnusedOutageLocked(job.teacher());
    } else if (job.state() == v1::Job::RUNNING && !job.cancel_requested()) {
      // Durable before acknowledged; the run polls the flag, stops and records CANCELLED.
      job.set_cancel_requested(true);
      job.set_updated_unix_ms(NowUnixMs());
      if (absl::Status saved = Persist(job); !saved.ok()) {
        job.set_cancel_requested(false);
        return ToGrpc(saved);
      }
    }
    changed_.notify_all();
    *response = job;
    return grpc::Status::OK;
  }

 private:
  static grpc::Status NotFound(const std::string& id) {
    return {grpc::StatusCode::NOT_FOUND,
            fmt::format("no job '{}' (rwr distill status lists them)", id)};
  }

  absl::Status Persist(const v1::Job& job) {
    return store_->Put(storage::Family::kJobs, kJobKeyPrefix + job.job_id(),
                       job.SerializeAsString());
  }

  // Shutdown() called, or the process's SIGINT/SIGTERM seen. The signal stops a running job at once
  // (RunDistill polls it), before the owner gets to call Shutdown(); from then on nothing may start
  // or finish as if the service were still running. Called under mu_.
  bool ShuttingDown() const { return stopping_ || ShutdownRequested(); }

  void WorkerLoop() {
    while (true) {
      v1::Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        std::deque<std::string>::iterator next;
        while (true) {
          if (ShuttingDown()) return;  // queued jobs stay QUEUED and resume on the next start
          std::optional<Clock::time_point> wake;
          next = NextRunnableLocked(&wake);
          if (next != queue_.end()) break;
          if (wake.has_value())
            changed_.wait_until(lock, *wake);
          else
            changed_.wait(lock);
        }
        const std::string id = *next;
        queue_.erase(next);
        // Taken off the queue and marked RUNNING in one step: a cancel sees the job either
        // QUEUED and in the queue, or RUNNING — never QUEUED with the worker about to run it.
        ChangeLocked(id, [&](v1::Job& j) {
          j.set_state(v1::Job::RUNNING);
          j.clear_error();
          j.mutable_counts()->Clear();
          // A resumed job's record holds the rate and ETA of the run that was stopped.
          j.set_items_per_second(0);
          j.set_eta_seconds(-1);
          j.clear_waiting();  // waiting_since stays until the teacher answers the run
          job = j;
        });
      }
      RunJob(job);
    }
  }

  // Updates the job under the lock, persists it, wakes watchers.
  void Update(const std::string& id, const std::function<void(v1::Job&)>& change) {
    std::lock_guard<std::mutex> lock(mu_);
    ChangeLocked(id, change);
  }
  void ChangeLocked(const std::string& id, const std::function<void(v1::Job&)>& change) {
    v1::Job& job = jobs_[id];
    change(job);
    job.set_updated_unix_ms(NowUnixMs());
    if (absl::Status saved = Persist(job); !saved.ok()) {
      spdlog::warn("distill serve: job {}: cannot persist its state: {}", id,
                   std::string(saved.message()));
    }
    changed_.notify_all();
  }

  // Runs a job the worker marked RUNNING, to its end state (or leaves it RUNNING when the service
  // stops under it).
  void RunJob(const v1::Job& job) {
    const std::string& id = job.job_id();
    spdlog::info("distill serve: job {} running", id);
    TeacherClientOptions client = options_.client;
    if (job.recipe().concurrency() > 0)
      client.concurrency = static_cast<int>(job.recipe().concurrency());
    absl::StatusOr<std::unique_ptr<Teacher>> teacher =
        MakeDistillTeacher(job.teacher(), client, options_.extractive);
    if (!teacher.ok()) {
      // Its message names the teacher already; the job's record names it too.
      TeacherUnusable(id, teacher.status().code(), std::string(teacher.status().message()));
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      reached_.insert(job.teacher());
    }
    DistillRunOptions run;
    run.input_path = job.dataset_path();
    run.dataset = options_.dataset;
    if (!run.dataset.quarantine_path.empty()) {  // one quarantine file per job, beside the default
      const std::filesystem::path base(run.dataset.quarantine_path);
      run.dataset.quarantine_path =
          (base.parent_path() /
           fmt::format("{}-{}{}", base.stem().string(), id, base.extension().string()))
              .string();
    }
    run.negative_fraction = job.recipe().negative_fraction();
    run.items_in_flight = 2 * client.concurrency;
    run.show_progress = false;
    run.stop_requested = [this, id] {
      std::lock_guard<std::mutex> lock(mu_);
      return stopping_ || jobs_[id].cancel_requested();
    };
    const auto started = std::chrono::steady_clock::now();
    auto last_persist = started;
    bool answered = false;  // TeacherAnswered done, at the first report that counts an answer
    run.on_progress = [&](const DistillCounts& counts) {
      const auto now = std::chrono::steady_clock::now();
      const double elapsed = std::chrono::duration<double>(now - started).count();
      std::lock_guard<std::mutex> lock(mu_);
      if (!answered && counts.teacher_answers > 0) {
        answered = true;
        TeacherAnsweredLocked(job.teacher());
      }
      v1::Job& j = jobs_[id];
      FillCounts(counts, j.mutable_counts());
      const double rate = elapsed > 0 ? counts.items_done / elapsed : 0;
      j.set_items_per_second(rate);
      j.set_eta_seconds(rate > 0 && counts.items > 0 ? (counts.items - counts.items_done) / rate
                                                     : -1);
      j.set_updated_unix_ms(NowUnixMs());
      if (std::chrono::duration<double>(now - last_persist).count() >=
          options_.persist_interval_s) {
        last_persist = now;
        if (absl::Status saved = Persist(j); !saved.ok()) {
          spdlog::warn("distill serve: job {}: cannot persist progress: {}", id,
                       std::string(saved.message()));
        }
      }
    };
    absl::StatusOr<DistillSummary> summary = RunDistill(run, **teacher, *cache_);
    teacher->reset();
    if (!summary.ok()) {
      Finish(id, v1::Job::FAILED, std::string(summary.status().message()));
      return;
    }
    bool cancelled = false;
    Update(id, [&](v1::Job& j) {
      FillCounts(summary->counts, j.mutable_counts());
      cancelled = j.cancel_requested();
    });
    // Decided by the run itself, not by flags read afterwards: a run that stopped before reading
    // its whole dataset is not complete. Not cancelled, it was stopped by shutdown (Shutdown() or
    // the process's signal, which can come before Shutdown() does) and must be resumed. A cancel
    // that came once every item had started stopped nothing: the job ends as its items decide.
    if (summary->interrupted && !cancelled) {
      spdlog::info(
          "distill serve: job {} stopped by shutdown after {} of {} items; it resumes on "
          "the next start",
          id, summary->counts.items_done, summary->counts.items);
      return;  // stays RUNNING in the cache
    }
    if (cancelled && summary->interrupted) {
      Finish(id, v1::Job::CANCELLED, "");
    } else if (!summary->teacher_unusable.ok()) {
      TeacherUnusable(
          id, summary->teacher_unusable.code(),
          fmt::format("stopped after {} of {} items: {}", summary->counts.items_done,
                      summary->counts.items, std::string(summary->teacher_unusable.message())));
      return;
    } else if (summary->counts.failures > 0) {
      std::string error =
          fmt::format("{} of {} items failed (resubmit to retry them):", summary->counts.failures,
                      summary->counts.items);
      for (size_t i = 0; i < summary->failed.size() && i < 5; ++i) {
        const FailedItem& f = summary->failed[i];
        error += fmt::format(" {} at {}: {};", f.id, f.stage, f.reason);
      }
      Finish(id, v1::Job::FAILED, error);
    } else {
      Finish(id, v1::Job::SUCCEEDED, "");
    }
    if (cancelled && !summary->interrupted) {
      spdlog::info(
          "distill serve: job {}: the cancel came after its last item had started; it "
          "ran to its end",
          id);
    }
    spdlog::info("distill serve: job {}: {}", id, SummaryLine(*summary));
  }

  static void FillCounts(const DistillCounts& c, v1::JobCounts* out) {
    out->set_items(c.items);
    out->set_items_done(c.items_done);
    out->set_notes_kept(c.notes_kept);
    out->set_dropped_by_verification(c.dropped_by_verification);
    out->set_negatives(c.negatives);
    out->set_failures(c.failures);
    out->set_teacher_calls(c.teacher_calls);
    out->set_cache_hits(c.cache_hits);
  }

  void Finish(const std::string& id, v1::Job::State state, const std::string& error) {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(id, state, error);
  }
  void FinishLocked(const std::string& id, v1::Job::State state, const std::string& error) {
    if (!error.empty())
      spdlog::warn("distill serve: job {} {}: {}", id, v1::Job::State_Name(state), error);
    ChangeLocked(id, [&](v1::Job& j) {
      j.set_state(state);
      j.set_error(error);
      j.set_eta_seconds(Terminal(state) ? 0 : -1);
      ClearWaiting(j);
    });
    if (Terminal(state)) DropUnusedOutageLocked(jobs_[id].teacher());
  }

  // --- teacher outages (DistillServerOptions::teacher_outage) ---

  // The first queued job whose teacher is not known to be down, or is due another try; else
  // queue_.end(), with *wake set to the earliest try due.
  std::deque<std::string>::iterator NextRunnableLocked(std::optional<Clock::time_point>* wake) {
    const Clock::time_point now = Clock::now();
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      auto outage = outages_.find(jobs_[*it].teacher());
      if (outage == outages_.end() || outage->second.retry_at <= now) return it;
      if (!wake->has_value() || outage->second.retry_at < **wake) *wake = outage->second.retry_at;
    }
    return queue_.end();
  }

  // The job `id` (RUNNING) could not use its teacher. A teacher that may come back is waited for:
  // the job returns to the queue in its place and is tried again once the teacher's delay has
  // passed, and the jobs queued for the same teacher wait with it. The job fails when waiting
  // cannot help or once it has waited its policy's outage_s.
  void TeacherUnusable(const std::string& id, absl::StatusCode code, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mu_);
    v1::Job& job = jobs_[id];
    if (job.cancel_requested()) {  // the run stopped on the teacher before it saw the cancel
      FinishLocked(id, v1::Job::CANCELLED, "");
      return;
    }
    const int64_t now_ms = NowUnixMs();
    const int64_t since_ms = job.waiting_since_unix_ms() > 0 ? job.waiting_since_unix_ms() : now_ms;
    const double waited_s = (now_ms - since_ms) / 1000.0;
    const TeacherOutagePolicy& policy = options_.teacher_outage;
    if (policy.GivesUp(code, waited_s)) {
      const std::string waited = waited_s > 0
                                     ? fmt::format("; the teacher has been unusable since {} ({})",
                                                   UtcTime(since_ms), FormatDuration(waited_s))
                                     : "";
      FinishLocked(id, v1::Job::FAILED,
                   fmt::format("{}{}{}; items not started were left alone: check the teacher and "
                               "resubmit",
                               reason, waited, NeverReachedLocked(job.teacher(), code)));
      return;
    }
    Outage& outage = outages_[job.teacher()];
    outage.delay_s = policy.NextDelay(outage.delay_s);
    // The next try comes at the delay, or where the first of the jobs waiting for this teacher
    // reaches its limit, so that it fails at the time its `waiting` line says.
    int64_t first_limit_ms = since_ms;
    for (const std::string& other : queue_) {
      const v1::Job& o = jobs_[other];
      if (o.teacher() == job.teacher() && o.waiting_since_unix_ms() > 0)
        first_limit_ms = std::min(first_limit_ms, o.waiting_since_unix_ms());
    }
    first_limit_ms += static_cast<int64_t>(policy.outage_s * 1000);
    const double wait_s =
        std::max(0.0, std::min(outage.delay_s, (first_limit_ms - now_ms) / 1000.0));
    outage.retry_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(wait_s));
    outage.retry_at_unix_ms = now_ms + static_cast<int64_t>(wait_s * 1000);
    outage.reason = reason;
    outage.code = code;
    spdlog::warn("distill serve: job {} waits for teacher {}: {}; next try in {}{}", id,
                 job.teacher(), reason, FormatDuration(wait_s),
                 NeverReachedLocked(job.teacher(), code));
    // Back in the queue in submission order: it was the first runnable job, and stays first.
    auto place = std::find_if(queue_.begin(), queue_.end(), [&](const std::string& other) {
      const v1::Job& o = jobs_[other];
      return o.created_unix_ms() != job.created_unix_ms()
                 ? o.created_unix_ms() > job.created_unix_ms()
                 : o.job_id() > job.job_id();
    });
    queue_.insert(place, id);
    ChangeLocked(id, [&](v1::Job& j) {
      j.set_state(v1::Job::QUEUED);
      j.set_items_per_second(0);
      j.set_eta_seconds(-1);
      MarkWaiting(j, outage);
    });
    for (const std::string& other : queue_) {
      if (other != id && jobs_[other].teacher() == job.teacher())
        ChangeLocked(other, [&](v1::Job& j) { MarkWaiting(j, outage); });
    }
  }

  // A run got answers from the teacher (told at its first progress report that counts one, so that
  // the jobs queued for the teacher stop saying they wait while it runs): whatever outage there was
  // is over, for those jobs and for the running one (which may still stop on it: a new outage,
  // counted afresh).
  void TeacherAnsweredLocked(const std::string& teacher) {
    outages_.erase(teacher);
    for (auto& [id, job] : jobs_) {
      if (Terminal(job.state()) || job.teacher() != teacher || job.waiting_since_unix_ms() == 0)
        continue;
      ChangeLocked(id, [](v1::Job& j) { ClearWaiting(j); });
    }
  }

  // Forgets the outage of a teacher no queued job waits for any more (its last job ended or was
  // cancelled): a job submitted later tries it at once.
  void DropUnusedOutageLocked(const std::string& teacher) {
    const bool waited_for = std::any_of(queue_.begin(), queue_.end(), [&](const std::string& id) {
      return jobs_[id].teacher() == teacher;
    });
    if (!waited_for) outages_.erase(teacher);
  }

  std::string NeverReachedLocked(const std::string& teacher, absl::StatusCode code) const {
    return NeverReachedHint(code, reached_.contains(teacher), teacher, "the service started");
  }

  void MarkWaiting(v1::Job& job, const Outage& outage) const {
    if (job.waiting_since_unix_ms() == 0) job.set_waiting_since_unix_ms(NowUnixMs());
    job.set_waiting(fmt::format(
        "teacher unusable since {}: {}; next try at {}; the job fails if it is still unusable "
        "at {}{}",
        UtcTime(job.waiting_since_unix_ms()), outage.reason, UtcTime(outage.retry_at_unix_ms),
        UtcTime(job.waiting_since_unix_ms() +
                static_cast<int64_t>(options_.teacher_outage.outage_s * 1000)),
        NeverReachedLocked(job.teacher(), outage.code)));
  }

  const DistillServerOptions options_;
  storage::KvStore* store_;
  std::unique_ptr<NoteCache> cache_;
  std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, v1::Job> jobs_;
  std::deque<std::string> queue_;
  std::map<std::string, Outage> outages_;  // by the jobs' teacher target
  // Teachers a job has connected to since the service started. One never reached may be a
  // mistyped address, which looks the same as a teacher still starting (UNAVAILABLE): the
  // waiting lines and a failed job's error say so (NeverReachedLocked).
  std::set<std::string> reached_;
  bool stopping_ = false;
  uint64_t job_counter_ = 0;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::thread worker_;
};

DistillServer::DistillServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

DistillServer::~DistillServer() {
  if (impl_) impl_->Shutdown();
}

absl::StatusOr<std::unique_ptr<DistillServer>> DistillServer::Start(
    const DistillServerOptions& options, storage::KvStore* store) {
  auto impl = std::make_unique<Impl>(options, store);
  RWR_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<DistillServer>(new DistillServer(std::move(impl)));
}

int DistillServer::port() const { return impl_->port(); }

void DistillServer::Shutdown() { impl_->Shutdown(); }

}  // namespace rwr::teacher
