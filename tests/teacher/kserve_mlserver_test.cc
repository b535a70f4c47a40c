// KServeTeacherClient against a real KServe v2 server: MLServer (PyPI `mlserver`, from the test
// virtualenv) serving the small deterministic runtime in tests/fixtures/kserve/rwr-teacher on free
// loopback ports. Proves the wire format (BYTES prompt, INT32/FP32/UINT64 sampling tensors, BYTES
// output), the start-up checks and error reporting against an implementation we did not write.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <fstream>

#include "teacher_client/client.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

namespace fs = std::filesystem;
using testing::Results;

const char kContext[] =
    "The lighthouse keeper lives on Skerry Island. He lights the lamp at dusk.\n\n"
    "The ferry to Skerry Island leaves Portmore at nine every morning.\n\n"
    "Seals rest on the northern rocks in winter.";

class MLServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path mlserver = fs::path(RWR_VENV_DIR) / "bin" / "mlserver";
    if (!fs::exists(mlserver)) {
      skip_reason_ =
          "no " + mlserver.string() + " (create the test virtualenv: see docs/teacher.md)";
      return;
    }
    dir_ = testing::MakeTempDir("rwr-mlserver");
    fs::copy(fs::path(RWR_KSERVE_FIXTURE_DIR) / "rwr-teacher", dir_ / "rwr-teacher",
             fs::copy_options::recursive);
    grpc_port_ = testing::FreePort();
    std::ofstream(dir_ / "settings.json")
        << "{\"debug\": false, \"host\": \"127.0.0.1\", \"http_port\": " << testing::FreePort()
        << ", \"grpc_port\": " << grpc_port_ << ", \"metrics_port\": " << testing::FreePort()
        << ", \"parallel_workers\": 0, \"metrics_endpoint\": null}";
    server_ = new testing::Subprocess({mlserver.string(), "start", dir_.string()},
                                      (dir_ / "mlserver.log").string());
  }
  static void TearDownTestSuite() {
    if (server_) {
      server_->Signal(SIGTERM);
      if (server_->Wait(20) == -1) server_->Signal(SIGKILL);
      delete server_;
      server_ = nullptr;
    }
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_TRUE(server_->started());
  }
  static std::string Url() {
    return "kserve://127.0.0.1:" + std::to_string(grpc_port_) + "/rwr-teacher";
  }
  static TeacherClientOptions Options() {
    TeacherClientOptions options;
    options.connect_timeout_s = 60;  // MLServer takes a few seconds to start
    options.concurrency = 8;
    options.kserve.sampling = {.max_tokens = 64, .temperature = 0, .seed = 7};
    return options;
  }
  static std::string Log() { return testing::ReadFile(dir_ / "mlserver.log"); }

  static inline std::string skip_reason_;
  static inline fs::path dir_;
  static inline int grpc_port_ = 0;
  static inline testing::Subprocess* server_ = nullptr;
};

