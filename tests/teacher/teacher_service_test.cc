// TeacherServer + RwrTeacherClient on loopback, with the real server and fault injection through a
// ScriptedTeacher backend: round trip, batch RPC, TLS, tokens, size limits, a full queue, failing
// and slow calls, malformed answers, a server killed and restarted mid-run.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "rwr/v1/teacher.grpc.pb.h"
#include "teacher_client/channel.h"
#include "teacher_client/client.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/rwr_client.h"
#include "teacher_client/scripted_teacher.h"
#include "teacher_client/teacher_server.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

using testing::Results;

const char kContext[] =
    "The Amazon River flows through Brazil, Peru and Colombia.\n\n"
    "Mount Kilimanjaro is the highest mountain in Africa. Its summit reaches 5,895 metres.\n\n"
    "The Great Barrier Reef lies off the coast of Queensland, Australia.";
const char kQuestion[] = "How high is the summit of Kilimanjaro?";

std::unique_ptr<TeacherServer> StartServer(TeacherServerOptions options,
                                           std::shared_ptr<Teacher> backend) {
  auto server = TeacherServer::Start(options, std::move(backend));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TeacherClientOptions FastRetries() {
  TeacherClientOptions options;
  options.concurrency = 16;
  options.deadline_s = 5;
  options.max_attempts = 10;
  options.initial_backoff_s = 0.01;
  options.max_backoff_s = 0.2;
  options.connect_timeout_s = 5;
  return options;
}

std::unique_ptr<Teacher> Connect(const std::string& url, const TeacherClientOptions& options) {
  auto teacher = MakeTeacher(url, options);
  EXPECT_TRUE(teacher.ok()) << teacher.status();
  return teacher.ok() ? *std::move(teacher) : nullptr;
}

std::string Url(const TeacherServer& server) {
  return "rwr://127.0.0.1:" + std::to_string(server.port());
}

TEST(TeacherService, RoundTripMatchesTheInProcessTeacher) {
  auto server = StartServer({}, std::make_shared<ExtractiveTeacher>());
  ASSERT_TRUE(server);
  auto teacher = Connect(Url(*server), FastRetries());
  ASSERT_TRUE(teacher);
  ExtractiveTeacher local;
  EXPECT_EQ(teacher->Info().teacher_id, local.Info().teacher_id);
  EXPECT_EQ(teacher->Info().revision, local.Info().revision);

  Results<Note> notes;
  Results<Verdict> verdicts;
  Results<Negative> negatives;
  teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  teacher->VerifyNote(
      {.question = kQuestion, .note = "It reaches 5,895 metres.", .answer = "5,895 metres"},
      verdicts.Callback());
  teacher->RemoveEvidence({.context = kContext, .question = kQuestion, .answer = "5,895 metres"},
                          negatives.Callback());
  ASSERT_TRUE(notes.WaitFor(1) && verdicts.WaitFor(1) && negatives.WaitFor(1));
  auto note = notes.Take()[0];
  ASSERT_TRUE(note.ok()) << note.status();
  EXPECT_EQ(note->text, local.MakeNote({.context = kContext, .question = kQuestion}).text);
  EXPECT_NE(note->text.find("5,895"), std::string::npos);
  auto verdict = verdicts.Take()[0];
  ASSERT_TRUE(verdict.ok());
  EXPECT_TRUE(verdict->consistent);
  auto negative = negatives.Take()[0];
  ASSERT_TRUE(negative.ok());
  EXPECT_EQ(negative->removed_paragraphs, 1u);
  EXPECT_EQ(negative->context.find("Kilimanjaro"), std::string::npos);

  // Many calls through the window; the server counts them and says so over RPC.
  Results<Note> many;
  for (int i = 0; i < 200; ++i)
    teacher->ExtractNote({.context = kContext, .question = "Where does the Amazon River flow?"},
                         many.Callback());
  ASSERT_TRUE(many.WaitFor(200));
  for (const auto& r : many.Take()) ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(server->stats().served, 203u);
  auto* rwr_client = dynamic_cast<RwrTeacherClient*>(teacher.get());
  ASSERT_NE(rwr_client, nullptr);
  auto info = rwr_client->FetchServerInfo(5);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->calls_served(), 203u);
  EXPECT_EQ(info->backend(), "extractive");
  EXPECT_EQ(rwr_client->Stats().retries, 0u);
}

