// CallScheduler: adaptive in-flight window, deadlines, retries with backoff + jitter, rate limit.
#include "teacher_client/call_scheduler.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "common/status.h"
#include "fmt/format.h"
#include "teacher_client/channel.h"

namespace rwr::teacher {
namespace {
// The scheduler whose completion is running FinishFns on this thread: calls those submit are
// started together after they return (batching only).
thread_local const CallScheduler* completing = nullptr;
}  // namespace

CallScheduler::CallScheduler(const TeacherClientOptions& options)
    : options_(options),
      max_window_(std::max(1, options.concurrency)),
      window_(max_window_),
      next_start_(Clock::now()),
      rng_(std::random_device{}()) {
  dispatcher_ = std::thread([this] { DispatchLoop(); });
}

CallScheduler::~CallScheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (grpc::ClientContext* context : in_flight_) context->TryCancel();
  }
  wake_.notify_all();
  dispatcher_.join();
}

bool TeacherOverloaded(grpc::StatusCode code, const std::string& message) {
  // gRPC reports a message over the receiver's size limit as RESOURCE_EXHAUSTED too; sending the
  // same bytes again cannot help.
  if (code == grpc::StatusCode::RESOURCE_EXHAUSTED)
    return message.find("larger than max") == std::string::npos;
  if (code != grpc::StatusCode::UNAVAILABLE) return false;
  // Triton's dynamic batcher over its max_queue_size ("Exceeds maximum queue size"); gRPC's
  // mapping of an HTTP 429 from a proxy.
  std::string lower = message;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower.find("exceeds maximum queue size") != std::string::npos ||
         lower.find("header with status: 429") != std::string::npos;
}

bool CallScheduler::Overloaded(const grpc::Status& status) {
  return TeacherOverloaded(status.error_code(), status.error_message());
}

bool CallScheduler::Retryable(const grpc::Status& status) {
  const grpc::StatusCode code = status.error_code();
  if (code == grpc::StatusCode::RESOURCE_EXHAUSTED) return Overloaded(status);
  // CANCELLED reaches a live client only from the server side (a server shutting down cancels
  // what it holds); our own cancellations happen while stopping_, when nothing is retried.
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::CANCELLED;
}

void CallScheduler::Submit(StartFn start, FinishFn finish, BatchPart* batch) {
  auto call = std::make_shared<Call>();
  call->start = std::move(start);
  call->finish = std::move(finish);
  call->batch = batch;
  std::unique_lock<std::mutex> lock(mu_);
  if (batch != nullptr && batch_rpc_) {
    // Field tag + length prefix of a repeated message, at most 1 + 10 bytes.
    call->batch_bytes = batch->task.ByteSizeLong() + 11;
  }
  if (stopping_) {
    lock.unlock();
    Finish(call, grpc::Status(grpc::StatusCode::CANCELLED, "teacher client is shutting down"));
    return;
  }
  ready_.push_back(std::move(call));
  if (batch_rpc_) {
    // Batching: a completion starts what its callbacks submitted once they all returned; from
    // any other thread the dispatcher starts what is ready when it wakes (one context switch,
    // during which calls submitted meanwhile join the same RunBatch), unless the client is idle.
    // Never waits to fill a batch.
    if (completing == this) return;
    // Nothing else in flight or queued: start it here at once, exactly as an unbatched call.
    if (in_flight_tasks_ == 0 && ready_.size() == 1) {
      PumpLocked(lock);
      return;
    }
    if (!pump_requested_ && in_flight_tasks_ < window_) {
      pump_requested_ = true;
      wake_.notify_all();
    }
    return;
  }
  // Start it here when the window has room: no hand-off to the dispatcher thread.
  PumpLocked(lock);
  // Left queued: the window is full (a completion will start it) or pacing holds it (the
  // dispatcher).
  if (!ready_.empty() && options_.requests_per_second > 0) wake_.notify_all();
}

void CallScheduler::EnableBatching(int max_batch, uint64_t max_bytes, BatchRpcFn rpc) {
  std::lock_guard<std::mutex> lock(mu_);
  max_batch_ = std::max(1, max_batch);
  max_batch_bytes_ = max_bytes;
  batch_rpc_ = max_batch_ > 1 ? std::move(rpc) : nullptr;
}

