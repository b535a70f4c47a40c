// MakeTeacher: target URL → the Teacher that serves it; CheckTeacherTarget: the same spelling
// rules without connecting.
#include <memory>

#include "common/status.h"
#include "fmt/format.h"
#include "teacher_client/channel.h"
#include "teacher_client/client.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/kserve_client.h"
#include "teacher_client/rwr_client.h"

namespace rwr::teacher {
namespace {

// A teacher target taken apart: the one place its spelling is checked, so that a target passed on
// without connecting (`rwr distill submit`) meets the rules MakeTeacher applies.
struct TeacherTarget {
  enum class Kind { kExtractive, kRwr, kKServe };
  Kind kind = Kind::kExtractive;
  bool tls = false;
  std::string host_port;  // kRwr, kKServe
  std::string model;      // kKServe
};

absl::StatusOr<TeacherTarget> ParseTeacherTarget(const std::string& target_url) {
  if (target_url == "builtin" || target_url == "extractive") return TeacherTarget{};
  const size_t scheme_end = target_url.find("://");
  const std::string usage =
      "expected rwr://HOST:PORT, rwrs://HOST:PORT, kserve://HOST:PORT/MODEL, "
      "kserves://HOST:PORT/MODEL or builtin";
  if (scheme_end == std::string::npos) {
    return absl::InvalidArgumentError(fmt::format("teacher target '{}': {}", target_url, usage));
  }
  const std::string scheme = target_url.substr(0, scheme_end);
  std::string rest = target_url.substr(scheme_end + 3);
  TeacherTarget target;
  if (scheme == "rwr" || scheme == "rwrs") {
    while (!rest.empty() && rest.back() == '/') rest.pop_back();
    if (rest.empty() || rest.find('/') != std::string::npos ||
        rest.find(':') == std::string::npos) {
      return absl::InvalidArgumentError(fmt::format("teacher target '{}': {}", target_url, usage));
    }
    target = {.kind = TeacherTarget::Kind::kRwr, .tls = scheme == "rwrs", .host_port = rest};
  } else if (scheme == "kserve" || scheme == "kserves") {
    const size_t slash = rest.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 >= rest.size()) {
      return absl::InvalidArgumentError(fmt::format("teacher target '{}': {}", target_url, usage));
    }
    target = {.kind = TeacherTarget::Kind::kKServe,
              .tls = scheme == "kserves",
              .host_port = rest.substr(0, slash),
              .model = rest.substr(slash + 1)};
  } else {
    return absl::InvalidArgumentError(
        fmt::format("teacher target '{}': unknown scheme '{}'; {}", target_url, scheme, usage));
  }
  RWR_RETURN_IF_ERROR(CheckHostPort(target.host_port, /*allow_port_zero=*/false,
                                    fmt::format("teacher target '{}': address", target_url)));
  return target;
}

}  // namespace

absl::Status CheckTeacherTarget(const std::string& target_url) {
  return ParseTeacherTarget(target_url).status();
}

absl::StatusOr<std::unique_ptr<Teacher>> MakeTeacher(const std::string& target_url,
                                                     const TeacherClientOptions& options) {
  RWR_ASSIGN_OR_RETURN(TeacherTarget target, ParseTeacherTarget(target_url));
  if (target.kind == TeacherTarget::Kind::kExtractive) {
    return std::unique_ptr<Teacher>(std::make_unique<ExtractiveTeacher>());
  }
  if (options.concurrency < 1 || options.deadline_s <= 0 || options.max_attempts < 1) {
    return absl::InvalidArgumentError(
        fmt::format("teacher client options: concurrency ({}), deadline ({}s) and attempts ({}) "
                    "must be positive",
                    options.concurrency, options.deadline_s, options.max_attempts));
  }
  if (target.kind == TeacherTarget::Kind::kRwr) {
    auto client = RwrTeacherClient::Connect(target.host_port, target.tls, options);
    if (!client.ok()) return client.status();
    return std::unique_ptr<Teacher>(*std::move(client));
  }
  auto client = KServeTeacherClient::Connect(target.host_port, target.model, target.tls, options);
  if (!client.ok()) return client.status();
  return std::unique_ptr<Teacher>(*std::move(client));
}

}  // namespace rwr::teacher
