// `rwr data synth|build|inspect` end to end through the binary, with the shipped tokenizer:
// same seed → same bytes; shards built from `rwr distill run --teacher builtin:extractive` carry
// loss on exactly the note and answer tokens (decoded and compared with the cached notes); a
// damaged shard is a one-line error naming the file.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "distill/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/run_rwr.h"
#include "tests/support/temp_dir.h"
#include "nlohmann/json.hpp"
#include "storage/shard.h"
#if RWR_DATA_TEST_HAVE_CACHE
#include "storage/rocksdb_store.h"
#include "teacher_client/note_cache.h"
#endif

namespace rwr {
namespace {

using ::testing::HasSubstr;

const std::string kTokenizer = std::string(RWR_SOURCE_DIR) + "/configs/tokenizer/tokenizer.json";

using Result = ::rwr::testing::CommandResult;
using ::rwr::testing::RunRwr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string TempDir(const std::string& name) {
  return rwr::testing::FreshTempDir("data_cli_test", name);
}

struct Item {
  std::string id, context, question, answer;
};

std::vector<Item> ReadJsonl(const std::string& path) {
  std::vector<Item> items;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    items.push_back({j["id"], j["context"], j["question"], j["answer"]});
  }
  return items;
}

// Every document of every shard as (prompt text, loss text), after checking that the loss mask is
// one contiguous run at the end of the document (the default template).
std::vector<std::pair<std::string, std::string>> DecodeDocuments(const std::string& dir,
                                                                 distill::Tokenizer& tokenizer) {
  std::vector<std::pair<std::string, std::string>> docs;
  auto manifest = storage::ShardManifest::Load(dir);
  EXPECT_TRUE(manifest.ok()) << manifest.status();
  if (!manifest.ok()) return docs;
  for (const auto& entry : manifest->shards) {
    auto reader = storage::ShardReader::Open(dir + "/" + entry.file);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return docs;
    for (uint64_t r = 0; r < (*reader)->num_rows(); ++r) {
      const uint64_t n = (*reader)->RowLength(r);
      std::vector<int32_t> ids(n);
      std::vector<uint8_t> mask(n);
      std::vector<uint64_t> starts;
      EXPECT_TRUE((*reader)->ReadRow(r, ids, mask, &starts).ok());
      starts.push_back(n);
      for (size_t d = 0; d + 1 < starts.size(); ++d) {
        size_t first_loss = starts[d];
        while (first_loss < starts[d + 1] && mask[first_loss] == 0) ++first_loss;
        for (size_t i = first_loss; i < starts[d + 1]; ++i) EXPECT_EQ(mask[i], 1) << "row " << r;
        std::vector<int32_t> prompt(ids.begin() + starts[d], ids.begin() + first_loss);
        std::vector<int32_t> loss(ids.begin() + first_loss, ids.begin() + starts[d + 1]);
        docs.emplace_back(tokenizer.Decode(prompt), tokenizer.Decode(loss));
      }
    }
  }
  return docs;
}

TEST(DataCli, SynthIsDeterministicAndBuildIsReproducible) {
  const std::string dir = TempDir("determinism");
  const std::string args = "data synth --count 12 --context-tokens 800 --seed 9 --log-level warn --out ";
  ASSERT_EQ(RunRwr(args + dir + "/a.jsonl").exit_code, 0);
  ASSERT_EQ(RunRwr(args + dir + "/b.jsonl").exit_code, 0);
  EXPECT_EQ(ReadFile(dir + "/a.jsonl"), ReadFile(dir + "/b.jsonl"));
  EXPECT_EQ(ReadJsonl(dir + "/a.jsonl").size(), 12u);
  ASSERT_EQ(RunRwr("data synth --count 12 --context-tokens 800 --seed 10 --log-level warn --out " + dir +
                "/c.jsonl")
                .exit_code,
            0);
  EXPECT_NE(ReadFile(dir + "/a.jsonl"), ReadFile(dir + "/c.jsonl"));

  const std::string build = "data build --log-level warn --seq-len 512 --tokenizer " + kTokenizer +
                            " --input " + dir + "/a.jsonl --out ";
  ASSERT_EQ(RunRwr(build + dir + "/s1").exit_code, 0);
  ASSERT_EQ(RunRwr(build + dir + "/s2").exit_code, 0);
  EXPECT_EQ(ReadFile(dir + "/s1/shard_00000.rws"), ReadFile(dir + "/s2/shard_00000.rws"));
  // Ratios: defaults give way to what the input has (no cache: plain only); explicit ones do not.
  {
    std::ofstream config(dir + "/build.yaml");
    config << "data:\n  count: 12\nbuild:\n  seq_len: 512\n";
  }
  Result with_config = RunRwr("data build --log-level warn --config " + dir + "/build.yaml --tokenizer " +
                              kTokenizer + " --input " + dir + "/a.jsonl --out " + dir + "/s3");
  EXPECT_EQ(with_config.exit_code, 0) << with_config.output;
  EXPECT_EQ(ReadFile(dir + "/s1/shard_00000.rws"), ReadFile(dir + "/s3/shard_00000.rws"));
  Result explicit_ratio = RunRwr(build + dir + "/s4 --set recipe.ratio.note=0.5");
  EXPECT_EQ(explicit_ratio.exit_code, 1);
  EXPECT_THAT(explicit_ratio.output, HasSubstr("recipe.ratio.note"));

  // A second build into the same directory is refused without --overwrite.
  Result again = RunRwr(build + dir + "/s1");
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.output, HasSubstr("--overwrite"));
}

