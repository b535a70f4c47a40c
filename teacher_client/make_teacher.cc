// MakeTeacher: target URL → the Teacher that serves it.
#include <memory>

#include "fmt/format.h"
#include "teacher_client/client.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/kserve_client.h"
#include "teacher_client/rwr_client.h"

namespace rwr::teacher {

absl::StatusOr<std::unique_ptr<Teacher>> MakeTeacher(const std::string& target_url,
                                                     const TeacherClientOptions& options) {
  if (target_url == "builtin" || target_url == "extractive") {
    return std::unique_ptr<Teacher>(std::make_unique<ExtractiveTeacher>());
  }
  const size_t scheme_end = target_url.find("://");
  const std::string usage =
      "expected rwr://HOST:PORT, rwrs://HOST:PORT, kserve://HOST:PORT/MODEL, "
      "kserves://HOST:PORT/MODEL or builtin";
  if (scheme_end == std::string::npos) {
    return absl::InvalidArgumentError(fmt::format("teacher target '{}': {}", target_url, usage));
  }
  const std::string scheme = target_url.substr(0, scheme_end);
  std::string rest = target_url.substr(scheme_end + 3);
  if (options.concurrency < 1 || options.deadline_s <= 0 || options.max_attempts < 1) {
    return absl::InvalidArgumentError(
        fmt::format("teacher client options: concurrency ({}), deadline ({}s) and attempts ({}) "
                    "must be positive",
                    options.concurrency, options.deadline_s, options.max_attempts));
  }
  if (scheme == "rwr" || scheme == "rwrs") {
    while (!rest.empty() && rest.back() == '/') rest.pop_back();
    if (rest.empty() || rest.find('/') != std::string::npos ||
        rest.find(':') == std::string::npos) {
      return absl::InvalidArgumentError(fmt::format("teacher target '{}': {}", target_url, usage));
    }
    auto client = RwrTeacherClient::Connect(rest, scheme == "rwrs", options);
    if (!client.ok()) return client.status();
    return std::unique_ptr<Teacher>(*std::move(client));
  }
  if (scheme == "kserve" || scheme == "kserves") {
    const size_t slash = rest.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 >= rest.size()) {
      return absl::InvalidArgumentError(fmt::format("teacher target '{}': {}", target_url, usage));
    }
    auto client = KServeTeacherClient::Connect(rest.substr(0, slash), rest.substr(slash + 1),
                                               scheme == "kserves", options);
    if (!client.ok()) return client.status();
    return std::unique_ptr<Teacher>(*std::move(client));
  }
  return absl::InvalidArgumentError(
      fmt::format("teacher target '{}': unknown scheme '{}'; {}", target_url, scheme, usage));
}

}  // namespace rwr::teacher
