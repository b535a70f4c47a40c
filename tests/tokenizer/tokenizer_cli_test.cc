// `rwr tokenizer info|encode|decode` as a user runs them: output, and one-line errors with exit 1;
// the shipped tokenizer as the default from any working directory.
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "distill/tokenizer.h"
#include "fmt/format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/run_rwr.h"
#include "tests/support/temp_dir.h"

namespace rwr::distill {
namespace {

using ::testing::HasSubstr;

using Result = ::rwr::testing::CommandResult;
const auto& Rwr = ::rwr::testing::RunRwr;

const std::string kTokenizer = RWR_SHIPPED_TOKENIZER;

TEST(TokenizerCliTest, InfoDescribesTheShippedTokenizer) {
  const Result r = Rwr(fmt::format("tokenizer info --tokenizer '{}'", kTokenizer));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("vocab_size (embedding rows): 8192"));
  EXPECT_THAT(r.output, HasSubstr("eos <|endoftext|>: 0"));
  EXPECT_THAT(r.output, HasSubstr("<|padding|>: 1"));
}

TEST(TokenizerCliTest, HelpShowsTheWarnLogLevelTheCommandsUse) {
  for (const char* command : {"info", "encode", "decode"}) {
    EXPECT_THAT(Rwr(fmt::format("tokenizer {} --help", command)).output,
                ::testing::ContainsRegex("--log-level TEXT(=| \\[)warn"))  // CLI11 2.3 | 2.4
        << command;
  }
}

TEST(TokenizerCliTest, EncodeAndDecodeAgreeWithTheLibrary) {
  absl::StatusOr<Tokenizer> tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text = "Where does Lena live? In Osaka.<|endoftext|>";
  std::string expected;
  for (int32_t id : tok->Encode(text))
    expected += (expected.empty() ? "" : " ") + std::to_string(id);

  const Result encoded =
      Rwr(fmt::format("tokenizer encode --tokenizer '{}' --text '{}'", kTokenizer, text));
  ASSERT_EQ(encoded.exit_code, 0) << encoded.output;
  // The ids on stdout, then the statistics line on stderr.
  EXPECT_EQ(encoded.output.substr(0, encoded.output.find('\n')), expected);
  EXPECT_THAT(encoded.output, HasSubstr("44 bytes, 6 words, "));

  const Result decoded =
      Rwr(fmt::format("tokenizer decode --tokenizer '{}' --ids '{}'", kTokenizer, expected));
  ASSERT_EQ(decoded.exit_code, 0) << decoded.output;
  EXPECT_EQ(decoded.output, text + "\n");
  const Result skipped = Rwr(fmt::format(
      "tokenizer decode --tokenizer '{}' --skip-special --ids '{}'", kTokenizer, expected));
  EXPECT_EQ(skipped.output, "Where does Lena live? In Osaka.\n");
}

TEST(TokenizerCliTest, StatsCountTokensPerWord) {
  const auto path = std::filesystem::temp_directory_path() / "rwr_tokenizer_cli_stats.txt";
  std::ofstream(path) << "the badge number is 65532\n";
  const Result r = Rwr(fmt::format("tokenizer encode --tokenizer '{}' --input '{}' --stats",
                                   kTokenizer, path.string()));
  std::filesystem::remove(path);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("26 bytes, 5 words,"));
  EXPECT_THAT(r.output, HasSubstr("tokens per word"));
}

TEST(TokenizerCliTest, UnsupportedFileIsAOneLineErrorWithExitOne) {
  const auto path = std::filesystem::temp_directory_path() / "rwr_tokenizer_cli_bad.json";
  std::ofstream(path) << R"({"model": {"type": "WordPiece"}})";
  const Result r = Rwr(fmt::format("tokenizer info --tokenizer '{}'", path.string()));
  std::filesystem::remove(path);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("model type \"WordPiece\" is not supported; expected BPE"));
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;

  const Result bad_ids =
      Rwr(fmt::format("tokenizer decode --tokenizer '{}' --ids 'one two'", kTokenizer));
  EXPECT_EQ(bad_ids.exit_code, 1);
  EXPECT_THAT(bad_ids.output, HasSubstr("--ids: unexpected 'o'"));
  const Result negative =
      Rwr(fmt::format("tokenizer decode --tokenizer '{}' --ids '5 -1'", kTokenizer));
  EXPECT_EQ(negative.exit_code, 1);
  EXPECT_THAT(negative.output, HasSubstr("--ids: '-1' is not a token id"));
  const Result dir = Rwr(fmt::format("tokenizer encode --tokenizer '{}' --input '{}'", kTokenizer,
                                     std::filesystem::temp_directory_path().string()));
  EXPECT_EQ(dir.exit_code, 1);
  EXPECT_THAT(dir.output, HasSubstr("is a directory"));
}