TEST_F(MLServerTest, NotesVerdictsAndNegativesFromARealKServeServer) {
  auto teacher = MakeTeacher(Url(), Options());
  ASSERT_TRUE(teacher.ok()) << teacher.status() << "\nmlserver log:\n" << Log();
  EXPECT_EQ((*teacher)->Info().teacher_id, "kserve:rwr-teacher");
  EXPECT_EQ((*teacher)->Info().revision, "unversioned");  // MLServer lists no model versions

  Results<Note> notes;
  (*teacher)->ExtractNote({.context = kContext, .question = "When does the ferry leave Portmore?"},
                          notes.Callback());
  (*teacher)->ExtractNote({.context = kContext, .question = "Who painted the Mona Lisa?"},
                          notes.Callback());
  ASSERT_TRUE(notes.WaitFor(2)) << Log();
  auto results = notes.Take();
  ASSERT_TRUE(results[0].ok() && results[1].ok())
      << results[0].status() << " / " << results[1].status();
  // Order of completion is not order of issue; find each by content.
  const Note& ferry = results[0]->empty ? *results[1] : *results[0];
  const Note& none = results[0]->empty ? *results[0] : *results[1];
  EXPECT_EQ(ferry.text, "The ferry to Skerry Island leaves Portmore at nine every morning.");
  EXPECT_TRUE(none.empty);

  Results<Verdict> verdicts;
  (*teacher)->VerifyNote({.question = "When?", .note = ferry.text, .answer = "at nine"},
                         verdicts.Callback());
  ASSERT_TRUE(verdicts.WaitFor(1));
  (*teacher)->VerifyNote({.question = "When?", .note = ferry.text, .answer = "at noon"},
                         verdicts.Callback());
  ASSERT_TRUE(verdicts.WaitFor(2));
  auto v = verdicts.Take();
  ASSERT_TRUE(v[0].ok() && v[1].ok()) << v[0].status() << " / " << v[1].status();
  EXPECT_TRUE(v[0]->consistent);
  EXPECT_FALSE(v[1]->consistent);

  Results<Negative> negatives;
  (*teacher)->RemoveEvidence({.context = kContext, .question = "When?", .answer = "at nine"},
                             negatives.Callback());
  ASSERT_TRUE(negatives.WaitFor(1));
  auto negative = negatives.Take()[0];
  ASSERT_TRUE(negative.ok()) << negative.status();
  EXPECT_EQ(negative->removed_paragraphs, 1u);
  EXPECT_FALSE(negative->answer_still_present);
  EXPECT_EQ(negative->context.find("ferry"), std::string::npos);
  EXPECT_NE(negative->context.find("Seals rest"), std::string::npos);

  // Many calls through the window give the same deterministic note.
  Results<Note> many;
  for (int i = 0; i < 24; ++i)
    (*teacher)->ExtractNote({.context = kContext, .question = "Where do seals rest in winter?"},
                            many.Callback());
  ASSERT_TRUE(many.WaitFor(24));
  for (const auto& note : many.Take()) {
    ASSERT_TRUE(note.ok()) << note.status();
    EXPECT_EQ(note->text, "Seals rest on the northern rocks in winter.");
  }
}

TEST_F(MLServerTest, MisnamedTensorsFailAtStartAndServerErrorsReachTheCaller) {
  TeacherClientOptions wrong = Options();
  wrong.kserve.output_tensor = "generated_text";
  auto bad = MakeTeacher(Url(), wrong);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message())
                .find("no BYTES output 'generated_text' (outputs: text_output BYTES)"),
            std::string::npos)
      << bad.status();

  TeacherClientOptions no_seed = Options();
  no_seed.kserve.seed_tensor = "";  // allowed by the client, refused by this runtime
  no_seed.max_attempts = 2;
  auto teacher = MakeTeacher(Url(), no_seed);
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  Results<Note> notes;
  (*teacher)->ExtractNote({.context = kContext, .question = "When does the ferry leave?"},
                          notes.Callback());
  ASSERT_TRUE(notes.WaitFor(1));
  absl::Status status = notes.Take()[0].status();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find("input seed (UINT64) missing"), std::string::npos)
      << status;
}

// The wrong scheme or model name for this server is an error at start that says so.
TEST_F(MLServerTest, AnRwrClientOrAnUnknownModelIsRefusedAtStartSayingWhy) {
  TeacherClientOptions options = Options();
  auto rwr = MakeTeacher("rwr://127.0.0.1:" + std::to_string(grpc_port_), options);
  ASSERT_FALSE(rwr.ok());
  EXPECT_EQ(rwr.status().code(), absl::StatusCode::kUnimplemented) << rwr.status();
  EXPECT_NE(std::string(rwr.status().message()).find("does not serve this API"), std::string::npos)
      << rwr.status();
  auto unknown =
      MakeTeacher("kserve://127.0.0.1:" + std::to_string(grpc_port_) + "/nosuch", options);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(std::string(unknown.status().message()).find("nosuch"), std::string::npos)
      << unknown.status();
}

}  // namespace
}  // namespace rwr::teacher
