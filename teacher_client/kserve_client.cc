// KServeTeacherClient: prompts → ModelInfer (BYTES tensors) → parsed, checked answers.
#include "teacher_client/kserve_client.h"

#include <grpcpp/client_context.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "fmt/format.h"
#include "spdlog/spdlog.h"
#include "teacher_client/channel.h"
#include "teacher_client/extractive_teacher.h"

namespace rwr::teacher {
namespace {

std::string Trim(std::string_view text) {
  size_t begin = 0, end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  return std::string(text.substr(begin, end - begin));
}

std::string Lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

void SetDeadline(grpc::ClientContext* context, double seconds, const std::string& token) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  if (!token.empty()) context->AddMetadata("authorization", "Bearer " + token);
}

}  // namespace

absl::StatusOr<std::unique_ptr<KServeTeacherClient>> KServeTeacherClient::Connect(
    const std::string& host_port, const std::string& model, bool tls,
    const TeacherClientOptions& options) {
  if (model.empty()) {
    return absl::InvalidArgumentError(fmt::format(
        "kserve target '{}' names no model; expected kserve://HOST:PORT/MODEL", host_port));
  }
  auto templates = GetPromptTemplates(options.kserve.prompt_template_version);
  if (!templates.ok()) return templates.status();
  if (absl::Status token = CheckBearerToken(options.bearer_token, "teacher client token");
      !token.ok())
    return token;
  auto channel = MakeTeacherChannel(host_port, tls, options);
  if (!channel.ok()) return channel.status();
  std::unique_ptr<KServeTeacherClient> client(new KServeTeacherClient(
      fmt::format("{}://{}/{}", tls ? "kserves" : "kserve", host_port, model), model, options,
      *std::move(templates), inference::GRPCInferenceService::NewStub(*channel)));
  if (absl::Status status = client->CheckServer(); !status.ok()) return status;
  return client;
}

KServeTeacherClient::KServeTeacherClient(
    std::string target, std::string model, const TeacherClientOptions& options,
    PromptTemplates templates, std::unique_ptr<inference::GRPCInferenceService::Stub> stub)
    : target_(std::move(target)),
      model_(std::move(model)),
      options_(options),
      templates_(std::move(templates)),
      stub_(std::move(stub)),
      scheduler_(std::make_unique<CallScheduler>(options)) {}

KServeTeacherClient::~KServeTeacherClient() { scheduler_.reset(); }

