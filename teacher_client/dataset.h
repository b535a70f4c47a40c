// Dataset input for `rwr distill`: JSONL, one item per line, with string fields `id`, `context`,
// `question`, `answer` (other fields are kept, as JSON, and travel with the item into the cache).
//
// Every line is checked; a bad one is an error naming FILE:LINE and what was wrong:
//   malformed JSON · not an object · a missing, non-string or empty required field ·
//   invalid UTF-8 (with the byte offset) · a line longer than max_record_bytes · a duplicate id
//   (naming the line of the first one). Blank lines are skipped.
// With OnBadInput::kSkip, bad lines are skipped instead, and each is written to the quarantine
// file as one JSON line {"file", "line", "reason", "text"} (text cut to 4 KiB).
//
//   DatasetReader reader(path, {.on_bad_input = OnBadInput::kSkip, .quarantine_path = q});
//   while (true) {
//     RWR_ASSIGN_OR_RETURN(std::optional<DatasetItem> item, reader.Next());
//     if (!item) break;
//     ...
//   }
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/statusor.h"

namespace rwr::teacher {

enum class OnBadInput { kFail, kSkip };
absl::StatusOr<OnBadInput> ParseOnBadInput(std::string_view text);  // "fail" | "skip"

struct DatasetOptions {
  OnBadInput on_bad_input = OnBadInput::kFail;
  std::string quarantine_path;              // kSkip: where rejected lines go ("" = nowhere)
  uint64_t max_record_bytes = 64ull << 20;  // longest accepted line, newline excluded
};

struct DatasetItem {
  std::string id;
  std::string context;
  std::string question;
  std::string answer;
  std::string extra_json;  // the other fields as a JSON object, "" when there are none
  int64_t line = 0;        // 1-based
};

// Validates one line (no newline). Returns the item, or InvalidArgument with the reason (no
// FILE:LINE prefix; DatasetReader adds it).
absl::StatusOr<DatasetItem> ParseDatasetLine(std::string_view line, uint64_t max_record_bytes);

// The byte offset of the first invalid UTF-8 sequence, or npos when `text` is valid (strict:
// no overlong forms, no surrogates, nothing above U+10FFFF).
size_t FindInvalidUtf8(std::string_view text);

class DatasetReader {
 public:
  DatasetReader(std::string path, DatasetOptions options);
  ~DatasetReader();
  DatasetReader(const DatasetReader&) = delete;
  DatasetReader& operator=(const DatasetReader&) = delete;

  // The next good item; std::nullopt at the end of the file. kFail: the first bad line is an
  // error "FILE:LINE: reason". kSkip: bad lines are quarantined and counted.
  absl::StatusOr<std::optional<DatasetItem>> Next();

  int64_t items_read() const { return items_read_; }
  int64_t lines_rejected() const { return lines_rejected_; }
  const std::string& path() const { return path_; }

 private:
  // Reads one line into line_ (at most max_record_bytes kept); false at end of file.
  absl::StatusOr<bool> ReadLine(bool* oversize);
  absl::Status Reject(std::string_view reason);

  std::string path_;
  DatasetOptions options_;
  std::FILE* file_ = nullptr;
  std::FILE* quarantine_ = nullptr;
  std::string buffer_;
  size_t buffer_pos_ = 0;
  bool eof_ = false;
  std::string line_;
  int64_t line_number_ = 0;
  int64_t items_read_ = 0;
  int64_t lines_rejected_ = 0;
  std::unordered_map<std::string, int64_t> first_line_of_id_;
};

}  // namespace rwr::teacher