// A second server on a port in use fails to start (gRPC's default SO_REUSEPORT would let both
// listen and split the clients between them), and addresses are checked before any call.
TEST(TeacherService, APortInUseOrOutOfRangeIsAnError) {
  auto first = StartServer({}, std::make_shared<ExtractiveTeacher>());
  ASSERT_NE(first, nullptr);
  const std::string taken = "127.0.0.1:" + std::to_string(first->port());
  auto second = TeacherServer::Start({.listen = taken}, std::make_shared<ExtractiveTeacher>());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  auto out_of_range =
      TeacherServer::Start({.listen = "127.0.0.1:99999"}, std::make_shared<ExtractiveTeacher>());
  EXPECT_EQ(out_of_range.status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* bad :
       {"rwr://127.0.0.1:106373", "rwr://127.0.0.1:abc", "rwr://127.0.0.1:0", "rwr://:7700"}) {
    auto teacher = MakeTeacher(bad, FastRetries());
    EXPECT_EQ(teacher.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(CheckHostPort("[::1]:7700", false, "x").ok());
  EXPECT_TRUE(CheckHostPort("localhost:0", true, "x").ok());
}

TEST(TeacherService, BatchRpcAnswersEveryTaskWithItsOwnStatus) {
  auto server = StartServer({.max_batch = 4}, std::make_shared<ExtractiveTeacher>());
  ASSERT_TRUE(server);
  auto stub = rwr::v1::TeacherService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(server->port()), grpc::InsecureChannelCredentials()));
  rwr::v1::TaskBatch batch;
  auto* note = batch.add_tasks()->mutable_note();
  note->set_context(kContext);
  note->set_question(kQuestion);
  auto* verify = batch.add_tasks()->mutable_verify();
  verify->set_note("Its summit reaches 5,895 metres.");
  verify->set_answer("1889");
  batch.add_tasks();  // names no task
  rwr::v1::ResultBatch results;
  grpc::ClientContext context;
  ASSERT_TRUE(stub->RunBatch(&context, batch, &results).ok());
  ASSERT_EQ(results.results_size(), 3);
  EXPECT_EQ(results.results(0).code(), 0);
  EXPECT_NE(results.results(0).note().note().find("5,895"), std::string::npos);
  EXPECT_EQ(results.results(1).code(), 0);
  EXPECT_FALSE(results.results(1).verify().consistent());
  EXPECT_EQ(results.results(2).code(), static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));

  for (int i = 0; i < 3; ++i) *batch.add_tasks() = batch.tasks(0);  // 6 > max_batch 4
  grpc::ClientContext too_many;
  EXPECT_EQ(stub->RunBatch(&too_many, batch, &results).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(TeacherService, CallsReadyTogetherShareRunBatchRpcs) {
  auto server = StartServer(
      {.backend_never_blocks = true},
      std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.05}));
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.concurrency = 64;  // max_batch stays at its default
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  const uint64_t rpcs_before = server->stats().rpcs;
  // The 300 calls are submitted by the first call's callback, so they are ready together by
  // construction: calls submitted from another thread join a batch only if they arrive before the
  // dispatcher wakes, which a loaded machine does not promise (CI once saw 92 RPCs that way).
  const NoteTask request{.context = kContext, .question = kQuestion};
  Results<Note> notes;
  teacher->ExtractNote(request, [&](absl::StatusOr<Note> first) {
    notes.Callback()(std::move(first));
    for (int i = 0; i < 300; ++i) teacher->ExtractNote(request, notes.Callback());
  });
  ASSERT_TRUE(notes.WaitFor(301));
  for (const auto& r : notes.Take()) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NE(r->text.find("5,895"), std::string::npos);
  }
  EXPECT_EQ(server->stats().served, 301u);
  // One unary RPC, then RunBatch RPCs of 64 (max_batch, and the window of 64 tasks that each
  // answered batch frees at once): 64 + 64 + 64 + 64 + 44.
  const uint64_t rpcs = server->stats().rpcs - rpcs_before;
  EXPECT_EQ(rpcs, 1u + 5u) << "tasks were not coalesced";
  TeacherClientStats stats = dynamic_cast<RemoteTeacher*>(teacher.get())->Stats();
  EXPECT_EQ(stats.attempts, 301u);
  EXPECT_EQ(stats.rpcs, rpcs);

  // max_batch = 1: one RPC per call, as before.
  options.max_batch = 1;
  auto unary = Connect(Url(*server), options);
  ASSERT_TRUE(unary);
  const uint64_t unary_before = server->stats().rpcs;
  Results<Note> unary_notes;
  for (int i = 0; i < 100; ++i)
    unary->ExtractNote({.context = kContext, .question = kQuestion}, unary_notes.Callback());
  ASSERT_TRUE(unary_notes.WaitFor(100));
  for (const auto& r : unary_notes.Take()) ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(server->stats().rpcs - unary_before, 100u);
}

