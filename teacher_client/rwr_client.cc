// RwrTeacherClient: rwr.v1.TeacherService over the shared CallScheduler.
#include "teacher_client/rwr_client.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <cmath>

#include "common/status.h"
#include "fmt/format.h"
#include "teacher_client/channel.h"

namespace rwr::teacher {
namespace {

// One rwr call through the scheduler: unary when it travels alone, a task of a RunBatch when it
// leaves together with others. `field` is the task's (and the result's) oneof member; `convert`
// checks and translates the answer, whichever RPC brought it.
template <typename Request, typename Response, typename Result, typename Mutable, typename Get,
          typename Has, typename Invoke, typename Convert>
void SubmitRwr(CallScheduler* scheduler, const std::string& target, const char* method,
               uint64_t max_bytes, Request request, Mutable mutable_field, Get result_field,
               Has result_has, Invoke invoke, Convert convert, TeacherCallback<Result> done) {
  if (absl::Status size = CheckRequestSize(target, method, request.ByteSizeLong(), max_bytes);
      !size.ok()) {
    done(std::move(size));
    return;
  }
  struct State {
    CallScheduler::BatchPart part;  // part.task holds the request for both paths
    Response response;              // unary answer
  };
  auto state = std::make_shared<State>();
  *mutable_field(&state->part.task) = std::move(request);
  scheduler->Submit(
      [state, invoke, result_field](grpc::ClientContext* context,
                                    std::function<void(grpc::Status)> attempt_done) {
        state->response.Clear();
        invoke(context, &result_field(state->part.task), &state->response,
               std::move(attempt_done));
      },
      [state, target, method, convert, result_has, done = std::move(done)](
          const grpc::Status& status, int attempts) {
        if (!status.ok()) {
          done(FinalCallStatus(target, method, status, attempts));
          return;
        }
        absl::StatusOr<Result> result =
            absl::InternalError("RunBatch result is OK but carries no answer of this task's kind");
        if (!state->part.answered_in_batch)
          result = convert(state->response);
        else if (const Response* r = result_has(state->part.result); r != nullptr)
          result = convert(*r);
        if (!result.ok()) {
          done(absl::InternalError(fmt::format("teacher {} {}: malformed answer: {}", target,
                                               method, std::string(result.status().message()))));
          return;
        }
        done(std::move(result));
      },
      &state->part);
}

}  // namespace

absl::StatusOr<std::unique_ptr<RwrTeacherClient>> RwrTeacherClient::Connect(
    const std::string& host_port, bool tls, const TeacherClientOptions& options) {
  RWR_RETURN_IF_ERROR(CheckBearerToken(options.bearer_token, "teacher client token"));
  auto channel = MakeTeacherChannel(host_port, tls, options);
  if (!channel.ok()) return channel.status();
  std::unique_ptr<RwrTeacherClient> client(
      new RwrTeacherClient(fmt::format("{}://{}", tls ? "rwrs" : "rwr", host_port), options,
                           rwr::v1::TeacherService::NewStub(*channel)));
  auto info = client->FetchServerInfo(options.connect_timeout_s);
  if (!info.ok()) return info.status();
  if (options.max_batch > 1) {
    // Within the server's limits too: a batch over max_batch or max_request_bytes would be refused
    // as a whole, one over queue_capacity could never be admitted.
    int max_batch = options.max_batch;
    if (info->max_batch() > 0) max_batch = std::min<int>(max_batch, info->max_batch());
    if (info->queue_capacity() > 0) max_batch = std::min<int>(max_batch, info->queue_capacity());
    uint64_t max_bytes = options.max_message_bytes;
    if (info->max_request_bytes() > 0) max_bytes = std::min(max_bytes, info->max_request_bytes());
    auto* async = client->stub_->async();
    client->scheduler_->EnableBatching(
        max_batch, max_bytes,
        [async](grpc::ClientContext* c, const rwr::v1::TaskBatch* q, rwr::v1::ResultBatch* r,
                std::function<void(grpc::Status)> d) { async->RunBatch(c, q, r, std::move(d)); });
  }
  client->info_ = TeacherInfo{.teacher_id = info->teacher_id(),
                              .revision = info->revision(),
                              .prompt_template_version = info->prompt_template_version(),
                              .sampling = {}};
  return client;
}

RwrTeacherClient::RwrTeacherClient(std::string target, const TeacherClientOptions& options,
                                   std::unique_ptr<rwr::v1::TeacherService::Stub> stub)
    : target_(std::move(target)),
      options_(options),
      stub_(std::move(stub)),
      scheduler_(std::make_unique<CallScheduler>(options)) {}

RwrTeacherClient::~RwrTeacherClient() { scheduler_.reset(); }

absl::StatusOr<rwr::v1::ServerInfo> RwrTeacherClient::FetchServerInfo(double timeout_s) const {
  rwr::v1::ServerInfo info;
  auto call = [&](double seconds, bool wait_for_ready) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    context.set_wait_for_ready(wait_for_ready);
    if (!options_.bearer_token.empty())
      context.AddMetadata("authorization", "Bearer " + options_.bearer_token);
    return stub_->GetServerInfo(&context, rwr::v1::ServerInfoRequest(), &info);
  };
  // Waits for the server, which may still be starting.
  grpc::Status status = call(timeout_s, /*wait_for_ready=*/true);
  std::string hint;
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    // Waiting hides why no connection came up; one call that does not wait tells (connection
    // refused, a TLS handshake that failed: rwrs:// to a plaintext server or the reverse).
    grpc::Status reason = call(1, /*wait_for_ready=*/false);
    if (reason.ok()) return info;
    if (reason.error_code() == grpc::StatusCode::UNAVAILABLE) {
      status = reason;
      hint = fmt::format(" (no connection within {}s; is `rwr teacher serve` running there? {})",
                         timeout_s,
                         target_.rfind("rwrs://", 0) == 0
                             ? "rwrs:// needs a server with --tls-cert; a plaintext one is rwr://"
                             : "a server with --tls-cert is rwrs://");
    } else {
      hint = fmt::format(" (no server answered within {}s; is `rwr teacher serve` running there?)",
                         timeout_s);
    }
  }
  if (!status.ok()) {
    return absl::Status(
        static_cast<absl::StatusCode>(status.error_code()),
        fmt::format("teacher {} GetServerInfo: {}{}", target_, DescribeGrpcFailure(status), hint));
  }
  return info;
}

