// JSONL input (teacher_client/dataset.h) against the bad-input corpus in tests/fixtures/bad_input:
// every bad line is reported with its file, line and reason; skip mode quarantines exactly the bad
// lines and yields exactly the good items.
#include "teacher_client/dataset.h"

#include <fstream>
#include <sstream>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace rwr::teacher {
namespace {

const std::string kCorpus = std::string(RWR_SOURCE_DIR) + "/tests/fixtures/bad_input/";

absl::Status ReadAll(const std::string& path, DatasetOptions options,
                     std::vector<DatasetItem>* items = nullptr) {
  DatasetReader reader(path, options);
  while (true) {
    absl::StatusOr<std::optional<DatasetItem>> item = reader.Next();
    if (!item.ok()) return item.status();
    if (!item->has_value()) return absl::OkStatus();
    if (items != nullptr) items->push_back(std::move(**item));
  }
}

struct BadCase {
  std::string file;
  int line;
  std::string reason;
};

class BadInputTest : public testing::TestWithParam<BadCase> {};

TEST_P(BadInputTest, FailModeNamesFileLineAndReason) {
  const BadCase& bad = GetParam();
  absl::Status status = ReadAll(kCorpus + bad.file, {.max_record_bytes = 1024});
  ASSERT_FALSE(status.ok()) << bad.file;
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message(status.message());
  EXPECT_NE(message.find(bad.file + ":" + std::to_string(bad.line) + ": "), std::string::npos)
      << message;
  EXPECT_NE(message.find(bad.reason), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
}

INSTANTIATE_TEST_SUITE_P(
    Corpus, BadInputTest,
    testing::Values(BadCase{"malformed_json.jsonl", 3, "malformed JSON"},
                    BadCase{"not_an_object.jsonl", 1, "expected a JSON object"},
                    BadCase{"missing_field.jsonl", 2, "missing field 'answer'"},
                    BadCase{"wrong_type.jsonl", 3, "field 'question' must be a string"},
                    BadCase{"empty_field.jsonl", 1, "field 'context' is empty"},
                    BadCase{"invalid_utf8.jsonl", 2, "invalid UTF-8 at byte 26"},
                    BadCase{"duplicate_id.jsonl", 4, "duplicate id 'q1' (first on line 1)"},
                    BadCase{"oversize.jsonl", 3, "over the limit of 1024 bytes"}),
    [](const testing::TestParamInfo<BadCase>& info) {
      return info.param.file.substr(0, info.param.file.find('.'));
    });

TEST(DatasetReaderTest, SkipModeQuarantinesEachBadLineWithItsReason) {
  const std::string quarantine = testing::TempDir() + "/mixed.quarantine.jsonl";
  std::vector<DatasetItem> items;
  DatasetReader reader(kCorpus + "mixed.jsonl",
                       {.on_bad_input = OnBadInput::kSkip, .quarantine_path = quarantine});
  while (true) {
    auto item = reader.Next();
    ASSERT_TRUE(item.ok()) << item.status();
    if (!item->has_value()) break;
    items.push_back(**item);
  }
  std::vector<std::string> ids;
  std::vector<int64_t> lines;
  for (const DatasetItem& item : items) {
    ids.push_back(item.id);
    lines.push_back(item.line);
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"q1", "q3", "q6", "q9"}));
  EXPECT_EQ(lines, (std::vector<int64_t>{1, 3, 7, 10}));
  EXPECT_EQ(reader.items_read(), 4);
  EXPECT_EQ(reader.lines_rejected(), 5);

  std::ifstream in(quarantine);
  std::string text;
  std::vector<int64_t> rejected_lines;
  std::vector<std::string> reasons;
  while (std::getline(in, text)) {
    nlohmann::json entry = nlohmann::json::parse(text);
    rejected_lines.push_back(entry["line"].get<int64_t>());
    reasons.push_back(entry["reason"].get<std::string>());
    EXPECT_NE(entry["file"].get<std::string>().find("mixed.jsonl"), std::string::npos);
    EXPECT_FALSE(entry["text"].get<std::string>().empty());
  }
  EXPECT_EQ(rejected_lines, (std::vector<int64_t>{2, 4, 5, 6, 8}));
  ASSERT_EQ(reasons.size(), 5u);
  EXPECT_NE(reasons[0].find("malformed JSON"), std::string::npos) << reasons[0];
  EXPECT_NE(reasons[1].find("missing field 'answer'"), std::string::npos) << reasons[1];
  EXPECT_NE(reasons[2].find("'answer' must be a string"), std::string::npos) << reasons[2];
  EXPECT_NE(reasons[3].find("invalid UTF-8"), std::string::npos) << reasons[3];
  EXPECT_NE(reasons[4].find("duplicate id 'q1'"), std::string::npos) << reasons[4];
}

TEST(DatasetReaderTest, ExtraFieldsAreKeptAndIntegerIdsAccepted) {
  const std::string path = testing::TempDir() + "/extra.jsonl";
  std::ofstream(path)
      << R"({"id": 17, "context": "c", "question": "q", "answer": "a", "topic": "x", "n": [1, 2]})"
      << "\r\n"
      << R"({"id": "b", "context": "c2", "question": "q2", "answer": "a2"})";  // no final newline
  std::vector<DatasetItem> items;
  ASSERT_TRUE(ReadAll(path, {}, &items).ok());
  ASSERT_EQ(items.size(), 2u);
  EXPECT_EQ(items[0].id, "17");
  EXPECT_EQ(nlohmann::json::parse(items[0].extra_json),
            nlohmann::json::parse(R"({"topic": "x", "n": [1, 2]})"));
  EXPECT_EQ(items[1].id, "b");
  EXPECT_EQ(items[1].extra_json, "");
  EXPECT_EQ(items[1].answer, "a2");
}

TEST(DatasetReaderTest, LinesLongerThanTheReadChunkAreRead) {
  const std::string path = testing::TempDir() + "/long.jsonl";
  const std::string context(3 << 20, 'w');  // longer than the reader's 1 MiB chunk
  std::ofstream(path) << R"({"id": "long", "context": ")" << context
                      << R"(", "question": "q", "answer": "a"})"
                      << "\n";
  std::vector<DatasetItem> items;
  ASSERT_TRUE(ReadAll(path, {}, &items).ok());
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].context.size(), context.size());
}

TEST(DatasetReaderTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadAll("/nonexistent/data.jsonl", {}).code(), absl::StatusCode::kNotFound);
}

TEST(Utf8Test, StrictValidation) {
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("ab\xc0\xaf"), 2u) << "overlong";
  EXPECT_EQ(FindInvalidUtf8("\xed\xa0\x80"), 0u) << "surrogate";
  EXPECT_EQ(FindInvalidUtf8("x\xf4\x90\x80\x80"), 1u) << "above U+10FFFF";
  EXPECT_EQ(FindInvalidUtf8("xy\x80"), 2u) << "lone continuation";
  EXPECT_EQ(FindInvalidUtf8("\xe2\x82"), 0u) << "truncated";
}

}  // namespace
}  // namespace rwr::teacher
