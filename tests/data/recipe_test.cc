// Sample templates, the RwR mix, sample encoding with loss masks and long-sample policies, and the
// packer writing shards a loader reads back. A byte tokenizer (id = byte + 1, eos = 0) stands in
// for BPE so every token decodes to one byte.
#include <filesystem>
#include <fstream>
#include <set>

#include "distill/packer.h"
#include "distill/recall_format.h"
#include "distill/sample_builder.h"
#include "distill/template.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "storage/shard_loader.h"
#include "tests/support/temp_dir.h"

namespace rwr::distill {
namespace {

using ::testing::HasSubstr;

void ByteEncode(std::string_view text, std::vector<int32_t>* out) {
  for (unsigned char c : text) out->push_back(c + 1);
}

std::string ByteDecode(const std::vector<uint32_t>& ids, const std::vector<uint8_t>& mask,
                       uint8_t want) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (mask[i] != want) continue;
    s += ids[i] == 0 ? std::string("<eos>") : std::string(1, static_cast<char>(ids[i] - 1));
  }
  return s;
}

RecipeItem Item(const std::string& id, bool verified, bool negative) {
  RecipeItem item{.id = id, .context = "ctx of " + id, .question = "Q " + id + "?",
                  .answer = "A" + id};
  if (verified) {
    item.note_verified = true;
    item.note = "note " + id;
  }
  if (negative) item.negative_context = "removed " + id;
  return item;
}

TEST(SampleTemplate, DefaultRendersContextQuestionNoteAnswerWithLossOnNoteAndAnswer) {
  SampleEncoder encoder(ByteEncode, 0, SampleTemplate::Default(), LongSamplePolicy::kDrop, 1000);
  const RecipeItem item = Item("7", true, true);
  auto note = encoder.Encode(item, SampleKind::kNote);
  ASSERT_TRUE(note.has_value());
  EXPECT_EQ(ByteDecode(note->tokens, note->loss_mask, 0), "ctx of 7\n\nQuestion: Q 7?\nNote:");
  EXPECT_EQ(ByteDecode(note->tokens, note->loss_mask, 1), " note 7\nAnswer: A7<eos>");
  auto empty = encoder.Encode(item, SampleKind::kEmpty);
  EXPECT_EQ(ByteDecode(empty->tokens, empty->loss_mask, 0), "removed 7\n\nQuestion: Q 7?\nNote:");
  EXPECT_EQ(ByteDecode(empty->tokens, empty->loss_mask, 1), " empty\nAnswer: A7<eos>");
  auto plain = encoder.Encode(item, SampleKind::kPlain);
  EXPECT_EQ(ByteDecode(plain->tokens, plain->loss_mask, 0), "ctx of 7\n\nQuestion: Q 7?\nAnswer:");
  EXPECT_EQ(ByteDecode(plain->tokens, plain->loss_mask, 1), " A7<eos>");
}

