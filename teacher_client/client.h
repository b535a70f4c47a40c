// Remote teachers: RwrTeacherClient (gRPC rwr.v1.TeacherService, `rwr teacher serve`) and
// KServeTeacherClient (inference.GRPCInferenceService, a served LLM), sharing one call scheduler:
// an in-flight window, a deadline per call, bounded retries with exponential backoff and jitter on
// UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED, an optional requests/s limit, TLS and a
// bearer token. The channel reconnects by itself when a server restarts; calls failing meanwhile
// are retried. See docs/teacher.md.
//
//   TeacherClientOptions options{.concurrency = 64};
//   RWR_ASSIGN_OR_RETURN(std::unique_ptr<Teacher> teacher, MakeTeacher("rwr://127.0.0.1:7000",
//   options));
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "teacher_client/teacher.h"

namespace rwr::teacher {

// Tensor names and prompt templates for a KServe v2 / Triton model. Triton + TensorRT-LLM
// ensembles name tensors differently from vLLM or MLServer runtimes, hence all configurable; an
// empty sampling tensor name means "do not send it".
struct KServeOptions {
  std::string input_tensor = "text_input";         // BYTES [1]: the rendered prompt
  std::string output_tensor = "text_output";       // BYTES [1]: the generated text
  std::string max_tokens_tensor = "max_tokens";    // INT32 [1]
  std::string temperature_tensor = "temperature";  // FP32 [1]
  std::string seed_tensor = "seed";                // UINT64 [1]
  SamplingParams sampling{.max_tokens = 256, .temperature = 0, .seed = 0};
  std::string model_version;  // empty = the server's choice
  // Prompt template set (prompt_templates.h); its version goes into every cache key.
  std::string prompt_template_version = "rwr-prompts-v1";
  // Model revision for the cache key; empty = the first version ModelMetadata lists, else
  // model_version, else "unversioned" (with a warning).
  std::string revision;
};

struct TeacherClientOptions {
  int concurrency = 64;             // calls in flight (the window W)
  double deadline_s = 60;           // per attempt
  int max_attempts = 5;             // first try included
  double initial_backoff_s = 0.05;  // doubled each retry, ±50% jitter, capped at max_backoff_s
  double max_backoff_s = 5;
  double requests_per_second = 0;  // 0 = unlimited
  double connect_timeout_s = 10;   // MakeTeacher waits this long for the server (info / ready)
  std::string tls_root_cert_file;  // PEM; non-empty turns TLS on (rwrs:// also turns it on)
  std::string tls_server_name;     // override the name checked against the certificate
  std::string bearer_token;        // sent as `authorization: Bearer <token>`
  uint64_t max_message_bytes = 64ull << 20;
  // rwr:// only: calls ready at the same moment share one RunBatch RPC of at most this many tasks
  // (and at most the server's max_batch, queue_capacity and max_request_bytes); a lone ready call
  // is sent at once as before. 1 = every call its own unary RPC. KServe calls are always unary.
  int max_batch = 64;
  KServeOptions kserve;  // kserve:// targets only
};

// Connects to `target_url` and checks the server (GetServerInfo for rwr; ServerReady, ModelReady
// and ModelMetadata for KServe) before returning:
//   rwr://HOST:PORT            rwr teacher serve (rwrs:// = with TLS)
//   kserve://HOST:PORT/MODEL   a KServe v2 gRPC endpoint (kserves:// = with TLS)
//   builtin | extractive       the in-process ExtractiveTeacher (options ignored)
absl::StatusOr<std::unique_ptr<Teacher>> MakeTeacher(const std::string& target_url,
                                                     const TeacherClientOptions& options);

// The checks MakeTeacher makes of `target_url` before it connects (a known scheme, HOST:PORT with a
// port in 1..65535, a KServe model name), for a target passed on to be used elsewhere.
absl::Status CheckTeacherTarget(const std::string& target_url);

// Counters a client keeps (for summaries and tests).
struct TeacherClientStats {
  uint64_t calls = 0;     // tasks finished (ok or not)
  uint64_t attempts = 0;  // task attempts sent, retries included
  uint64_t rpcs = 0;      // RPCs sent (fewer than attempts when tasks share a RunBatch)
  uint64_t retries = 0;
  uint64_t failures = 0;  // tasks finished with an error
};

// Remote teachers also expose their counters; `dynamic_cast<RemoteTeacher*>` to read them.
class RemoteTeacher : public Teacher {
 public:
  virtual TeacherClientStats Stats() const = 0;
};

}  // namespace rwr::teacher
