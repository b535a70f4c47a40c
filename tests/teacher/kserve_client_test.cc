// KServeTeacherClient against an in-suite KServe v2 server whose answers and faults the test
// scripts: start-up checks (ServerReady / ModelReady / ModelMetadata), the request it sends
// (prompt template, BYTES tensor, sampling tensors), answer parsing, raw_output_contents, malformed
// answers, UNAVAILABLE retries and a full Triton queue taken as backpressure. The real-server test
// is kserve_mlserver_test.cc.
#include "teacher_client/kserve_client.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "kserve/grpc_service.grpc.pb.h"
#include "teacher_client/channel.h"
#include "teacher_client/client.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

using testing::Results;

class FakeKServe final : public inference::GRPCInferenceService::Service {
 public:
  bool server_ready = true;
  bool model_ready = true;
  std::vector<std::pair<std::string, std::string>> inputs = {{"text_input", "BYTES"},
                                                             {"max_tokens", "INT32"},
                                                             {"temperature", "FP32"},
                                                             {"seed", "UINT64"}};
  std::vector<std::pair<std::string, std::string>> outputs = {{"text_output", "BYTES"}};
  std::function<std::string(const std::string&)> reply = [](const std::string&) {
    return "a note";
  };
  bool raw_output = false;
  bool omit_output = false;
  int fail_every = 0;  // calls 1, 1+N, ... answer UNAVAILABLE
  // > 0: each call takes 2 ms, and one arriving while this many are in progress is refused as
  // Triton refuses it over its max_queue_size (UNAVAILABLE "Exceeds maximum queue size").
  int max_queue = 0;
  std::string required_token;  // non-empty: every RPC must carry `authorization: Bearer <token>`

  grpc::Status CheckToken(grpc::ServerContext* context) {
    if (required_token.empty()) return grpc::Status::OK;
    auto it = context->client_metadata().find("authorization");
    if (it == context->client_metadata().end() ||
        std::string(it->second.data(), it->second.size()) != "Bearer " + required_token)
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    return grpc::Status::OK;
  }

  grpc::Status ServerReady(grpc::ServerContext* context, const inference::ServerReadyRequest*,
                           inference::ServerReadyResponse* response) override {
    if (grpc::Status auth = CheckToken(context); !auth.ok()) return auth;
    response->set_ready(server_ready);
    return grpc::Status::OK;
  }
  grpc::Status ModelReady(grpc::ServerContext*, const inference::ModelReadyRequest* request,
                          inference::ModelReadyResponse* response) override {
    response->set_ready(model_ready && request->name() == "teacher-llm");
    return grpc::Status::OK;
  }
  grpc::Status ModelMetadata(grpc::ServerContext*, const inference::ModelMetadataRequest* request,
                             inference::ModelMetadataResponse* response) override {
    if (request->name() != "teacher-llm")
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "no such model");
    response->set_name("teacher-llm");
    response->add_versions("7");
    for (auto& [name, type] : inputs) {
      auto* t = response->add_inputs();
      t->set_name(name);
      t->set_datatype(type);
      t->add_shape(1);
    }
    for (auto& [name, type] : outputs) {
      auto* t = response->add_outputs();
      t->set_name(name);
      t->set_datatype(type);
      t->add_shape(1);
    }
    return grpc::Status::OK;
  }
  grpc::Status ModelInfer(grpc::ServerContext* context, const inference::ModelInferRequest* request,
                          inference::ModelInferResponse* response) override {
    if (grpc::Status auth = CheckToken(context); !auth.ok()) return auth;
    int n = ++calls_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_request_ = *request;
    }
    if (fail_every > 0 && (n - 1) % fail_every == 0)
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "scripted outage");
    if (max_queue > 0) {
      if (++in_progress_ > max_queue) {
        --in_progress_;
        ++refused_;
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "Exceeds maximum queue size");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      --in_progress_;
    }
    std::string prompt;
    for (const auto& input : request->inputs())
      if (input.name() == "text_input" && input.contents().bytes_contents_size() == 1)
        prompt = input.contents().bytes_contents(0);
    if (omit_output) return grpc::Status::OK;
    std::string text = reply(prompt);
    auto* out = response->add_outputs();
    out->set_name("text_output");
    out->set_datatype("BYTES");
    out->add_shape(1);
    if (raw_output) {
      std::string raw(4, '\0');
      uint32_t len = static_cast<uint32_t>(text.size());
      for (int i = 0; i < 4; ++i) raw[i] = static_cast<char>((len >> (8 * i)) & 0xff);
      response->add_raw_output_contents(raw + text);
    } else {
      out->mutable_contents()->add_bytes_contents(text);
    }
    return grpc::Status::OK;
  }

  inference::ModelInferRequest last_request() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_request_;
  }
  int calls() const { return calls_.load(); }
  int refused() const { return refused_.load(); }

 private:
  std::atomic<int> calls_{0};
  std::mutex mu_;
  inference::ModelInferRequest last_request_;
  std::atomic<int> in_progress_{0};
  std::atomic<int> refused_{0};
};

