// ExtractiveTeacher: BM25 sentence ranking, answer-coverage verification, evidence removal.
#include "teacher_client/extractive_teacher.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "common/status.h"
#include "fmt/format.h"

namespace rwr::teacher {
namespace text {
namespace {

bool IsWordByte(unsigned char c) { return std::isalnum(c) || c >= 0x80; }

bool IsBlankLine(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](unsigned char c) { return std::isspace(c); });
}

// Trims whitespace off a segment; returns false when nothing is left.
bool Trim(std::string_view text, Segment* segment) {
  while (segment->begin < segment->end &&
         std::isspace(static_cast<unsigned char>(text[segment->begin])))
    ++segment->begin;
  while (segment->end > segment->begin &&
         std::isspace(static_cast<unsigned char>(text[segment->end - 1])))
    --segment->end;
  return segment->end > segment->begin;
}

const std::unordered_set<std::string>& Stopwords() {
  static const auto* words = new std::unordered_set<std::string>{
      "a",     "an",   "the",   "and",   "or",     "but",   "if",    "then",  "of",    "in",
      "on",    "at",   "to",    "for",   "from",   "by",    "with",  "about", "as",    "into",
      "is",    "are",  "was",   "were",  "be",     "been",  "being", "am",    "do",    "does",
      "did",   "has",  "have",  "had",   "what",   "which", "who",   "whom",  "whose", "when",
      "where", "why",  "how",   "this",  "that",   "these", "those", "it",    "its",   "i",
      "you",   "he",   "she",   "we",    "they",   "me",    "him",   "her",   "us",    "them",
      "my",    "your", "his",   "our",   "their",  "not",   "no",    "so",    "than",  "too",
      "very",  "can",  "could", "would", "should", "will",  "shall", "may",   "might", "must",
      "there", "here", "some",  "any",   "all",    "each",  "other", "such",  "only",  "own",
      "same",  "just", "also",  "s",     "t",      "name",  "tell"};
  return *words;
}

const std::set<std::string>& Anaphors() {
  static const auto* words = new std::set<std::string>{
      "it", "its", "this", "these", "they", "their", "he", "his", "she", "her", "there", "that"};
  return *words;
}

const std::set<std::string>& Abbreviations() {
  static const auto* words = new std::set<std::string>{
      "mr",  "mrs", "ms",  "dr",  "prof", "sr",   "jr",     "st",  "vs",  "etc", "e.g",
      "i.e", "inc", "ltd", "co",  "no",   "fig",  "approx", "u.s", "jan", "feb", "mar",
      "apr", "jun", "jul", "aug", "sep",  "sept", "oct",    "nov", "dec"};
  return *words;
}

// A light suffix strip (not Porter): plurals, -ing, -est, -ed, -ly. Applied to question and
// context alike, so "highest" meets "high" and "flows" meets "flow".
std::string Stem(std::string word) {
  if (word.size() > 4 && word.ends_with("ies")) return word.substr(0, word.size() - 3) + "y";
  if (word.size() > 3 && word.back() == 's' && !word.ends_with("ss") && !word.ends_with("us") &&
      !word.ends_with("is"))
    word.pop_back();
  for (std::string_view suffix : {"ing", "est", "ed", "ly"}) {
    if (word.size() >= suffix.size() + 4 && word.ends_with(suffix)) {
      word.resize(word.size() - suffix.size());
      break;
    }
  }
  return word;
}

}  // namespace

bool IsAnaphor(const std::string& word) { return Anaphors().count(word) > 0; }

std::vector<Segment> SplitParagraphs(std::string_view text) {
  // Lines first, then group consecutive non-blank lines.
  std::vector<Segment> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t newline = text.find('\n', start);
    size_t end = newline == std::string_view::npos ? text.size() : newline;
    lines.push_back({start, end, 0});
    if (newline == std::string_view::npos) break;
    start = newline + 1;
  }
  // A blank line separates paragraphs only between two non-blank lines (not at either end).
  bool has_blank = false;
  {
    bool seen_text = false, pending_blank = false;
    for (const Segment& line : lines) {
      if (IsBlankLine(text.substr(line.begin, line.end - line.begin))) {
        pending_blank = seen_text;
      } else {
        if (pending_blank) has_blank = true;
        seen_text = true;
      }
    }
  }

  std::vector<Segment> paragraphs;
  if (!has_blank) {
    for (Segment line : lines)
      if (Trim(text, &line)) paragraphs.push_back(line);
  } else {
    Segment current{0, 0, 0};
    bool open = false;
    for (const Segment& line : lines) {
      if (IsBlankLine(text.substr(line.begin, line.end - line.begin))) {
        if (open && Trim(text, &current)) paragraphs.push_back(current);
        open = false;
      } else if (!open) {
        current = line;
        open = true;
      } else {
        current.end = line.end;
      }
    }
    if (open && Trim(text, &current)) paragraphs.push_back(current);
  }
  for (size_t i = 0; i < paragraphs.size(); ++i) paragraphs[i].paragraph = static_cast<int>(i);
  return paragraphs;
}

