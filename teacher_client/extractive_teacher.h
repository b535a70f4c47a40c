// ExtractiveTeacher: the embedded default teacher. No model: it answers the three RwR tasks by
// ranking the context's own sentences, deterministically (same input, same output, any machine).
//
//   note            split the context into paragraphs and sentences, rank sentences against the
//                   question with BM25 (IDF over the context's sentences), keep the best ones
//                   within the note budget in document order; `empty` when neither the best
//                   sentence nor its paragraph covers `min_coverage` of the question terms' IDF
//                   weight. Terms are stopword-filtered and lightly stemmed (plurals, -ing, -est,
//                   -ed, -ly).
//   verify          SQuAD-style normalization (lowercase, no punctuation/articles); score = the
//   best
//                   token F1 between the answer and any window of the note; consistent when
//                   score >= verify_threshold.
//   remove evidence drop the paragraphs whose normalized tokens contain the normalized answer (the
//                   sentences, when the context is a single paragraph).
//
// Callbacks run inline, before the call returns. Thread-safe (no mutable state).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/config.h"
#include "teacher_client/teacher.h"

namespace rwr::teacher {

struct ExtractiveOptions {
  uint32_t note_budget_bytes = 600;  // default budget when a task gives none
  int max_sentences = 3;
  double min_coverage = 0.3;    // below: `empty`
  double keep_fraction = 0.35;  // keep sentences scoring >= this × the best one
  double verify_threshold = 0.6;
  double bm25_k1 = 1.2;
  double bm25_b = 0.75;
};

// The teacher.extractive.* config keys (docs/teacher.md) over the defaults. One reader for every
// place that builds this teacher (`rwr teacher serve`, the builtin teacher of `rwr distill run`),
// so a key can never count in one and be ignored in the other. A value out of range is a one-line
// InvalidArgument naming the key.
absl::StatusOr<ExtractiveOptions> ExtractiveOptionsFromConfig(const Config& config);

class ExtractiveTeacher final : public Teacher {
 public:
  static constexpr char kTeacherId[] = "extractive-bm25";
  static constexpr char kRevision[] = "2";  // bump when answers change

  explicit ExtractiveTeacher(ExtractiveOptions options = {});

  TeacherInfo Info() const override;
  void ExtractNote(NoteTask task, TeacherCallback<Note> done) override;
  void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) override;
  void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) override;

  // The same work, synchronously.
  Note MakeNote(const NoteTask& task) const;
  Verdict Verify(const VerifyTask& task) const;
  Negative Remove(const RemoveEvidenceTask& task) const;

 private:
  ExtractiveOptions options_;
};

namespace text {

// A span of the original text (byte offsets) with its paragraph index.
struct Segment {
  size_t begin = 0;
  size_t end = 0;
  int paragraph = 0;
};

// Paragraphs: blank-line separated; a text without blank lines but with newlines splits on lines.
std::vector<Segment> SplitParagraphs(std::string_view text);
// Sentences within each paragraph, on . ! ? followed by space and not after a known abbreviation.
std::vector<Segment> SplitSentences(std::string_view text);
// Lowercased word tokens (ASCII letters/digits, UTF-8 multibyte kept inside words).
std::vector<std::string> Tokenize(std::string_view text);
// Tokenize minus English stopwords, lightly stemmed ("cities"→"city", "highest"→"high").
std::vector<std::string> Terms(std::string_view text);
// SQuAD normalization: lowercase, punctuation removed, articles a/an/the dropped.
std::vector<std::string> NormalizedTokens(std::string_view text);
// Best F1 between `answer` tokens and any window of `note` tokens (1 when contained).
double BestWindowF1(const std::vector<std::string>& answer, const std::vector<std::string>& note);
// A lowercased word that refers back to what the previous sentence named ("it", "its", "they",
// ...).
bool IsAnaphor(const std::string& word);
bool ContainsSequence(const std::vector<std::string>& haystack,
                      const std::vector<std::string>& needle);

}  // namespace text
}  // namespace rwr::teacher