class KServeClientTest : public ::testing::Test {
 protected:
  void Start(
      std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials()) {
    KeepGrpcInitialized();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ && port_ > 0);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
  }
  std::string Url() const { return "kserve://127.0.0.1:" + std::to_string(port_) + "/teacher-llm"; }
  TeacherClientOptions Options() const {
    TeacherClientOptions options;
    options.connect_timeout_s = 5;
    options.initial_backoff_s = 0.01;
    options.max_backoff_s = 0.1;
    options.kserve.sampling = {.max_tokens = 128, .temperature = 0.5f, .seed = 42};
    return options;
  }

  FakeKServe fake_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(KServeClientTest, StartupChecksNameWhatIsWrong) {
  fake_.model_ready = false;
  Start();
  auto not_ready = MakeTeacher(Url(), Options());
  ASSERT_FALSE(not_ready.ok());
  EXPECT_NE(std::string(not_ready.status().message()).find("model 'teacher-llm' is not ready"),
            std::string::npos)
      << not_ready.status();
  fake_.model_ready = true;
  TeacherClientOptions renamed = Options();
  renamed.kserve.input_tensor = "prompt";
  auto bad_input = MakeTeacher(Url(), renamed);
  ASSERT_FALSE(bad_input.ok());
  EXPECT_EQ(bad_input.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(bad_input.status().message()).find("no BYTES input 'prompt'"),
            std::string::npos)
      << bad_input.status();
  TeacherClientOptions no_seed_tensor = Options();
  no_seed_tensor.kserve.seed_tensor = "random_seed";
  EXPECT_FALSE(MakeTeacher(Url(), no_seed_tensor).ok());
  no_seed_tensor.kserve.seed_tensor = "";  // not sent
  EXPECT_TRUE(MakeTeacher(Url(), no_seed_tensor).ok());
  fake_.server_ready = false;
  EXPECT_FALSE(MakeTeacher(Url(), Options()).ok());
}

