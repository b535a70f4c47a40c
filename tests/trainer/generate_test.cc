// Generation with the CPU model: greedy tokens and per-step logits against Hugging Face's cached
// (recurrent) generation (tests/fixtures/hf_mamba/generate.safetensors, made by
// scripts/make_hf_fixtures.py --generate: float64 reference; fp32 tolerance: each step's logits
// relative error ≤ 1e-5); Advance over any split of a sequence gives the logits of one Forward;
// the sampler; and the RwR recall loop's segmenting and token budgets on a random tiny model.
#include "trainer/generate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "distill/recall_format.h"
#include "distill/tokenizer.h"
#include "storage/safetensors.h"
#include "tests/trainer/hf_fixture.h"
#include "trainer/mamba_cpu.h"
#include "trainer/model_io.h"
#include "trainer/recall.h"

namespace rwr::trainer {
namespace {

using testing::RelErr;

std::vector<int32_t> ToInt32(const std::vector<int64_t>& ids) {
  return std::vector<int32_t>(ids.begin(), ids.end());
}

TEST(GenerateParity, GreedyTokensAndEveryStepsLogitsMatchHuggingFace) {
  testing::HfFixture f = testing::LoadHfFixture();
  auto file = storage::SafetensorsFile::Open(testing::kHfFixtureDir + "/generate.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const std::vector<int32_t> prompt = ToInt32(*(*file)->ReadInt("prompt_ids"));
  const std::vector<int32_t> expected = ToInt32(*(*file)->ReadInt("generated_ids"));
  const std::vector<float> step_logits = *(*file)->ReadFloat("step_logits");
  const int64_t V = f.model.config.vocab_size;
  ASSERT_EQ(step_logits.size(), expected.size() * V);

  MambaCpu model(f.model.config);
  // Step by step, as generation runs: the logits each token was picked from.
  SequenceState state = model.NewSequence();
  std::vector<float> logits(V);
  ASSERT_TRUE(model.Advance(f.model.params, {.tokens = prompt}, 0, state, logits).ok());
  double worst = 0;
  for (size_t step = 0; step < expected.size(); ++step) {
    const double rel = RelErr(logits, {step_logits.data() + step * V, size_t(V)});
    EXPECT_LT(rel, 1e-5) << "step " << step;
    worst = std::max(worst, rel);
    ASSERT_TRUE(
        model.Advance(f.model.params, {.tokens = std::span(&expected[step], 1)}, 1, state, logits)
            .ok());
  }
  std::cout << "worst step logits relative error " << worst << "\n";

  std::unique_ptr<Decoder> decoder = MakeCpuDecoder(f.model.config, f.model.params);
  TokenSampler greedy(SamplingOptions{});
  auto generated = GenerateTokens(*decoder, prompt, greedy,
                                  {.max_new_tokens = static_cast<int64_t>(expected.size())});
  ASSERT_TRUE(generated.ok()) << generated.status();
  EXPECT_EQ(generated->ids, expected);
  EXPECT_EQ(generated->end, Generated::End::kMaxTokens);
}

// A prompt in one call, in pieces, or token by token: the state carries everything, so the logits
// after the last token are those of one whole forward pass.
TEST(Advance, AnySplitOfASequenceGivesTheLogitsOfOneForward) {
  testing::HfFixture f = testing::LoadHfFixture();
  MambaCpu model(f.model.config);
  const int64_t T = f.T, V = f.model.config.vocab_size;
  std::vector<float> all(T * V);
  TokenBatch row = f.batch();
  row.batch = 1;
  ASSERT_TRUE(model.Forward(f.model.params, row, 0, all.data()).ok());
  const std::span<const float> last(all.data() + (T - 1) * V, V);
  const std::span<const int32_t> tokens(f.tokens.data(), T);
  for (const std::vector<int64_t>& split : std::vector<std::vector<int64_t>>{
           {T}, {1, T - 1}, {10, 1, 1, T - 12}, std::vector<int64_t>(T, 1)}) {
    for (int64_t chunk : {0, 4}) {
      SequenceState state = model.NewSequence();
      std::vector<float> logits(V);
      int64_t at = 0;
      for (int64_t n : split) {
        ASSERT_TRUE(
            model.Advance(f.model.params, {.tokens = tokens.subspan(at, n)}, chunk, state, logits)
                .ok());
        at += n;
      }
      EXPECT_LT(RelErr(logits, last), 1e-5) << split.size() << " calls, chunk " << chunk;
    }
  }
  SequenceState state = model.NewSequence();
  std::vector<float> wrong_size(V - 1);
  EXPECT_FALSE(model.Advance(f.model.params, {.tokens = tokens}, 0, state, wrong_size).ok());
  std::vector<float> logits(V);
  const int32_t out_of_range = static_cast<int32_t>(V);
  EXPECT_FALSE(
      model.Advance(f.model.params, {.tokens = std::span(&out_of_range, 1)}, 0, state, logits)
          .ok());
  // A state of another row count is refused, not read past its end.
  std::vector<float> two_rows(2 * V);
  EXPECT_FALSE(
      model.Advance(f.model.params, {.tokens = tokens, .rows = 2}, 0, state, two_rows).ok());
}

// Rows of unequal length, left-padded with a reset at each row's first real token, give each row
// the logits it gets alone, to the bit: a row's arithmetic never sees another row, and the reset
// erases the padding.
TEST(Advance, RowsTogetherGiveEachRowItsOwnLogitsToTheBit) {
  testing::HfFixture f = testing::LoadHfFixture();
  MambaCpu model(f.model.config);
  const int64_t V = f.model.config.vocab_size;
  const std::vector<int64_t> lengths = {f.T, 20, 1, f.T - 5};
  const int64_t width = f.T;
  std::vector<int32_t> tokens;
  std::vector<uint8_t> resets(lengths.size() * width, 0);
  std::vector<std::vector<float>> alone;
  for (size_t r = 0; r < lengths.size(); ++r) {
    const std::span<const int32_t> row(f.tokens.data() + (r % 2) * f.T, lengths[r]);
    const int64_t pad = width - lengths[r];
    for (int64_t i = 0; i < pad; ++i) tokens.push_back(static_cast<int32_t>((i * 7) % V));
    tokens.insert(tokens.end(), row.begin(), row.end());
    resets[r * width + pad] = 1;
    SequenceState state = model.NewSequence();
    std::vector<float> logits(V);
    ASSERT_TRUE(model.Advance(f.model.params, {.tokens = row}, 0, state, logits).ok());
    // And one more token, to check the state each row is left with.
    const int32_t next = 5;
    ASSERT_TRUE(
        model.Advance(f.model.params, {.tokens = std::span(&next, 1)}, 0, state, logits).ok());
    alone.push_back(logits);
  }
  const int64_t rows = static_cast<int64_t>(lengths.size());
  SequenceState state = model.NewSequence(rows);
  std::vector<float> logits(rows * V);
  ASSERT_TRUE(model
                  .Advance(f.model.params, {.tokens = tokens, .rows = rows, .resets = resets}, 0,
                           state, logits)
                  .ok());
  const std::vector<int32_t> next(rows, 5);
  ASSERT_TRUE(model.Advance(f.model.params, {.tokens = next, .rows = rows}, 0, state, logits).ok());
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_TRUE(std::equal(alone[r].begin(), alone[r].end(), logits.begin() + r * V)) << r;
  }
}

// Several rows generate what each would alone (greedy and sampled), and a row that ends early
// stops growing while the others go on.
TEST(GenerateRows, EachRowGeneratesWhatItWouldAlone) {
  testing::HfFixture f = testing::LoadHfFixture();
  std::unique_ptr<Decoder> decoder = MakeCpuDecoder(f.model.config, f.model.params);
  const std::vector<std::vector<int32_t>> prompts = {
      std::vector<int32_t>(f.tokens.begin(), f.tokens.begin() + 11),
      std::vector<int32_t>(f.tokens.begin() + f.T, f.tokens.begin() + f.T + 30),
      std::vector<int32_t>(f.tokens.begin() + 3, f.tokens.begin() + 30)};
  for (const SamplingOptions& sampling :
       {SamplingOptions{}, SamplingOptions{.temperature = 1.5, .seed = 9}}) {
    // Row 1 stops after 3 tokens, the others run to 8.
    GenerateOptions options{.max_new_tokens = 8};
    std::vector<Generated> alone;
    for (size_t r = 0; r < prompts.size(); ++r) {
      options.stop = [r](int64_t, std::span<const int32_t> ids) {
        return r == 1 && ids.size() == 3;
      };
      ASSERT_TRUE(decoder->Reset(1).ok());
      TokenSampler sampler(sampling);
      auto g = GenerateTokens(*decoder, prompts[r], sampler, options);
      ASSERT_TRUE(g.ok()) << g.status();
      alone.push_back(*g);
    }
    const int64_t width = 30;
    std::vector<int32_t> tokens;
    std::vector<uint8_t> resets(prompts.size() * width, 0);
    for (size_t r = 0; r < prompts.size(); ++r) {
      const size_t pad = width - prompts[r].size();
      tokens.insert(tokens.end(), pad, 1);
      tokens.insert(tokens.end(), prompts[r].begin(), prompts[r].end());
      resets[r * width + pad] = 1;
    }
    options.stop = [](int64_t row, std::span<const int32_t> ids) {
      return row == 1 && ids.size() == 3;
    };
    ASSERT_TRUE(decoder->Reset(static_cast<int64_t>(prompts.size())).ok());
    std::vector<TokenSampler> samplers(prompts.size(), TokenSampler(sampling));
    auto together = GenerateRows(*decoder, tokens, resets, samplers, options);
    ASSERT_TRUE(together.ok()) << together.status();
    for (size_t r = 0; r < prompts.size(); ++r) {
      EXPECT_EQ((*together)[r].ids, alone[r].ids) << r << " t " << sampling.temperature;
      EXPECT_EQ((*together)[r].end, alone[r].end) << r;
    }
    EXPECT_EQ((*together)[1].ids.size(), 3u);
    EXPECT_EQ((*together)[1].end, Generated::End::kStopCondition);
  }
  std::vector<TokenSampler> too_few(1, TokenSampler({}));
  EXPECT_FALSE(GenerateRows(*decoder, std::vector<int32_t>(6, 1), {}, too_few, {}).ok());
}

TEST(TokenSampler, GreedyTakesTheFirstMaximumAndSamplingFollowsTheSoftmax) {
  const std::vector<float> logits = {1.f, 3.f, 3.f, 0.f};
  TokenSampler greedy(SamplingOptions{});
  EXPECT_EQ(greedy.Pick(logits), 1);

  // Temperature 1: frequencies within 1.5% of softmax over 40,000 draws (σ ≈ 0.25%).
  const std::vector<float> spread = {0.f, 1.f, 2.f, std::log(0.5f)};
  TokenSampler sampler({.temperature = 1, .top_p = 1, .seed = 7});
  std::map<int32_t, int> counts;
  const int draws = 40000;
  for (int i = 0; i < draws; ++i) ++counts[sampler.Pick(spread)];
  double z = 0;
  for (float l : spread) z += std::exp(l);
  for (int32_t id = 0; id < 4; ++id) {
    EXPECT_NEAR(counts[id] / double(draws), std::exp(spread[id]) / z, 0.015) << id;
  }
  // The same seed repeats its picks; another seed does not.
  TokenSampler a({.temperature = 1, .seed = 3}), b({.temperature = 1, .seed = 3}),
      c({.temperature = 1, .seed = 4});
  std::vector<int32_t> pa, pb, pc;
  for (int i = 0; i < 64; ++i) {
    pa.push_back(a.Pick(spread));
    pb.push_back(b.Pick(spread));
    pc.push_back(c.Pick(spread));
  }
  EXPECT_EQ(pa, pb);
  EXPECT_NE(pa, pc);
  // top_p: id 2 alone holds 0.62 of the mass, so top_p 0.5 keeps only it.
  TokenSampler nucleus({.temperature = 1, .top_p = 0.5, .seed = 1});
  for (int i = 0; i < 200; ++i) ASSERT_EQ(nucleus.Pick(spread), 2);
  // A high temperature flattens: every id shows up.
  TokenSampler hot({.temperature = 100, .seed = 2});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 400; ++i) ++seen[hot.Pick(spread)];
  EXPECT_EQ(seen.size(), 4u);
}

TEST(GenerateTokens, StopsAtAStopIdAConditionOrTheBudget) {
  testing::HfFixture f = testing::LoadHfFixture();
  std::unique_ptr<Decoder> decoder = MakeCpuDecoder(f.model.config, f.model.params);
  const std::vector<int32_t> prompt(f.tokens.begin(), f.tokens.begin() + 11);
  TokenSampler greedy(SamplingOptions{});
  auto free_run = GenerateTokens(*decoder, prompt, greedy, {.max_new_tokens = 6});
  ASSERT_TRUE(free_run.ok());
  ASSERT_EQ(free_run->ids.size(), 6u);

  ASSERT_TRUE(decoder->Reset().ok());
  auto stopped = GenerateTokens(*decoder, prompt, greedy,
                                {.max_new_tokens = 6, .stop_ids = {free_run->ids[0]}});
  ASSERT_TRUE(stopped.ok());
  EXPECT_TRUE(stopped->ids.empty());
  EXPECT_EQ(stopped->end, Generated::End::kStopId);

  ASSERT_TRUE(decoder->Reset().ok());
  auto two = GenerateTokens(
      *decoder, prompt, greedy,
      {.max_new_tokens = 6,
       .stop = [](int64_t, std::span<const int32_t> ids) { return ids.size() == 2; }});
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->ids, std::vector<int32_t>(free_run->ids.begin(), free_run->ids.begin() + 2));
  EXPECT_EQ(two->end, Generated::End::kStopCondition);

