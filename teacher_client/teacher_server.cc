// TeacherServer: admission on gRPC threads, work on a worker pool, answers from any Teacher.
#include "teacher_client/teacher_server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <system_error>

#include "common/status.h"
#include "common/version.h"
#include "fmt/format.h"
#include "rwr/v1/teacher.grpc.pb.h"
#include "spdlog/spdlog.h"
#include "teacher_client/call_scheduler.h"
#include "teacher_client/channel.h"

namespace rwr::teacher {
namespace {

constexpr char kServiceName[] = "rwr.v1.TeacherService";

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

NoteTask ToTask(const rwr::v1::NoteRequest& r) {
  return NoteTask{
      .context = r.context(), .question = r.question(), .max_note_bytes = r.max_note_bytes()};
}
VerifyTask ToTask(const rwr::v1::VerifyRequest& r) {
  return VerifyTask{.question = r.question(), .note = r.note(), .answer = r.answer()};
}
RemoveEvidenceTask ToTask(const rwr::v1::RemoveEvidenceRequest& r) {
  return RemoveEvidenceTask{.context = r.context(), .question = r.question(), .answer = r.answer()};
}
void Fill(const Note& note, rwr::v1::NoteResponse* r) {
  r->set_note(note.text);
  r->set_empty(note.empty);
  r->set_score(note.score);
}
void Fill(const Verdict& verdict, rwr::v1::VerifyResponse* r) {
  r->set_consistent(verdict.consistent);
  r->set_score(verdict.score);
}
void Fill(const Negative& negative, rwr::v1::RemoveEvidenceResponse* r) {
  r->set_context(negative.context);
  r->set_removed_paragraphs(negative.removed_paragraphs);
  r->set_answer_still_present(negative.answer_still_present);
}

void Run(Teacher& t, NoteTask task, TeacherCallback<Note> done) {
  t.ExtractNote(std::move(task), std::move(done));
}
void Run(Teacher& t, VerifyTask task, TeacherCallback<Verdict> done) {
  t.VerifyNote(std::move(task), std::move(done));
}
void Run(Teacher& t, RemoveEvidenceTask task, TeacherCallback<Negative> done) {
  t.RemoveEvidence(std::move(task), std::move(done));
}

}  // namespace

class TeacherServer::Impl final : public rwr::v1::TeacherService::CallbackService {
 public:
  Impl(const TeacherServerOptions& options, std::shared_ptr<Teacher> backend)
      : options_(options), backend_(std::move(backend)) {}
  ~Impl() { StopWorkers(); }

  // Starts the worker pool; a thread the system refuses (a process or memory limit) is an error
  // with the threads already started stopped, not std::terminate.
  absl::Status StartWorkers() {
    try {
      for (int i = 0; i < std::max(1, options_.workers); ++i)
        workers_.emplace_back([this] { WorkLoop(); });
    } catch (const std::system_error& e) {
      const size_t started = workers_.size();
      StopWorkers();
      return absl::ResourceExhaustedError(
          fmt::format("teacher server: could start only {} of {} worker threads ({}); use fewer "
                      "--workers",
                      started, options_.workers, e.what()));
    }
    return absl::OkStatus();
  }

  grpc::ServerUnaryReactor* ExtractNote(grpc::CallbackServerContext* context,
                                        const rwr::v1::NoteRequest* request,
                                        rwr::v1::NoteResponse* response) override {
    return HandleOne<Note>(context, request, response);
  }
  grpc::ServerUnaryReactor* VerifyNote(grpc::CallbackServerContext* context,
                                       const rwr::v1::VerifyRequest* request,
                                       rwr::v1::VerifyResponse* response) override {
    return HandleOne<Verdict>(context, request, response);
  }
  grpc::ServerUnaryReactor* RemoveEvidence(grpc::CallbackServerContext* context,
                                           const rwr::v1::RemoveEvidenceRequest* request,
                                           rwr::v1::RemoveEvidenceResponse* response) override {
    return HandleOne<Negative>(context, request, response);
  }