TEST_F(KServeClientTest, SendsTheVersionedPromptAsBytesWithSamplingTensors) {
  Start();
  auto teacher = MakeTeacher(Url(), Options());
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  TeacherInfo info = (*teacher)->Info();
  EXPECT_EQ(info.teacher_id, "kserve:teacher-llm");
  EXPECT_EQ(info.revision, "7");
  EXPECT_EQ(info.prompt_template_version, "rwr-prompts-v1");
  EXPECT_EQ(info.sampling.seed, 42u);

  Results<Note> notes;
  (*teacher)->ExtractNote({.context = "Alpha {question} beta.", .question = "Where is alpha?"},
                          notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  ASSERT_TRUE(notes.Take()[0].ok());
  inference::ModelInferRequest request = fake_.last_request();
  EXPECT_EQ(request.model_name(), "teacher-llm");
  ASSERT_EQ(request.inputs_size(), 4);
  EXPECT_EQ(request.inputs(0).name(), "text_input");
  EXPECT_EQ(request.inputs(0).datatype(), "BYTES");
  const std::string& prompt = request.inputs(0).contents().bytes_contents(0);
  EXPECT_NE(prompt.find("Please extract a note relevant to the query: Where is alpha?"),
            std::string::npos)
      << prompt;
  EXPECT_NE(prompt.find("Alpha {question} beta."), std::string::npos)
      << prompt;  // braces in text left alone
  EXPECT_EQ(request.inputs(1).name(), "max_tokens");
  EXPECT_EQ(request.inputs(1).datatype(), "INT32");
  EXPECT_EQ(request.inputs(1).contents().int_contents(0), 128);
  EXPECT_EQ(request.inputs(2).datatype(), "FP32");
  EXPECT_FLOAT_EQ(request.inputs(2).contents().fp32_contents(0), 0.5f);
  EXPECT_EQ(request.inputs(3).datatype(), "UINT64");
  EXPECT_EQ(request.inputs(3).contents().uint64_contents(0), 42u);
  ASSERT_EQ(request.outputs_size(), 1);
  EXPECT_EQ(request.outputs(0).name(), "text_output");
}

TEST_F(KServeClientTest, ParsesNotesVerdictsAndNegatives) {
  fake_.reply = [](const std::string& prompt) -> std::string {
    if (prompt.find("Remaining text:") != std::string::npos) return "Para one.\n\nPara three.\n";
    if (prompt.find("Does the note agree") != std::string::npos)
      return prompt.find("Note: good") != std::string::npos ? " Yes." : "No, it does not.";
    if (prompt.find("query: nothing") != std::string::npos) return "Empty.";
    return "  The note.\n";
  };
  Start();
  auto teacher = MakeTeacher(Url(), Options());
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  Results<Note> notes;
  Results<Verdict> verdicts;
  Results<Negative> negatives;
  (*teacher)->ExtractNote({.context = "c", .question = "q"}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  (*teacher)->ExtractNote({.context = "c", .question = "nothing"}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(2));
  (*teacher)->VerifyNote({.question = "q", .note = "good", .answer = "a"}, verdicts.Callback());
  ASSERT_TRUE(verdicts.WaitFor(1));
  (*teacher)->VerifyNote({.question = "q", .note = "bad", .answer = "a"}, verdicts.Callback());
  ASSERT_TRUE(verdicts.WaitFor(2));
  (*teacher)->RemoveEvidence(
      {.context = "Para one.\n\nPara two has 42.\n\nPara three.", .question = "q", .answer = "42"},
      negatives.Callback());
  ASSERT_TRUE(negatives.WaitFor(1));
  auto n = notes.Take();
  ASSERT_TRUE(n[0].ok() && n[1].ok());
  EXPECT_EQ(n[0]->text, "The note.");
  EXPECT_FALSE(n[0]->empty);
  EXPECT_TRUE(n[1]->empty);
  EXPECT_EQ(n[1]->text, kEmptyNote);
  auto v = verdicts.Take();
  ASSERT_TRUE(v[0].ok() && v[1].ok());
  EXPECT_TRUE(v[0]->consistent);
  EXPECT_FALSE(v[1]->consistent);
  auto neg = negatives.Take()[0];
  ASSERT_TRUE(neg.ok());
  EXPECT_EQ(neg->context, "Para one.\n\nPara three.");
  EXPECT_EQ(neg->removed_paragraphs, 1u);
  EXPECT_FALSE(neg->answer_still_present);
}

TEST_F(KServeClientTest, RawOutputContentsAreDecoded) {
  fake_.raw_output = true;
  fake_.reply = [](const std::string&) { return std::string("raw note"); };
  Start();
  auto teacher = MakeTeacher(Url(), Options());
  ASSERT_TRUE(teacher.ok());
  Results<Note> notes;
  (*teacher)->ExtractNote({.context = "c", .question = "q"}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  auto note = notes.Take()[0];
  ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_EQ(note->text, "raw note");
}

TEST_F(KServeClientTest, EmptyAndMalformedAnswersAreErrorsWithTheReason) {
  fake_.reply = [](const std::string& prompt) -> std::string {
    if (prompt.find("Does the note agree") != std::string::npos) return "perhaps";
    return "   ";
  };
  Start();
  auto teacher = MakeTeacher(Url(), Options());
  ASSERT_TRUE(teacher.ok());
  Results<Note> notes;
  Results<Verdict> verdicts;
  (*teacher)->ExtractNote({.context = "c", .question = "q"}, notes.Callback());
  (*teacher)->VerifyNote({.question = "q", .note = "n", .answer = "a"}, verdicts.Callback());
  ASSERT_TRUE(notes.WaitFor(1) && verdicts.WaitFor(1));
  absl::Status blank = notes.Take()[0].status();
  EXPECT_EQ(blank.code(), absl::StatusCode::kInternal);
  EXPECT_NE(std::string(blank.message()).find("empty note"), std::string::npos) << blank;
  absl::Status maybe = verdicts.Take()[0].status();
  EXPECT_NE(std::string(maybe.message()).find("expected yes or no, got 'perhaps'"),
            std::string::npos)
      << maybe;

  fake_.omit_output = true;
  Results<Note> missing;
  (*teacher)->ExtractNote({.context = "c", .question = "q"}, missing.Callback());
  ASSERT_TRUE(missing.WaitFor(1));
  absl::Status none = missing.Take()[0].status();
  EXPECT_NE(std::string(none.message()).find("no output 'text_output'"), std::string::npos) << none;
}

TEST_F(KServeClientTest, UnavailableAnswersAreRetried) {
  fake_.fail_every = 3;
  Start();
  TeacherClientOptions options = Options();
  options.max_attempts = 20;  // which call meets which outage is up to thread timing
  auto teacher = MakeTeacher(Url(), options);
  ASSERT_TRUE(teacher.ok());
  Results<Note> notes;
  for (int i = 0; i < 20; ++i)
    (*teacher)->ExtractNote({.context = "c", .question = "q"}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(20));
  for (const auto& note : notes.Take()) EXPECT_TRUE(note.ok()) << note.status();
  const uint64_t retries = dynamic_cast<RemoteTeacher*>(teacher->get())->Stats().retries;
  EXPECT_GE(retries, 7u);
  EXPECT_EQ(static_cast<uint64_t>(fake_.calls()), 20 + retries);
}

// A Triton whose queue is full answers UNAVAILABLE "Exceeds maximum queue size": overload, so a
// window far over the queue loses no call although calls are refused more often than max_attempts.
TEST_F(KServeClientTest, AFullTritonQueueIsBackpressureNotAFailure) {
  fake_.max_queue = 2;
  Start();
  TeacherClientOptions options = Options();
  options.concurrency = 64;
  options.max_attempts = 2;
  auto teacher = MakeTeacher(Url(), options);
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  Results<Note> notes;
  for (int i = 0; i < 100; ++i)
    (*teacher)->ExtractNote({.context = "c", .question = "q"}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(100));
  for (const auto& note : notes.Take()) ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_GT(fake_.refused(), 0) << "the server was not overloaded";
}

TEST_F(KServeClientTest, TlsAndBearerTokenReachTheServer) {
  auto dir = testing::MakeTempDir("rwr-kserve-tls");
  ASSERT_TRUE(testing::MakeSelfSignedCert(dir));
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back(
      {testing::ReadFile(dir / "key.pem"), testing::ReadFile(dir / "cert.pem")});
  fake_.required_token = "kserve-token";
  Start(grpc::SslServerCredentials(ssl));
  const std::string url = "kserves://127.0.0.1:" + std::to_string(port_) + "/teacher-llm";
  TeacherClientOptions options = Options();
  options.tls_root_cert_file = dir / "cert.pem";
  options.tls_server_name = "localhost";
  auto no_token = MakeTeacher(url, options);
  ASSERT_FALSE(no_token.ok());
  EXPECT_EQ(no_token.status().code(), absl::StatusCode::kUnauthenticated) << no_token.status();
  options.bearer_token = "kserve-token";
  auto teacher = MakeTeacher(url, options);
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  Results<Note> notes;
  (*teacher)->ExtractNote({.context = "c", .question = "q"}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  auto note = notes.Take()[0];
  ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_EQ(note->text, "a note");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace rwr::teacher
