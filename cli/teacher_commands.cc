// `rwr teacher serve|info`: run the rwr TeacherService (extractive backend) and ask a running
// teacher who it is. See docs/teacher.md.
#include <chrono>
#include <iostream>
#include <memory>
#include <thread>

#include "cli/command.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"
#include "teacher_client/call_scheduler.h"
#include "teacher_client/channel.h"
#include "teacher_client/client.h"
#include "teacher_client/extractive_teacher.h"
#include "teacher_client/rwr_client.h"
#include "teacher_client/teacher_server.h"

namespace rwr::cli {
namespace {

struct ServeFlags {
  CommonOptions common;
  std::string listen = "127.0.0.1:7700";
  std::string backend = "extractive";
  std::string tls_cert;
  std::string tls_key;
  std::string auth_token_file;
  int workers = 2;
  int queue_capacity = 1024;
  uint64_t max_request_bytes = 8ull << 20;
  int max_batch = 256;
  double stats_interval_s = 10;
};

absl::Status Serve(const ServeFlags& flags) {
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(flags.common, Config(), "teacher serve"));
  if (flags.backend != "extractive") {
    return absl::InvalidArgumentError(
        fmt::format("--backend {}: unknown backend; available: extractive", flags.backend));
  }
  RWR_ASSIGN_OR_RETURN(teacher::ExtractiveOptions extractive,
                       teacher::ExtractiveOptionsFromConfig(config));
  teacher::TeacherServerOptions options{.listen = flags.listen,
                                        .backend_name = flags.backend,
                                        .workers = flags.workers,
                                        .queue_capacity = flags.queue_capacity,
                                        .max_request_bytes = flags.max_request_bytes,
                                        .max_batch = flags.max_batch,
                                        .tls_cert_file = flags.tls_cert,
                                        .tls_key_file = flags.tls_key,
                                        .auth_token = ""};
  if (!flags.auth_token_file.empty()) {
    RWR_ASSIGN_OR_RETURN(options.auth_token, teacher::ReadBearerTokenFile(flags.auth_token_file));
  }
  auto backend = std::make_shared<teacher::ExtractiveTeacher>(extractive);
  RWR_ASSIGN_OR_RETURN(std::unique_ptr<teacher::TeacherServer> server,
                       teacher::TeacherServer::Start(options, backend));
  const teacher::TeacherInfo info = backend->Info();
  std::string host = flags.listen.substr(0, flags.listen.rfind(':'));
  spdlog::info(
      "teacher serve: listening on {}:{} ({}, {}), backend {} ({} rev {}), {} workers, queue {}, "
      "max request {} bytes{}",
      host, server->port(), options.tls_cert_file.empty() ? "plaintext" : "TLS",
      options.auth_token.empty() ? "no token" : "bearer token required", flags.backend,
      info.teacher_id, info.revision, options.workers, options.queue_capacity,
      options.max_request_bytes, "; SIGTERM or Ctrl-C stops it");
  // Machine-readable line for scripts and tests that started us on port 0.
  std::cout << "rwr teacher serve: port " << server->port() << std::endl;

  auto last_log = std::chrono::steady_clock::now();
  teacher::TeacherServerStats last{};
  while (!ShutdownRequested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_log).count() >= flags.stats_interval_s) {
      teacher::TeacherServerStats s = server->stats();
      if (s.served != last.served || s.failed != last.failed || s.rejected != last.rejected) {
        double rate = static_cast<double>(s.served - last.served) /
                      std::chrono::duration<double>(now - last_log).count();
        spdlog::info(
            "teacher serve: calls served {} ({:.1f}/s), failed {}, rejected {}, outstanding {}",
            s.served, rate, s.failed, s.rejected, s.outstanding);
      }
      last = s;
      last_log = now;
    }
  }
  spdlog::info("teacher serve: signal {} received; finishing outstanding calls (up to 5s)",
               ShutdownSignal());
  server->Shutdown(5);
  teacher::TeacherServerStats s = server->stats();
  spdlog::info("teacher serve: stopped; calls served {}, failed {}, rejected {}", s.served,
               s.failed, s.rejected);
  return absl::OkStatus();
}

struct InfoFlags {
  CommonOptions common;
  std::string teacher = "rwr://127.0.0.1:7700";
  std::string tls_root_cert;
  std::string tls_server_name;
  std::string auth_token_file;
  double timeout_s = 5;
  bool json = false;
};

