// Reading a token shard's rows as the training loader does (ShardReader::ReadRow: copy, id and
// loss-mask checks, the rows' mapped pages released from the resident set): microseconds per row.
//
//   shard_read_bench --shard runs/quickstart/data/shard_00000.rws --reps 200
#include <chrono>
#include <vector>

#include "CLI/CLI.hpp"
#include "fmt/format.h"
#include "storage/shard.h"

int main(int argc, char** argv) {
  CLI::App app("Time ShardReader::ReadRow over every row of a shard");
  std::string shard;
  int reps = 200, passes = 3;
  app.add_option("--shard", shard, "A .rws shard (rwr data build)")->required();
  app.add_option("--reps", reps, "Times every row is read in a pass");
  app.add_option("--passes", passes, "Passes, each timed");
  CLI11_PARSE(app, argc, argv);
  auto reader = rwr::storage::ShardReader::Open(shard);
  if (!reader.ok()) {
    fmt::print(stderr, "{}\n", std::string(reader.status().message()));
    return 1;
  }
  const uint64_t rows = (*reader)->num_rows();
  uint64_t longest = 0;
  for (uint64_t i = 0; i < rows; ++i) longest = std::max(longest, (*reader)->RowLength(i));
  std::vector<int32_t> tokens(longest);
  std::vector<uint8_t> mask(longest);
  for (int pass = 0; pass < passes; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < reps; ++k) {
      for (uint64_t i = 0; i < rows; ++i) {
        if (auto s = (*reader)->ReadRow(i, tokens, mask); !s.ok()) {
          fmt::print(stderr, "{}\n", std::string(s.message()));
          return 1;
        }
      }
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print("{} rows (at most {} tokens) x {}: {:.2f} us a row\n", rows, longest, reps,
               s / (static_cast<double>(rows) * reps) * 1e6);
  }
  return 0;
}
