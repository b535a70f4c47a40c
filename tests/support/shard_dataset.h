// The tail every trainer test's hand-made dataset shares: its one shard finished, listed in the
// manifest and the manifest saved, so that `dir` reads as `rwr data build` output.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "storage/shard.h"

namespace rwr::testing {

inline void FinishOneShardDataset(storage::ShardWriter& writer, storage::ShardManifest& manifest,
                                  const std::string& dir, const std::string& shard_name) {
  EXPECT_TRUE(writer.Finish().ok());
  manifest.shards.push_back({shard_name, writer.num_rows(), writer.num_documents(),
                             writer.num_tokens(), writer.num_loss_tokens(),
                             writer.payload_sha256_hex()});
  EXPECT_TRUE(manifest.Save(dir).ok());
}

// `rows` rows of one 65-token document each, in the tiny model's vocabulary (8192) at seq_len 64:
// token i of row r is token(r, i), and positions from `loss_from` on carry loss.
inline std::string MakeTinyDataset(const std::string& dir, int rows,
                                   const std::function<uint32_t(int r, int i)>& token,
                                   int loss_from) {
  storage::ShardManifest manifest;
  manifest.vocab_size = 8192;
  manifest.seq_len = 64;
  storage::ShardWriter writer(dir + "/shard_0.rws", {.vocab_size = 8192, .seq_len = 64});
  for (int r = 0; r < rows; ++r) {
    writer.BeginRow();
    std::vector<uint32_t> tokens;
    std::vector<uint8_t> mask;
    for (int i = 0; i < 65; ++i) {
      tokens.push_back(token(r, i) % 8192);
      mask.push_back(i >= loss_from);
    }
    EXPECT_TRUE(writer.AddDocument(tokens, mask).ok());
  }
  FinishOneShardDataset(writer, manifest, dir, "shard_0.rws");
  return dir;
}

}  // namespace rwr::testing