std::vector<Segment> SplitSentences(std::string_view text) {
  std::vector<Segment> sentences;
  for (const Segment& paragraph : SplitParagraphs(text)) {
    size_t begin = paragraph.begin;
    for (size_t i = paragraph.begin; i < paragraph.end; ++i) {
      char c = text[i];
      if (c != '.' && c != '!' && c != '?') continue;
      // Closing quotes/brackets belong to the sentence.
      size_t end = i + 1;
      while (end < paragraph.end && (text[end] == '"' || text[end] == '\'' || text[end] == ')'))
        ++end;
      if (end < paragraph.end && !std::isspace(static_cast<unsigned char>(text[end]))) continue;
      if (c == '.') {
        // The word before the period: an abbreviation or a single initial does not end a sentence.
        size_t word_begin = i;
        while (word_begin > begin &&
               !std::isspace(static_cast<unsigned char>(text[word_begin - 1])))
          --word_begin;
        std::string word;
        for (size_t k = word_begin; k < i; ++k)
          word += static_cast<char>(std::tolower(static_cast<unsigned char>(text[k])));
        while (!word.empty() && !std::isalnum(static_cast<unsigned char>(word.front())))
          word.erase(word.begin());
        if (Abbreviations().count(word) ||
            (word.size() == 1 && std::isalpha(static_cast<unsigned char>(word[0]))))
          continue;
      }
      Segment sentence{begin, end, paragraph.paragraph};
      if (Trim(text, &sentence)) sentences.push_back(sentence);
      begin = end;
    }
    Segment rest{begin, paragraph.end, paragraph.paragraph};
    if (Trim(text, &rest)) sentences.push_back(rest);
  }
  return sentences;
}

std::vector<std::string> Tokenize(std::string_view text) {
  std::vector<std::string> tokens;
  std::string current;
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (IsWordByte(c)) {
      current += static_cast<char>(c < 0x80 ? std::tolower(c) : c);
    } else if (!current.empty()) {
      tokens.push_back(std::move(current));
      current.clear();
    }
  }
  if (!current.empty()) tokens.push_back(std::move(current));
  return tokens;
}

std::vector<std::string> Terms(std::string_view text) {
  std::vector<std::string> terms;
  for (std::string& token : Tokenize(text)) {
    if (Stopwords().count(token)) continue;
    terms.push_back(Stem(std::move(token)));
  }
  return terms;
}

std::vector<std::string> NormalizedTokens(std::string_view text) {
  std::vector<std::string> tokens;
  for (std::string& token : Tokenize(text)) {
    if (token == "a" || token == "an" || token == "the") continue;
    tokens.push_back(std::move(token));
  }
  return tokens;
}

double BestWindowF1(const std::vector<std::string>& answer, const std::vector<std::string>& note) {
  if (answer.empty() || note.empty()) return 0;
  if (ContainsSequence(note, answer)) return 1;
  std::unordered_map<std::string, int> answer_counts;
  for (const std::string& token : answer) ++answer_counts[token];
  double best = 0;
  // Windows from |answer| - 1 to |answer| + 2 tokens: a paraphrase may drop or add a word.
  size_t min_len = std::max<size_t>(1, answer.size() > 1 ? answer.size() - 1 : 1);
  size_t max_len = std::min(note.size(), answer.size() + 2);
  for (size_t len = std::min(min_len, note.size()); len <= max_len; ++len) {
    for (size_t start = 0; start + len <= note.size(); ++start) {
      std::unordered_map<std::string, int> remaining = answer_counts;
      int common = 0;
      for (size_t k = start; k < start + len; ++k) {
        auto it = remaining.find(note[k]);
        if (it != remaining.end() && it->second > 0) {
          --it->second;
          ++common;
        }
      }
      if (common == 0) continue;
      double precision = static_cast<double>(common) / static_cast<double>(len);
      double recall = static_cast<double>(common) / static_cast<double>(answer.size());
      best = std::max(best, 2 * precision * recall / (precision + recall));
    }
  }
  return best;
}

bool ContainsSequence(const std::vector<std::string>& haystack,
                      const std::vector<std::string>& needle) {
  if (needle.empty() || needle.size() > haystack.size()) return false;
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

}  // namespace text