absl::Status KServeTeacherClient::CheckServer() {
  const KServeOptions& k = options_.kserve;
  auto fail = [&](std::string_view call, const grpc::Status& status) {
    return absl::Status(
        static_cast<absl::StatusCode>(status.error_code()),
        fmt::format("teacher {} {}: {}", target_, call, DescribeGrpcFailure(status)));
  };
  {
    grpc::ClientContext context;
    SetDeadline(&context, options_.connect_timeout_s, options_.bearer_token);
    context.set_wait_for_ready(true);
    inference::ServerReadyResponse response;
    grpc::Status status = stub_->ServerReady(&context, inference::ServerReadyRequest(), &response);
    if (!status.ok()) return fail("ServerReady", status);
    if (!response.ready())
      return absl::UnavailableError(
          fmt::format("teacher {}: the server says it is not ready", target_));
  }
  {
    grpc::ClientContext context;
    SetDeadline(&context, options_.connect_timeout_s, options_.bearer_token);
    inference::ModelReadyRequest request;
    request.set_name(model_);
    request.set_version(k.model_version);
    inference::ModelReadyResponse response;
    grpc::Status status = stub_->ModelReady(&context, request, &response);
    if (!status.ok()) return fail("ModelReady", status);
    if (!response.ready())
      return absl::UnavailableError(
          fmt::format("teacher {}: model '{}' is not ready", target_, model_));
  }
  inference::ModelMetadataResponse metadata;
  {
    grpc::ClientContext context;
    SetDeadline(&context, options_.connect_timeout_s, options_.bearer_token);
    inference::ModelMetadataRequest request;
    request.set_name(model_);
    request.set_version(k.model_version);
    grpc::Status status = stub_->ModelMetadata(&context, request, &metadata);
    if (!status.ok()) return fail("ModelMetadata", status);
  }
  // Tensors the model declares; a server that declares none is taken at its word at infer time.
  auto find =
      [](const auto& tensors,
         const std::string& name) -> const inference::ModelMetadataResponse::TensorMetadata* {
    for (const auto& tensor : tensors)
      if (tensor.name() == name) return &tensor;
    return nullptr;
  };
  auto names = [](const auto& tensors) {
    std::string out;
    for (const auto& tensor : tensors)
      out += (out.empty() ? "" : ", ") + tensor.name() + " " + tensor.datatype();
    return out.empty() ? std::string("none") : out;
  };
  if (metadata.inputs_size() > 0) {
    const auto* input = find(metadata.inputs(), k.input_tensor);
    if (!input || input->datatype() != "BYTES") {
      return absl::FailedPreconditionError(
          fmt::format("teacher {}: model has no BYTES input '{}' (inputs: {}); set the input "
                      "tensor name to match",
                      target_, k.input_tensor, names(metadata.inputs())));
    }
    for (const std::string* name : {&k.max_tokens_tensor, &k.temperature_tensor, &k.seed_tensor}) {
      if (!name->empty() && !find(metadata.inputs(), *name)) {
        return absl::FailedPreconditionError(
            fmt::format("teacher {}: model has no input '{}' (inputs: {}); rename it or set it "
                        "empty to not send it",
                        target_, *name, names(metadata.inputs())));
      }
    }
  }
  if (metadata.outputs_size() > 0) {
    const auto* output = find(metadata.outputs(), k.output_tensor);
    if (!output || output->datatype() != "BYTES") {
      return absl::FailedPreconditionError(
          fmt::format("teacher {}: model has no BYTES output '{}' (outputs: {}); set the output "
                      "tensor name to match",
                      target_, k.output_tensor, names(metadata.outputs())));
    }
  }
  std::string revision = k.revision;
  if (revision.empty() && metadata.versions_size() > 0) revision = metadata.versions(0);
  if (revision.empty()) revision = k.model_version;
  if (revision.empty()) {
    // MLServer, for one, lists no versions. The cache key still needs a revision: say so once.
    revision = "unversioned";
    spdlog::warn(
        "teacher {}: the model reports no version; cached answers are keyed as 'unversioned' — set "
        "the KServe revision option when the model changes, or old answers will be reused",
        target_);
  }
  info_ = TeacherInfo{.teacher_id = fmt::format("kserve:{}", model_),
                      .revision = revision,
                      .prompt_template_version = templates_.version,
                      .sampling = k.sampling};
  return absl::OkStatus();
}

inference::ModelInferRequest KServeTeacherClient::BuildRequest(const std::string& prompt) const {
  const KServeOptions& k = options_.kserve;
  inference::ModelInferRequest request;
  request.set_model_name(model_);
  request.set_model_version(k.model_version);
  auto* text = request.add_inputs();
  text->set_name(k.input_tensor);
  text->set_datatype("BYTES");
  text->add_shape(1);
  text->mutable_contents()->add_bytes_contents(prompt);
  if (!k.max_tokens_tensor.empty()) {
    auto* t = request.add_inputs();
    t->set_name(k.max_tokens_tensor);
    t->set_datatype("INT32");
    t->add_shape(1);
    t->mutable_contents()->add_int_contents(static_cast<int32_t>(k.sampling.max_tokens));
  }
  if (!k.temperature_tensor.empty()) {
    auto* t = request.add_inputs();
    t->set_name(k.temperature_tensor);
    t->set_datatype("FP32");
    t->add_shape(1);
    t->mutable_contents()->add_fp32_contents(k.sampling.temperature);
  }
  if (!k.seed_tensor.empty()) {
    auto* t = request.add_inputs();
    t->set_name(k.seed_tensor);
    t->set_datatype("UINT64");
    t->add_shape(1);
    t->mutable_contents()->add_uint64_contents(k.sampling.seed);
  }
  request.add_outputs()->set_name(k.output_tensor);
  return request;
}

