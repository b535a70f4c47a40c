// gRPC channels for the teacher clients: TLS or plaintext, message limits, and reconnect backoff
// short enough that a restarted server is found again within about a second.
#pragma once

#include <grpcpp/channel.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "teacher_client/client.h"

namespace rwr::teacher {

// Initializes gRPC once for the life of the process. gRPC 1.51 shuts its library down when the
// last gRPC object goes away and re-initializes on the next; that cycle races with the callback
// completion queue's thread and can abort the process ("ref_counted.h: prior > 0"). Clients and
// servers that come and go (tests, the distill service's jobs) call this first. It also keeps
// gRPC's shared callback completion queue referenced for the process (see channel.cc), and turns off
// absl::Mutex deadlock detection (a per-lock graph update that Debian's abseil leaves on).
void KeepGrpcInitialized();

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeTeacherChannel(
    const std::string& host_port, bool tls, const TeacherClientOptions& options);

// Reads a whole file ("--tls-cert: cannot read F: No such file or directory").
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, std::string_view what);

}  // namespace rwr::teacher
