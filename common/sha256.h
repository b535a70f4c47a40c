// SHA-256 (through OpenSSL's EVP interface): cache keys and shard/checkpoint checksums.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rwr {

using Sha256Digest = std::array<uint8_t, 32>;

// Incremental hasher for data that arrives in pieces (files, canonical encodings).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view bytes);
  void Update(const void* data, size_t size);
  Sha256Digest Finish();  // the hasher is reset afterwards

 private:
  void* context_;  // EVP_MD_CTX*, kept opaque so OpenSSL headers stay out of includers
};

Sha256Digest Sha256Of(std::string_view bytes);
std::string ToHex(const Sha256Digest& digest);
std::string Sha256Hex(std::string_view bytes);
// Hex digest of a file's bytes, read in pieces; NotFound naming the file if it cannot be read.
absl::StatusOr<std::string> Sha256HexOfFile(const std::string& path);

}  // namespace rwr
