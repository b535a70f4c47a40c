// CallScheduler: the request scheduler under every remote teacher client. It keeps at most
// `concurrency` RPCs in flight, queues the rest in order, gives every attempt a deadline and the
// bearer token, retries UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED (and CANCELLED by a
// server going down) with exponential backoff and ±50% jitter up to `max_attempts`, and paces
// starts to `requests_per_second`.
//
// Overload (Overloaded(): RESOURCE_EXHAUSTED, or a queue-full UNAVAILABLE; and DEADLINE_EXCEEDED
// while the teacher answers other calls, an OK answer within the last `deadline_s`: the attempt
// waited out its deadline in a deep queue) is backpressure, not a failure of the call. The
// in-flight window adapts (AIMD): it halves on an overload answer to an attempt started at the
// current window (once per window, however many of its calls are refused) and grows by one per
// answered call, never above `concurrency`. An overloaded call is retried with backoff, and that
// attempt does not count against `max_attempts` for `deadline_s` from the call's first overload
// answer and for as long after as the teacher answers other calls (one within the last
// `deadline_s`); once the teacher has answered nothing but overload for a deadline, the call spends
// its attempts as for any retryable error, so it still ends. RetryDelayLocked is the one place that
// decides whether and when a call is retried.
//
// Batching (rwr targets, EnableBatching): calls submitted with a TeacherTask that are ready at the
// same moment leave together in one RunBatch RPC of up to max_batch tasks; a lone ready call still
// goes out at once as its unary RPC (no waiting to fill a batch). The window, the requests/s limit,
// attempts and retries count tasks, not RPCs: a failed batch RPC retries each of its tasks, a task
// answered with its own retryable status is retried alone. Every task of a batch started together,
// so the batch's deadline is each task's attempt deadline. With batching on, a call submitted to
// an idle scheduler starts on the submitting thread; one submitted while others are in flight is
// started by the dispatcher (calls submitted meanwhile join it), and calls that FinishFns submit
// from a completion start together once those FinishFns returned.
//
// A call starts on the thread that submits it when the window has room, else on the gRPC thread
// whose completion frees a slot (gRPC callback API, so nothing blocks on the network); a dispatcher
// thread starts only retries whose backoff ran out and rate-limited calls. A completion either
// re-queues the call (retry) or calls its FinishFn exactly once. Destruction cancels queued and
// in-flight calls (their FinishFn sees CANCELLED) and waits for every FinishFn to return.
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "fmt/format.h"
#include "rwr/v1/teacher.pb.h"
#include "teacher_client/client.h"

namespace rwr::teacher {

class CallScheduler {
 public:
  // Starts one attempt on `context` (already carrying deadline and token) and arranges for
  // `attempt_done` to be called once with the attempt's status.
  using StartFn = std::function<void(grpc::ClientContext* context,
                                     std::function<void(grpc::Status)> attempt_done)>;
  // The call's final status (OK, a non-retryable error, retries exhausted, or CANCELLED at
  // shutdown) and how many attempts were made (overload answers included).
  using FinishFn = std::function<void(const grpc::Status& status, int attempts)>;
  // Sends one RunBatch attempt on `context`; `rpc_done` is called once with the RPC's status.
  using BatchRpcFn =
      std::function<void(grpc::ClientContext* context, const rwr::v1::TaskBatch* request,
                         rwr::v1::ResultBatch* response, std::function<void(grpc::Status)> rpc_done)>;
  // A call that may travel in a batch: its task, and where an OK task's result is put (both owned
  // by the submitter and alive until FinishFn has run). `answered_in_batch` tells FinishFn whether
  // the final attempt's answer is in `result` (batch) or where StartFn's RPC put it (unary).
  struct BatchPart {
    rwr::v1::TeacherTask task;
    rwr::v1::TeacherResult result;
    bool answered_in_batch = false;
  };

  explicit CallScheduler(const TeacherClientOptions& options);
  ~CallScheduler();
  CallScheduler(const CallScheduler&) = delete;
  CallScheduler& operator=(const CallScheduler&) = delete;