TEST(TeacherService, AFailedTaskInsideABatchIsRetriedAlone) {
  // Every 4th task fails UNAVAILABLE inside an otherwise good RunBatch.
  auto server = StartServer({.backend_never_blocks = true},
                            std::make_shared<ScriptedTeacher>(ScriptedOptions{
                                .latency_s = 0.02,
                                .fail_every = 4,
                                .fail_code = absl::StatusCode::kUnavailable}));
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.concurrency = 32;
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  // Submitted by the first call's callback, so that they leave in batches (see
  // CallsReadyTogetherShareRunBatchRpcs).
  const NoteTask request{.context = kContext, .question = kQuestion};
  Results<Note> notes;
  teacher->ExtractNote(request, [&](absl::StatusOr<Note> first) {
    notes.Callback()(std::move(first));
    for (int i = 1; i < 120; ++i) teacher->ExtractNote(request, notes.Callback());
  });
  ASSERT_TRUE(notes.WaitFor(120));
  for (const auto& r : notes.Take()) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NE(r->text.find("5,895"), std::string::npos);
  }
  const TeacherServerStats server_stats = server->stats();
  TeacherClientStats stats = dynamic_cast<RemoteTeacher*>(teacher.get())->Stats();
  EXPECT_LT(stats.rpcs, stats.attempts) << "no batch was sent";
  EXPECT_GE(server_stats.failed, 30u);
  // Only the failed tasks were sent again: no task answered OK was computed twice.
  EXPECT_EQ(server_stats.served, 120u);
  EXPECT_EQ(stats.retries, server_stats.failed);
  EXPECT_EQ(stats.attempts, 120u + stats.retries);
}

