// Channel construction shared by RwrTeacherClient and KServeTeacherClient.
#include "teacher_client/channel.h"

#include <grpc/grpc.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/synchronization/mutex.h"
#include "common/openssl.h"
#include "common/status.h"
#include "fmt/format.h"
#include "kserve/grpc_service.grpc.pb.h"

namespace rwr::teacher {
namespace {

// Before gRPC's first TLS use (common/openssl.h): a static initialiser in the file every client
// and server links.
[[maybe_unused]] const bool kOpenSslInitialised = (InitOpenSsl(), true);

}  // namespace

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        fmt::format("{}: cannot read {}: {}", what, path, std::strerror(errno)));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

namespace {

// gRPC 1.51 runs callback-API completions on a shared "alternative" completion queue with its own
// threads, reference-counted by every channel and server that used it. When the count falls to
// zero (the last client and server of a test gone) the queue shuts down, and a new one made while
// the old one's threads wind down can trip `ref_counted.h: prior > 0` and abort the process (seen
// in this suite under load). A channel that made one callback call and lives for the process
// keeps the count above zero: the call goes nowhere (port 9 on loopback, deadline now) and fails.
void HoldCallbackCompletionQueue() {
  struct Holder {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<inference::GRPCInferenceService::Stub> stub;
    grpc::ClientContext context;
    inference::ServerLiveRequest request;
    inference::ServerLiveResponse response;
  };
  auto* holder = new Holder();  // never freed: lives as long as the process
  holder->channel = grpc::CreateChannel("127.0.0.1:9", grpc::InsecureChannelCredentials());
  holder->stub = inference::GRPCInferenceService::NewStub(holder->channel);
  holder->context.set_deadline(std::chrono::system_clock::now());
  holder->stub->async()->ServerLive(&holder->context, &holder->request, &holder->response,
                                    [](grpc::Status) {});
}

}  // namespace

void KeepGrpcInitialized() {
  static const bool initialized = [] {
    // Debian's abseil runs absl::Mutex deadlock detection (a lock-order graph on every lock); gRPC
    // locks absl::Mutex many times per call, and the graph cost ~8% of a loopback call's CPU.
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    grpc_init();
    HoldCallbackCompletionQueue();
    return true;
  }();
  (void)initialized;
}

absl::Status CheckHostPort(std::string_view address, bool allow_port_zero, std::string_view what) {
  const size_t colon = address.rfind(':');
  const std::string_view host = colon == std::string_view::npos ? "" : address.substr(0, colon);
  const std::string_view port = colon == std::string_view::npos ? "" : address.substr(colon + 1);
  const bool digits =
      !port.empty() && port.size() <= 5 &&
      std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
  const int number = digits ? std::stoi(std::string(port)) : -1;
  if (host.empty() || !digits || number > 65535 || (number == 0 && !allow_port_zero)) {
    return absl::InvalidArgumentError(
        fmt::format("{} '{}': expected HOST:PORT with a port in {}..65535", what, address,
                    allow_port_zero ? 0 : 1));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeTeacherChannel(
    const std::string& host_port, bool tls, const TeacherClientOptions& options) {
  RWR_RETURN_IF_ERROR(CheckHostPort(host_port, /*allow_port_zero=*/false, "teacher address"));
  KeepGrpcInitialized();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // gRPC's own retries would hide attempts from our scheduler's count and backoff.
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (tls || !options.tls_root_cert_file.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_root_cert_file.empty()) {
      auto pem = ReadWholeFile(options.tls_root_cert_file, "TLS root certificate");
      if (!pem.ok()) return pem.status();
      ssl.pem_root_certs = *pem;
    }
    if (!options.tls_server_name.empty()) args.SetSslTargetNameOverride(options.tls_server_name);
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(host_port, credentials, args);
}

}  // namespace rwr::teacher