  grpc::ServerUnaryReactor* RunBatch(grpc::CallbackServerContext* context,
                                     const rwr::v1::TaskBatch* request,
                                     rwr::v1::ResultBatch* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    ++rpcs_;
    const int n = request->tasks_size();
    if (n > options_.max_batch) {
      ++rejected_;
      reactor->Finish(
          grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       fmt::format("batch of {} tasks; this server takes at most {} per call", n,
                                   options_.max_batch)));
      return reactor;
    }
    if (grpc::Status admitted = Admit(context, request->ByteSizeLong(), n); !admitted.ok()) {
      reactor->Finish(admitted);
      return reactor;
    }
    if (n == 0) {
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    for (int i = 0; i < n; ++i) response->add_results();
    // Each task is its own work item: tasks of one batch spread over the workers, and each is
    // checked for a passed deadline or a gone client just before it would run.
    auto remaining = std::make_shared<std::atomic<int>>(n);
    for (int i = 0; i < n; ++i) {
      Enqueue([this, context, request, response, reactor, remaining, i] {
        rwr::v1::TeacherResult* result = response->mutable_results(i);
        auto task_done = [this, result, remaining, reactor](const absl::Status& status) {
          result->set_code(static_cast<int>(status.code()));
          result->set_message(std::string(status.message()));
          if (status.ok())
            ++served_;
          else
            ++failed_;
          Release(1);
          if (remaining->fetch_sub(1) == 1) reactor->Finish(grpc::Status::OK);
        };
        const rwr::v1::TeacherTask& task = request->tasks(i);
        if (grpc::Status gone = Gone(context); !gone.ok()) {
          task_done(
              absl::Status(static_cast<absl::StatusCode>(gone.error_code()), gone.error_message()));
        } else if (task.has_note()) {
          backend_->ExtractNote(ToTask(task.note()), [result, task_done](absl::StatusOr<Note> r) {
            if (r.ok()) Fill(*r, result->mutable_note());
            task_done(r.status());
          });
        } else if (task.has_verify()) {
          backend_->VerifyNote(ToTask(task.verify()),
                               [result, task_done](absl::StatusOr<Verdict> r) {
                                 if (r.ok()) Fill(*r, result->mutable_verify());
                                 task_done(r.status());
                               });
        } else if (task.has_remove_evidence()) {
          backend_->RemoveEvidence(ToTask(task.remove_evidence()),
                                   [result, task_done](absl::StatusOr<Negative> r) {
                                     if (r.ok()) Fill(*r, result->mutable_remove_evidence());
                                     task_done(r.status());
                                   });
        } else {
          task_done(absl::InvalidArgumentError(fmt::format("task {} names no task", i)));
        }
      });
    }
    return reactor;
  }

  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const rwr::v1::ServerInfoRequest*,
                                          rwr::v1::ServerInfo* info) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (grpc::Status auth = Authorize(context); !auth.ok()) {
      ++rejected_;
      reactor->Finish(auth);
      return reactor;
    }
    TeacherInfo teacher = backend_->Info();
    info->set_teacher_id(teacher.teacher_id);
    info->set_revision(teacher.revision);
    info->set_prompt_template_version(teacher.prompt_template_version);
    info->set_backend(options_.backend_name);
    info->set_server_version(VersionString());
    TeacherServerStats s = Stats();
    info->set_calls_served(s.served);
    info->set_calls_failed(s.failed);
    info->set_calls_rejected(s.rejected);
    info->set_queue_capacity(static_cast<uint32_t>(options_.queue_capacity));
    info->set_workers(static_cast<uint32_t>(options_.workers));
    info->set_max_request_bytes(options_.max_request_bytes);
    info->set_max_batch(static_cast<uint32_t>(options_.max_batch));
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  TeacherServerStats Stats() const {
    return TeacherServerStats{
        .served = served_.load(),
        .failed = failed_.load(),
        .rejected = rejected_.load(),
        .outstanding = static_cast<uint64_t>(std::max<int64_t>(0, outstanding_.load())),
        .rpcs = rpcs_.load()};
  }

  // Waits up to `timeout_s` for backend answers still owed, then stops the pool.
  void Drain(double timeout_s) {
    auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (outstanding_.load() > 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    StopWorkers();
  }

 private:
  template <typename Result, typename Request, typename Response>
  grpc::ServerUnaryReactor* HandleOne(grpc::CallbackServerContext* context, const Request* request,
                                      Response* response) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    ++rpcs_;
    if (grpc::Status admitted = Admit(context, request->ByteSizeLong(), 1); !admitted.ok()) {
      reactor->Finish(admitted);
      return reactor;
    }
    Enqueue([this, context, request, response, reactor] {
      if (grpc::Status gone = Gone(context); !gone.ok()) {
        ++failed_;
        Release(1);
        reactor->Finish(gone);
        return;
      }
      Run(*backend_, ToTask(*request),
          TeacherCallback<Result>([this, response, reactor](absl::StatusOr<Result> r) {
            if (r.ok()) {
              Fill(*r, response);
              ++served_;
            } else {
              ++failed_;
            }
            Release(1);
            reactor->Finish(r.ok() ? grpc::Status::OK : ToGrpc(r.status()));
          }));
    });
    return reactor;
  }

