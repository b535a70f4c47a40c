// OpenSSL's one initialisation for the process, made without its exit-time cleanup.
//
// gRPC's threads may still be connecting when the process exits: a TLS handshake in flight, or a
// reconnect after one failed. OpenSSL's atexit cleanup would free its locks and tables under them
// (a segfault at exit, after the work and its message were done: 1 run in ~100 of a test whose
// handshake fails). Without that cleanup the process ends with them, as it should. OpenSSL's first
// initialisation decides whether the cleanup is registered, so every use of OpenSSL in rwr (the
// SHA-256 hasher, the teacher channels) calls this before its first OpenSSL call.
#pragma once

namespace rwr {

// Idempotent and thread-safe; the first call initialises OpenSSL with OPENSSL_INIT_NO_ATEXIT.
void InitOpenSsl();

}  // namespace rwr
