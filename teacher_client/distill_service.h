// DistillServer: `rwr distill serve`, the long-running distillation service (rwr.v1.DistillService,
// proto/rwr/v1/distill.proto) over one note cache.
//
// - SubmitJob checks the request (dataset readable, teacher target given, recipe in range), writes
//   the job to the cache's `jobs` family as QUEUED, and only then answers: an acknowledged job is
//   never lost. Jobs run one at a time, in submission order, on a worker thread (the cache has one
//   writer; a job already fills the teacher's window).
// - A running job's counts, rate and ETA are kept in memory and written to the cache about once a
//   second. GetJob / ListJobs answer from memory; WatchJob streams the job every interval until it
//   ends; CancelJob stops a job (queued: at once; running: it starts no new item, the items in
//   flight finish and are cached; ended: FAILED_PRECONDITION, the job unchanged).
// - On start, every job the cache holds as QUEUED or RUNNING (a service killed or stopped mid-job)
//   is queued again and resumed: its dataset is walked again and every answer already cached is a
//   cache hit, so only the unfinished work reaches the teacher.
// - Shutdown — Shutdown(), or the process's SIGINT/SIGTERM (rwr::ShutdownRequested), whichever
//   comes first — stops the running job the same way as cancel but leaves it RUNNING in the cache,
//   starts no queued job and accepts no new one, so the next start resumes them all.
// - A teacher that is down does not fail the jobs queued for it: they wait QUEUED, saying so in
//   Job.waiting, and run when it is back (DistillServerOptions::teacher_outage).
// A job ends SUCCEEDED (its run read the whole dataset and every item was kept or dropped), FAILED
// (some items failed — the error names how many and the first few with their reasons; resubmit to
// retry them — or the dataset was unusable, or the teacher past the wait) or CANCELLED. The gRPC
// handlers are the synchronous API: they only read and write in-memory state and the cache; the
// distillation itself runs on the worker thread.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "storage/kv_store.h"
#include "teacher_client/client.h"
#include "teacher_client/dataset.h"
#include "teacher_client/distill_run.h"
#include "teacher_client/extractive_teacher.h"

namespace rwr::teacher {

struct DistillServerOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one (see port())
  TeacherClientOptions client;         // for remote teachers; a job's recipe may set concurrency
  ExtractiveOptions extractive;        // for jobs on builtin:extractive (teacher.extractive.*)
  DatasetOptions dataset;              // bad input handling for every job
  double default_negative_fraction = 0.3;
  double persist_interval_s = 1.0;  // how often a running job's counts are written
  // Non-empty: every call must carry `authorization: Bearer <token>` metadata (UNAUTHENTICATED
  // otherwise). The service has no TLS of its own: bind it to loopback or a private network.
  std::string auth_token;
  // A job whose teacher is down or unreachable (it cannot connect, or its run stops because every
  // call of a window of items failed UNAVAILABLE or DEADLINE_EXCEEDED) goes back to the queue in
  // its place and waits, with the jobs queued for the same teacher; jobs for other teachers run
  // meanwhile. The first of them tries the teacher again at the policy's delays, and a job fails
  // once it has waited outage_s (at once where waiting cannot help). The wait is counted from the
  // job's first failure, across restarts of the service.
  TeacherOutagePolicy teacher_outage;
};

class DistillServer {
 public:
  // `store` must outlive the server. Resumes unfinished jobs found in it.
  static absl::StatusOr<std::unique_ptr<DistillServer>> Start(const DistillServerOptions& options,
                                                              storage::KvStore* store);
  ~DistillServer();  // Shutdown() if still running

  int port() const;
  // Stop serving; the running job stops starting items, finishes those in flight, stays RUNNING
  // in the cache (resumed on the next start). A shutdown signal has that effect on the jobs as
  // soon as it arrives (the owner still calls Shutdown() to stop serving).
  void Shutdown();

  class Impl;

 private:
  explicit DistillServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace rwr::teacher