  // Without a Reset the sequence goes on (the prompt again is another context); after one it
  // starts afresh, to the bit.
  const size_t V = f.model.config.vocab_size;
  std::vector<float> first(V), continued(V), again(V);
  ASSERT_TRUE(decoder->Reset().ok());
  ASSERT_TRUE(decoder->Advance(prompt, first).ok());
  ASSERT_TRUE(decoder->Advance(prompt, continued).ok());
  ASSERT_TRUE(decoder->Reset().ok());
  ASSERT_TRUE(decoder->Advance(prompt, again).ok());
  EXPECT_EQ(again, first);
  EXPECT_GT(RelErr(continued, first), 1e-5);  // 6e-4: the last token dominates this model
  EXPECT_FALSE(GenerateTokens(*decoder, {}, greedy, {}).ok());
  auto device = MakeDecoder(f.model.config, f.model.params, "tpu", "bf16");
  EXPECT_FALSE(device.ok());
  auto cpu = MakeDecoder(f.model.config, f.model.params, "cpu", "bf16");
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->device(), "cpu");
}

// The recall loop on a random tiny model with rwr's tokenizer: what it writes is noise, but the
// segmenting, the budgets and the reading are checked.
TEST(Recaller, SegmentsTheContextAndKeepsEveryPassInItsBudget) {
  auto tokenizer =
      distill::Tokenizer::Load(std::string(RWR_SOURCE_DIR) + "/configs/tokenizer/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  MambaConfig config;
  config.d_model = 32;
  config.n_layer = 2;
  config.vocab_size = tokenizer->vocab_size();
  config.d_inner = 64;
  config.dt_rank = 2;
  const std::vector<float> params = InitParams(config, 5);
  std::unique_ptr<Decoder> decoder = MakeCpuDecoder(config, params);
  auto format = distill::RecallFormat::From(distill::SampleTemplate::Default());
  ASSERT_TRUE(format.ok());
  RecallOptions options{.segment_tokens = 40, .max_note_tokens = 7, .max_answer_tokens = 5};
  Recaller recaller(*decoder, *tokenizer, *format, options);
  std::string context;
  for (int i = 0; i < 30; ++i) context += "Ada moved to Oslo in spring and Bo stayed home. ";
  std::vector<std::pair<size_t, size_t>> progress;
  auto result = recaller.Answer(context, "Where did Ada move?",
                                [&](auto&, size_t k, size_t n) { progress.emplace_back(k, n); });
  ASSERT_TRUE(result.ok()) << result.status();
  const int64_t segments = (result->context_tokens + 39) / 40;
  EXPECT_GT(segments, 5);
  ASSERT_EQ(static_cast<int64_t>(result->segments.size()), segments);
  EXPECT_EQ(progress.size(), result->segments.size());
  EXPECT_EQ(progress.back(), std::make_pair(size_t(segments - 1), size_t(segments)));
  for (int64_t k = 0; k < segments; ++k) {
    EXPECT_EQ(result->segments[k].first_token, 40 * k);
  }
  EXPECT_EQ(result->segments.back().first_token + result->segments.back().tokens,
            result->context_tokens);
  EXPECT_LE(result->generated_tokens, segments * 7 + 7 + 5);

  // The notes and the answer do not depend on how many segments are written together, greedy
  // or sampled (each segment samples with its own seed).
  for (int64_t at_once : {1, 3}) {
    RecallOptions one_by_one = options;
    one_by_one.segments_at_once = at_once;
    Recaller other(*decoder, *tokenizer, *format, one_by_one);
    auto same = other.Answer(context, "Where did Ada move?");
    ASSERT_TRUE(same.ok()) << same.status();
    EXPECT_EQ(same->answer, result->answer) << at_once;
    EXPECT_EQ(same->generated_tokens, result->generated_tokens) << at_once;
    for (size_t k = 0; k < result->segments.size(); ++k) {
      EXPECT_EQ(same->segments[k].note, result->segments[k].note) << at_once << " segment " << k;
    }
  }
  RecallOptions sampled = options;
  sampled.sampling = {.temperature = 1.0, .seed = 11};
  std::vector<std::string> notes_at[2];
  for (int i = 0; i < 2; ++i) {
    sampled.segments_at_once = i == 0 ? 1 : 4;
    Recaller other(*decoder, *tokenizer, *format, sampled);
    auto r = other.Answer(context, "Where did Ada move?");
    ASSERT_TRUE(r.ok()) << r.status();
    for (const SegmentNote& note : r->segments) notes_at[i].push_back(note.note);
  }
  EXPECT_EQ(notes_at[0], notes_at[1]);
  // Identical segments sample with their own seeds, so their notes are not all one stream's.
  EXPECT_NE(std::set<std::string>(notes_at[0].begin(), notes_at[0].end()).size(), 1u);

  // Deterministic: greedy twice gives the same; one segment takes the last pass alone.
  auto again = recaller.Answer(context, "Where did Ada move?");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->answer, result->answer);
  EXPECT_EQ(again->note, result->note);
  Recaller whole(*decoder, *tokenizer, *format, {.segment_tokens = 0, .max_note_tokens = 3});
  auto one_pass = whole.Answer(context, "Where did Ada move?");
  ASSERT_TRUE(one_pass.ok());
  EXPECT_TRUE(one_pass->segments.empty());
}