absl::Status Info(const InfoFlags& flags) {
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(flags.common, Config(), "teacher info"));
  (void)config;
  std::string target = flags.teacher;
  bool tls = target.rfind("rwrs://", 0) == 0;
  if (target.rfind("rwr://", 0) != 0 && !tls) {
    return absl::InvalidArgumentError(
        fmt::format("--teacher {}: expected rwr://HOST:PORT or rwrs://HOST:PORT", target));
  }
  teacher::TeacherClientOptions options;
  options.connect_timeout_s = flags.timeout_s;
  options.tls_root_cert_file = flags.tls_root_cert;
  options.tls_server_name = flags.tls_server_name;
  if (!flags.auth_token_file.empty()) {
    RWR_ASSIGN_OR_RETURN(options.bearer_token, teacher::ReadBearerTokenFile(flags.auth_token_file));
  }
  RWR_ASSIGN_OR_RETURN(auto client, teacher::RwrTeacherClient::Connect(
                                        target.substr(target.find("://") + 3), tls, options));
  RWR_ASSIGN_OR_RETURN(rwr::v1::ServerInfo info, client->FetchServerInfo(flags.timeout_s));
  nlohmann::json j = {{"teacher_id", info.teacher_id()},
                      {"revision", info.revision()},
                      {"prompt_template_version", info.prompt_template_version()},
                      {"backend", info.backend()},
                      {"server_version", info.server_version()},
                      {"calls_served", info.calls_served()},
                      {"calls_failed", info.calls_failed()},
                      {"calls_rejected", info.calls_rejected()},
                      {"queue_capacity", info.queue_capacity()},
                      {"workers", info.workers()},
                      {"max_request_bytes", info.max_request_bytes()},
                      {"max_batch", info.max_batch()}};
  if (flags.json) {
    std::cout << j.dump(2) << "\n";
  } else {
    for (auto& [key, value] : j.items()) std::cout << fmt::format("{:<24} {}\n", key, value.dump());
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterTeacherCommands(CLI::App& app) {
  CLI::App* group =
      app.add_subcommand("teacher", "Run or query a teacher (the model that writes notes)");
  group->require_subcommand(1);

  auto* serve_flags = NewFlags<ServeFlags>();
  CLI::App* serve = group->add_subcommand(
      "serve",
      "Serve rwr.v1.TeacherService over gRPC (ExtractNote, VerifyNote, RemoveEvidence, RunBatch, "
      "GetServerInfo, grpc.health.v1). Stops cleanly on SIGTERM/SIGINT.");
  AddCommonOptions(serve, &serve_flags->common);
  serve
      ->add_option("--listen", serve_flags->listen,
                   "HOST:PORT to listen on (port 0 picks a free one)")
      ->capture_default_str();
  serve
      ->add_option("--backend", serve_flags->backend,
                   "Teacher backend: extractive (BM25 sentence extraction)")
      ->capture_default_str();
  serve
      ->add_option("--tls-cert", serve_flags->tls_cert,
                   "PEM certificate chain; with --tls-key turns TLS on")
      ->check(CLI::ExistingFile);
  serve->add_option("--tls-key", serve_flags->tls_key, "PEM private key for --tls-cert")
      ->check(CLI::ExistingFile);
  serve
      ->add_option(
          "--auth-token-file", serve_flags->auth_token_file,
          "File holding a bearer token that every call must send (authorization: Bearer <token>)")
      ->check(CLI::ExistingFile);
  serve->add_option("--workers", serve_flags->workers, "Worker threads running the backend")
      ->capture_default_str()
      ->check(CLI::Range(1, teacher::kMaxServerWorkers));
  serve
      ->add_option("--queue-capacity", serve_flags->queue_capacity,
                   "Tasks queued or running before new calls get RESOURCE_EXHAUSTED")
      ->capture_default_str()
      ->check(Positive());
  serve
      ->add_option("--max-request-bytes", serve_flags->max_request_bytes,
                   "Largest request accepted (INVALID_ARGUMENT above); at most 1 GiB")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, teacher::kMaxServerRequestBytes));
  serve->add_option("--max-batch", serve_flags->max_batch, "Most tasks in one RunBatch call")
      ->capture_default_str()
      ->check(Positive());
  serve
      ->add_option("--stats-interval", serve_flags->stats_interval_s,
                   "Seconds between calls-served log lines")
      ->capture_default_str()
      ->check(Positive());
  serve->footer(
      "Extractive backend options come from config keys teacher.extractive.{note_budget_bytes, "
      "max_sentences, "
      "min_coverage, keep_fraction, verify_threshold}, e.g. --set "
      "teacher.extractive.min_coverage=0.4.\n"
      "Example: rwr teacher serve --listen 0.0.0.0:7700 --auth-token-file token.txt");
  SetAction(serve, [serve_flags] { return Serve(*serve_flags); });

  auto* info_flags = NewFlags<InfoFlags>();
  CLI::App* info = group->add_subcommand(
      "info", "Ask a running rwr teacher for its id, revision and call counters");
  AddCommonOptions(info, &info_flags->common);
  info_flags->common.log_level = "warn";
  info->add_option("--teacher", info_flags->teacher, "rwr://HOST:PORT or rwrs://HOST:PORT")
      ->capture_default_str();
  info->add_option("--tls-root-cert", info_flags->tls_root_cert,
                   "PEM root certificate to trust (rwrs://)")
      ->check(CLI::ExistingFile);
  info->add_option("--tls-server-name", info_flags->tls_server_name,
                   "Name to check in the server certificate");
  info->add_option("--auth-token-file", info_flags->auth_token_file,
                   "File holding the bearer token")
      ->check(CLI::ExistingFile);
  info->add_option("--timeout", info_flags->timeout_s, "Seconds to wait for the server")
      ->check(Positive())
      ->capture_default_str();
  info->add_flag("--json", info_flags->json, "Print JSON");
  SetAction(info, [info_flags] { return Info(*info_flags); });
}

}  // namespace rwr::cli
