// SHA-256 against the published FIPS 180-2 / NIST test vectors.
#include "common/sha256.h"

#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace rwr {
namespace {

TEST(Sha256Test, MatchesKnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalEqualsOneShotAndHasherResets) {
  Sha256 hasher;
  hasher.Update("abcdbcdecdefdefgefghfghi");
  hasher.Update("ghijhijkijkljklmklmnlmnomnopnopq");
  EXPECT_EQ(ToHex(hasher.Finish()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  hasher.Update("abc");
  EXPECT_EQ(ToHex(hasher.Finish()), Sha256Hex("abc"));
}

// A file is hashed in 1 MiB pieces: a file over two of them hashes as its bytes do.
TEST(Sha256Test, FileDigestEqualsTheDigestOfItsBytes) {
  const std::string path = ::testing::TempDir() + "/sha256_file_test.bin";
  std::string bytes(2'500'000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 31 + i / 7);
  std::ofstream(path, std::ios::binary) << bytes;
  auto digest = Sha256HexOfFile(path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Hex(bytes));
  EXPECT_EQ(Sha256HexOfFile(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace rwr