TEST(TeacherService, TlsWithASelfSignedCertificate) {
  auto dir = testing::MakeTempDir("rwr-tls");
  ASSERT_TRUE(testing::MakeSelfSignedCert(dir)) << "openssl failed";
  auto server = StartServer({.tls_cert_file = dir / "cert.pem", .tls_key_file = dir / "key.pem"},
                            std::make_shared<ExtractiveTeacher>());
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.tls_root_cert_file = dir / "cert.pem";
  options.tls_server_name = "localhost";
  auto teacher = Connect("rwrs://127.0.0.1:" + std::to_string(server->port()), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  ASSERT_TRUE(notes.Take()[0].ok());

  // A plaintext client cannot talk to the TLS server; a TLS client must trust the certificate.
  TeacherClientOptions plain = FastRetries();
  plain.connect_timeout_s = 1;
  EXPECT_FALSE(MakeTeacher("rwr://127.0.0.1:" + std::to_string(server->port()), plain).ok());
  TeacherClientOptions untrusted = plain;
  untrusted.tls_server_name = "localhost";
  EXPECT_FALSE(MakeTeacher("rwrs://127.0.0.1:" + std::to_string(server->port()), untrusted).ok());
  std::filesystem::remove_all(dir);
}

// A client that gets no connection says why (the waiting start-up call alone only times out):
// rwrs:// to a plaintext server is a failed TLS handshake, not "no server answered".
TEST(TeacherService, AClientThatGetsNoConnectionSaysWhy) {
  auto server = StartServer({}, std::make_shared<ExtractiveTeacher>());
  ASSERT_TRUE(server);
  TeacherClientOptions quick = FastRetries();
  quick.connect_timeout_s = 0.5;
  auto tls = MakeTeacher("rwrs://127.0.0.1:" + std::to_string(server->port()), quick);
  ASSERT_FALSE(tls.ok());
  const std::string message(tls.status().message());
  EXPECT_EQ(tls.status().code(), absl::StatusCode::kUnavailable) << message;
  EXPECT_NE(message.find("andshake"), std::string::npos) << message;
  EXPECT_NE(message.find("rwrs:// needs a server with --tls-cert"), std::string::npos) << message;
  EXPECT_EQ(message.find("no server answered"), std::string::npos) << message;
}

// Values that would make a server refuse every call or abort, and a token gRPC cannot send (a
// token file of two lines aborted the client process), are errors at start.
TEST(TeacherService, OutOfRangeServerOptionsAndUnsendableTokensAreErrors) {
  auto extractive = std::make_shared<ExtractiveTeacher>();
  for (const TeacherServerOptions& options :
       {TeacherServerOptions{.max_request_bytes = 0},
        TeacherServerOptions{.max_request_bytes = kMaxServerRequestBytes + 1},
        TeacherServerOptions{.workers = kMaxServerWorkers + 1},
        TeacherServerOptions{.auth_token = "first\nsecond"}}) {
    auto server = TeacherServer::Start(options, extractive);
    ASSERT_FALSE(server.ok());
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << server.status();
  }
  auto server = StartServer({}, extractive);
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.bearer_token = "first\nsecond";
  auto client = MakeTeacher(Url(*server), options);
  ASSERT_FALSE(client.ok());
  EXPECT_NE(std::string(client.status().message()).find("line break"), std::string::npos)
      << client.status();
  auto kserve = MakeTeacher("kserve://127.0.0.1:" + std::to_string(server->port()) + "/m", options);
  ASSERT_FALSE(kserve.ok());
  EXPECT_EQ(kserve.status().code(), absl::StatusCode::kInvalidArgument) << kserve.status();
}

TEST(TeacherService, WrongOrMissingTokenIsUnauthenticated) {
  auto server = StartServer({.auth_token = "s3cret"}, std::make_shared<ExtractiveTeacher>());
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  auto missing = MakeTeacher(Url(*server), options);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnauthenticated) << missing.status();
  options.bearer_token = "wrong";
  auto wrong = MakeTeacher(Url(*server), options);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);

  // Task RPCs check the token too, not only GetServerInfo.
  auto stub = rwr::v1::TeacherService::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(server->port()), grpc::InsecureChannelCredentials()));
  rwr::v1::NoteRequest request;
  request.set_context(kContext);
  request.set_question(kQuestion);
  rwr::v1::NoteResponse response;
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer s3cre");
  EXPECT_EQ(stub->ExtractNote(&context, request, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  options.bearer_token = "s3cret";
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  EXPECT_TRUE(notes.Take()[0].ok());
  EXPECT_GE(server->stats().rejected, 3u);
}

TEST(TeacherService, OversizeRequestIsRejectedWithoutRetry) {
  auto server = StartServer({.max_request_bytes = 1000}, std::make_shared<ExtractiveTeacher>());
  ASSERT_TRUE(server);
  auto teacher = Connect(Url(*server), FastRetries());
  ASSERT_TRUE(teacher);
  // One Results per call: the two answers may arrive in either order.
  Results<Note> over_server, over_transport;
  teacher->ExtractNote({.context = std::string(5000, 'x'), .question = kQuestion},
                       over_server.Callback());
  // Far over gRPC's own transport limit (2x + 1 MiB) as well.
  teacher->ExtractNote({.context = std::string(3 << 20, 'y'), .question = kQuestion},
                       over_transport.Callback());
  ASSERT_TRUE(over_server.WaitFor(1));
  ASSERT_TRUE(over_transport.WaitFor(1));
  const absl::StatusOr<Note> first = over_server.Take()[0];
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(first.status().message()).find("at most 1000"), std::string::npos)
      << first.status();
  EXPECT_FALSE(over_transport.Take()[0].ok());
  EXPECT_EQ(server->stats().served, 0u);
  EXPECT_EQ(dynamic_cast<RemoteTeacher*>(teacher.get())->Stats().retries, 0u);

  // The client's own limit stops a request before it is sent.
  TeacherClientOptions small = FastRetries();
  small.max_message_bytes = 400;
  auto limited = Connect(Url(*server), small);
  ASSERT_TRUE(limited);
  Results<Note> local;
  limited->ExtractNote({.context = std::string(500, 'z'), .question = kQuestion}, local.Callback());
  ASSERT_TRUE(local.WaitFor(1));
  const absl::Status too_big = local.Take()[0].status();
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(too_big.message()).find("over the 400 byte limit"), std::string::npos)
      << too_big;
}