TEST(DataCli, PlainBuildMasksExactlyTheAnswerAndInspectReportsIt) {
  const std::string dir = TempDir("plain");
  ASSERT_EQ(RunRwr("data synth --count 20 --context-tokens 700 --seed 2 "
                "--log-level warn --out " + dir + "/d.jsonl").exit_code, 0);
  Result built = RunRwr("data build --log-level warn --seq-len 1024 --tokenizer " + kTokenizer +
                     " --input " + dir + "/d.jsonl --out " + dir + "/shards");
  ASSERT_EQ(built.exit_code, 0) << built.output;
  auto tokenizer = distill::Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tokenizer.ok());
  std::map<std::string, std::string> expected;  // prompt → loss text
  for (const Item& item : ReadJsonl(dir + "/d.jsonl")) {
    expected[item.context + "\n\nQuestion: " + item.question + "\nAnswer:"] =
        " " + item.answer + "<|endoftext|>";
  }
  const auto docs = DecodeDocuments(dir + "/shards", *tokenizer);
  EXPECT_EQ(docs.size(), 20u);
  for (const auto& [prompt, loss] : docs) {
    auto it = expected.find(prompt);
    ASSERT_NE(it, expected.end()) << prompt.substr(0, 200);
    EXPECT_EQ(loss, it->second);
  }

  Result inspect = RunRwr("data inspect --json " + dir + "/shards");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  auto j = nlohmann::json::parse(inspect.output);
  EXPECT_EQ(j["documents"], 20);
  EXPECT_EQ(j["eos_id"], tokenizer->eos_id().value());
  EXPECT_EQ(j["pad_id"], tokenizer->token_to_id("<|padding|>").value());
  EXPECT_GT(j["loss_fraction"].get<double>(), 0.0);
  EXPECT_LT(j["loss_fraction"].get<double>(), 0.2);
  EXPECT_EQ(j["build"]["recipe"]["samples"]["plain"], 20);
  EXPECT_THAT(j["sample"]["loss_text"].get<std::string>(), HasSubstr("<|endoftext|>"));
  Result text = RunRwr("data inspect " + dir + "/shards");
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_THAT(text.output, HasSubstr("loss tokens"));
  EXPECT_THAT(text.output, HasSubstr("⟦"));

  // Damage the shard: inspect fails with one line naming the file.
  const std::string shard = dir + "/shards/shard_00000.rws";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 100);
  Result damaged = RunRwr("data inspect " + dir + "/shards");
  EXPECT_EQ(damaged.exit_code, 1);
  EXPECT_THAT(damaged.output, HasSubstr("shard_00000.rws"));
  EXPECT_THAT(damaged.output, HasSubstr("truncated"));
}

