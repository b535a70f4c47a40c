// Unicode pieces the tokenizer needs, with the exact definitions Hugging Face `tokenizers` uses:
// strict UTF-8 decoding, the character classes of the GPT-2 split pattern (Oniguruma's \p{L},
// \p{N}, \s), Rust's char::is_whitespace / is_alphanumeric (for added-token flags), Unicode
// normalization forms (utf8proc), and UTF-8 repair as Rust's String::from_utf8_lossy does it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rwr::distill::unicode {

// One character read from UTF-8: its code point, or kInvalid when the bytes at that position are
// not a well-formed sequence; `size` is the byte length (1 for an invalid byte).
inline constexpr int32_t kInvalid = -1;
struct Utf8Char {
  int32_t code_point;
  int size;
};

// Reads the character at `p` (p < end). Well-formed means the Unicode / RFC 3629 definition:
// no overlong forms, no surrogates, nothing above U+10FFFF.
Utf8Char DecodeUtf8(const unsigned char* p, const unsigned char* end);

// Length of the maximal ill-formed subpart at `p` (p < end, not a well-formed character there):
// the longest prefix of a well-formed sequence, at least 1. Each such subpart is one U+FFFD.
int InvalidSubpartSize(const unsigned char* p, const unsigned char* end);

// Appends the UTF-8 of `code_point` (which must be a Unicode scalar value).
void AppendUtf8(int32_t code_point, std::string* out);

// Classes of the GPT-2 split pattern. kOther is everything else, invalid bytes included. The
// table (unicode_classes.inc) is generated from `tokenizers` itself (Oniguruma, Unicode 16), not
// from utf8proc (Unicode 15), so letters and numbers new in Unicode 16 split as HF splits them.
enum class CharClass : uint8_t { kLetter, kNumber, kSpace, kOther };
CharClass Classify(int32_t code_point);  // kOther for kInvalid

// What the Rust regex crate's \s and \w match (HF tests an added token's flags with them):
// \s is Unicode White_Space; \w is Alphabetic, marks, decimal digits, connector punctuation and
// Join_Control. Alphabetic is taken as the L class above plus Nl and the Other_Alphabetic symbols
// (circled/squared letters); Other_Alphabetic marks are covered by "marks".
bool IsWhitespace(int32_t code_point);
bool IsWordChar(int32_t code_point);

// Unicode normalization forms (utf8proc, Unicode 15, restricted to what HF knows: see below).
enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };
// Normalizes `text` into `out` (replacing its contents). Bytes that are not well-formed UTF-8, and
// the ~250 code points that HF's normalizer tables (older than Unicode 11) do not know but utf8proc
// would change (unicode_normalization_opaque.inc, generated from `tokenizers`), are copied through
// unchanged and split the text into runs that are normalized separately — exactly what HF does
// with a character it does not know.
void Normalize(NormalizationForm form, std::string_view text, std::string* out);

// Appends `bytes` to `out` with every maximal ill-formed subpart replaced by U+FFFD.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

}  // namespace rwr::distill::unicode