TEST(SampleTemplate, UserTemplateFromYamlAndItsErrors) {
  auto t = SampleTemplate::FromYaml(R"(
name: qa-first
empty_note: NONE
with_note:
  - {text: "Q: {question}\n{context}\n", loss: false}
  - {text: "[{note}] {answer}{eos}", loss: true}
without_note:
  - {text: "Q: {question}\n{context}\n", loss: false}
  - {text: "{answer}{eos}", loss: true}
)", "user.yaml");
  ASSERT_TRUE(t.ok()) << t.status();
  SampleEncoder encoder(ByteEncode, 0, *t, LongSamplePolicy::kDrop, 1000);
  auto s = encoder.Encode(Item("1", false, true), SampleKind::kEmpty);
  EXPECT_EQ(ByteDecode(s->tokens, s->loss_mask, 1), "[NONE] A1<eos>");
  auto round = SampleTemplate::FromYaml(t->ToYaml(), "round trip");
  ASSERT_TRUE(round.ok()) << round.status();
  EXPECT_EQ(round->with_note[1].text, t->with_note[1].text);

  auto no_note = SampleTemplate::FromYaml(R"(
with_note: [{text: "{context}{question}", loss: false}, {text: "{answer}", loss: true}]
without_note: [{text: "{context}{question}", loss: false}, {text: "{answer}", loss: true}]
)", "bad.yaml");
  EXPECT_THAT(std::string(no_note.status().message()), HasSubstr("{note}"));
  auto context_loss = SampleTemplate::FromYaml(R"(
with_note: [{text: "{context}{question}{note}{answer}", loss: true}]
without_note: [{text: "{context}{question}", loss: false}, {text: "{answer}", loss: true}]
)", "bad.yaml");
  EXPECT_THAT(std::string(context_loss.status().message()), HasSubstr("{context}"));
  auto unknown = SampleTemplate::FromYaml(R"(
with_note: [{text: "{context}{question}{nope}", loss: false}, {text: "{note}{answer}", loss: true}]
without_note: [{text: "{context}{question}", loss: false}, {text: "{answer}", loss: true}]
)", "bad.yaml");
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("unknown slot"));
  EXPECT_FALSE(SampleTemplate::FromYaml("[1, 2]", "list.yaml").ok());
}

TEST(SampleTemplate, MisspeltKeysAndBadValuesAreErrorsNamingTheLine) {
  const std::string parts = R"(with_note:
  - {text: "{context}\n{question}\nNote:", loss: false}
  - {text: " {note}\nAnswer: {answer}{eos}", loss: true}
without_note:
  - {text: "{context}\n{question}\nAnswer:", loss: false}
  - {text: " {answer}{eos}", loss: true}
)";
  ASSERT_TRUE(SampleTemplate::FromYaml(parts, "ok.yaml").ok());
  // A misspelt key would otherwise be skipped and the default used without a word.
  auto misspelt = SampleTemplate::FromYaml(parts + "empty-note: none\n", "t.yaml");
  ASSERT_FALSE(misspelt.ok());
  EXPECT_THAT(std::string(misspelt.status().message()),
              HasSubstr("t.yaml:7: unknown key 'empty-note'"));
  auto part_key = SampleTemplate::FromYaml(R"(with_note:
  - {text: "{context}{question}{note}", loss: false, weight: 2}
)", "t.yaml");
  EXPECT_THAT(std::string(part_key.status().message()),
              HasSubstr("t.yaml:2: unknown key 'weight'"));
  auto bad_loss = SampleTemplate::FromYaml(R"(with_note:
  - {text: "{context}{question}{note}", loss: false}
  - {text: "{answer}", loss: maybe}
)", "t.yaml");
  EXPECT_THAT(std::string(bad_loss.status().message()),
              HasSubstr("t.yaml:3: 'loss' of a part of 'with_note' must be true or false, not "
                        "'maybe'"));
  auto bad_note = SampleTemplate::FromYaml(parts + "empty_note: [a]\n", "t.yaml");
  EXPECT_THAT(std::string(bad_note.status().message()),
              HasSubstr("t.yaml:7: 'empty_note' must be a string"));
}