TEST(DataCli, LongSamplesKeptWholeInOnePerRowLayout) {
  const std::string dir = TempDir("long");
  ASSERT_EQ(RunRwr("data synth --count 6 --context-tokens 2000 --seed 3 --log-level warn --out " +
                   dir + "/d.jsonl").exit_code, 0);
  Result built = RunRwr("data build --log-level warn --seq-len 256 --layout one_per_row "
                        "--long-samples keep --tokenizer " + kTokenizer + " --input " + dir +
                        "/d.jsonl --out " + dir + "/shards");
  ASSERT_EQ(built.exit_code, 0) << built.output;
  Result inspect = RunRwr("data inspect --json " + dir + "/shards");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  auto j = nlohmann::json::parse(inspect.output);
  EXPECT_EQ(j["row_layout"], "one_per_row");
  EXPECT_EQ(j["rows"], 6);
  EXPECT_GT(j["longest_row"].get<int>(), 1500);  // ~2000 tokens: kept whole
  EXPECT_EQ(j["build"]["samples_truncated"], 0);
  // Truncation instead: every row fits seq_len + 1 and the answers stay whole.
  built = RunRwr("data build --log-level warn --seq-len 256 --tokenizer " + kTokenizer +
                 " --input " + dir + "/d.jsonl --out " + dir + "/cut");
  ASSERT_EQ(built.exit_code, 0) << built.output;
  j = nlohmann::json::parse(RunRwr("data inspect --json " + dir + "/cut").output);
  EXPECT_EQ(j["build"]["samples_truncated"], 6);
  EXPECT_LE(j["longest_row"].get<int>(), 257);
  EXPECT_THAT(j["sample"]["text"].get<std::string>(), HasSubstr("\nQuestion: "));
}

TEST(DataCli, BadFlagsAreOneLineErrors) {
  const std::string dir = TempDir("bad");
  Result r = RunRwr("data synth --out " + dir + "/x.jsonl --context-tokens 5");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--context-tokens"));
  r = RunRwr("data build --tokenizer " + kTokenizer + " --out " + dir + "/o --input " + dir + "/none.jsonl");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("none.jsonl"));
  r = RunRwr("data build --tokenizer " + kTokenizer + " --out " + dir +
          "/o --input x --layout packed --long-samples keep");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("one_per_row"));
  {
    std::ofstream dup(dir + "/dup.jsonl");
    dup << R"({"id":"a","context":"c","question":"q","answer":"x"})" << "\n"
        << R"({"id":"a","context":"c2","question":"q2","answer":"y"})" << "\n";
  }
  r = RunRwr("data build --tokenizer " + kTokenizer + " --out " + dir + "/o --input " + dir +
             "/dup.jsonl");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("dup.jsonl:2: item id 'a' appears again (first on line 1)"));
  r = RunRwr("data inspect " + dir);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("manifest.json"));
  // seq_len + 1 overflowed and the build crashed; now a range error before anything is created.
  r = RunRwr("data build --tokenizer " + kTokenizer + " --out " + dir + "/huge --input " + dir +
             "/dup.jsonl --seq-len 9223372036854775807");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--seq-len 9223372036854775807: expected 8 to"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/huge"));
  { std::ofstream(dir + "/blank.jsonl") << "\n\n"; }
  r = RunRwr("data build --tokenizer " + kTokenizer + " --out " + dir + "/o --input " + dir +
             "/blank.jsonl");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("blank.jsonl: no items"));
  // Commands that log at warn by default say so in --help.
  // (CLI11 2.3 prints the default as "TEXT=warn", 2.4 as "TEXT [warn]".)
  EXPECT_THAT(RunRwr("data inspect --help").output,
              ::testing::ContainsRegex("--log-level TEXT(=| \\[)warn"));
}

TEST(DataCli, SynthOntoADirectoryIsRefusedAndLeavesNoTempFile) {
  const std::string dir = TempDir("synth_dir");
  std::filesystem::create_directories(dir + "/d");
  Result r = RunRwr("data synth --count 4 --context-tokens 200 --log-level warn --out " + dir + "/d");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("is a directory"));
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().filename(), "d") << "left behind: " << entry.path();  // no d.tmp.PID
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir + "/d"));
}

// The file names in `dir`, sorted.
std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// `rwr data synth` of `count` items into DIR/d.jsonl; returns the `data build` arguments over it,
// up to a trailing "--out ".
std::string SynthesizeForBuild(const std::string& dir, int count, int context_tokens, int seed) {
  const Result synth = RunRwr("data synth --count " + std::to_string(count) + " --context-tokens " +
                              std::to_string(context_tokens) + " --seed " + std::to_string(seed) +
                              " --log-level warn --out " + dir + "/d.jsonl");
  EXPECT_EQ(synth.exit_code, 0) << synth.output;
  return "data build --log-level warn --seq-len 512 --tokenizer " + kTokenizer + " --input " + dir +
         "/d.jsonl --out ";
}

