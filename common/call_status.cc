#include "common/call_status.h"

#include "fmt/format.h"
#include "common/process.h"

namespace rwr::internal {

absl::Status CallFailed(absl::StatusCode code, std::string_view library, std::string_view call,
                        std::string_view detail, const char* file, int line) {
  return absl::Status(code, fmt::format("{} failed: {} [{} at {}:{}, rank {} on {}]", call, detail,
                                        library, file, line, ProcessRank(), HostName()));
}

}  // namespace rwr::internal