absl::StatusOr<ExtractiveOptions> ExtractiveOptionsFromConfig(const Config& config) {
  ExtractiveOptions o;
  RWR_ASSIGN_OR_RETURN(
      o.note_budget_bytes,
      config.GetOr<uint32_t>("teacher.extractive.note_budget_bytes", o.note_budget_bytes));
  RWR_ASSIGN_OR_RETURN(o.max_sentences,
                       config.GetOr<int>("teacher.extractive.max_sentences", o.max_sentences));
  RWR_ASSIGN_OR_RETURN(o.min_coverage,
                       config.GetOr<double>("teacher.extractive.min_coverage", o.min_coverage));
  RWR_ASSIGN_OR_RETURN(o.keep_fraction,
                       config.GetOr<double>("teacher.extractive.keep_fraction", o.keep_fraction));
  RWR_ASSIGN_OR_RETURN(
      o.verify_threshold,
      config.GetOr<double>("teacher.extractive.verify_threshold", o.verify_threshold));
  // A budget or sentence limit of 0 would make every note blank, which the distill run rejects
  // item by item; say so once, here.
  if (o.note_budget_bytes < 1) {
    return absl::InvalidArgumentError(
        "teacher.extractive.note_budget_bytes is 0; it must be at least 1");
  }
  if (o.max_sentences < 1) {
    return absl::InvalidArgumentError(fmt::format(
        "teacher.extractive.max_sentences is {}; it must be at least 1", o.max_sentences));
  }
  for (const auto& [key, value] :
       {std::pair{"min_coverage", o.min_coverage}, std::pair{"keep_fraction", o.keep_fraction},
        std::pair{"verify_threshold", o.verify_threshold}}) {
    if (!(value >= 0 && value <= 1)) {  // also catches NaN
      return absl::InvalidArgumentError(
          fmt::format("teacher.extractive.{} is {}; it must be in [0, 1]", key, value));
    }
  }
  return o;
}

ExtractiveTeacher::ExtractiveTeacher(ExtractiveOptions options) : options_(options) {}

TeacherInfo ExtractiveTeacher::Info() const {
  // Every option that changes an answer is part of the revision, so a changed option never reads
  // answers cached under another.
  return TeacherInfo{
      .teacher_id = kTeacherId,
      .revision = fmt::format("{};budget={};sentences={};coverage={};keep={};verify={};k1={};b={}",
                              kRevision, options_.note_budget_bytes, options_.max_sentences,
                              options_.min_coverage, options_.keep_fraction,
                              options_.verify_threshold, options_.bm25_k1, options_.bm25_b),
      .prompt_template_version = "extractive-v1",
      .sampling = {},
  };
}