// The prompt is with_note up to its first part with loss, rendered as training rendered it; the
// note and the answer are read back out of what the model writes after it.
TEST(RecallFormat, DefaultTemplatePromptsForTheNoteAndReadsNoteAndAnswer) {
  auto format = RecallFormat::From(SampleTemplate::Default());
  ASSERT_TRUE(format.ok()) << format.status();
  std::string prompt;
  for (const RenderedPiece& piece : format->Prompt("Who?")) {
    EXPECT_FALSE(piece.loss);
    prompt += piece.is_context ? "<CTX>" : piece.text;
  }
  EXPECT_EQ(prompt, "<CTX>\n\nQuestion: Who?\nNote:");
  EXPECT_EQ(format->note_end(), "\nAnswer:");

  auto both = format->Read(" Ada moved to Oslo.\nAnswer: Oslo");
  EXPECT_EQ(both.note, "Ada moved to Oslo.");
  EXPECT_EQ(both.answer, "Oslo");
  EXPECT_TRUE(both.has_answer);
  auto note_only = format->Read(" Ada moved to Oslo and then");
  EXPECT_EQ(note_only.note, "Ada moved to Oslo and then");
  EXPECT_FALSE(note_only.has_answer);
  // An empty note: the literal begins with the blank the note would have ended with.
  auto empty_note = format->Read(" \nAnswer: Oslo");
  EXPECT_EQ(empty_note.note, "");
  EXPECT_EQ(empty_note.answer, "Oslo");
  EXPECT_TRUE(empty_note.has_answer);
  // A note the budget cut inside the literal keeps none of it.
  EXPECT_EQ(format->Read(" Ada moved\nAnswer").note, "Ada moved");
  EXPECT_EQ(format->Read(" Ada moved\nAns").note, "Ada moved");

  EXPECT_TRUE(format->IsEmptyNote(" empty"));
  EXPECT_TRUE(format->IsEmptyNote("Empty."));
  EXPECT_TRUE(format->IsEmptyNote("  "));
  EXPECT_FALSE(format->IsEmptyNote("empty-handed"));
  EXPECT_FALSE(format->IsEmptyNote("Ada"));
}

TEST(RecallFormat, UserTemplatesAreReadByTheirOwnLiteralsOrRefusedWithTheReason) {
  auto bracketed = SampleTemplate::FromYaml(R"(
name: bracketed
empty_note: NONE
with_note:
  - {text: "Q: {question}\n{context}\n", loss: false}
  - {text: "[{note}] => {answer} ##{eos}", loss: true}
without_note:
  - {text: "Q: {question}\n{context}\n", loss: false}
  - {text: "{answer}{eos}", loss: true}
)", "bracketed.yaml");
  ASSERT_TRUE(bracketed.ok()) << bracketed.status();
  auto format = RecallFormat::From(*bracketed);
  ASSERT_TRUE(format.ok()) << format.status();
  EXPECT_EQ(format->note_end(), "] =>");
  auto reading = format->Read("[ Ada is in Oslo ] => Oslo ## and more");
  EXPECT_EQ(reading.note, "Ada is in Oslo");
  EXPECT_EQ(reading.answer, "Oslo");
  EXPECT_TRUE(format->IsEmptyNote("NONE"));

  auto answer_first = SampleTemplate::FromYaml(R"(
with_note: [{text: "{context}{question}", loss: false}, {text: "{answer} because {note}", loss: true}]
without_note: [{text: "{context}{question}", loss: false}, {text: "{answer}", loss: true}]
)", "answer_first.yaml");
  ASSERT_TRUE(answer_first.ok()) << answer_first.status();
  EXPECT_THAT(std::string(RecallFormat::From(*answer_first).status().message()),
              HasSubstr("{note} and then {answer}"));
  auto loss_then_prompt = SampleTemplate::FromYaml(R"(
with_note:
  - {text: "{context}", loss: false}
  - {text: "{note}", loss: true}
  - {text: "Question: {question}", loss: false}
  - {text: " -> {answer}", loss: true}
without_note: [{text: "{context}{question}", loss: false}, {text: "{answer}", loss: true}]
)", "interleaved.yaml");
  ASSERT_TRUE(loss_then_prompt.ok()) << loss_then_prompt.status();
  EXPECT_THAT(std::string(RecallFormat::From(*loss_then_prompt).status().message()),
              HasSubstr("a part without loss follows one with loss"));
  auto glued = SampleTemplate::FromYaml(R"(
with_note: [{text: "{context}{question}", loss: false}, {text: "{note} {answer}", loss: true}]
without_note: [{text: "{context}{question}", loss: false}, {text: "{answer}", loss: true}]
)", "glued.yaml");
  ASSERT_TRUE(glued.ok()) << glued.status();
  EXPECT_THAT(std::string(RecallFormat::From(*glued).status().message()),
              HasSubstr("nothing but blanks between {note} and {answer}"));
}

