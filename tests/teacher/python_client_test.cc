// The teacher service is usable from outside C++: a Python grpcio client (stubs generated at test
// time from proto/rwr/v1/teacher.proto with grpcio-tools, in the test virtualenv) calls a real
// TeacherServer with a bearer token, including RunBatch and the standard health service.
#include <gtest/gtest.h>

#include <filesystem>

#include "nlohmann/json.hpp"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/teacher_server.h"
#include "tests/teacher/test_support.h"

namespace rwr::teacher {
namespace {

namespace fs = std::filesystem;

TEST(PythonClient, GrpcioClientCallsTheTeacherService) {
  const fs::path python = fs::path(RWR_VENV_DIR) / "bin" / "python";
  if (!fs::exists(python))
    GTEST_SKIP() << "no " << python << " (create the test virtualenv: see docs/teacher.md)";
  auto server =
      TeacherServer::Start({.auth_token = "py-token"}, std::make_shared<ExtractiveTeacher>());
  ASSERT_TRUE(server.ok()) << server.status();
  fs::path dir = testing::MakeTempDir("rwr-pyclient");
  testing::Subprocess client({python.string(), RWR_PYTHON_CLIENT, RWR_PROTO_ROOT, dir.string(),
                              "127.0.0.1:" + std::to_string((*server)->port()), "py-token"},
                             (dir / "out.txt").string());
  ASSERT_TRUE(client.started());
  ASSERT_EQ(client.Wait(120), 0) << testing::ReadFile(dir / "out.txt");
  std::string output = testing::ReadFile(dir / "out.txt");
  // The JSON is the last line (grpc may log above it).
  std::string last = output.substr(output.rfind('{'));
  nlohmann::json result = nlohmann::json::parse(last, nullptr, false);
  ASSERT_FALSE(result.is_discarded()) << output;
  EXPECT_EQ(result["teacher_id"], "extractive-bm25");
  EXPECT_EQ(result["backend"], "extractive");
  EXPECT_EQ(result["note"], "The old mill on the river was built in 1821 by the Hart family.");
  EXPECT_EQ(result["note_empty"], false);
  EXPECT_EQ(result["batch_codes"], nlohmann::json::array({0, 0}));
  EXPECT_EQ(result["consistent"], true);
  EXPECT_EQ(result["negative_context"],
            "The orchard grows apples and pears.\n\nSwans nest by the lake in spring.");
  EXPECT_EQ(result["no_token"], "UNAUTHENTICATED");
  EXPECT_EQ(result["health"], "SERVING");
  EXPECT_EQ(result["calls_served"], 3);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace rwr::teacher