  grpc::Status Authorize(grpc::CallbackServerContext* context) const {
    if (options_.auth_token.empty()) return grpc::Status::OK;
    const auto& metadata = context->client_metadata();
    auto it = metadata.find("authorization");
    if (it == metadata.end())
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "missing `authorization: Bearer <token>` metadata");
    std::string_view value(it->second.data(), it->second.size());
    const std::string expected = "Bearer " + options_.auth_token;
    if (!ConstantTimeEquals(value, expected))
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong bearer token");
    return grpc::Status::OK;
  }

  grpc::Status Admit(grpc::CallbackServerContext* context, size_t request_bytes, int tasks) {
    if (grpc::Status auth = Authorize(context); !auth.ok()) {
      ++rejected_;
      return auth;
    }
    if (request_bytes > options_.max_request_bytes) {
      ++rejected_;
      return grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          fmt::format("request is {} bytes; this server accepts at most {} (--max-request-bytes)",
                      request_bytes, options_.max_request_bytes));
    }
    int64_t before = outstanding_.fetch_add(tasks);
    if (before + tasks > options_.queue_capacity) {
      outstanding_.fetch_sub(tasks);
      ++rejected_;
      return grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          fmt::format("teacher queue full ({} tasks outstanding, capacity {}); retry later", before,
                      options_.queue_capacity));
    }
    return grpc::Status::OK;
  }

  // Work whose caller is gone or whose deadline passed while queued is not done.
  static grpc::Status Gone(grpc::CallbackServerContext* context) {
    if (context->IsCancelled())
      return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled the call");
    if (context->deadline() < std::chrono::system_clock::now())
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                          "deadline passed while the task was queued");
    return grpc::Status::OK;
  }

  void Release(int tasks) { outstanding_.fetch_sub(tasks); }

  void Enqueue(std::function<void()> work) {
    if (options_.backend_never_blocks) {
      work();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(work));
    }
    wake_.notify_one();
  }

  void WorkLoop() {
    for (;;) {
      std::function<void()> work;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping and drained
        work = std::move(queue_.front());
        queue_.pop_front();
      }
      work();
    }
  }

  void StopWorkers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& worker : workers_)
      if (worker.joinable()) worker.join();
  }

  const TeacherServerOptions options_;
  std::shared_ptr<Teacher> backend_;
  std::atomic<uint64_t> served_{0}, failed_{0}, rejected_{0}, rpcs_{0};
  std::atomic<int64_t> outstanding_{0};
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

absl::StatusOr<std::unique_ptr<TeacherServer>> TeacherServer::Start(
    const TeacherServerOptions& options, std::shared_ptr<Teacher> backend) {
  if (!backend) return absl::InvalidArgumentError("teacher server: no backend");
  KeepGrpcInitialized();
  RWR_RETURN_IF_ERROR(CheckHostPort(options.listen, /*allow_port_zero=*/true, "--listen"));
  if (options.tls_cert_file.empty() != options.tls_key_file.empty())
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together; give both or neither");
  if (options.queue_capacity < 1 || options.workers < 1 || options.max_batch < 1)
    return absl::InvalidArgumentError(
        "teacher server: workers, queue capacity and max batch must be positive");
  if (options.workers > kMaxServerWorkers)
    return absl::InvalidArgumentError(
        fmt::format("--workers {}: at most {} worker threads", options.workers, kMaxServerWorkers));
  // 0 would refuse every call; gRPC's own receive limit (twice this, plus 1 MiB) must fit an int.
  if (options.max_request_bytes < 1 || options.max_request_bytes > kMaxServerRequestBytes)
    return absl::InvalidArgumentError(
        fmt::format("--max-request-bytes {}: must be in 1..{} (1 GiB)", options.max_request_bytes,
                    kMaxServerRequestBytes));
  RWR_RETURN_IF_ERROR(CheckBearerToken(options.auth_token, "--auth-token-file"));
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (!options.tls_cert_file.empty()) {
    auto cert = ReadWholeFile(options.tls_cert_file, "--tls-cert");
    if (!cert.ok()) return cert.status();
    auto key = ReadWholeFile(options.tls_key_file, "--tls-key");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    credentials = grpc::SslServerCredentials(ssl);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }

  std::unique_ptr<TeacherServer> server(new TeacherServer());
  server->impl_ = std::make_unique<Impl>(options, std::move(backend));
  RWR_RETURN_IF_ERROR(server->impl_->StartWorkers());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // gRPC sets SO_REUSEPORT by default: a second server on a port in use would then start
  // too, and the two would split the clients between them.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(options.listen, credentials, &server->port_);
  builder.RegisterService(server->impl_.get());
  const uint64_t transport_limit = std::min<uint64_t>(
      INT_MAX, 2 * options.max_request_bytes + (1 << 20));  // no overflow: ≤ 1 GiB
  builder.SetMaxReceiveMessageSize(static_cast<int>(transport_limit));
  server->server_ = builder.BuildAndStart();
  if (!server->server_ || server->port_ == 0) {
    server->impl_->Drain(0);
    return absl::UnavailableError(fmt::format(
        "teacher server: cannot listen on {} (address in use, or not HOST:PORT?)", options.listen));
  }
  if (auto* health = server->server_->GetHealthCheckService()) {
    health->SetServingStatus(kServiceName, true);
    health->SetServingStatus(true);
  }
  return server;
}

TeacherServer::~TeacherServer() { Shutdown(0); }

TeacherServerStats TeacherServer::stats() const { return impl_->Stats(); }

void TeacherServer::Shutdown(double grace_s) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000)));
  impl_->Drain(grace_s + 1);
  server_->Wait();
}

}  // namespace rwr::teacher
