// RwrTeacherClient: the Teacher interface over gRPC to rwr.v1.TeacherService (`rwr teacher serve`).
// Answers are checked before they reach the caller: a note flagged non-empty with no text, a
// verification score outside [0, 1], ... become INTERNAL errors naming the task, never silent data.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "rwr/v1/teacher.grpc.pb.h"
#include "teacher_client/call_scheduler.h"
#include "teacher_client/client.h"

namespace rwr::teacher {

class RwrTeacherClient final : public RemoteTeacher {
 public:
  // host_port "HOST:PORT"; fetches server info (waiting up to connect_timeout_s for the server).
  static absl::StatusOr<std::unique_ptr<RwrTeacherClient>> Connect(
      const std::string& host_port, bool tls, const TeacherClientOptions& options);
  ~RwrTeacherClient() override;

  TeacherInfo Info() const override { return info_; }
  void ExtractNote(NoteTask task, TeacherCallback<Note> done) override;
  void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override;
  void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override;
  TeacherClientStats Stats() const override { return scheduler_->Stats(); }

  // The server's counters now (one blocking RPC).
  absl::StatusOr<rwr::v1::ServerInfo> FetchServerInfo(double timeout_s) const;

 private:
  RwrTeacherClient(std::string target, const TeacherClientOptions& options,
                   std::unique_ptr<rwr::v1::TeacherService::Stub> stub);

  const std::string target_;
  const TeacherClientOptions options_;
  std::unique_ptr<rwr::v1::TeacherService::Stub> stub_;
  TeacherInfo info_;
  std::unique_ptr<CallScheduler> scheduler_;  // last: destroyed first, while the stub still exists
};

}  // namespace rwr::teacher