std::shared_ptr<CallScheduler::Call> CallScheduler::TakeOneLocked() {
  if (stopping_ || ready_.empty() || in_flight_tasks_ >= window_) return nullptr;
  if (options_.requests_per_second > 0) {
    const auto interval = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(1.0 / options_.requests_per_second));
    const Clock::time_point now = Clock::now();
    if (next_start_ > now) return nullptr;  // the dispatcher waits for the next slot
    // After an idle period a burst of at most 100 ms worth (at least one call), then steady pacing.
    const auto burst = std::max(
        interval, std::chrono::duration_cast<Clock::duration>(std::chrono::milliseconds(100)));
    next_start_ = std::max(next_start_ + interval, now - burst + interval);
  }
  std::shared_ptr<Call> call = std::move(ready_.front());
  ready_.pop_front();
  ++in_flight_tasks_;
  ++call->attempts;
  ++stats_.attempts;
  return call;
}

std::shared_ptr<CallScheduler::Attempt> CallScheduler::TakeStartableLocked() {
  std::shared_ptr<Call> first = TakeOneLocked();
  if (!first) return nullptr;
  auto attempt = std::make_shared<Attempt>();
  attempt->calls.push_back(std::move(first));
  // Batch what is ready now, never waiting for more: a lone call stays a unary RPC.
  if (batch_rpc_ && attempt->calls[0]->batch != nullptr) {
    uint64_t bytes = attempt->calls[0]->batch_bytes;
    while (static_cast<int>(attempt->calls.size()) < max_batch_ && !ready_.empty() &&
           ready_.front()->batch != nullptr &&
           bytes + ready_.front()->batch_bytes <= max_batch_bytes_) {
      std::shared_ptr<Call> next = TakeOneLocked();
      if (!next) break;
      bytes += next->batch_bytes;
      attempt->calls.push_back(std::move(next));
    }
  }
  attempt->context = std::make_unique<grpc::ClientContext>();
  attempt->context->set_deadline(std::chrono::system_clock::now() +
                                 std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                     std::chrono::duration<double>(options_.deadline_s)));
  if (!options_.bearer_token.empty())
    attempt->context->AddMetadata("authorization", "Bearer " + options_.bearer_token);
  attempt->window_epoch = window_epoch_;
  in_flight_.insert(attempt->context.get());
  ++stats_.rpcs;
  return attempt;
}

void CallScheduler::PumpLocked(std::unique_lock<std::mutex>& lock) {
  while (std::shared_ptr<Attempt> attempt = TakeStartableLocked()) {
    lock.unlock();
    StartAttempt(std::move(attempt));
    lock.lock();
  }
}

TeacherClientStats CallScheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

int CallScheduler::Window() const {
  std::lock_guard<std::mutex> lock(mu_);
  return window_;
}

CallScheduler::Clock::duration CallScheduler::Backoff(int retries) {
  double base = options_.initial_backoff_s * std::pow(2.0, std::max(0, retries - 1));
  base = std::min(base, options_.max_backoff_s);
  std::uniform_real_distribution<double> jitter(0.5, 1.5);
  return std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(base * jitter(rng_)));
}

void CallScheduler::DispatchLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    pump_requested_ = false;
    Clock::time_point now = Clock::now();
    while (!delayed_.empty() && delayed_.front()->not_before <= now) {
      std::pop_heap(delayed_.begin(), delayed_.end(), LaterFirst());
      ready_.push_back(std::move(delayed_.back()));
      delayed_.pop_back();
    }
    if (stopping_) {
      std::vector<std::shared_ptr<Call>> cancelled(ready_.begin(), ready_.end());
      cancelled.insert(cancelled.end(), delayed_.begin(), delayed_.end());
      ready_.clear();
      delayed_.clear();
      if (!cancelled.empty()) {
        lock.unlock();
        for (auto& call : cancelled)
          Finish(call,
                 grpc::Status(grpc::StatusCode::CANCELLED, "teacher client is shutting down"));
        lock.lock();
        continue;
      }
      if (in_flight_.empty() && finishing_ == 0) return;
      wake_.wait(lock);
      continue;
    }
    if (std::shared_ptr<Attempt> attempt = TakeStartableLocked()) {
      lock.unlock();
      StartAttempt(std::move(attempt));
      lock.lock();
      continue;
    }
    const bool window_open = in_flight_tasks_ < window_;
    if (!ready_.empty() && window_open && options_.requests_per_second > 0) {
      wake_.wait_until(
          lock,
          std::min(next_start_, delayed_.empty() ? next_start_ : delayed_.front()->not_before));
      continue;
    }
    if (!delayed_.empty()) {
      wake_.wait_until(lock, delayed_.front()->not_before);
    } else {
      wake_.wait(lock);
    }
  }
}