TEST(DataCli, BuildNeverWritesAmongUserFilesAndClearsAnInterruptedBuildsLeftovers) {
  const std::string dir = TempDir("out_dir");
  const std::string build = SynthesizeForBuild(dir, 16, 600, 5);

  // A directory of the user's files (no manifest) is refused, with or without --overwrite.
  std::filesystem::create_directories(dir + "/mine");
  { std::ofstream(dir + "/mine/notes.txt") << "mine\n"; }
  for (const std::string extra : {"", " --overwrite"}) {
    Result r = RunRwr(build + dir + "/mine" + extra);
    EXPECT_EQ(r.exit_code, 1) << extra;
    EXPECT_THAT(r.output, HasSubstr("notes.txt"));
    EXPECT_THAT(r.output, HasSubstr("no dataset"));
    EXPECT_EQ(Listing(dir + "/mine"), std::vector<std::string>{"notes.txt"});
  }

  // What a build killed before its manifest leaves: several shards (small shards here) and the
  // .tmp of the one being written. The rerun (fewer, larger shards) keeps none of them.
  ASSERT_EQ(RunRwr(build + dir + "/out --set build.shard_tokens=1000").exit_code, 0);
  std::filesystem::remove(dir + "/out/manifest.json");
  { std::ofstream(dir + "/out/shard_00099.rws.tmp") << "partial"; }
  const size_t leftovers = Listing(dir + "/out").size();
  ASSERT_GE(leftovers, 4u);
  Result rerun = RunRwr(build + dir + "/out");
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  auto manifest = storage::ShardManifest::Load(dir + "/out");
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  std::vector<std::string> expected = {".lock", "manifest.json"};  // .lock: common/dir_lock.h
  for (const auto& entry : manifest->shards) expected.push_back(entry.file);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(Listing(dir + "/out"), expected);
  EXPECT_LT(expected.size(), leftovers);

  // --overwrite still replaces a dataset.
  Result overwritten = RunRwr(build + dir + "/out --overwrite --set build.shard_tokens=1000");
  ASSERT_EQ(overwritten.exit_code, 0) << overwritten.output;
  EXPECT_EQ(Listing(dir + "/out").size(), leftovers);
}

