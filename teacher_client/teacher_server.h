// TeacherServer: rwr.v1.TeacherService over gRPC's callback API, in front of any Teacher backend
// (ExtractiveTeacher for `rwr teacher serve --backend extractive`).
//
// - gRPC reaction threads only admit a call: check the bearer token (UNAUTHENTICATED), the request
//   size (INVALID_ARGUMENT over max_request_bytes; gRPC itself refuses anything over twice that)
//   and the work bound (RESOURCE_EXHAUSTED once queue_capacity tasks are outstanding). Admitted
//   tasks go to a pool of `workers` threads, which drop tasks whose deadline passed or whose client
//   went away (DEADLINE_EXCEEDED / CANCELLED) and run the rest on the backend. A backend may answer
//   later from its own thread; the task stays counted as outstanding until it does.
// - Counters (served, failed, rejected) are exposed by GetServerInfo and by stats().
// - The standard grpc.health.v1 service reports SERVING for "" and "rwr.v1.TeacherService" while
//   up, NOT_SERVING once Shutdown starts.
// - Shutdown(grace): stop accepting, let outstanding work finish for up to `grace`, cancel the
// rest.
#pragma once

#include <grpcpp/server.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "teacher_client/teacher.h"

namespace rwr::teacher {

inline constexpr int kMaxServerWorkers = 4096;
inline constexpr uint64_t kMaxServerRequestBytes = 1ull << 30;

struct TeacherServerOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one (see port())
  std::string backend_name = "extractive";
  int workers = 2;            // 1..kMaxServerWorkers
  int queue_capacity = 1024;  // tasks outstanding (queued + running) before RESOURCE_EXHAUSTED
  uint64_t max_request_bytes = 8ull << 20;  // 1..kMaxServerRequestBytes
  int max_batch = 256;        // tasks per RunBatch
  std::string tls_cert_file;  // PEM; with tls_key_file turns TLS on
  std::string tls_key_file;
  std::string auth_token;  // non-empty: calls must send `authorization: Bearer <token>`
  // Only for backends that never block (they answer later from their own threads, like
  // ScriptedTeacher or a proxy to another server): call them on the gRPC thread and skip the
  // worker hand-off. Never for ExtractiveTeacher, which computes in the call.
  bool backend_never_blocks = false;
};

struct TeacherServerStats {
  uint64_t served = 0;    // tasks answered OK
  uint64_t failed = 0;    // backend error, deadline passed, client gone
  uint64_t rejected = 0;  // unauthenticated, too large, queue full
  uint64_t outstanding = 0;
  uint64_t rpcs = 0;  // task RPCs received (unary calls and RunBatch calls, admitted or not)
};

class TeacherServer {
 public:
  static absl::StatusOr<std::unique_ptr<TeacherServer>> Start(const TeacherServerOptions& options,
                                                              std::shared_ptr<Teacher> backend);
  ~TeacherServer();  // Shutdown(0) if still running

  int port() const { return port_; }
  TeacherServerStats stats() const;
  void Shutdown(double grace_s = 5);

  class Impl;

 private:
  TeacherServer() = default;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace rwr::teacher