  // `batch` (optional, see BatchPart) makes the call batchable once batching is enabled.
  void Submit(StartFn start, FinishFn finish, BatchPart* batch = nullptr);
  // Turns batching on (before the first Submit): at most `max_batch` tasks and about `max_bytes`
  // of request per RunBatch. max_batch < 2 leaves every call unary.
  void EnableBatching(int max_batch, uint64_t max_bytes, BatchRpcFn rpc);
  TeacherClientStats Stats() const;
  // The in-flight window now: `concurrency`, less while the teacher answers overload (AIMD).
  int Window() const;

  // UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED (except "message larger than max"), and
  // CANCELLED from a server shutting down.
  static bool Retryable(const grpc::Status& status);
  // The teacher refused the call because it has too much work (see TeacherOverloaded).
  static bool Overloaded(const grpc::Status& status);

 private:
  using Clock = std::chrono::steady_clock;
  struct Call {
    StartFn start;
    FinishFn finish;
    int attempts = 0;       // sent
    int free_attempts = 0;  // of those, overload answers not counted against max_attempts
    int retries = 0;        // the backoff's exponent
    std::optional<Clock::time_point> overloaded_since;  // its first overload answer
    Clock::time_point not_before;
    BatchPart* batch = nullptr;
    uint64_t batch_bytes = 0;  // the task's size inside a TaskBatch
  };
  // One RPC in flight: a unary call, or a RunBatch carrying several calls.
  struct Attempt {
    std::unique_ptr<grpc::ClientContext> context;
    std::vector<std::shared_ptr<Call>> calls;
    rwr::v1::TaskBatch request;  // batch only
    rwr::v1::ResultBatch response;
    uint64_t window_epoch = 0;  // window_epoch_ when it started
  };
  struct LaterFirst {
    bool operator()(const std::shared_ptr<Call>& a, const std::shared_ptr<Call>& b) const {
      return a->not_before > b->not_before;
    }
  };

  void DispatchLoop();
  // The next call the window and the rate limit allow (mu_ held).
  std::shared_ptr<Call> TakeOneLocked();
  // The next RPC to start: one call, or as many ready batchable calls as allowed (mu_ held).
  std::shared_ptr<Attempt> TakeStartableLocked();
  // Starts calls while TakeStartableLocked gives one; drops the lock around each start.
  void PumpLocked(std::unique_lock<std::mutex>& lock);
  void StartAttempt(std::shared_ptr<Attempt> attempt);
  // `statuses` holds each call's status (the RPC's, or its task's own inside a batch).
  void AttemptDone(std::shared_ptr<Attempt> attempt, std::vector<grpc::Status> statuses);
  void BatchDone(std::shared_ptr<Attempt> attempt, const grpc::Status& status);
  void Finish(const std::shared_ptr<Call>& call, const grpc::Status& status);  // counts, then runs
  void RunFinish(const std::shared_ptr<Call>& call, const grpc::Status& status);  // already counted
  // Overloaded(status), or a DEADLINE_EXCEEDED while the teacher answers other calls (an OK
  // answer within the last deadline_s): the attempt waited out its deadline in the teacher's queue
  // (mu_ held).
  bool OverloadedLocked(const grpc::Status& status, Clock::time_point now) const;
  // AIMD: halves the window on overload (once per window), grows it by one per answer (mu_ held).
  void AdaptWindowLocked(const Attempt& attempt, const std::vector<grpc::Status>& statuses,
                         Clock::time_point now);
  // The retry policy: how long `call` waits before its next attempt after `status`, or nothing
  // when it ends with `status` (mu_ held).
  std::optional<Clock::duration> RetryDelayLocked(Call& call, const grpc::Status& status,
                                                  Clock::time_point now);
  Clock::duration Backoff(int retries);  // mu_ held