void RwrTeacherClient::ExtractNote(NoteTask task, TeacherCallback<Note> done) {
  rwr::v1::NoteRequest request;
  request.set_context(std::move(task.context));
  request.set_question(std::move(task.question));
  request.set_max_note_bytes(task.max_note_bytes);
  auto* async = stub_->async();
  SubmitRwr<rwr::v1::NoteRequest, rwr::v1::NoteResponse, Note>(
      scheduler_.get(), target_, "ExtractNote", options_.max_message_bytes, std::move(request),
      [](rwr::v1::TeacherTask* t) { return t->mutable_note(); },
      [](const rwr::v1::TeacherTask& t) -> const rwr::v1::NoteRequest& { return t.note(); },
      [](const rwr::v1::TeacherResult& r) { return r.has_note() ? &r.note() : nullptr; },
      [async](grpc::ClientContext* c, const rwr::v1::NoteRequest* q, rwr::v1::NoteResponse* r,
              std::function<void(grpc::Status)> d) { async->ExtractNote(c, q, r, std::move(d)); },
      [](const rwr::v1::NoteResponse& r) -> absl::StatusOr<Note> {
        if (r.empty()) return Note{.text = kEmptyNote, .empty = true, .score = r.score()};
        if (r.note().find_first_not_of(" \t\r\n") == std::string::npos)
          return absl::InternalError("note is blank but not flagged empty");
        if (!std::isfinite(r.score()))
          return absl::InternalError("note score is not a finite number");
        return Note{.text = r.note(), .empty = false, .score = r.score()};
      },
      std::move(done));
}

void RwrTeacherClient::VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) {
  rwr::v1::VerifyRequest request;
  request.set_question(std::move(task.question));
  request.set_note(std::move(task.note));
  request.set_answer(std::move(task.answer));
  auto* async = stub_->async();
  SubmitRwr<rwr::v1::VerifyRequest, rwr::v1::VerifyResponse, Verdict>(
      scheduler_.get(), target_, "VerifyNote", options_.max_message_bytes, std::move(request),
      [](rwr::v1::TeacherTask* t) { return t->mutable_verify(); },
      [](const rwr::v1::TeacherTask& t) -> const rwr::v1::VerifyRequest& { return t.verify(); },
      [](const rwr::v1::TeacherResult& r) { return r.has_verify() ? &r.verify() : nullptr; },
      [async](grpc::ClientContext* c, const rwr::v1::VerifyRequest* q, rwr::v1::VerifyResponse* r,
              std::function<void(grpc::Status)> d) { async->VerifyNote(c, q, r, std::move(d)); },
      [](const rwr::v1::VerifyResponse& r) -> absl::StatusOr<Verdict> {
        if (!(r.score() >= 0 && r.score() <= 1))
          return absl::InternalError(
              fmt::format("verification score {} is outside [0, 1]", r.score()));
        return Verdict{.consistent = r.consistent(), .score = r.score()};
      },
      std::move(done));
}

void RwrTeacherClient::RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) {
  rwr::v1::RemoveEvidenceRequest request;
  request.set_context(std::move(task.context));
  request.set_question(std::move(task.question));
  request.set_answer(std::move(task.answer));
  auto* async = stub_->async();
  SubmitRwr<rwr::v1::RemoveEvidenceRequest, rwr::v1::RemoveEvidenceResponse, Negative>(
      scheduler_.get(), target_, "RemoveEvidence", options_.max_message_bytes, std::move(request),
      [](rwr::v1::TeacherTask* t) { return t->mutable_remove_evidence(); },
      [](const rwr::v1::TeacherTask& t) -> const rwr::v1::RemoveEvidenceRequest& {
        return t.remove_evidence();
      },
      [](const rwr::v1::TeacherResult& r) {
        return r.has_remove_evidence() ? &r.remove_evidence() : nullptr;
      },
      [async](grpc::ClientContext* c, const rwr::v1::RemoveEvidenceRequest* q,
              rwr::v1::RemoveEvidenceResponse* r, std::function<void(grpc::Status)> d) {
        async->RemoveEvidence(c, q, r, std::move(d));
      },
      [](const rwr::v1::RemoveEvidenceResponse& r) -> absl::StatusOr<Negative> {
        return Negative{.context = r.context(),
                        .removed_paragraphs = r.removed_paragraphs(),
                        .answer_still_present = r.answer_still_present()};
      },
      std::move(done));
}

}  // namespace rwr::teacher
