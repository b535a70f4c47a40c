// The Teacher interface: the three Recall-with-Reasoning teacher tasks, callback style, as the
// distill stage calls them (../shared/design/RWR_METHOD.md steps 1-3).
//
//   teacher->ExtractNote({.context = c, .question = q}, [](absl::StatusOr<Note> note) { ... });
//
// Implementations: ExtractiveTeacher (in process, the embedded default, extractive_teacher.h),
// RwrTeacherClient (gRPC to `rwr teacher serve`) and KServeTeacherClient (a served LLM behind the
// KServe v2 protocol), both made by MakeTeacher (client.h).
//
// Contract for every implementation:
// - A call never blocks on the network: it queues the task and returns. Remote clients keep at most
//   `concurrency` calls in flight and queue the rest in order, so the caller bounds its own
//   outstanding work (e.g. items in flight) to bound memory.
// - The callback runs exactly once, on a thread owned by the implementation (or inline, before the
//   call returns, for ExtractiveTeacher). It may issue further calls (note → verify → negative) but
//   must not block for long.
// - A final error (retries exhausted, malformed answer, bad request) arrives as a non-OK status
// whose
//   message says what failed; nothing is dropped silently.
// - Destroying a teacher waits for the callbacks of calls already issued (they complete, possibly
// with
//   CANCELLED), so no callback outlives it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace rwr::teacher {

// The literal note that says "nothing in this context answers the question".
inline constexpr char kEmptyNote[] = "empty";

struct NoteTask {
  std::string context;
  std::string question;
  uint32_t max_note_bytes = 0;  // 0 = the teacher's default budget
};

struct Note {
  std::string text;  // kEmptyNote when `empty`
  bool empty = false;
  double score = 0;  // backend-specific relevance; 0 when unknown
};

struct VerifyTask {
  std::string question;
  std::string note;
  std::string answer;  // the reference answer
};

struct Verdict {
  bool consistent = false;
  double score = 0;  // agreement in [0, 1]
};

struct RemoveEvidenceTask {
  std::string context;
  std::string question;
  std::string answer;
};

struct Negative {
  std::string context;  // c_r: the context without the evidence paragraphs
  uint32_t removed_paragraphs = 0;
  bool answer_still_present = false;  // do not use as a negative when true
};

// Sampling parameters a generative teacher uses; part of the cache key. Zero for extractive.
struct SamplingParams {
  uint32_t max_tokens = 0;
  float temperature = 0;
  uint64_t seed = 0;
};

// What produced the answers: together with the request, the cache key (ARCHITECTURE.md).
struct TeacherInfo {
  std::string teacher_id;               // "extractive-bm25", "kserve:HOST:PORT/MODEL", ...
  std::string revision;                 // backend/model revision
  std::string prompt_template_version;  // "rwr-prompts-v1", ...
  SamplingParams sampling;
};

template <typename T>
using TeacherCallback = std::function<void(absl::StatusOr<T>)>;

class Teacher {
 public:
  virtual ~Teacher() = default;

  // Stable for the teacher's lifetime (remote clients fetch it when made).
  virtual TeacherInfo Info() const = 0;

  virtual void ExtractNote(NoteTask task, TeacherCallback<Note> done) = 0;
  virtual void VerifyNote(VerifyTask task, TeacherCallback<Verdict> done) = 0;
  virtual void RemoveEvidence(RemoveEvidenceTask task, TeacherCallback<Negative> done) = 0;
};

}  // namespace rwr::teacher
