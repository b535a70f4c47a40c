// gRPC channels for the teacher clients: TLS or plaintext, message limits, and reconnect backoff
// short enough that a restarted server is found again within about a second.
#pragma once

#include <grpcpp/channel.h>

#include <memory>
#include <string>
#include <string_view>

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

// `address` is HOST:PORT ("[::1]:7700" for IPv6) with a decimal port in 1..65535 (0 too where
// `allow_port_zero`: a server's "any free port"). gRPC itself would take 99999 as 99999 − 65536,
// and a port like "abc" would fail only at the first call's deadline. `what` names the flag.
absl::Status CheckHostPort(std::string_view address, bool allow_port_zero, std::string_view what);

// Reads a whole file ("--tls-cert: cannot read F: No such file or directory").
absl::StatusOr<std::string> ReadWholeFile(const std::string& path, std::string_view what);

}  // namespace rwr::teacher
