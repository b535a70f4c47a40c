// Synthetic long-context QA: determinism, the answer stated exactly once at the recorded place,
// requested lengths and depths, hard distractors present.
#include "distill/synth.h"

#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace rwr::distill {
namespace {

int Count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST(Synth, SameSeedSameItemsOtherSeedOthers) {
  SynthOptions options{.context_tokens = 1500, .seed = 5};
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(SynthItemToJson(GenerateSynthItem(options, i)),
              SynthItemToJson(GenerateSynthItem(options, i)));
  }
  SynthOptions other = options;
  other.seed = 6;
  EXPECT_NE(GenerateSynthItem(options, 0).context, GenerateSynthItem(other, 0).context);
  EXPECT_NE(GenerateSynthItem(options, 0).context, GenerateSynthItem(options, 1).context);
}

TEST(Synth, AnswerStatedExactlyOnceAtItsRecordedOffset) {
  SynthOptions options{.context_tokens = 3000, .seed = 11, .distractors = 8};
  for (int64_t i = 0; i < 200; ++i) {
    const SynthItem item = GenerateSynthItem(options, i);
    ASSERT_FALSE(item.answer.empty());
    EXPECT_EQ(Count(item.context, item.answer), 1) << item.id << " answer " << item.answer;
    EXPECT_EQ(item.context.compare(item.answer_offset, item.answer.size(), item.answer), 0)
        << item.id;
    EXPECT_THAT(item.question, ::testing::HasSubstr(item.entity));
    EXPECT_EQ(item.distractors, options.distractors);
    // Same-entity distractors: the subject appears in several paragraphs, not only the fact.
    const std::string first = item.entity.substr(0, item.entity.find(' '));
    EXPECT_GE(Count(item.context, first), 1 + options.distractors / 2) << item.id;
  }
}

TEST(Synth, LengthsFollowTheRequestFromHundredsTo128k) {
  for (int64_t tokens : {300, 2048, 32768, 131072}) {
    SynthOptions options{.context_tokens = tokens, .seed = 3};
    const SynthItem item = GenerateSynthItem(options, 0);
    EXPECT_GE(item.context_tokens, tokens) << tokens;
    EXPECT_LE(item.context_tokens, tokens + 200) << tokens;
    EXPECT_EQ(item.context_tokens, EstimateTokens(item.context));
  }
  SynthOptions ranged{.context_tokens = 8000, .min_context_tokens = 1000, .seed = 3};
  int64_t lo = 1 << 30, hi = 0;
  for (int64_t i = 0; i < 40; ++i) {
    const int64_t t = GenerateSynthItem(ranged, i).context_tokens;
    lo = std::min(lo, t);
    hi = std::max(hi, t);
    EXPECT_GE(t, 1000);
    EXPECT_LE(t, 8200);
  }
  EXPECT_LT(lo, 3000);
  EXPECT_GT(hi, 6000);
}

TEST(Synth, AnswerPositionControlledOrUniform) {
  for (double depth : {0.0, 0.25, 0.5, 0.9, 1.0}) {
    SynthOptions options{.context_tokens = 20000, .seed = 2, .answer_position = depth};
    for (int64_t i = 0; i < 5; ++i) {
      EXPECT_NEAR(GenerateSynthItem(options, i).answer_position, depth, 0.03) << depth;
    }
  }
  SynthOptions uniform{.context_tokens = 4000, .seed = 2};
  int quarters[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < 200; ++i) {
    quarters[std::min(3, static_cast<int>(GenerateSynthItem(uniform, i).answer_position * 4))]++;
  }
  for (int q : quarters) EXPECT_GT(q, 25);
}

TEST(Synth, JsonLineHasTheDatasetFields) {
  const SynthItem item = GenerateSynthItem({.context_tokens = 500}, 7);
  nlohmann::json j = nlohmann::json::parse(SynthItemToJson(item));
  EXPECT_EQ(j["id"], item.id);
  EXPECT_EQ(j["context"], item.context);
  EXPECT_EQ(j["question"], item.question);
  EXPECT_EQ(j["answer"], item.answer);
  EXPECT_TRUE(j.contains("answer_position"));
  EXPECT_TRUE(j.contains("attribute"));
}

TEST(Synth, BadOptionsAreErrors) {
  EXPECT_FALSE(ValidateSynthOptions({.count = 0}).ok());
  EXPECT_FALSE(ValidateSynthOptions({.context_tokens = 10}).ok());
  EXPECT_FALSE(ValidateSynthOptions({.answer_position = 1.5}).ok());
  EXPECT_FALSE(ValidateSynthOptions({.answer_position = std::nan("")}).ok());  // "nan" parses
  EXPECT_FALSE(ValidateSynthOptions({.context_tokens = 1000, .min_context_tokens = 2000}).ok());
  EXPECT_TRUE(ValidateSynthOptions({}).ok());
}

}  // namespace
}  // namespace rwr::distill