// A second build into a directory that a running build holds (DIR/.lock, a POSIX record lock:
// this test process plays the running build) is refused before it touches anything there; once
// the holder is gone the build runs. Unguarded, the two builds cleared and replaced each other's
// shards and both exited 0 over a manifest naming shards that were gone or another build's.
TEST(DataCli, BuildIntoADirectoryAnotherBuildHoldsIsRefused) {
  const std::string dir = TempDir("locked");
  const std::string build = SynthesizeForBuild(dir, 8, 300, 6) + dir + "/out";
  std::filesystem::create_directories(dir + "/out");
  { std::ofstream(dir + "/out/shard_00000.rws") << "the running build's shard"; }
  const int fd = ::open((dir + "/out/.lock").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  struct flock whole = {};
  whole.l_type = F_WRLCK;
  whole.l_whence = SEEK_SET;
  ASSERT_EQ(::fcntl(fd, F_SETLK, &whole), 0);
  ASSERT_EQ(::pwrite(fd, "host h, pid 1\n", 14, 0), 14);

  Result refused = RunRwr(build);
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_THAT(refused.output, HasSubstr("in use by another rwr data build (host h, pid 1)"));
  EXPECT_EQ(ReadFile(dir + "/out/shard_00000.rws"), "the running build's shard");
  EXPECT_FALSE(std::filesystem::exists(dir + "/out/manifest.json"));

  ::close(fd);  // the holder ends
  Result built = RunRwr(build);
  ASSERT_EQ(built.exit_code, 0) << built.output;
  EXPECT_EQ(RunRwr("data inspect " + dir + "/out").exit_code, 0);
}

// The manifest records the input, cache and tokenizer paths absolute: a build run with relative
// paths (a Slurm job's working directory) and inspected from elsewhere still finds its tokenizer
// and shows text, not ids.
TEST(DataCli, ManifestPathsAreAbsoluteSoInspectWorksFromAnywhere) {
  const std::string dir = TempDir("relative");
  std::filesystem::copy_file(kTokenizer, dir + "/tok.json");
  ASSERT_EQ(RunRwr("data synth --count 4 --context-tokens 300 --seed 8 --log-level warn --out " +
                   dir + "/d.jsonl")
                .exit_code,
            0);
  const Result built =
      rwr::testing::RunShell("cd '" + dir + "' && '" + std::string(RWR_BINARY) +
                             "' data build --log-level warn --seq-len 512 --tokenizer tok.json "
                             "--input d.jsonl --out out 2>&1");
  ASSERT_EQ(built.exit_code, 0) << built.output;
  const nlohmann::json build =
      nlohmann::json::parse(ReadFile(dir + "/out/manifest.json"))["build"];
  EXPECT_EQ(build["tokenizer"]["path"], dir + "/tok.json");
  EXPECT_EQ(build["input"], dir + "/d.jsonl");
  const Result inspected = RunRwr("data inspect " + dir + "/out");
  ASSERT_EQ(inspected.exit_code, 0) << inspected.output;
  EXPECT_THAT(inspected.output, HasSubstr("Question:"));
}

// Without --tokenizer, a build run from outside the checkout (a Slurm job's working directory)
// finds the shipped tokenizer from the binary's location: here a copy of rwr at
// TREE/build/release/bin/rwr, with TREE/configs/tokenizer/tokenizer.json.
TEST(DataCli, BuildFindsTheShippedTokenizerFromAnyWorkingDirectory) {
  const std::string dir = std::filesystem::canonical(TempDir("default_tokenizer"));
  const std::string tree = dir + "/tree", elsewhere = dir + "/elsewhere";
  std::filesystem::create_directories(tree + "/configs/tokenizer");
  std::filesystem::create_directories(elsewhere);
  std::filesystem::copy_file(kTokenizer, tree + "/configs/tokenizer/tokenizer.json");
  const std::string rwr = rwr::testing::CopyRwrInto(tree);
  ASSERT_EQ(RunRwr("data synth --count 4 --context-tokens 300 --seed 8 --log-level warn --out " +
                   elsewhere + "/d.jsonl")
                .exit_code,
            0);
  const Result built = rwr::testing::RunFrom(
      elsewhere, rwr, "data build --log-level warn --seq-len 512 --input d.jsonl --out out");
  ASSERT_EQ(built.exit_code, 0) << built.output;
  const nlohmann::json build =
      nlohmann::json::parse(ReadFile(elsewhere + "/out/manifest.json"))["build"];
  EXPECT_EQ(build["tokenizer"]["path"], tree + "/configs/tokenizer/tokenizer.json");
  std::filesystem::remove_all(dir);
}

// Each shard passes its own checksum, so a shard swapped with another or copied in from another
// build went unnoticed ("checksums verified"); inspect and training hold every shard to its manifest
// entry.
TEST(DataCli, InspectRefusesAShardThatIsNotTheOneItsManifestNames) {
  const std::string dir = TempDir("foreign_shard");
  const std::string build = SynthesizeForBuild(dir, 8, 300, 7);
  ASSERT_EQ(RunRwr(build + dir + "/a").exit_code, 0);
  ASSERT_EQ(RunRwr(build + dir + "/b --set recipe.seed=1").exit_code, 0);
  ASSERT_NE(ReadFile(dir + "/a/shard_00000.rws"), ReadFile(dir + "/b/shard_00000.rws"));
  std::filesystem::copy_file(dir + "/b/shard_00000.rws", dir + "/a/shard_00000.rws",
                             std::filesystem::copy_options::overwrite_existing);
  for (const std::string flags : {"", " --no-verify", " --json"}) {
    Result r = RunRwr("data inspect " + dir + "/a" + flags);
    EXPECT_EQ(r.exit_code, 1) << flags << ": " << r.output;
    EXPECT_THAT(r.output, HasSubstr("shard " + dir +
                                    "/a/shard_00000.rws: not the shard manifest.json names"));
  }
  EXPECT_EQ(RunRwr("data inspect " + dir + "/b").exit_code, 0);
  // Training opens the shards through the same check (storage::CheckShardMatchesManifest).
  Result train = RunRwr("train --config " + std::string(RWR_SOURCE_DIR) +
                        "/configs/train_tiny.yaml --set data.dir=" + dir + "/a --set train.out_dir=" +
                        dir + "/run --set train.steps=1 --log-level warn");
  EXPECT_EQ(train.exit_code, 1) << train.output;
  EXPECT_THAT(train.output, HasSubstr("/a/shard_00000.rws: not the shard manifest.json names"));
}

#if RWR_DATA_TEST_HAVE_CACHE
TEST(DataCli, BuildFromDistillRunMasksExactlyTheNoteAndAnswerTokens) {
  const std::string dir = TempDir("distill");
  ASSERT_EQ(RunRwr("data synth --count 40 --context-tokens 900 --seed 4 "
                "--log-level warn --out " + dir + "/d.jsonl").exit_code, 0);
  Result distilled = RunRwr("distill run --log-level warn --teacher builtin:extractive --input " + dir +
                         "/d.jsonl --cache " + dir + "/cache");
  ASSERT_EQ(distilled.exit_code, 0) << distilled.output;
  Result built = RunRwr("data build --log-level warn --seq-len 2048 --tokenizer " + kTokenizer +
                     " --input " + dir + "/d.jsonl --cache " + dir + "/cache --out " + dir + "/shards");
  ASSERT_EQ(built.exit_code, 0) << built.output;

  // Expected (prompt → loss text) for every kind each cached item can give.
  std::map<std::string, std::string> expected;
  int notes = 0, negatives = 0;
  {
    auto store = storage::RocksDbStore::Open(dir + "/cache", {.read_only = true});
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE(teacher::ForEachItem(**store, [&](const teacher::DistilledItem& d) {
                  const std::string q = "\n\nQuestion: " + d.question;
                  if (d.kept && !d.note_empty) {
                    ++notes;
                    expected[d.context + q + "\nNote:"] =
                        " " + d.note + "\nAnswer: " + d.answer + "<|endoftext|>";
                  }
                  if (d.negative_context.has_value()) {
                    ++negatives;
                    expected[*d.negative_context + q + "\nNote:"] =
                        " empty\nAnswer: " + d.answer + "<|endoftext|>";
                  }
                  expected[d.context + q + "\nAnswer:"] = " " + d.answer + "<|endoftext|>";
                  return absl::OkStatus();
                }).ok());
  }
  ASSERT_GT(notes, 10);
  ASSERT_GT(negatives, 2);
  auto tokenizer = distill::Tokenizer::Load(kTokenizer);
  ASSERT_TRUE(tokenizer.ok());
  const auto docs = DecodeDocuments(dir + "/shards", *tokenizer);
  int note_docs = 0, empty_docs = 0, plain_docs = 0;
  for (const auto& [prompt, loss] : docs) {
    auto it = expected.find(prompt);
    ASSERT_NE(it, expected.end()) << prompt.substr(prompt.size() > 300 ? prompt.size() - 300 : 0);
    EXPECT_EQ(loss, it->second);
    if (loss.starts_with(" empty\n")) ++empty_docs;
    else if (prompt.ends_with("\nNote:")) ++note_docs;
    else ++plain_docs;
  }
  auto manifest = storage::ShardManifest::Load(dir + "/shards");
  ASSERT_TRUE(manifest.ok());
  auto build = nlohmann::json::parse(manifest->extra_json);
  EXPECT_EQ(build["recipe"]["samples"]["note"], note_docs);
  EXPECT_EQ(build["recipe"]["samples"]["empty"], empty_docs);
  EXPECT_EQ(build["recipe"]["samples"]["plain"], plain_docs);
  // The scarcest kind (relative to its ratio) is used in full.
  EXPECT_TRUE(empty_docs == negatives || note_docs == notes) << empty_docs << " " << note_docs;
  EXPECT_GT(note_docs, 0);
  EXPECT_GT(empty_docs, 0);
  EXPECT_GT(plain_docs, 0);

  // The cache alone (no --input) holds the same items: the same mix, the same shard bytes.
  Result cache_only = RunRwr("data build --log-level warn --seq-len 2048 --tokenizer " + kTokenizer +
                             " --cache " + dir + "/cache --out " + dir + "/shards_cache_only");
  ASSERT_EQ(cache_only.exit_code, 0) << cache_only.output;
  EXPECT_EQ(ReadFile(dir + "/shards/shard_00000.rws"),
            ReadFile(dir + "/shards_cache_only/shard_00000.rws"));
}
#endif

}  // namespace
}  // namespace rwr
