// The tail every trainer test's hand-made dataset shares: its one shard finished, listed in the
// manifest and the manifest saved, so that `dir` reads as `rwr data build` output.
#pragma once

#include <gtest/gtest.h>

#include <string>

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

}  // namespace rwr::testing