TEST(SampleEncoder, LongSamplePolicies) {
  RecipeItem item = Item("x", true, false);
  item.context = std::string(100, 'c');
  const int64_t full = static_cast<int64_t>(
      SampleEncoder(ByteEncode, 0, SampleTemplate::Default(), LongSamplePolicy::kKeep, 1 << 20)
          .Encode(item, SampleKind::kNote)->tokens.size());
  SampleEncoder keep(ByteEncode, 0, SampleTemplate::Default(), LongSamplePolicy::kKeep, 50);
  EXPECT_EQ(static_cast<int64_t>(keep.Encode(item, SampleKind::kNote)->tokens.size()), full);
  SampleEncoder drop(ByteEncode, 0, SampleTemplate::Default(), LongSamplePolicy::kDrop, full - 1);
  EXPECT_FALSE(drop.Encode(item, SampleKind::kNote).has_value());
  SampleEncoder truncate(ByteEncode, 0, SampleTemplate::Default(), LongSamplePolicy::kTruncate,
                         full - 30);
  auto cut = truncate.Encode(item, SampleKind::kNote);
  ASSERT_TRUE(cut.has_value());
  EXPECT_TRUE(cut->truncated);
  EXPECT_EQ(static_cast<int64_t>(cut->tokens.size()), full - 30);
  // The start of the context went; question, note and answer are whole.
  EXPECT_EQ(ByteDecode(cut->tokens, cut->loss_mask, 0), std::string(70, 'c') + "\n\nQuestion: Q x?\nNote:");
  EXPECT_EQ(ByteDecode(cut->tokens, cut->loss_mask, 1), " note x\nAnswer: Ax<eos>");
  SampleEncoder impossible(ByteEncode, 0, SampleTemplate::Default(), LongSamplePolicy::kTruncate, 20);
  EXPECT_FALSE(impossible.Encode(item, SampleKind::kNote).has_value());
}

TEST(PlanMix, RatiosHoldExactlyAndTheScarcestKindIsUsedInFull) {
  std::vector<RecipeItem> items;
  for (int i = 0; i < 100; ++i) items.push_back(Item(std::to_string(i), i < 60, i < 18));
  MixCounts counts;
  auto plan = PlanMix(items, {.note = 0.6, .empty = 0.2, .plain = 0.2}, 1, &counts);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(counts.available[0], 60);
  EXPECT_EQ(counts.available[1], 18);
  EXPECT_EQ(counts.available[2], 100);
  // N = min(60/0.6, 18/0.2, 100/0.2) = 90 → 54 note, 18 empty, 18 plain.
  EXPECT_EQ(counts.chosen[0], 54);
  EXPECT_EQ(counts.chosen[1], 18);
  EXPECT_EQ(counts.chosen[2], 18);
  ASSERT_EQ(plan->size(), 90u);
  std::set<std::pair<int, size_t>> unique;
  for (const auto& p : *plan) {
    unique.insert({static_cast<int>(p.kind), p.item});
    if (p.kind == SampleKind::kNote) EXPECT_TRUE(items[p.item].note_verified);
    if (p.kind == SampleKind::kEmpty) EXPECT_TRUE(items[p.item].negative_context.has_value());
  }
  EXPECT_EQ(unique.size(), 90u);
  // Deterministic by seed; another seed picks and orders differently.
  auto again = PlanMix(items, {.note = 0.6, .empty = 0.2, .plain = 0.2}, 1, nullptr);
  auto other = PlanMix(items, {.note = 0.6, .empty = 0.2, .plain = 0.2}, 2, nullptr);
  auto same_items = [](const auto& a, const auto& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i].item != b[i].item || a[i].kind != b[i].kind) return false;
    }
    return true;
  };
  EXPECT_TRUE(same_items(*plan, *again));
  EXPECT_FALSE(same_items(*plan, *other));
  // Plain only (a dataset without a cache).
  auto plain = PlanMix(items, {.note = 0, .empty = 0, .plain = 1}, 1, &counts);
  EXPECT_EQ(plain->size(), 100u);
  EXPECT_FALSE(PlanMix(items, {.note = 0, .empty = 0, .plain = 0}, 1, nullptr).ok());
  EXPECT_FALSE(PlanMix(items, {.note = -1, .empty = 0, .plain = 1}, 1, nullptr).ok());
}

