// JSONL dataset reader with per-line validation and quarantine (see dataset.h).
#include "teacher_client/dataset.h"

#include <cerrno>
#include <cstring>

#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace rwr::teacher {
namespace {

constexpr size_t kReadChunk = 1 << 20;
constexpr size_t kQuarantineTextBytes = 4096;
constexpr const char* kRequiredFields[] = {"id", "context", "question", "answer"};

bool IsBlank(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

}  // namespace

absl::StatusOr<OnBadInput> ParseOnBadInput(std::string_view text) {
  if (text == "fail") return OnBadInput::kFail;
  if (text == "skip") return OnBadInput::kSkip;
  return absl::InvalidArgumentError(fmt::format("--on-bad-input: '{}' is not fail or skip", text));
}

size_t FindInvalidUtf8(std::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  size_t i = 0;
  while (i < size) {
    const unsigned char c = bytes[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int length = 0;
    uint32_t code = 0;
    uint32_t minimum = 0;
    if ((c & 0xE0) == 0xC0) {
      length = 2, code = c & 0x1F, minimum = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3, code = c & 0x0F, minimum = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4, code = c & 0x07, minimum = 0x10000;
    } else {
      return i;  // continuation byte without a lead, or 0xF8..0xFF
    }
    if (i + length > size) return i;
    for (int k = 1; k < length; ++k) {
      if ((bytes[i + k] & 0xC0) != 0x80) return i;
      code = (code << 6) | (bytes[i + k] & 0x3F);
    }
    if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
    i += length;
  }
  return std::string_view::npos;
}

absl::StatusOr<DatasetItem> ParseDatasetLine(std::string_view line, uint64_t max_record_bytes) {
  if (line.size() > max_record_bytes) {
    return absl::InvalidArgumentError(
        fmt::format("record of {} bytes is over the limit of {} bytes (distill.max_record_bytes)",
                    line.size(), max_record_bytes));
  }
  if (const size_t bad = FindInvalidUtf8(line); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        fmt::format("invalid UTF-8 at byte {} of the line; the file must be UTF-8", bad + 1));
  }
  nlohmann::json json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    // Parse again with exceptions for the parser's position and reason.
    try {
      [[maybe_unused]] const nlohmann::json reparsed = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      std::string what = e.what();
      if (const size_t pos = what.find("parse error"); pos != std::string::npos) {
        what = what.substr(pos);
      }
      return absl::InvalidArgumentError(fmt::format("malformed JSON: {}", what));
    }
    return absl::InvalidArgumentError("malformed JSON");
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(fmt::format(
        "expected a JSON object with id, context, question, answer; got a {}", json.type_name()));
  }
  DatasetItem item;
  std::string* targets[] = {&item.id, &item.context, &item.question, &item.answer};
  for (size_t f = 0; f < 4; ++f) {
    const char* field = kRequiredFields[f];
    auto it = json.find(field);
    if (it == json.end()) {
      return absl::InvalidArgumentError(fmt::format("missing field '{}'", field));
    }
    if (f == 0 && it->is_number_integer()) {
      *targets[f] = it->dump();  // integer ids are accepted and kept as their decimal text
    } else if (!it->is_string()) {
      return absl::InvalidArgumentError(
          fmt::format("field '{}' must be a string, got a {}", field, it->type_name()));
    } else {
      *targets[f] = it->get<std::string>();
    }
    if (targets[f]->empty()) {
      return absl::InvalidArgumentError(fmt::format("field '{}' is empty", field));
    }
    json.erase(it);
  }
  if (!json.empty()) item.extra_json = json.dump();
  return item;
}

DatasetReader::DatasetReader(std::string path, DatasetOptions options)
    : path_(std::move(path)), options_(std::move(options)) {}

DatasetReader::~DatasetReader() {
  if (file_ != nullptr) std::fclose(file_);
  if (quarantine_ != nullptr) std::fclose(quarantine_);
}