void CallScheduler::StartAttempt(std::shared_ptr<Attempt> attempt) {
  grpc::ClientContext* context = attempt->context.get();
  if (attempt->calls.size() == 1) {
    const std::shared_ptr<Call>& call = attempt->calls[0];
    if (call->batch != nullptr) call->batch->answered_in_batch = false;
    call->start(context, [this, attempt](grpc::Status status) {
      std::vector<grpc::Status> statuses{std::move(status)};
      AttemptDone(attempt, std::move(statuses));
    });
    return;
  }
  for (const std::shared_ptr<Call>& call : attempt->calls) {
    call->batch->answered_in_batch = false;
    call->batch->result.Clear();
    *attempt->request.add_tasks() = call->batch->task;
  }
  batch_rpc_(context, &attempt->request, &attempt->response,
             [this, attempt](grpc::Status status) { BatchDone(attempt, status); });
}

void CallScheduler::BatchDone(std::shared_ptr<Attempt> attempt, const grpc::Status& status) {
  const size_t n = attempt->calls.size();
  std::vector<grpc::Status> statuses;
  statuses.reserve(n);
  if (!status.ok()) {
    statuses.assign(n, status);  // the whole RPC failed: each task retries (or fails) on its own
  } else if (static_cast<size_t>(attempt->response.results_size()) != n) {
    statuses.assign(n, grpc::Status(grpc::StatusCode::INTERNAL,
                                    fmt::format("malformed answer: RunBatch returned {} results "
                                                "for {} tasks",
                                                attempt->response.results_size(), n)));
  } else {
    for (size_t i = 0; i < n; ++i) {
      rwr::v1::TeacherResult* result = attempt->response.mutable_results(static_cast<int>(i));
      if (result->code() == 0) {
        BatchPart* part = attempt->calls[i]->batch;
        part->result.Swap(result);
        part->answered_in_batch = true;
        statuses.push_back(grpc::Status::OK);
      } else {
        statuses.emplace_back(static_cast<grpc::StatusCode>(result->code()), result->message());
      }
    }
  }
  AttemptDone(std::move(attempt), std::move(statuses));
}

void CallScheduler::AttemptDone(std::shared_ptr<Attempt> attempt,
                                std::vector<grpc::Status> statuses) {
  std::unique_lock<std::mutex> lock(mu_);
  in_flight_.erase(attempt->context.get());
  in_flight_tasks_ -= static_cast<int>(attempt->calls.size());
  // Held until the end, so the destructor cannot complete while this runs.
  ++finishing_;
  const Clock::time_point now = Clock::now();
  AdaptWindowLocked(*attempt, statuses, now);
  std::vector<size_t> finished;
  bool retried = false;
  for (size_t i = 0; i < attempt->calls.size(); ++i) {
    const std::shared_ptr<Call>& call = attempt->calls[i];
    if (std::optional<Clock::duration> delay = RetryDelayLocked(*call, statuses[i], now)) {
      retried = true;
      ++stats_.retries;
      call->not_before = now + *delay;
      delayed_.push_back(call);
      std::push_heap(delayed_.begin(), delayed_.end(), LaterFirst());
    } else {
      finished.push_back(i);
    }
  }
  // Slots are free: start the next queued calls from this thread; with batching after the
  // callbacks ran, so that the calls they submit leave together with the queued ones.
  if (!batch_rpc_) PumpLocked(lock);
  if (!finished.empty()) {
    lock.unlock();
    const CallScheduler* outer = completing;
    if (batch_rpc_) completing = this;
    for (size_t i : finished) attempt->calls[i]->finish(statuses[i], attempt->calls[i]->attempts);
    completing = outer;
    lock.lock();
    for (size_t i : finished) {
      ++stats_.calls;
      if (!statuses[i].ok()) ++stats_.failures;
    }
  }
  if (batch_rpc_) PumpLocked(lock);
  --finishing_;
  // The dispatcher is needed only for a new backoff timer, pacing, or shutdown; waking it for every
  // completion would cost a context switch per call. Notify before unlocking: once the lock drops
  // with finishing_ at 0 the destructor may complete.
  if (retried || stopping_ || (!ready_.empty() && options_.requests_per_second > 0))
    wake_.notify_all();
}

void CallScheduler::AdaptWindowLocked(const Attempt& attempt,
                                      const std::vector<grpc::Status>& statuses,
                                      Clock::time_point now) {
  for (const grpc::Status& status : statuses) {
    if (status.ok()) {
      last_answer_ = now;
      window_ = std::min(max_window_, window_ + 1);
    }
  }
  const bool overloaded = std::any_of(statuses.begin(), statuses.end(), [&](const auto& status) {
    return OverloadedLocked(status, now);
  });
  // Every call in flight when the teacher filled up is refused at about the same moment: the
  // window halves once for them, and again only if an attempt started at the halved window is
  // refused too.
  if (overloaded && attempt.window_epoch == window_epoch_) {
    window_ = std::max(1, window_ / 2);
    ++window_epoch_;
  }
}