TEST(JsonlRecipeSource, ReadsItemsBackByOffset) {
  const std::string path = rwr::testing::FreshTempDir("recipe", "offsets") + "/items.jsonl";
  {
    std::ofstream out(path);
    out << R"({"id":"a","context":"ca","question":"qa","answer":"xa"})" << "\n\n";
    out << R"({"id":"b","context":"cb","question":"qb","answer":"xb","note":"n","note_verified":true})"
        << "\n";
  }
  JsonlRecipeSource source(path);
  std::vector<std::pair<std::string, int64_t>> seen;
  std::vector<int64_t> lines;
  ASSERT_TRUE(source
                  .ForEachWithPosition(
                      [&](const RecipeItem& item, const JsonlRecipeSource::Position& at) {
                        seen.emplace_back(item.id, at.offset);
                        lines.push_back(at.line);
                        return absl::OkStatus();
                      })
                  .ok());
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(lines, (std::vector<int64_t>{1, 3}));  // the blank line 2 counts
  auto b = source.ReadAt(seen[1].second);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->context, "cb");
  EXPECT_TRUE(b->note_verified);
  auto a = source.ReadAt(seen[0].second);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->answer, "xa");
  EXPECT_FALSE(source.ReadAt(1 << 20).ok());
}

TEST(JsonlRecipeSource, ParsesOptionalNoteFieldsAndNamesBadLines) {
  auto ok = ParseRecipeLine(
      R"({"id":"a","context":"c","question":"q","answer":"x","note":"n","note_verified":true,"negative_context":"r"})",
      "f:1");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(ok->note_verified);
  EXPECT_EQ(*ok->negative_context, "r");
  auto missing = ParseRecipeLine(R"({"id":"a","context":"c","question":"q"})", "f:2");
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("f:2: 'answer'"));
  EXPECT_THAT(std::string(ParseRecipeLine("{oops", "f:3").status().message()), HasSubstr("f:3"));
  // Structurally fine JSON with a byte that is not UTF-8: the reason, not just "not valid JSON".
  auto bad_utf8 = ParseRecipeLine("{\"id\":\"a\",\"context\":\"c\xff\"}", "f:4");
  EXPECT_THAT(std::string(bad_utf8.status().message()), HasSubstr("f:4: not valid JSON at byte"));
  EXPECT_THAT(std::string(bad_utf8.status().message()), HasSubstr("UTF-8"));
}

// Made empty: the packer creates it.
std::string TempDir(const std::string& name) {
  const std::string dir = rwr::testing::FreshTempDir("recipe_test", name);
  std::filesystem::remove(dir);
  return dir;
}