  const TeacherClientOptions options_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Call>> ready_;
  std::vector<std::shared_ptr<Call>> delayed_;  // min-heap on not_before
  std::set<grpc::ClientContext*> in_flight_;  // RPCs
  int in_flight_tasks_ = 0;                    // calls those RPCs carry (the window counts these)
  const int max_window_;                       // options_.concurrency, at least 1
  int window_;                                 // max_window_, less after overload
  uint64_t window_epoch_ = 0;                  // bumped when the window shrinks
  // The teacher's last OK answer to any call.
  std::optional<Clock::time_point> last_answer_;
  int max_batch_ = 1;
  uint64_t max_batch_bytes_ = 0;
  BatchRpcFn batch_rpc_;
  int finishing_ = 0;  // FinishFns running now
  bool stopping_ = false;
  bool pump_requested_ = false;  // batching: the dispatcher is woken to start ready calls
  Clock::time_point next_start_;  // rate limit
  std::mt19937_64 rng_;
  TeacherClientStats stats_;
  std::thread dispatcher_;
};

const char* GrpcCodeName(grpc::StatusCode code);
// "CODE: message"; for UNIMPLEMENTED also what the code means here (the address serves another
// API — another rwr service, or another kind of teacher), after the server's message if any.
std::string DescribeGrpcFailure(const grpc::Status& status);

// Whether a status is the teacher saying it has too much work now: RESOURCE_EXHAUSTED (a full
// `rwr teacher serve` queue, a quota), except gRPC's "message larger than max" (the request itself
// is the problem), or UNAVAILABLE from a full Triton queue ("Exceeds maximum queue size") or an
// HTTP 429 of a proxy. A bare 503 stays UNAVAILABLE: a proxy answers it for a backend that is down.
bool TeacherOverloaded(grpc::StatusCode code, const std::string& message);

// "teacher rwr://h:p ExtractNote: UNAVAILABLE after 5 attempts: <server message>", same code;
// an overload answer (TeacherOverloaded) is RESOURCE_EXHAUSTED whatever its wire code, so callers
// tell overload from a teacher that is down by the code alone.
absl::Status FinalCallStatus(std::string_view target, std::string_view method,
                             const grpc::Status& status, int attempts);

// A bearer token must be one line of printable ASCII: gRPC aborts the process on a metadata value
// holding anything else (a token file of two lines, say). `what` names where it came from.
absl::Status CheckBearerToken(std::string_view token, std::string_view what);

// The bearer token in a token file (`--auth-token-file`, servers and clients alike): the file's
// text with surrounding whitespace removed, refused when empty or not sendable (CheckBearerToken).
absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path);

// The one-line error for a request over the teacher's byte limit (checked before any RPC), or OK.
inline absl::Status CheckRequestSize(const std::string& target, const char* method,
                                     uint64_t bytes, uint64_t max_bytes) {
  if (bytes <= max_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(fmt::format(
      "teacher {} {}: request is {} bytes, over the {} byte limit", target, method, bytes,
      max_bytes));
}

// Submits one unary RPC through the scheduler; `convert` checks and translates the response.
template <typename Request, typename Response, typename Result, typename Invoke, typename Convert>
void SubmitUnary(CallScheduler* scheduler, const std::string& target, const char* method,
                 uint64_t max_bytes, Request request, Invoke invoke, Convert convert,
                 TeacherCallback<Result> done) {
  if (absl::Status size = CheckRequestSize(target, method, request.ByteSizeLong(), max_bytes);
      !size.ok()) {
    done(std::move(size));
    return;
  }
  struct State {
    Request request;
    Response response;
  };
  auto state = std::make_shared<State>();
  state->request = std::move(request);
  scheduler->Submit(
      [state, invoke](grpc::ClientContext* context,
                      std::function<void(grpc::Status)> attempt_done) {
        state->response.Clear();
        invoke(context, &state->request, &state->response, std::move(attempt_done));
      },
      [state, target, method, convert, done = std::move(done)](const grpc::Status& status,
                                                               int attempts) {
        if (!status.ok()) {
          done(FinalCallStatus(target, method, status, attempts));
          return;
        }
        absl::StatusOr<Result> result = convert(state->response);
        if (!result.ok()) {
          done(absl::InternalError(fmt::format("teacher {} {}: malformed answer: {}", target,
                                               method, std::string(result.status().message()))));
          return;
        }
        done(std::move(result));
      });
}

}  // namespace rwr::teacher