absl::StatusOr<bool> DatasetReader::ReadLine(bool* oversize) {
  line_.clear();
  *oversize = false;
  bool got_any = false;
  while (true) {
    if (buffer_pos_ == buffer_.size()) {
      if (eof_) return got_any;
      buffer_.resize(kReadChunk);
      const size_t n = std::fread(buffer_.data(), 1, kReadChunk, file_);
      buffer_.resize(n);
      buffer_pos_ = 0;
      if (n == 0) {
        if (std::ferror(file_)) {
          return absl::UnavailableError(
              fmt::format("{}:{}: read failed: {}", path_, line_number_ + 1, std::strerror(errno)));
        }
        eof_ = true;
        return got_any;
      }
    }
    got_any = true;
    const size_t newline = buffer_.find('\n', buffer_pos_);
    const size_t end = newline == std::string::npos ? buffer_.size() : newline;
    // Keep at most max_record_bytes + 1 bytes: enough to know the line is too long.
    const size_t room = options_.max_record_bytes + 1 -
                        std::min<size_t>(line_.size(), options_.max_record_bytes + 1);
    const size_t take = std::min(end - buffer_pos_, room);
    line_.append(buffer_, buffer_pos_, take);
    if (end - buffer_pos_ > take) *oversize = true;
    buffer_pos_ = end;
    if (newline != std::string::npos) {
      ++buffer_pos_;
      return true;
    }
  }
}

absl::Status DatasetReader::Reject(std::string_view reason) {
  const std::string located = fmt::format("{}:{}: {}", path_, line_number_, reason);
  if (options_.on_bad_input == OnBadInput::kFail) {
    return absl::InvalidArgumentError(located +
                                      " (--on-bad-input skip quarantines bad lines and goes on)");
  }
  ++lines_rejected_;
  if (!options_.quarantine_path.empty()) {
    if (quarantine_ == nullptr) {
      quarantine_ = std::fopen(options_.quarantine_path.c_str(), "w");
      if (quarantine_ == nullptr) {
        return absl::UnavailableError(fmt::format("{}: cannot write the quarantine file: {}",
                                                  options_.quarantine_path, std::strerror(errno)));
      }
    }
    nlohmann::json entry = {{"file", path_},
                            {"line", line_number_},
                            {"reason", std::string(reason)},
                            {"text", line_.substr(0, kQuarantineTextBytes)}};
    if (line_.size() > kQuarantineTextBytes) entry["truncated"] = true;
    const std::string text =
        entry.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (std::fwrite(text.data(), 1, text.size(), quarantine_) != text.size() ||
        std::fflush(quarantine_) != 0) {
      return absl::UnavailableError(
          fmt::format("{}: write failed: {}", options_.quarantine_path, std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<DatasetItem>> DatasetReader::Next() {
  if (file_ == nullptr) {
    if (eof_) return std::optional<DatasetItem>();
    file_ = std::fopen(path_.c_str(), "rb");
    if (file_ == nullptr) {
      return absl::NotFoundError(fmt::format("{}: cannot open: {}", path_, std::strerror(errno)));
    }
  }
  while (true) {
    bool oversize = false;
    RWR_ASSIGN_OR_RETURN(bool got_line, ReadLine(&oversize));
    if (!got_line) return std::optional<DatasetItem>();
    ++line_number_;
    if (oversize) {
      RWR_RETURN_IF_ERROR(
          Reject(fmt::format("record is over the limit of {} bytes (distill.max_record_bytes)",
                             options_.max_record_bytes)));
      continue;
    }
    if (!line_.empty() && line_.back() == '\r') line_.pop_back();
    if (IsBlank(line_)) continue;
    absl::StatusOr<DatasetItem> item = ParseDatasetLine(line_, options_.max_record_bytes);
    if (!item.ok()) {
      RWR_RETURN_IF_ERROR(Reject(std::string(item.status().message())));
      continue;
    }
    auto [it, inserted] = first_line_of_id_.emplace(item->id, line_number_);
    if (!inserted) {
      RWR_RETURN_IF_ERROR(
          Reject(fmt::format("duplicate id '{}' (first on line {})", item->id, it->second)));
      continue;
    }
    item->line = line_number_;
    ++items_read_;
    return std::optional<DatasetItem>(std::move(*item));
  }
}

}  // namespace rwr::teacher