// Counts how many tasks the backend holds at once.
class ConcurrencyProbe final : public Teacher {
 public:
  explicit ConcurrencyProbe(double latency_s) : inner_({.latency_s = latency_s}) {}
  TeacherInfo Info() const override { return inner_.Info(); }
  void ExtractNote(NoteTask task, TeacherCallback<Note> done) override {
    int now = ++current_;
    int seen = peak_.load();
    while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
    }
    inner_.ExtractNote(std::move(task), [this, done = std::move(done)](absl::StatusOr<Note> note) {
      --current_;
      done(std::move(note));
    });
  }
  void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override {
    inner_.VerifyNote(task, done);
  }
  void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override {
    inner_.RemoveEvidence(task, done);
  }
  int peak() const { return peak_.load(); }

 private:
  ScriptedTeacher inner_;
  std::atomic<int> current_{0}, peak_{0};
};

TEST(TeacherService, ClientKeepsAtMostItsWindowInFlight) {
  auto probe = std::make_shared<ConcurrencyProbe>(0.01);
  auto server = StartServer({}, probe);
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.concurrency = 4;
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  for (int i = 0; i < 60; ++i)
    teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(60));
  for (const auto& r : notes.Take()) ASSERT_TRUE(r.ok());
  EXPECT_LE(probe->peak(), 4);
  EXPECT_GE(probe->peak(), 2);
}

// Records when each task reached the backend.
class ArrivalProbe final : public Teacher {
 public:
  TeacherInfo Info() const override { return inner_.Info(); }
  void ExtractNote(NoteTask task, TeacherCallback<Note> done) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      arrivals_.push_back(std::chrono::steady_clock::now());
    }
    inner_.ExtractNote(std::move(task), std::move(done));
  }
  void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override {
    inner_.VerifyNote(task, done);
  }
  void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override {
    inner_.RemoveEvidence(task, done);
  }
  std::vector<std::chrono::steady_clock::time_point> arrivals() {
    std::lock_guard<std::mutex> lock(mu_);
    return arrivals_;
  }

 private:
  ExtractiveTeacher inner_;
  std::mutex mu_;
  std::vector<std::chrono::steady_clock::time_point> arrivals_;
};

TEST(TeacherService, RequestsPerSecondLimitPacesTheCalls) {
  auto probe = std::make_shared<ArrivalProbe>();
  auto server = StartServer({}, probe);
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.requests_per_second = 20;  // 50 ms apart after a burst of at most 100 ms worth
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  for (int i = 0; i < 10; ++i)
    teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(10));
  auto arrivals = probe->arrivals();
  ASSERT_EQ(arrivals.size(), 10u);
  // A lower bound our own pacing guarantees (a loaded machine only spreads calls further): at most
  // 3 calls in the burst, then 7 gaps of 50 ms.
  EXPECT_GE(std::chrono::duration<double>(arrivals.back() - arrivals.front()).count(), 0.3);
}

TEST(TeacherService, FullQueueIsResourceExhaustedAndTheClientRetries) {
  auto server = StartServer({.workers = 1, .queue_capacity = 2},
                            std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.02}));
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.concurrency = 16;
  options.max_attempts = 100;
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  for (int i = 0; i < 40; ++i)
    teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(40));
  for (const auto& r : notes.Take()) ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(server->stats().rejected, 0u);
  EXPECT_GT(dynamic_cast<RemoteTeacher*>(teacher.get())->Stats().retries, 0u);
  EXPECT_EQ(server->stats().served, 40u);
}

