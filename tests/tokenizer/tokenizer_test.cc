// Unit tests of the tokenizer that need no Python: the GPT-2 split, UTF-8 handling and the
// invalid UTF-8 policy, BPE on a hand-made vocabulary, added-token flags, load errors, and the API
// the data pipeline uses (vocab size, eos id, copies).
#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "distill/tokenizer.h"
#include "distill/tokenizer_split.h"
#include "distill/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace rwr::distill {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

std::vector<std::string> Split(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : SplitGpt2(text)) out.emplace_back(p);
  return out;
}

TEST(SplitGpt2Test, FollowsTheGpt2Pattern) {
  EXPECT_THAT(Split("Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(Split("don't"), ElementsAre("don", "'t"));
  EXPECT_THAT(Split("we'll 'sa 'S"), ElementsAre("we", "'ll", " '", "sa", " '", "S"));
  EXPECT_THAT(Split("abc123 45"), ElementsAre("abc", "123", " 45"));
  EXPECT_THAT(Split("a  b"), ElementsAre("a", " ", " b"));
  EXPECT_THAT(Split("a \n\n b"), ElementsAre("a", " \n\n", " b"));
  EXPECT_THAT(Split("x\n\ny"), ElementsAre("x", "\n", "\n", "y"));
  EXPECT_THAT(Split("end  "), ElementsAre("end", "  "));
  EXPECT_THAT(Split(" !?x"), ElementsAre(" !?", "x"));
  EXPECT_THAT(Split("日本語 テスト"), ElementsAre("日本語", " テスト"));
  EXPECT_THAT(Split("\u00a0\u00a0x"), ElementsAre("\u00a0", "\u00a0", "x"));
  EXPECT_THAT(Split(""), ElementsAre());
}

TEST(SplitGpt2Test, CoversEveryByteEvenForInvalidUtf8) {
  std::mt19937 rng(3);
  for (int i = 0; i < 500; ++i) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    std::string joined;
    for (std::string_view p : SplitGpt2(s)) {
      EXPECT_FALSE(p.empty());
      joined.append(p);
    }
    EXPECT_EQ(joined, s);
  }
}

TEST(UnicodeTest, LossyRepairReplacesMaximalSubparts) {
  auto lossy = [](std::string_view s) {
    std::string out;
    unicode::AppendUtf8Lossy(s, &out);
    return out;
  };
  EXPECT_EQ(lossy("abc"), "abc");
  EXPECT_EQ(lossy("a\xFF" "b"), "a\uFFFDb");
  EXPECT_EQ(lossy("\xE2\x82"), "\uFFFD");            // truncated 3-byte sequence: one subpart
  EXPECT_EQ(lossy("\xF0\x80\x80"), "\uFFFD\uFFFD\uFFFD");  // F0 80 is not a valid prefix
  EXPECT_EQ(lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  EXPECT_EQ(lossy("\xC3\xA9\xC3"), "\xC3\xA9\uFFFD");
  EXPECT_EQ(lossy("\xF4\x90\x80\x80"), "\uFFFD\uFFFD\uFFFD\uFFFD");  // above U+10FFFF
}

TEST(UnicodeTest, NormalizationFormsAndInvalidBytesPassThrough) {
  std::string out;
  unicode::Normalize(unicode::NormalizationForm::kNfc, "e\u0301", &out);
  EXPECT_EQ(out, "\u00e9");
  unicode::Normalize(unicode::NormalizationForm::kNfd, "\u00e9", &out);
  EXPECT_EQ(out, "e\u0301");
  unicode::Normalize(unicode::NormalizationForm::kNfkc, "\ufb01re \xFF x\u00b2", &out);
  EXPECT_EQ(out, "fire \xFF x2");
}

// A tokenizer.json with a hand-made byte-level vocabulary ("Ġ" stands for the space byte).
json TinyTokenizer() {
  json vocab = json::object();
  int id = 0;
  for (const char* t : {"<|endoftext|>", "a", "b", "c", "Ġ", "ab", "abc", "Ġa", "bc"}) vocab[t] = id++;
  return json{
      {"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr},
      {"added_tokens", json::array({json{{"id", 0}, {"content", "<|endoftext|>"},
                                         {"single_word", false}, {"lstrip", false},
                                         {"rstrip", false}, {"normalized", false},
                                         {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false},
                         {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                 {"vocab", vocab},
                 {"merges", json::array({"a b", json::array({"ab", "c"}), "Ġ a", "b c"})}}}};
}

Tokenizer Load(const json& j) {
  absl::StatusOr<Tokenizer> tok = Tokenizer::FromJson(j.dump(), "tiny.json");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return *std::move(tok);
}

TEST(TokenizerTest, MergesByRankWithBothMergeForms) {
  Tokenizer tok = Load(TinyTokenizer());
  // "abc": a b → ab (rank 0) before b c (rank 3); then ab c → abc (rank 1).
  EXPECT_THAT(tok.Encode("abc"), ElementsAre(6));
  EXPECT_THAT(tok.Encode("bca"), ElementsAre(8, 1));
  EXPECT_THAT(tok.Encode("abc a<|endoftext|>"), ElementsAre(6, 7, 0));
  EXPECT_THAT(tok.Encode(""), ElementsAre());
  // Bytes with no token (and no unk_token) are dropped, as HF does.
  EXPECT_THAT(tok.Encode("ad"), ElementsAre(1));
  EXPECT_EQ(tok.Decode(tok.Encode("abc a<|endoftext|>")), "abc a<|endoftext|>");
  EXPECT_EQ(tok.Decode(tok.Encode("abc a<|endoftext|>"), /*skip_special_tokens=*/true), "abc a");
}

TEST(TokenizerTest, ApiForTheDataPipeline) {
  Tokenizer tok = Load(TinyTokenizer());
  EXPECT_EQ(tok.vocab_size(), 9);
  EXPECT_EQ(tok.eos_id(), 0);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token_to_id("Ġa"), 7);
  EXPECT_EQ(tok.token_to_id("zzz"), std::nullopt);
  EXPECT_EQ(tok.id_to_token(7), "Ġa");
  EXPECT_EQ(tok.id_to_token(99), std::nullopt);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(1));
  Tokenizer copy = tok;  // shares the vocabulary, own cache
  EXPECT_EQ(copy.Encode("abc abc"), tok.Encode("abc abc"));
  std::vector<int32_t> buffer = {42};
  tok.EncodeInto("ab", &buffer);
  EXPECT_THAT(buffer, ElementsAre(42, 5));
  // Unknown ids are skipped, as HF does.
  EXPECT_EQ(tok.Decode(std::vector<int32_t>{1, -1, 100, 2}), "ab");
}

TEST(TokenizerTest, ShippedTokenizerRoundTripsArbitraryBytes) {
  absl::StatusOr<Tokenizer> tok = Tokenizer::Load(RWR_SHIPPED_TOKENIZER);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->vocab_size(), 8192);
  EXPECT_EQ(tok->eos_id(), 0);
  std::mt19937 rng(11);
  for (int i = 0; i < 2000; ++i) {
    std::string s(rng() % 48, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    const std::vector<int32_t> ids = tok->Encode(s);
    ASSERT_EQ(tok->DecodeBytes(ids), s);
    std::string repaired;
    unicode::AppendUtf8Lossy(s, &repaired);
    ASSERT_EQ(tok->Decode(ids), repaired);
  }
}

TEST(TokenizerTest, WordCacheEvictionKeepsResultsExact) {
  absl::StatusOr<Tokenizer> tok = Tokenizer::Load(RWR_SHIPPED_TOKENIZER);
  ASSERT_TRUE(tok.ok()) << tok.status();
  Tokenizer fresh = *tok;
  std::string text;
  for (int i = 0; i < 150000; ++i) text += " w" + std::to_string(i * 7919) + "x";  // > cache size
  const std::vector<int32_t> first = tok->Encode(text);
  EXPECT_EQ(tok->Encode(text), first);
  // Each word alone, through a tokenizer whose cache was never filled past one word.
  std::vector<int32_t> pieces;
  for (int i = 0; i < 150000; i += 4999) {
    const std::string word = " w" + std::to_string(i * 7919) + "x";
    Tokenizer cold = *tok;
    std::vector<int32_t> a = cold.Encode(word), b = fresh.Encode(word);
    EXPECT_EQ(a, b);
  }
}

TEST(TokenizerTest, CopiesEncodeConcurrentlyWithTheSameIds) {
  absl::StatusOr<Tokenizer> tok = Tokenizer::Load(RWR_SHIPPED_TOKENIZER);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 300; ++i) {
    texts.push_back("Record " + std::to_string(i * 7919) + ": Lena's badge is " +
                    std::to_string(i * 31) + " in Zürich 日本 <|endoftext|>");
    expected.push_back(tok->Encode(texts.back()));
  }
  std::atomic<int> mismatches = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, copy = *tok]() mutable {  // one object per thread, shared vocab
      for (int round = 0; round < 3; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) mismatches += copy.Encode(texts[i]) != expected[i];
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches, 0);
}

absl::Status LoadError(const json& j) {
  return Tokenizer::FromJson(j.dump(), "bad.json").status();
}

TEST(TokenizerTest, UnsupportedFilesAreOneLineErrorsNamingTheField) {
  EXPECT_THAT(std::string(Tokenizer::FromJson("{not json", "x.json").status().message()),
              HasSubstr("x.json: not valid JSON"));
  EXPECT_THAT(std::string(Tokenizer::Load("/nonexistent/tokenizer.json").status().message()),
              HasSubstr("/nonexistent/tokenizer.json"));
  auto message = [](json j) { return std::string(LoadError(j).message()); };
  json j = TinyTokenizer();
  j["model"]["type"] = "WordPiece";
  EXPECT_THAT(message(j), HasSubstr("bad.json: model type \"WordPiece\" is not supported"));
  j = TinyTokenizer();
  j["model"].erase("merges");
  EXPECT_THAT(message(j), HasSubstr("merges missing"));
  j = TinyTokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(message(j), HasSubstr("normalizer \"Lowercase\" is not supported"));
  j = TinyTokenizer();
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  EXPECT_THAT(message(j), HasSubstr("pre_tokenizer \"Metaspace\""));
  j = TinyTokenizer();
  j["post_processor"] = {{"type", "TemplateProcessing"}};
  EXPECT_THAT(message(j), HasSubstr("post_processor \"TemplateProcessing\""));
  j = TinyTokenizer();
  j["truncation"] = {{"max_length", 8}};
  EXPECT_THAT(message(j), HasSubstr("truncation must be null"));
  j = TinyTokenizer();
  j["model"]["merges"].push_back("a zz");
  EXPECT_THAT(message(j), HasSubstr("missing from model.vocab"));
  j = TinyTokenizer();
  j["model"]["dropout"] = 0.1;
  EXPECT_THAT(message(j), HasSubstr("dropout"));
  j = TinyTokenizer();
  j["added_tokens"][0]["id"] = 5;
  EXPECT_THAT(message(j), HasSubstr("added token \"<|endoftext|>\" has id 5"));
  for (const auto& status : {LoadError(j)}) {
    EXPECT_EQ(std::string(status.message()).find('\n'), std::string::npos);
  }
}

}  // namespace
}  // namespace rwr::distill
