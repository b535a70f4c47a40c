// InitOpenSsl; see openssl.h.
#include "common/openssl.h"

#include <openssl/crypto.h>

namespace rwr {

void InitOpenSsl() {
  [[maybe_unused]] static const bool initialised =
      OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, nullptr) == 1;
}

}  // namespace rwr