TEST(Packer, PacksSamplesWholeIntoRowsAcrossShardsAndTheLoaderReadsThemBack) {
  const std::string dir = TempDir("pack");
  auto packer = Packer::Create({.dir = dir, .vocab_size = 300, .seq_len = 63, .shard_tokens = 500,
                                .open_rows = 4, .eos_id = 0, .pad_id = 0});
  ASSERT_TRUE(packer.ok()) << packer.status();
  std::vector<std::vector<uint32_t>> samples;
  uint64_t tokens = 0;
  for (int i = 0; i < 200; ++i) {
    std::vector<uint32_t> s(5 + (i * 37) % 40, static_cast<uint32_t>(1 + i % 250));
    std::vector<uint8_t> m(s.size(), 0);
    m.back() = 1;
    tokens += s.size();
    ASSERT_TRUE((*packer)->Add(s, m).ok());
    samples.push_back(std::move(s));
  }
  std::vector<uint32_t> too_long(65, 1);
  std::vector<uint8_t> too_long_mask(65, 0);
  EXPECT_FALSE((*packer)->Add(too_long, too_long_mask).ok());
  ASSERT_TRUE((*packer)->Finish(R"({"note":"test"})").ok());
  const PackerStats& stats = (*packer)->stats();
  EXPECT_EQ(stats.tokens, tokens);
  EXPECT_GT(stats.shards, 2u);
  EXPECT_LT(stats.padding, stats.rows * 64 / 5);  // rows are mostly full

  auto manifest = storage::ShardManifest::Load(dir);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->TotalTokens(), tokens);
  EXPECT_EQ(manifest->TotalDocuments(), 200u);
  EXPECT_EQ(manifest->TotalLossTokens(), 200u);
  // Every sample comes back whole, once, as one document of some row.
  std::multiset<std::vector<uint32_t>> want(samples.begin(), samples.end());
  std::multiset<std::vector<uint32_t>> got;
  for (const auto& entry : manifest->shards) {
    auto reader = storage::ShardReader::Open(dir + "/" + entry.file);
    ASSERT_TRUE(reader.ok()) << reader.status();
    for (uint64_t r = 0; r < (*reader)->num_rows(); ++r) {
      const uint64_t n = (*reader)->RowLength(r);
      std::vector<int32_t> t(n);
      std::vector<uint8_t> m(n);
      std::vector<uint64_t> starts;
      ASSERT_TRUE((*reader)->ReadRow(r, t, m, &starts).ok());
      starts.push_back(n);
      for (size_t d = 0; d + 1 < starts.size(); ++d) {
        got.insert(std::vector<uint32_t>(t.begin() + starts[d], t.begin() + starts[d + 1]));
      }
    }
  }
  EXPECT_EQ(got, want);
  auto loader = storage::ShardLoader::Open({.dir = dir, .batch_size = 2});
  ASSERT_TRUE(loader.ok()) << loader.status();
  storage::Batch batch;
  ASSERT_TRUE((*loader)->Next(&batch).ok());
  EXPECT_EQ(batch.seq_len, 63);

  // A second build into the same directory needs overwrite.
  EXPECT_EQ(Packer::Create({.dir = dir, .vocab_size = 300, .seq_len = 63}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(Packer::Create({.dir = dir, .vocab_size = 300, .seq_len = 63, .overwrite = true}).ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/manifest.json"));
}

TEST(Packer, OnePerRowKeepsLongSamplesWhole) {
  const std::string dir = TempDir("one");
  auto packer = Packer::Create({.dir = dir, .vocab_size = 300, .seq_len = 8,
                                .row_layout = storage::RowLayout::kOnePerRow});
  ASSERT_TRUE(packer.ok());
  std::vector<uint32_t> s(100, 3);
  std::vector<uint8_t> m(100, 1);
  ASSERT_TRUE((*packer)->Add(s, m).ok());
  ASSERT_TRUE((*packer)->Add(std::span(s).first(5), std::span(m).first(5)).ok());
  ASSERT_TRUE((*packer)->Finish("{}").ok());
  auto manifest = storage::ShardManifest::Load(dir);
  ASSERT_TRUE(manifest.ok());
  EXPECT_EQ(manifest->TotalRows(), 2u);
  EXPECT_EQ(manifest->row_layout, storage::RowLayout::kOnePerRow);
}

}  // namespace
}  // namespace rwr::distill