// A client window far over the server's queue (`rwr distill run --concurrency 5000` against the
// default queue of 1024, scaled down): refusals are backpressure, so no call fails, although most
// are refused more often than max_attempts allows — in RunBatch RPCs and in unary ones.
TEST(TeacherService, AWindowFarOverTheServerQueueLosesNoCall) {
  constexpr int kCalls = 300;
  for (int max_batch : {64, 1}) {
    auto server =
        StartServer({.workers = 1, .queue_capacity = 4},
                    std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.001}));
    ASSERT_TRUE(server);
    TeacherClientOptions options = FastRetries();
    options.concurrency = 2 * kCalls;
    options.max_attempts = 2;
    options.max_batch = max_batch;
    auto teacher = Connect(Url(*server), options);
    ASSERT_TRUE(teacher);
    Results<Note> notes;
    for (int i = 0; i < kCalls; ++i)
      teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
    ASSERT_TRUE(notes.WaitFor(kCalls));
    for (const auto& r : notes.Take())
      ASSERT_TRUE(r.ok()) << "max_batch " << max_batch << ": " << r.status();
    EXPECT_EQ(server->stats().served, static_cast<uint64_t>(kCalls));
    EXPECT_GT(server->stats().rejected, 0u) << "max_batch " << max_batch;
  }
}

TEST(TeacherService, AFractionOfUnavailableCallsIsRetriedToCompletion) {
  auto backend = std::make_shared<ScriptedTeacher>(ScriptedOptions{
      .latency_s = 0.001, .fail_every = 3, .fail_code = absl::StatusCode::kUnavailable});
  auto server = StartServer({.backend_never_blocks = true}, backend);  // and without the worker hop
  ASSERT_TRUE(server);
  auto teacher = Connect(Url(*server), FastRetries());
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  for (int i = 0; i < 60; ++i)
    teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(60));
  for (const auto& r : notes.Take()) {
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NE(r->text.find("5,895"), std::string::npos);
  }
  EXPECT_GE(server->stats().failed, 20u);
  EXPECT_EQ(server->stats().served, 60u);
  EXPECT_EQ(dynamic_cast<RemoteTeacher*>(teacher.get())->Stats().retries, server->stats().failed);
}

TEST(TeacherService, NonRetryableErrorsAndExhaustedRetriesAreReportedWithTheirReason) {
  auto always = std::make_shared<ScriptedTeacher>(
      ScriptedOptions{.fail_every = 1, .fail_code = absl::StatusCode::kUnavailable});
  auto server = StartServer({}, always);
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.max_attempts = 3;
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  absl::Status status = notes.Take()[0].status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(std::string(status.message()).find("after 3 attempts"), std::string::npos) << status;
  EXPECT_NE(std::string(status.message()).find("scripted failure"), std::string::npos) << status;

  auto invalid = std::make_shared<ScriptedTeacher>(
      ScriptedOptions{.fail_every = 1, .fail_code = absl::StatusCode::kInvalidArgument});
  auto server2 = StartServer({}, invalid);
  auto teacher2 = Connect(Url(*server2), options);
  ASSERT_TRUE(teacher2);
  Results<Note> notes2;
  teacher2->ExtractNote({.context = kContext, .question = kQuestion}, notes2.Callback());
  ASSERT_TRUE(notes2.WaitFor(1));
  EXPECT_EQ(notes2.Take()[0].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(invalid->calls(), 1u);  // not retried
}

TEST(TeacherService, AnswersSlowerThanTheDeadlineFailAsDeadlineExceeded) {
  auto slow = std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.5});
  auto server = StartServer({}, slow);
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.deadline_s = 0.1;
  options.max_attempts = 2;
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  absl::Status status = notes.Take()[0].status();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(std::string(status.message()).find("after 2 attempts"), std::string::npos) << status;
}

