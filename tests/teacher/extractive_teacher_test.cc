// ExtractiveTeacher: segmentation, note quality on realistic contexts, `empty` when nothing is
// relevant, verification by answer F1, evidence removal, determinism.
#include "teacher_client/extractive_teacher.h"

#include <gtest/gtest.h>

namespace rwr::teacher {
namespace {

const char kContext[] =
    "The Amazon River flows through Brazil, Peru and Colombia. It is the largest river by "
    "discharge.\n\n"
    "Mount Kilimanjaro is the highest mountain in Africa. Its summit, Uhuru Peak, reaches 5,895 "
    "metres. "
    "Dr. Hans Meyer first reached the summit in 1889.\n\n"
    "The Great Barrier Reef lies off the coast of Queensland, Australia. It is visible from "
    "space.\n\n"
    "Photosynthesis converts light energy into chemical energy in plants.";

TEST(TextSegmentation, ParagraphsOnBlankLinesAndSentencesRespectAbbreviations) {
  std::string_view context = kContext;
  std::vector<text::Segment> paragraphs = text::SplitParagraphs(context);
  ASSERT_EQ(paragraphs.size(), 4u);
  std::vector<text::Segment> sentences = text::SplitSentences(context);
  ASSERT_EQ(sentences.size(), 8u);
  // "Dr. Hans Meyer ..." stays one sentence.
  EXPECT_EQ(context.substr(sentences[4].begin, sentences[4].end - sentences[4].begin),
            "Dr. Hans Meyer first reached the summit in 1889.");
  EXPECT_EQ(sentences[4].paragraph, 1);
  // Lines split a text without blank lines.
  EXPECT_EQ(text::SplitParagraphs("one\ntwo\n").size(), 2u);
  EXPECT_EQ(text::SplitParagraphs("one\ntwo\n\nthree").size(), 2u);
}

TEST(TextNormalization, SquadStyleTokensAndWindowF1) {
  EXPECT_EQ(text::NormalizedTokens("The Eiffel-Tower, in PARIS!"),
            (std::vector<std::string>{"eiffel", "tower", "in", "paris"}));
  EXPECT_EQ(text::Terms("What are the cities?"), (std::vector<std::string>{"city"}));
  std::vector<std::string> answer = text::NormalizedTokens("5,895 metres");
  EXPECT_DOUBLE_EQ(
      text::BestWindowF1(answer, text::NormalizedTokens("it reaches 5,895 metres high")), 1.0);
  double partial = text::BestWindowF1(text::NormalizedTokens("Hans Meyer"),
                                      text::NormalizedTokens("a man called Meyer climbed it"));
  EXPECT_GT(partial, 0.5);
  EXPECT_LT(partial, 1.0);
  EXPECT_EQ(text::BestWindowF1(text::NormalizedTokens("Paris"), text::NormalizedTokens("in Rome")),
            0.0);
}

TEST(ExtractiveTeacherNote, PicksTheSentencesThatAnswerTheQuestion) {
  ExtractiveTeacher teacher;
  Note note =
      teacher.MakeNote({.context = kContext, .question = "How high is the summit of Kilimanjaro?"});
  ASSERT_FALSE(note.empty);
  EXPECT_NE(note.text.find("5,895 metres"), std::string::npos) << note.text;
  EXPECT_EQ(note.text.find("Amazon"), std::string::npos) << note.text;
  EXPECT_EQ(note.text.find("Photosynthesis"), std::string::npos) << note.text;
  EXPECT_GT(note.score, 0);

  Note reef = teacher.MakeNote(
      {.context = kContext, .question = "Off which coast does the Great Barrier Reef lie?"});
  ASSERT_FALSE(reef.empty);
  EXPECT_NE(reef.text.find("Queensland"), std::string::npos) << reef.text;
}

TEST(ExtractiveTeacherNote, EmptyWhenNothingIsRelevant) {
  ExtractiveTeacher teacher;
  Note note =
      teacher.MakeNote({.context = kContext, .question = "Who composed the Moonlight Sonata?"});
  EXPECT_TRUE(note.empty);
  EXPECT_EQ(note.text, kEmptyNote);
  EXPECT_TRUE(teacher.MakeNote({.context = "", .question = "Who?"}).empty);
  EXPECT_TRUE(
      teacher.MakeNote({.context = kContext, .question = "what is it?"}).empty);  // stopwords only
}

TEST(ExtractiveTeacherNote, RespectsTheBudgetAndIsDeterministic) {
  ExtractiveTeacher teacher;
  NoteTask task{.context = kContext,
                .question = "Kilimanjaro summit Meyer 1889 metres",
                .max_note_bytes = 60};
  Note note = teacher.MakeNote(task);
  ASSERT_FALSE(note.empty);
  EXPECT_LE(note.text.size(), 60u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(teacher.MakeNote(task).text, note.text);
  // A long context: the right sentence among 300 distractors.
  std::string context;
  for (int i = 0; i < 300; ++i)
    context += "Filler sentence number " + std::to_string(i) + " talks about weather.\n\n";
  context += "The secret vault code is 4417.\n\n";
  for (int i = 0; i < 300; ++i)
    context += "Another paragraph " + std::to_string(i) + " mentions gardens.\n\n";
  Note vault = teacher.MakeNote({.context = context, .question = "What is the secret vault code?"});
  ASSERT_FALSE(vault.empty);
  EXPECT_EQ(vault.text, "The secret vault code is 4417.");
}

TEST(ExtractiveTeacherVerify, ConsistentWhenTheNoteCarriesTheAnswer) {
  ExtractiveTeacher teacher;
  Verdict yes = teacher.Verify(
      {.question = "q", .note = "Its summit reaches 5,895 metres.", .answer = "5,895 metres"});
  EXPECT_TRUE(yes.consistent);
  EXPECT_DOUBLE_EQ(yes.score, 1.0);
  Verdict article = teacher.Verify(
      {.question = "q", .note = "It lies off Queensland.", .answer = "the Queensland"});
  EXPECT_TRUE(article.consistent);
  Verdict no = teacher.Verify(
      {.question = "q", .note = "Its summit reaches 5,895 metres.", .answer = "1889"});
  EXPECT_FALSE(no.consistent);
  EXPECT_EQ(no.score, 0.0);
  EXPECT_FALSE(teacher.Verify({.question = "q", .note = kEmptyNote, .answer = "empty"}).consistent);
}

TEST(ExtractiveTeacherRemoveEvidence, DropsTheParagraphsHoldingTheAnswer) {
  ExtractiveTeacher teacher;
  Negative negative =
      teacher.Remove({.context = kContext, .question = "How high?", .answer = "5,895 metres"});
  EXPECT_EQ(negative.removed_paragraphs, 1u);
  EXPECT_FALSE(negative.answer_still_present);
  EXPECT_EQ(negative.context.find("Kilimanjaro"), std::string::npos);
  EXPECT_NE(negative.context.find("Amazon River"), std::string::npos);
  EXPECT_NE(negative.context.find("\n\nThe Great Barrier Reef"), std::string::npos);
  // The note teacher now finds nothing for the question: a clean `empty` negative.
  EXPECT_TRUE(
      teacher
          .MakeNote({.context = negative.context, .question = "How high is Kilimanjaro's summit?"})
          .empty);
  // A single paragraph: sentences are dropped instead.
  Negative one = teacher.Remove(
      {.context = "Alpha is first. Beta is 42. Gamma is last.", .question = "q", .answer = "42"});
  EXPECT_EQ(one.context, "Alpha is first. Gamma is last.");
  EXPECT_EQ(one.removed_paragraphs, 1u);
}

TEST(ExtractiveTeacherInterface, CallbacksRunInlineAndInfoNamesTheOptions) {
  ExtractiveTeacher teacher;
  bool called = false;
  teacher.ExtractNote({.context = kContext, .question = "Where does the Amazon River flow?"},
                      [&](absl::StatusOr<Note> note) {
                        ASSERT_TRUE(note.ok());
                        EXPECT_NE(note->text.find("Brazil"), std::string::npos);
                        called = true;
                      });
  EXPECT_TRUE(called);
  TeacherInfo info = teacher.Info();
  EXPECT_EQ(info.teacher_id, "extractive-bm25");
  ExtractiveTeacher other({.note_budget_bytes = 100});
  EXPECT_NE(other.Info().revision, info.revision);  // options are part of the cache key
}

TEST(ExtractiveOptionsFromConfig, ReadsTheKeysOverTheDefaultsAndRejectsOutOfRangeValues) {
  auto config = [](std::vector<std::string> assignments) {
    Config c;
    EXPECT_TRUE(c.SetAll(assignments).ok());
    return c;
  };
  absl::StatusOr<ExtractiveOptions> defaults = ExtractiveOptionsFromConfig(Config());
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(ExtractiveTeacher(*defaults).Info().revision, ExtractiveTeacher().Info().revision);

  absl::StatusOr<ExtractiveOptions> set = ExtractiveOptionsFromConfig(
      config({"teacher.extractive.note_budget_bytes=100", "teacher.extractive.max_sentences=2",
              "teacher.extractive.min_coverage=0.9", "teacher.extractive.keep_fraction=0.5",
              "teacher.extractive.verify_threshold=0.99"}));
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->note_budget_bytes, 100u);
  EXPECT_EQ(set->max_sentences, 2);
  EXPECT_EQ(set->min_coverage, 0.9);
  EXPECT_EQ(set->keep_fraction, 0.5);
  EXPECT_EQ(set->verify_threshold, 0.99);

  for (const auto& [assignment, message] : std::vector<std::pair<std::string, std::string>>{
           {"teacher.extractive.max_sentences=-1", "teacher.extractive.max_sentences is -1"},
           {"teacher.extractive.max_sentences=0", "teacher.extractive.max_sentences is 0"},
           {"teacher.extractive.note_budget_bytes=0", "teacher.extractive.note_budget_bytes is 0"},
           {"teacher.extractive.min_coverage=1.5", "teacher.extractive.min_coverage is 1.5"},
           {"teacher.extractive.keep_fraction=-0.5", "teacher.extractive.keep_fraction is -0.5"},
           {"teacher.extractive.verify_threshold=2", "teacher.extractive.verify_threshold is 2"},
           {"teacher.extractive.min_coverage=.nan", "teacher.extractive.min_coverage is nan"}}) {
    absl::StatusOr<ExtractiveOptions> bad = ExtractiveOptionsFromConfig(config({assignment}));
    ASSERT_FALSE(bad.ok()) << assignment;
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << assignment;
    EXPECT_NE(bad.status().message().find(message), std::string::npos) << bad.status();
    EXPECT_EQ(bad.status().message().find('\n'), std::string::npos) << bad.status();
  }
}

}  // namespace
}  // namespace rwr::teacher
