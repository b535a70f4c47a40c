#include "common/sha256.h"

#include <openssl/evp.h>

#include <cstdlib>
#include <fstream>
#include <vector>

#include "common/openssl.h"
#include "fmt/format.h"

namespace rwr {
namespace {
EVP_MD_CTX* Ctx(void* p) { return static_cast<EVP_MD_CTX*>(p); }

// OpenSSL failures here mean a broken library or out of memory: nothing a caller can handle.
void Check(int ok) {
  if (ok != 1) std::abort();
}
}  // namespace

Sha256::Sha256() : context_((InitOpenSsl(), EVP_MD_CTX_new())) {
  if (context_ == nullptr) std::abort();
  Check(EVP_DigestInit_ex(Ctx(context_), EVP_sha256(), nullptr));
}

Sha256::~Sha256() { EVP_MD_CTX_free(Ctx(context_)); }

void Sha256::Update(std::string_view bytes) { Update(bytes.data(), bytes.size()); }

void Sha256::Update(const void* data, size_t size) {
  Check(EVP_DigestUpdate(Ctx(context_), data, size));
}

Sha256Digest Sha256::Finish() {
  Sha256Digest digest{};
  unsigned int length = 0;
  Check(EVP_DigestFinal_ex(Ctx(context_), digest.data(), &length));
  Check(EVP_DigestInit_ex(Ctx(context_), EVP_sha256(), nullptr));
  return digest;
}

Sha256Digest Sha256Of(std::string_view bytes) {
  Sha256 hasher;
  hasher.Update(bytes);
  return hasher.Finish();
}

std::string ToHex(const Sha256Digest& digest) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(digest.size() * 2, '0');
  for (size_t i = 0; i < digest.size(); ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  return out;
}

std::string Sha256Hex(std::string_view bytes) { return ToHex(Sha256Of(bytes)); }

absl::StatusOr<std::string> Sha256HexOfFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(fmt::format("{}: cannot read", path));
  Sha256 hasher;
  std::vector<char> buffer(1 << 20);
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0) {
    hasher.Update(buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return absl::UnavailableError(fmt::format("{}: read failed", path));
  return ToHex(hasher.Finish());
}

}  // namespace rwr
