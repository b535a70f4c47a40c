// KServeTeacherClient: the Teacher interface over a served LLM speaking the KServe v2 / Open
// Inference Protocol (inference.GRPCInferenceService: Triton, MLServer, KServe runtimes).
//
// Each task renders a prompt from a versioned template (prompt_templates.h) and sends one
// ModelInfer with the prompt as a BYTES [1] tensor plus optional sampling tensors (max tokens
// INT32, temperature FP32, seed UINT64); names are configurable (KServeOptions). The BYTES output
// is parsed:
//   note            trimmed text; exactly `empty` (any case, trailing period allowed) → an empty
//   note verify          first word yes/no → consistent (score 1/0); anything else is a malformed
//   answer remove evidence the remaining context; `answer_still_present` is checked here, not
//   trusted
// At start: ServerReady, ModelReady and ModelMetadata (the named input/output tensors must exist,
// the text ones as BYTES) — a misconfigured deployment fails before any data is sent.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kserve/grpc_service.grpc.pb.h"
#include "teacher_client/call_scheduler.h"
#include "teacher_client/client.h"
#include "teacher_client/prompt_templates.h"

namespace rwr::teacher {

class KServeTeacherClient final : public RemoteTeacher {
 public:
  static absl::StatusOr<std::unique_ptr<KServeTeacherClient>> Connect(
      const std::string& host_port, const std::string& model, bool tls,
      const TeacherClientOptions& options);
  ~KServeTeacherClient() override;

  TeacherInfo Info() const override { return info_; }
  void ExtractNote(NoteTask task, TeacherCallback<Note> done) override;
  void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override;
  void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override;
  TeacherClientStats Stats() const override { return scheduler_->Stats(); }

  // The ModelInfer request for a prompt (exposed for tests and docs).
  inference::ModelInferRequest BuildRequest(const std::string& prompt) const;
  // The generated text in a response, or why there is none.
  absl::StatusOr<std::string> OutputText(const inference::ModelInferResponse& response) const;

 private:
  KServeTeacherClient(std::string target, std::string model, const TeacherClientOptions& options,
                      PromptTemplates templates,
                      std::unique_ptr<inference::GRPCInferenceService::Stub> stub);
  absl::Status CheckServer();
  template <typename Result, typename Convert>
  void Infer(const char* method, std::string prompt, Convert convert, TeacherCallback<Result> done);

  const std::string target_;
  const std::string model_;
  const TeacherClientOptions options_;
  const PromptTemplates templates_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
  TeacherInfo info_;
  std::unique_ptr<CallScheduler> scheduler_;  // last: destroyed first
};

}  // namespace rwr::teacher
