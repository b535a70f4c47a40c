// The GEMM-algorithm file `rwr train` keeps in its run directory (trainer/gemm_choices.h): what
// it writes reads back the same, and a damaged file is a one-line error naming the file. (The
// GPU side, trainer/gemm_runner.h, is tested on the device in gemm_runner_test.)
#include "trainer/gemm_choices.h"

#include <gtest/gtest.h>

namespace rwr::trainer {
namespace {

GemmChoices Sample() {
  GemmChoices c;
  c.device = "NVIDIA H100 80GB HBM3";
  c.cublaslt_version = 130100;
  c.algos["TN m10240 n8192 k2560 lda2560 ldb2560 ldd10240 bf16>bf16"] = {
      0x0123456789abcdefULL, 0, 1, 2, 3, 0xffffffffffffffffULL, 5, 6};
  c.algos["NT m2560 n5120 k8192 lda5120 ldb2560 ldd2560 bf16>f32+"] = {7, 6, 5, 4, 3, 2, 1, 0};
  return c;
}

TEST(GemmChoices, WrittenFileReadsBackTheSame) {
  const GemmChoices c = Sample();
  auto back = GemmChoices::FromJson(c.ToJson(), "gemm_algos.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, c);
  EXPECT_EQ(back->algos.size(), 2u);
  EXPECT_EQ(back->algos.begin()->second[0], 7u);  // keys in order; all 64 bits kept
  EXPECT_EQ(back->algos.rbegin()->second[5], 0xffffffffffffffffULL);
}

TEST(GemmChoices, EmptyChoicesRoundTrip) {
  GemmChoices c;
  c.device = "x";
  auto back = GemmChoices::FromJson(c.ToJson(), "f");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->algos.empty());
}

TEST(GemmChoices, DamagedFilesAreClearErrors) {
  const std::string good = Sample().ToJson();
  auto error_of = [](const std::string& text) {
    auto parsed = GemmChoices::FromJson(text, "run/gemm_algos.json");
    EXPECT_FALSE(parsed.ok()) << text;
    return parsed.ok() ? std::string() : std::string(parsed.status().message());
  };
  EXPECT_EQ(error_of(good.substr(0, good.size() / 2)), "run/gemm_algos.json: not a JSON object");
  EXPECT_EQ(error_of("[]"), "run/gemm_algos.json: not a JSON object");
  for (const std::string format : {"\"other\"", "1", "null", "[]"}) {
    EXPECT_NE(error_of(R"({"format": )" + format +
                       R"(, "device": "x", "cublaslt_version": 1, "algos": {}})")
                  .find("format is not"),
              std::string::npos)
        << format;
  }
  EXPECT_NE(
      error_of(R"({"device": "x", "cublaslt_version": 1, "algos": {}})").find("format is not"),
      std::string::npos);
  EXPECT_NE(error_of(R"({"format": "rwr.gemm_algos.v1", "cublaslt_version": 1, "algos": {}})")
                .find("\"device\" missing"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"format": "rwr.gemm_algos.v1", "device": "x", "algos": {}})")
                .find("\"cublaslt_version\" missing"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"format": "rwr.gemm_algos.v1", "device": "x", "cublaslt_version": 1})")
                .find("\"algos\" missing"),
            std::string::npos);
  const std::string hex(128, 'a');
  for (const std::string& bad :
       {hex.substr(1), hex + "0", "A" + hex.substr(1), "g" + hex.substr(1)}) {
    const std::string text =
        R"({"format": "rwr.gemm_algos.v1", "device": "x", "cublaslt_version": 1,
                                 "algos": {"k": ")" +
        bad + R"("}})";
    EXPECT_EQ(error_of(text),
              "run/gemm_algos.json: algorithm of \"k\" is not 128 lowercase hex digits");
  }
  // The same file with a valid algorithm parses (the cases above differ only in it).
  auto ok = GemmChoices::FromJson(
      R"({"format": "rwr.gemm_algos.v1", "device": "x", "cublaslt_version": 1, "algos": {"k": ")" +
          hex + R"("}})",
      "f");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->algos.at("k")[7], 0xaaaaaaaaaaaaaaaaULL);
}

}  // namespace
}  // namespace rwr::trainer
