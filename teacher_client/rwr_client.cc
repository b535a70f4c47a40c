// RwrTeacherClient: rwr.v1.TeacherService over the shared CallScheduler.
#include "teacher_client/rwr_client.h"

#include <grpcpp/client_context.h>

#include <cmath>

#include "fmt/format.h"
#include "teacher_client/channel.h"

namespace rwr::teacher {
absl::StatusOr<std::unique_ptr<RwrTeacherClient>> RwrTeacherClient::Connect(
    const std::string& host_port, bool tls, const TeacherClientOptions& options) {
  auto channel = MakeTeacherChannel(host_port, tls, options);
  if (!channel.ok()) return channel.status();
  std::unique_ptr<RwrTeacherClient> client(
      new RwrTeacherClient(fmt::format("{}://{}", tls ? "rwrs" : "rwr", host_port), options,
                           rwr::v1::TeacherService::NewStub(*channel)));
  auto info = client->FetchServerInfo(options.connect_timeout_s);
  if (!info.ok()) return info.status();
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
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  context.set_wait_for_ready(true);  // the server may still be starting
  if (!options_.bearer_token.empty())
    context.AddMetadata("authorization", "Bearer " + options_.bearer_token);
  rwr::v1::ServerInfo info;
  grpc::Status status = stub_->GetServerInfo(&context, rwr::v1::ServerInfoRequest(), &info);
  if (!status.ok()) {
    std::string hint =
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED
            ? fmt::format(" (no server answered within {}s; is `rwr teacher serve` running there?)",
                          timeout_s)
            : "";
    return absl::Status(
        static_cast<absl::StatusCode>(status.error_code()),
        fmt::format("teacher {} GetServerInfo: {}: {}{}", target_,
                    GrpcCodeName(status.error_code()), status.error_message(), hint));
  }
  return info;
}

void RwrTeacherClient::ExtractNote(NoteTask task, TeacherCallback<Note> done) {
  rwr::v1::NoteRequest request;
  request.set_context(std::move(task.context));
  request.set_question(std::move(task.question));
  request.set_max_note_bytes(task.max_note_bytes);
  auto* async = stub_->async();
  SubmitUnary<rwr::v1::NoteRequest, rwr::v1::NoteResponse, Note>(
      scheduler_.get(), target_, "ExtractNote", options_.max_message_bytes, std::move(request),
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
  SubmitUnary<rwr::v1::VerifyRequest, rwr::v1::VerifyResponse, Verdict>(
      scheduler_.get(), target_, "VerifyNote", options_.max_message_bytes, std::move(request),
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
  SubmitUnary<rwr::v1::RemoveEvidenceRequest, rwr::v1::RemoveEvidenceResponse, Negative>(
      scheduler_.get(), target_, "RemoveEvidence", options_.max_message_bytes, std::move(request),
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