TEST(TeacherService, QueuedWorkPastItsDeadlineIsNotDone) {
  // One worker busy for 0.3 s per task (the extractive teacher behind a blocking wrapper).
  class Blocking final : public Teacher {
   public:
    TeacherInfo Info() const override { return inner_.Info(); }
    void ExtractNote(NoteTask task, TeacherCallback<Note> done) override {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      ++ran_;
      inner_.ExtractNote(task, done);
    }
    void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override {
      inner_.VerifyNote(task, done);
    }
    void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override {
      inner_.RemoveEvidence(task, done);
    }
    ExtractiveTeacher inner_;
    std::atomic<int> ran_{0};
  };
  auto blocking = std::make_shared<Blocking>();
  auto server = StartServer({.workers = 1}, blocking);
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.deadline_s = 0.1;
  options.max_attempts = 1;
  auto teacher = Connect(Url(*server), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  for (int i = 0; i < 5; ++i)
    teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  ASSERT_TRUE(notes.WaitFor(5));
  for (const auto& r : notes.Take())
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  server->Shutdown(2);
  EXPECT_LT(blocking->ran_.load(), 5);  // the queued ones were dropped, not computed
  EXPECT_GE(server->stats().failed, 1u);
}

TEST(TeacherService, MalformedAnswersBecomeErrorsNamingTheProblem) {
  auto blank = StartServer({}, std::make_shared<ScriptedTeacher>(
                                   ScriptedOptions{.answer = ScriptedOptions::Answer::kBlankNote}));
  auto bad_score = StartServer({}, std::make_shared<ScriptedTeacher>(ScriptedOptions{
                                       .answer = ScriptedOptions::Answer::kBadScore}));
  ASSERT_TRUE(blank && bad_score);
  auto t1 = Connect(Url(*blank), FastRetries());
  auto t2 = Connect(Url(*bad_score), FastRetries());
  ASSERT_TRUE(t1 && t2);
  Results<Note> notes;
  Results<Verdict> verdicts;
  t1->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  t2->VerifyNote({.question = kQuestion, .note = "n", .answer = "a"}, verdicts.Callback());
  ASSERT_TRUE(notes.WaitFor(1) && verdicts.WaitFor(1));
  absl::Status note_status = notes.Take()[0].status();
  EXPECT_EQ(note_status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(std::string(note_status.message()).find("blank but not flagged empty"),
            std::string::npos)
      << note_status;
  absl::Status verdict_status = verdicts.Take()[0].status();
  EXPECT_EQ(verdict_status.code(), absl::StatusCode::kInternal);
  EXPECT_NE(std::string(verdict_status.message()).find("outside [0, 1]"), std::string::npos)
      << verdict_status;
}

TEST(TeacherService, ClientReconnectsWhenTheServerRestartsMidRun) {
  const int port = testing::FreePort();
  TeacherServerOptions server_options{.listen = "127.0.0.1:" + std::to_string(port)};
  auto backend = std::make_shared<ScriptedTeacher>(ScriptedOptions{.latency_s = 0.005});
  auto server = StartServer(server_options, backend);
  ASSERT_TRUE(server);
  TeacherClientOptions options = FastRetries();
  options.concurrency = 8;
  options.max_attempts = 50;
  options.max_backoff_s = 0.3;
  auto teacher = Connect("rwr://127.0.0.1:" + std::to_string(port), options);
  ASSERT_TRUE(teacher);
  Results<Note> notes;
  const int kCalls = 300;
  for (int i = 0; i < kCalls; ++i)
    teacher->ExtractNote({.context = kContext, .question = kQuestion}, notes.Callback());
  // Kill the server once some answers are in, keep it down a while, start a fresh one.
  while (notes.size() < 50) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  server->Shutdown(0);
  server.reset();
  const size_t during_outage = notes.size();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server = StartServer(server_options, backend);
  ASSERT_TRUE(server);
  ASSERT_TRUE(notes.WaitFor(kCalls, 60));
  int ok = 0;
  for (const auto& r : notes.Take()) {
    ok += r.ok();
    if (!r.ok()) ADD_FAILURE() << r.status();
  }
  EXPECT_EQ(ok, kCalls);
  EXPECT_LT(during_outage, static_cast<size_t>(kCalls));  // the restart really was mid-run
  EXPECT_GT(server->stats().served, 0u);                  // the new server did part of the work
  EXPECT_GT(dynamic_cast<RemoteTeacher*>(teacher.get())->Stats().retries, 0u);
}

TEST(TeacherService, BadTargetsAreClearErrors) {
  EXPECT_EQ(MakeTeacher("http://x:1", {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTeacher("rwr://nohostport", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeTeacher("kserve://127.0.0.1:1", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  TeacherClientOptions quick;
  quick.connect_timeout_s = 0.3;
  auto down = MakeTeacher("rwr://127.0.0.1:" + std::to_string(testing::FreePort()), quick);
  ASSERT_FALSE(down.ok());
  EXPECT_NE(std::string(down.status().message()).find("rwr teacher serve"), std::string::npos)
      << down.status();
  auto builtin = MakeTeacher("builtin", {});
  ASSERT_TRUE(builtin.ok());
  EXPECT_EQ((*builtin)->Info().teacher_id, "extractive-bm25");
}

}  // namespace
}  // namespace rwr::teacher
