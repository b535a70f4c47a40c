// Writing a large file through storage::AtomicFile (what checkpoints and shards use): seconds to
// write it in 64 MiB pieces and seconds for Commit's fsync, which is what a stop's checkpoint
// waits for at the end and what a given-up write cannot cut short.
//
//   file_write_bench --path /scratch/x.bin --gib 6 --runs 3
#include <chrono>
#include <cstdio>
#include <vector>

#include "CLI/CLI.hpp"
#include "fmt/format.h"
#include "storage/atomic_file.h"

int main(int argc, char** argv) {
  CLI::App app("Write a large file through AtomicFile; time the writes and the final fsync");
  std::string path = "file_write_bench.bin";
  double gib = 6;
  int runs = 3;
  app.add_option("--path", path, "File to write (removed afterwards); put it on the disk to test");
  app.add_option("--gib", gib, "GiB to write")->check(CLI::PositiveNumber);
  app.add_option("--runs", runs, "Times to write it")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  // Appended in the pieces AtomicFile starts the write-back of.
  constexpr size_t kPiece = rwr::storage::AtomicFile::kPieceBytes;
  std::vector<char> piece(kPiece, 7);
  const size_t total = static_cast<size_t>(gib * (1 << 30));
  for (int run = 0; run < runs; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    rwr::storage::AtomicFile file(path);
    absl::Status status = file.Open();
    for (size_t at = 0; status.ok() && at < total; at += kPiece) {
      status = file.Write(piece.data(), std::min(kPiece, total - at));
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (status.ok()) status = file.Commit();
    const auto t2 = std::chrono::steady_clock::now();
    std::remove(path.c_str());
    if (!status.ok()) {
      fmt::print(stderr, "{}\n", std::string(status.message()));
      return 1;
    }
    const double write_s = std::chrono::duration<double>(t1 - t0).count();
    const double sync_s = std::chrono::duration<double>(t2 - t1).count();
    fmt::print("{:.1f} GiB: writes {:.2f} s, commit (fsync) {:.2f} s, {:.0f} MB/s in all\n", gib,
               write_s, sync_s, total / (write_s + sync_s) / 1e6);
  }
  return 0;
}