Note ExtractiveTeacher::MakeNote(const NoteTask& task) const {
  const std::string_view context = task.context;
  std::vector<text::Segment> sentences = text::SplitSentences(context);
  std::vector<std::string> query = text::Terms(task.question);
  std::vector<std::string> query_terms;  // distinct, in question order
  for (const std::string& term : query)
    if (std::find(query_terms.begin(), query_terms.end(), term) == query_terms.end())
      query_terms.push_back(term);
  Note empty{.text = kEmptyNote, .empty = true, .score = 0};
  if (sentences.empty() || query_terms.empty()) return empty;

  // Term frequencies per sentence, document frequencies over sentences.
  const size_t n = sentences.size();
  std::vector<std::unordered_map<std::string, int>> tf(n);
  std::vector<size_t> length(n);
  std::unordered_map<std::string, int> df;
  double total_length = 0;
  for (size_t i = 0; i < n; ++i) {
    std::vector<std::string> terms =
        text::Terms(context.substr(sentences[i].begin, sentences[i].end - sentences[i].begin));
    length[i] = terms.size();
    total_length += static_cast<double>(terms.size());
    for (std::string& term : terms) ++tf[i][term];
    for (const auto& [term, count] : tf[i]) ++df[term];
  }
  const double average_length = std::max(1.0, total_length / static_cast<double>(n));
  std::vector<double> idf(query_terms.size());
  double idf_total = 0;
  for (size_t q = 0; q < query_terms.size(); ++q) {
    auto it = df.find(query_terms[q]);
    double d = it == df.end() ? 0 : it->second;
    // BM25+ style IDF, always positive.
    idf[q] = std::log(1.0 + (static_cast<double>(n) - d + 0.5) / (d + 0.5));
    idf_total += idf[q];
  }

  std::vector<double> score(n, 0), coverage(n, 0);
  for (size_t i = 0; i < n; ++i) {
    for (size_t q = 0; q < query_terms.size(); ++q) {
      auto it = tf[i].find(query_terms[q]);
      if (it == tf[i].end()) continue;
      double f = it->second;
      double norm =
          options_.bm25_k1 *
          (1 - options_.bm25_b + options_.bm25_b * static_cast<double>(length[i]) / average_length);
      score[i] += idf[q] * f * (options_.bm25_k1 + 1) / (f + norm);
      coverage[i] += idf[q];
    }
    coverage[i] /= idf_total;
  }

  // A sentence opening with a pronoun ("Its summit reaches ...") is about what the sentence before
  // it named: it inherits half of that sentence's own score (one step, own scores only).
  std::vector<double> own = score;
  for (size_t i = 1; i < n; ++i) {
    if (sentences[i].paragraph != sentences[i - 1].paragraph || own[i - 1] <= 0) continue;
    std::vector<std::string> first = text::Tokenize(context.substr(sentences[i].begin, 12));
    if (!first.empty() && text::IsAnaphor(first[0])) score[i] += 0.5 * own[i - 1];
  }

  // Ranked by score, ties to the earlier sentence (deterministic).
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return score[a] > score[b]; });
  const size_t best = order[0];
  // Relevance is judged on the best sentence's paragraph: "Mount X ... Its summit ..." answers
  // "how high is X's summit" even though no single sentence names both.
  double paragraph_coverage = 0;
  for (size_t q = 0; q < query_terms.size(); ++q) {
    for (size_t i = 0; i < n; ++i) {
      if (sentences[i].paragraph == sentences[best].paragraph && tf[i].count(query_terms[q])) {
        paragraph_coverage += idf[q] / idf_total;
        break;
      }
    }
  }
  if (score[best] <= 0 || std::max(coverage[best], paragraph_coverage) < options_.min_coverage) {
    empty.score = score[best];
    return empty;
  }
  const uint32_t budget =
      task.max_note_bytes > 0 ? task.max_note_bytes : options_.note_budget_bytes;
  std::vector<size_t> chosen;
  size_t used = 0;
  for (size_t i : order) {
    if (static_cast<int>(chosen.size()) >= options_.max_sentences) break;
    if (score[i] < options_.keep_fraction * score[best] || score[i] <= 0) break;
    size_t bytes = sentences[i].end - sentences[i].begin + (chosen.empty() ? 0 : 1);
    if (used + bytes > budget) {
      if (chosen.empty()) {
        // The best sentence alone exceeds the budget: cut it at a word boundary.
        std::string_view sentence = context.substr(sentences[i].begin, budget);
        size_t cut = sentence.find_last_of(" \t\n");
        if (cut != std::string_view::npos && cut > budget / 2) sentence = sentence.substr(0, cut);
        return Note{.text = std::string(sentence), .empty = false, .score = score[best]};
      }
      continue;
    }
    chosen.push_back(i);
    used += bytes;
  }
  std::sort(chosen.begin(), chosen.end());  // document order reads naturally
  std::string note;
  for (size_t i : chosen) {
    if (!note.empty()) note += ' ';
    note.append(context.substr(sentences[i].begin, sentences[i].end - sentences[i].begin));
  }
  return Note{.text = std::move(note), .empty = false, .score = score[best]};
}

Verdict ExtractiveTeacher::Verify(const VerifyTask& task) const {
  std::vector<std::string> answer = text::NormalizedTokens(task.answer);
  if (answer.empty()) answer = text::Tokenize(task.answer);  // an answer made only of articles
  const std::string_view note = task.note;
  if (note == kEmptyNote) return Verdict{.consistent = false, .score = 0};
  double score = text::BestWindowF1(answer, text::NormalizedTokens(note));
  return Verdict{.consistent = score >= options_.verify_threshold, .score = score};
}

Negative ExtractiveTeacher::Remove(const RemoveEvidenceTask& task) const {
  const std::string_view context = task.context;
  std::vector<std::string> answer = text::NormalizedTokens(task.answer);
  if (answer.empty()) answer = text::Tokenize(task.answer);
  std::vector<text::Segment> units = text::SplitParagraphs(context);
  if (units.size() <= 1) units = text::SplitSentences(context);
  std::string kept;
  uint32_t removed = 0;
  // Rejoin the way the context was split: blank lines, lines, or sentences.
  std::string separator = " ";
  if (text::SplitParagraphs(context).size() > 1)
    separator = context.find("\n\n") != std::string_view::npos ? "\n\n" : "\n";
  for (const text::Segment& unit : units) {
    std::string_view body = context.substr(unit.begin, unit.end - unit.begin);
    if (!answer.empty() && text::ContainsSequence(text::NormalizedTokens(body), answer)) {
      ++removed;
      continue;
    }
    if (!kept.empty()) kept += separator;
    kept.append(body);
  }
  bool still = !answer.empty() && text::ContainsSequence(text::NormalizedTokens(kept), answer);
  return Negative{
      .context = std::move(kept), .removed_paragraphs = removed, .answer_still_present = still};
}

void ExtractiveTeacher::ExtractNote(NoteTask task, TeacherCallback<Note> done) {
  done(MakeNote(task));
}
void ExtractiveTeacher::VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) {
  done(Verify(task));
}
void ExtractiveTeacher::RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) {
  done(Remove(task));
}

}  // namespace rwr::teacher