// The default tokenizer from a working directory other than the checkout's (a Slurm job's): a copy
// of rwr at TREE/build/release/bin/rwr, run from ELSEWHERE, finds TREE/configs/tokenizer/.
class DefaultTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Canonical: rwr names the directories it looked in from /proc/self/exe, links resolved.
    tree_ = std::filesystem::canonical(::rwr::testing::FreshTempDir("tokenizer_cli", "tree"));
    elsewhere_ =
        std::filesystem::canonical(::rwr::testing::FreshTempDir("tokenizer_cli", "elsewhere"));
    rwr_ = ::rwr::testing::CopyRwrInto(tree_);
  }
  void TearDown() override {
    std::filesystem::remove_all(tree_);
    std::filesystem::remove_all(elsewhere_);
  }
  // The shipped tokenizer.json at DIR/configs/tokenizer/, or `contents` there instead.
  static void PutTokenizer(const std::string& dir, const std::string& contents = "") {
    const std::string at = dir + "/configs/tokenizer";
    std::filesystem::create_directories(at);
    if (contents.empty()) {
      std::filesystem::copy_file(kTokenizer, at + "/tokenizer.json");
    } else {
      std::ofstream(at + "/tokenizer.json") << contents;
    }
  }
  Result RunElsewhere(const std::string& args) const {
    return ::rwr::testing::RunFrom(elsewhere_, rwr_, args);
  }
  std::string tree_, elsewhere_, rwr_;
};

TEST_F(DefaultTokenizerTest, IsFoundAboveTheBinaryFromAnyWorkingDirectory) {
  PutTokenizer(tree_);
  const Result info = RunElsewhere("tokenizer info");
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_THAT(info.output, HasSubstr("vocab_size (embedding rows): 8192"));

  absl::StatusOr<Tokenizer> tok = Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::string expected;
  for (int32_t id : tok->Encode("Where does Lena live?"))
    expected += (expected.empty() ? "" : " ") + std::to_string(id);
  const Result encoded = RunElsewhere("tokenizer encode --text 'Where does Lena live?'");
  ASSERT_EQ(encoded.exit_code, 0) << encoded.output;
  EXPECT_EQ(encoded.output.substr(0, encoded.output.find('\n')), expected);
}

TEST_F(DefaultTokenizerTest, TheWorkingDirectorysOwnComesFirst) {
  PutTokenizer(tree_);
  PutTokenizer(elsewhere_, R"({"model": {"type": "WordPiece"}})");
  const Result r = RunElsewhere("tokenizer info");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("model type \"WordPiece\" is not supported"));
}

TEST_F(DefaultTokenizerTest, NotFoundIsOneLineNamingWhereItLooked) {
  const Result r = RunElsewhere("tokenizer info");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("configs/tokenizer/tokenizer.json not found"));
  EXPECT_THAT(r.output,
              HasSubstr("(looked in " + elsewhere_ + ", " + tree_ + "/build/release/bin, " + tree_ +
                        "/build/release, " + tree_ + "/build, " + tree_ + ", "));
  EXPECT_THAT(r.output, HasSubstr("give --tokenizer FILE"));
}

// `cmake --install` puts rwr in PREFIX/bin and what it ships in PREFIX/share/rwr, where the
// installed binary finds its default tokenizer from any working directory.
TEST_F(DefaultTokenizerTest, AnInstalledRwrFindsItUnderShare) {
  const std::string prefix = tree_ + "/prefix";
  const Result installed = ::rwr::testing::RunShell(fmt::format(
      "'{}' --install '{}' --prefix '{}' 2>&1", RWR_CMAKE, RWR_BUILD_DIR, prefix));
  ASSERT_EQ(installed.exit_code, 0) << installed.output;
  EXPECT_TRUE(std::filesystem::exists(prefix + "/share/rwr/configs/tokenizer/tokenizer.json"));
  EXPECT_TRUE(std::filesystem::exists(prefix + "/share/rwr/configs/models/mamba-2.8b.yaml"));
  const auto job = std::filesystem::status(prefix + "/share/rwr/deploy/slurm/rwr-job.sbatch");
  EXPECT_NE(job.permissions() & std::filesystem::perms::owner_exec, std::filesystem::perms::none);
  const Result info =
      ::rwr::testing::RunFrom(elsewhere_, prefix + "/bin/rwr", "tokenizer info");
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_THAT(info.output, HasSubstr("vocab_size (embedding rows): 8192"));
}

// A path the user gives is read as given, from the working directory, even where the default
// would be found beside the binary.
TEST_F(DefaultTokenizerTest, AGivenPathIsNeverLookedForElsewhere) {
  PutTokenizer(tree_);
  for (const char* args : {"--tokenizer configs/tokenizer/tokenizer.json",
                           "--set tokenizer.path=configs/tokenizer/tokenizer.json"}) {
    const Result r = RunElsewhere(fmt::format("tokenizer info {}", args));
    EXPECT_EQ(r.exit_code, 1) << args;
    EXPECT_THAT(r.output, HasSubstr("configs/tokenizer/tokenizer.json: cannot open tokenizer file"))
        << args;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
}

}  // namespace
}  // namespace rwr::distill