TEST(ScoreAnswer, NormalizesLikeQaBenchmarksAndNeverMatchesAnEmptyAnswer) {
  EXPECT_TRUE(ScoreAnswer("The Oslo.", "oslo").exact);
  EXPECT_TRUE(ScoreAnswer("  U.S. ", "US").exact);
  const AnswerScore inside = ScoreAnswer("She moved to Oslo in May", "Oslo");
  EXPECT_FALSE(inside.exact);
  EXPECT_TRUE(inside.contains);
  EXPECT_FALSE(ScoreAnswer("Oslofjord", "Oslo").contains);  // whole words only
  EXPECT_FALSE(ScoreAnswer("", "Oslo").exact);
  // References that normalize to nothing: compared as written, and "" never matches.
  EXPECT_FALSE(ScoreAnswer("", "A").exact);
  EXPECT_FALSE(ScoreAnswer("", "A").contains);
  EXPECT_TRUE(ScoreAnswer(" a", "A").exact);
  EXPECT_FALSE(ScoreAnswer("", "").exact);
}

// A decoder that writes a script: each row emits script[i] at its i-th step, whatever it is fed,
// and the tokens fed are recorded. It drives the recall loop through cases a real model will not
// produce on demand.
class ScriptedDecoder final : public Decoder {
 public:
  ScriptedDecoder(int64_t vocab, std::vector<int32_t> script)
      : vocab_(vocab), script_(std::move(script)) {}
  int64_t vocab_size() const override { return vocab_; }
  std::string device() const override { return "script"; }
  using Decoder::Advance;
  absl::Status Advance(std::span<const int32_t> tokens, std::span<const uint8_t>,
                       std::span<float> next_logits) override {
    fed_.insert(fed_.end(), tokens.begin(), tokens.end());
    std::fill(next_logits.begin(), next_logits.end(), 0.f);
    const int32_t id = script_[std::min(step_, script_.size() - 1)];
    for (int64_t r = 0; r < rows(); ++r) next_logits[r * vocab_ + id] = 1.f;
    ++step_;
    return absl::OkStatus();
  }
  const std::vector<int32_t>& fed() const { return fed_; }