absl::StatusOr<std::string> KServeTeacherClient::OutputText(
    const inference::ModelInferResponse& response) const {
  const std::string& name = options_.kserve.output_tensor;
  for (int i = 0; i < response.outputs_size(); ++i) {
    const auto& output = response.outputs(i);
    if (output.name() != name) continue;
    if (output.datatype() != "BYTES")
      return absl::InternalError(
          fmt::format("output '{}' is {}, expected BYTES", name, output.datatype()));
    if (output.contents().bytes_contents_size() > 0) return output.contents().bytes_contents(0);
    // raw_output_contents[i]: elements as 4-byte little-endian length + bytes.
    if (i < response.raw_output_contents_size()) {
      const std::string& raw = response.raw_output_contents(i);
      if (raw.size() < 4)
        return absl::InternalError(fmt::format("output '{}': raw contents too short", name));
      uint32_t length = static_cast<uint8_t>(raw[0]) | static_cast<uint8_t>(raw[1]) << 8 |
                        static_cast<uint8_t>(raw[2]) << 16 |
                        static_cast<uint32_t>(static_cast<uint8_t>(raw[3])) << 24;
      if (raw.size() < 4 + static_cast<size_t>(length))
        return absl::InternalError(
            fmt::format("output '{}': raw element longer than its contents", name));
      return raw.substr(4, length);
    }
    return absl::InternalError(fmt::format("output '{}' has no elements", name));
  }
  std::string seen;
  for (const auto& output : response.outputs()) seen += (seen.empty() ? "" : ", ") + output.name();
  return absl::InternalError(
      fmt::format("response has no output '{}' (outputs: {})", name, seen.empty() ? "none" : seen));
}

template <typename Result, typename Convert>
void KServeTeacherClient::Infer(const char* method, std::string prompt, Convert convert,
                                TeacherCallback<Result> done) {
  auto* async = stub_->async();
  SubmitUnary<inference::ModelInferRequest, inference::ModelInferResponse, Result>(
      scheduler_.get(), target_, method, options_.max_message_bytes, BuildRequest(prompt),
      [async](grpc::ClientContext* c, const inference::ModelInferRequest* q,
              inference::ModelInferResponse* r,
              std::function<void(grpc::Status)> d) { async->ModelInfer(c, q, r, std::move(d)); },
      [this, convert](const inference::ModelInferResponse& r) -> absl::StatusOr<Result> {
        auto text = OutputText(r);
        if (!text.ok()) return text.status();
        return convert(*text);
      },
      std::move(done));
}

void KServeTeacherClient::ExtractNote(NoteTask task, TeacherCallback<Note> done) {
  std::string prompt =
      RenderPrompt(templates_.note, {{"context", task.context}, {"question", task.question}});
  Infer<Note>(
      "ModelInfer(note)", std::move(prompt),
      [](const std::string& output) -> absl::StatusOr<Note> {
        std::string note = Trim(output);
        if (note.empty()) return absl::InternalError("the model returned an empty note");
        std::string word = Lower(note);
        while (!word.empty() && (word.back() == '.' || word.back() == '!')) word.pop_back();
        if (word == kEmptyNote) return Note{.text = kEmptyNote, .empty = true, .score = 0};
        return Note{.text = std::move(note), .empty = false, .score = 0};
      },
      std::move(done));
}

void KServeTeacherClient::VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) {
  std::string prompt =
      RenderPrompt(templates_.verify,
                   {{"question", task.question}, {"note", task.note}, {"answer", task.answer}});
  Infer<Verdict>(
      "ModelInfer(verify)", std::move(prompt),
      [](const std::string& output) -> absl::StatusOr<Verdict> {
        std::string reply = Lower(Trim(output));
        size_t end = 0;
        while (end < reply.size() && std::isalpha(static_cast<unsigned char>(reply[end]))) ++end;
        std::string word = reply.substr(0, end);
        if (word == "yes") return Verdict{.consistent = true, .score = 1};
        if (word == "no") return Verdict{.consistent = false, .score = 0};
        return absl::InternalError(
            fmt::format("expected yes or no, got '{}'", reply.substr(0, 80)));
      },
      std::move(done));
}

void KServeTeacherClient::RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) {
  std::string prompt = RenderPrompt(
      templates_.remove_evidence,
      {{"context", task.context}, {"question", task.question}, {"answer", task.answer}});
  const size_t original_paragraphs = text::SplitParagraphs(task.context).size();
  std::vector<std::string> answer = text::NormalizedTokens(task.answer);
  Infer<Negative>(
      "ModelInfer(remove_evidence)", std::move(prompt),
      [original_paragraphs, answer](const std::string& output) -> absl::StatusOr<Negative> {
        std::string context = Trim(output);
        size_t kept = text::SplitParagraphs(context).size();
        bool still = text::ContainsSequence(text::NormalizedTokens(context), answer);
        return Negative{.context = std::move(context),
                        .removed_paragraphs = static_cast<uint32_t>(
                            original_paragraphs > kept ? original_paragraphs - kept : 0),
                        .answer_still_present = still};
      },
      std::move(done));
}

}  // namespace rwr::teacher