bool CallScheduler::OverloadedLocked(const grpc::Status& status, Clock::time_point now) const {
  if (Overloaded(status)) return true;
  // An attempt that ran out its deadline while the teacher answered other calls waited in the
  // teacher's queue (its length × time per call > deadline_s): the teacher is up but has too much
  // work. With no answer within the last deadline the teacher may be hung or down: not overload.
  return status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && last_answer_ &&
         now - *last_answer_ <= std::chrono::duration<double>(options_.deadline_s);
}

std::optional<CallScheduler::Clock::duration> CallScheduler::RetryDelayLocked(
    Call& call, const grpc::Status& status, Clock::time_point now) {
  if (status.ok() || stopping_ || !Retryable(status)) return std::nullopt;
  // Overload is backpressure: the attempt is given back for one deadline from the call's first
  // refusal, and for as long after as the teacher answers other calls (one within a deadline). A
  // teacher that answers nothing but overload for a deadline spends the call's attempts: it ends.
  bool backpressure = false;
  if (OverloadedLocked(status, now)) {
    if (!call.overloaded_since) call.overloaded_since = now;
    const Clock::time_point since =
        std::max(*call.overloaded_since, last_answer_.value_or(*call.overloaded_since));
    backpressure = now - since <= std::chrono::duration<double>(options_.deadline_s);
  }
  if (backpressure) {
    ++call.free_attempts;
  } else if (call.attempts - call.free_attempts >= options_.max_attempts) {
    return std::nullopt;
  }
  return Backoff(++call.retries);
}

void CallScheduler::Finish(const std::shared_ptr<Call>& call, const grpc::Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++finishing_;
  }
  RunFinish(call, status);
}

void CallScheduler::RunFinish(const std::shared_ptr<Call>& call, const grpc::Status& status) {
  call->finish(status, call->attempts);
  // Notify before unlocking: once the lock drops with finishing_ at 0 the destructor may complete,
  // so `this` must not be touched after.
  std::lock_guard<std::mutex> lock(mu_);
  --finishing_;
  ++stats_.calls;
  if (!status.ok()) ++stats_.failures;
  wake_.notify_all();
}

std::string DescribeGrpcFailure(const grpc::Status& status) {
  std::string message = status.error_message();
  if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
    // C++ servers send no message, others their own ("Method not found!" from grpcio): either way
    // the method is not served there.
    constexpr char kHint[] =
        "the server there does not serve this API (another rwr service, or another kind of "
        "teacher than the address's scheme names?)";
    message = message.empty() ? kHint : fmt::format("{}; {}", message, kHint);
  }
  return fmt::format("{}: {}", GrpcCodeName(status.error_code()), message);
}

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    default:
      return "ERROR";
  }
}

absl::Status CheckBearerToken(std::string_view token, std::string_view what) {
  for (size_t i = 0; i < token.size(); ++i) {
    const auto byte = static_cast<unsigned char>(token[i]);
    if (byte < 0x20 || byte > 0x7e) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: the bearer token holds byte 0x{:02x} at offset {}{}; a token is one line of "
          "printable ASCII",
          what, byte, i,
          byte == '\n' || byte == '\r' ? " (a line break: more than one line?)" : ""));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadBearerTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadWholeFile(path, "--auth-token-file");
  if (!text.ok()) return text.status();
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  const auto first = std::find_if_not(text->begin(), text->end(), space);
  const auto last = std::find_if_not(text->rbegin(), text->rend(), space).base();
  std::string token = first < last ? std::string(first, last) : std::string();
  if (token.empty()) {
    return absl::InvalidArgumentError(fmt::format("--auth-token-file {}: the file is empty", path));
  }
  RWR_RETURN_IF_ERROR(CheckBearerToken(token, fmt::format("--auth-token-file {}", path)));
  return token;
}

absl::Status FinalCallStatus(std::string_view target, std::string_view method,
                             const grpc::Status& status, int attempts) {
  const grpc::StatusCode wire = status.error_code();
  const bool overloaded = CallScheduler::Overloaded(status);
  const grpc::StatusCode code = overloaded ? grpc::StatusCode::RESOURCE_EXHAUSTED : wire;
  return absl::Status(
      static_cast<absl::StatusCode>(code),
      fmt::format("teacher {} {}: {}{} after {} attempt{}: {}", target, method, GrpcCodeName(wire),
                  overloaded && code != wire ? " (overloaded)" : "", attempts,
                  attempts == 1 ? "" : "s", status.error_message()));
}

}  // namespace rwr::teacher