 protected:
  absl::Status ResetRows(int64_t) override {
    step_ = 0;
    fed_.clear();
    return absl::OkStatus();
  }

 private:
  int64_t vocab_;
  std::vector<int32_t> script_;
  size_t step_ = 0;
  std::vector<int32_t> fed_;
};

struct ScriptedRecall {
  distill::Tokenizer tokenizer;
  distill::RecallFormat format;
};

ScriptedRecall LoadScriptedRecall() {
  auto tokenizer =
      distill::Tokenizer::Load(std::string(RWR_SOURCE_DIR) + "/configs/tokenizer/tokenizer.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto format = distill::RecallFormat::From(distill::SampleTemplate::Default());
  EXPECT_TRUE(format.ok());
  return {*tokenizer, *format};
}

// The last pass keeps to both budgets: a note that never writes "\nAnswer:" stops at
// max_note_tokens, the literal is fed, and the answer gets its own max_answer_tokens.
TEST(Recaller, TheLastPassKeepsTheNoteToItsBudgetAndStillAnswers) {
  ScriptedRecall sr = LoadScriptedRecall();
  const std::vector<int32_t> script =
      sr.tokenizer.Encode(" one two three four five six seven eight nine ten eleven");
  ScriptedDecoder decoder(sr.tokenizer.vocab_size(), script);
  Recaller recaller(decoder, sr.tokenizer, sr.format,
                    {.segment_tokens = 0, .max_note_tokens = 4, .max_answer_tokens = 3});
  auto result = recaller.Answer("Ada moved to Oslo.", "Where?");
  ASSERT_TRUE(result.ok()) << result.status();
  auto text = [&](size_t from, size_t to) {
    const std::string t = sr.tokenizer.Decode(std::span(script).subspan(from, to - from));
    return t.substr(t.find_first_not_of(' '));
  };
  EXPECT_EQ(result->note, text(0, 4));
  EXPECT_EQ(result->answer, text(4, 7));
  EXPECT_EQ(result->generated_tokens, 7);
  const std::string fed = sr.tokenizer.Decode(decoder.fed());
  EXPECT_NE(fed.find("\nAnswer:"), std::string::npos) << fed;  // the literal was fed
}

// An empty note ("\nAnswer:" right away), end of text inside the note, a character cut by the
// budget, and a stop signal.
TEST(Recaller, EmptyNotesEndOfTextCutCharactersAndStopSignals) {
  ScriptedRecall sr = LoadScriptedRecall();
  const int32_t eos = *sr.tokenizer.eos_id();
  std::vector<int32_t> empty_note = sr.tokenizer.Encode(" \nAnswer: Oslo");
  empty_note.push_back(eos);
  ScriptedDecoder straight(sr.tokenizer.vocab_size(), empty_note);
  Recaller answers(straight, sr.tokenizer, sr.format, {.segment_tokens = 0});
  auto direct = answers.Answer("Ada moved to Oslo.", "Where?");
  ASSERT_TRUE(direct.ok()) << direct.status();
  EXPECT_EQ(direct->note, "");
  EXPECT_EQ(direct->answer, "Oslo");

  // End of text inside the note: the literal is fed and the answer read after it.
  std::vector<int32_t> ends = sr.tokenizer.Encode(" Ada");
  ends.push_back(eos);
  ScriptedDecoder stops(sr.tokenizer.vocab_size(), ends);
  Recaller stopped(stops, sr.tokenizer, sr.format, {.segment_tokens = 0, .max_answer_tokens = 2});
  auto after_eos = stopped.Answer("Ada moved to Oslo.", "Where?");
  ASSERT_TRUE(after_eos.ok()) << after_eos.status();
  EXPECT_EQ(after_eos->note, "Ada");
  EXPECT_NE(sr.tokenizer.Decode(stops.fed()).find("Ada\nAnswer:"), std::string::npos);

  // "Caf" and then the first byte of "é": the budget ends the note inside the character.
  std::vector<int32_t> cut = sr.tokenizer.Encode(" Caf");
  const auto first_byte = sr.tokenizer.token_to_id("\u00c3");  // byte 0xC3, byte-level form
  ASSERT_TRUE(first_byte.has_value());
  cut.push_back(*first_byte);
  ScriptedDecoder cuts(sr.tokenizer.vocab_size(), cut);
  const int64_t budget = static_cast<int64_t>(cut.size());
  Recaller cutting(cuts, sr.tokenizer, sr.format,
                   {.segment_tokens = 4, .max_note_tokens = budget, .max_answer_tokens = 1});
  auto segments = cutting.Answer("Ada moved to Oslo and Bo stayed home all year.", "Where?");
  ASSERT_TRUE(segments.ok()) << segments.status();
  ASSERT_FALSE(segments->segments.empty());
  EXPECT_EQ(segments->segments[0].note, "Caf");

  // A stop signal ends the answer with Cancelled.
  int asked = 0;
  ScriptedDecoder long_note(sr.tokenizer.vocab_size(), sr.tokenizer.Encode(" a b c d e f g h"));
  Recaller cancelled(long_note, sr.tokenizer, sr.format,
                     {.segment_tokens = 0, .cancelled = [&] { return ++asked > 3; }});
  auto interrupted = cancelled.Answer("Ada moved to Oslo.", "Where?");
  EXPECT_TRUE(absl::IsCancelled(interrupted.status())) << interrupted.status();
}

}  // namespace
}  // namespace rwr::trainer
