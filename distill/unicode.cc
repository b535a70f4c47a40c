// Unicode helpers for the tokenizer; see unicode.h for the definitions each one follows.
#include "distill/unicode.h"

#include <algorithm>
#include <array>
#include <iterator>
#include <cstdlib>
#include <map>
#include <vector>

#include <utf8proc.h>

namespace rwr::distill::unicode {
namespace {

// Valid second-byte range for each lead byte (RFC 3629 table 3-7); other continuation bytes are
// always 80..BF.
struct LeadRule {
  int size;  // 0: not a lead byte
  unsigned char second_lo, second_hi;
};

constexpr LeadRule RuleFor(unsigned char b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b >= 0xE1 && b <= 0xEC) return {3, 0x80, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b >= 0xEE && b <= 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Number of leading bytes at p that form a prefix of a well-formed sequence (== rule.size when
// the whole character is well-formed).
int WellFormedPrefix(const unsigned char* p, const unsigned char* end, const LeadRule& rule) {
  if (rule.size == 0) return 0;
  int n = 1;
  if (rule.size == 1) return 1;
  if (p + 1 >= end || p[1] < rule.second_lo || p[1] > rule.second_hi) return n;
  n = 2;
  for (; n < rule.size; ++n) {
    if (p + n >= end || p[n] < 0x80 || p[n] > 0xBF) return n;
  }
  return n;
}

}  // namespace

Utf8Char DecodeUtf8(const unsigned char* p, const unsigned char* end) {
  const unsigned char b = p[0];
  if (b < 0x80) return {b, 1};
  const LeadRule rule = RuleFor(b);
  if (WellFormedPrefix(p, end, rule) != rule.size || rule.size == 0) return {kInvalid, 1};
  switch (rule.size) {
    case 2:
      return {((b & 0x1F) << 6) | (p[1] & 0x3F), 2};
    case 3:
      return {((b & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F), 3};
    default:
      return {((b & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F),
              4};
  }
}

int InvalidSubpartSize(const unsigned char* p, const unsigned char* end) {
  const int n = WellFormedPrefix(p, end, RuleFor(p[0]));
  return n < 1 ? 1 : n;
}

void AppendUtf8(int32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsWhitespace(int32_t cp) {
  // Unicode White_Space; identical to Oniguruma's Unicode \s (9..D, 85, Zs, Zl, Zp).
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

namespace {

struct ClassRange {
  int32_t first, last;
  CharClass cls;
};

constexpr ClassRange kClassRanges[] = {
#include "distill/unicode_classes.inc"
};

// Two-level table of the classes of all code points, built once from kClassRanges: 256-entry
// blocks, identical blocks shared (about 300 distinct blocks, ~80 KB).
class ClassTable {
 public:
  ClassTable() {
    std::vector<CharClass> all(0x110000, CharClass::kOther);
    for (const ClassRange& r : kClassRanges) {
      for (int32_t cp = r.first; cp <= r.last; ++cp) all[cp] = r.cls;
    }
    for (int32_t cp = 0; cp < 0x80; ++cp) all[cp] = AsciiClass(cp);
    std::map<std::vector<CharClass>, uint16_t> seen;
    for (int32_t block = 0; block < kBlocks; ++block) {
      std::vector<CharClass> classes(all.begin() + block * 256, all.begin() + (block + 1) * 256);
      auto [it, inserted] = seen.emplace(classes, static_cast<uint16_t>(blocks_.size() / 256));
      if (inserted) blocks_.insert(blocks_.end(), classes.begin(), classes.end());
      index_[block] = it->second;
    }
  }
  CharClass Get(int32_t cp) const { return blocks_[index_[cp >> 8] * 256 + (cp & 0xFF)]; }

 private:
  static CharClass AsciiClass(int32_t cp) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::kLetter;
    if (cp >= '0' && cp <= '9') return CharClass::kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  static constexpr int32_t kBlocks = 0x110000 / 256;
  std::array<uint16_t, kBlocks> index_{};
  std::vector<CharClass> blocks_;
};

const ClassTable& Classes() {
  static const ClassTable table;
  return table;
}

}  // namespace

CharClass Classify(int32_t cp) {
  if (cp < 0 || cp > 0x10FFFF) return CharClass::kOther;
  return Classes().Get(cp);
}

bool IsWordChar(int32_t cp) {
  if (cp < 0 || cp > 0x10FFFF) return false;
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  const CharClass c = Classify(cp);
  if (c == CharClass::kLetter) return true;
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_PC:
      return true;
    case UTF8PROC_CATEGORY_CN:  // numbers new in Unicode 16 (utf8proc has 15) are digits
      return c == CharClass::kNumber;
    default:
      break;
  }
  // Join_Control and the Other_Alphabetic symbols (circled and squared Latin letters).
  return cp == 0x200C || cp == 0x200D || (cp >= 0x24B6 && cp <= 0x24E9) ||
         (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
         (cp >= 0x1F170 && cp <= 0x1F189);
}

namespace {

void NormalizeValidRun(NormalizationForm form, std::string_view run, std::string* out) {
  bool ascii = true;
  for (unsigned char c : run) ascii &= c < 0x80;
  if (ascii) {  // every normalization form leaves ASCII unchanged
    out->append(run);
    return;
  }
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalizationForm::kNfc: options |= UTF8PROC_COMPOSE; break;
    case NormalizationForm::kNfd: options |= UTF8PROC_DECOMPOSE; break;
    case NormalizationForm::kNfkc: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalizationForm::kNfkd: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(run.data()),
                   static_cast<utf8proc_ssize_t>(run.size()), &mapped,
                   static_cast<utf8proc_option_t>(options));
  if (n < 0) {  // cannot happen for well-formed input; keep the text rather than lose it
    out->append(run);
  } else {
    out->append(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
  }
  std::free(mapped);
}

// Code points HF's normalizers do not know (generated; see scripts/gen_unicode_classes.py).
constexpr int32_t kNormalizationOpaque[] = {
#include "distill/unicode_normalization_opaque.inc"
};

bool IsNormalizationOpaque(int32_t cp) {
  return cp >= kNormalizationOpaque[0] &&
         std::binary_search(std::begin(kNormalizationOpaque), std::end(kNormalizationOpaque), cp);
}

}  // namespace

void Normalize(NormalizationForm form, std::string_view text, std::string* out) {
  out->clear();
  const auto* begin = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = begin + text.size();
  const unsigned char* run = begin;
  const unsigned char* p = begin;
  while (p < end) {
    if (*p < 0x80) {
      ++p;
      continue;
    }
    const Utf8Char c = DecodeUtf8(p, end);
    // Invalid bytes and characters HF's normalizer does not know are copied through unchanged;
    // both act as starters that nothing composes with, so the runs between them normalize apart.
    if (c.code_point == kInvalid || IsNormalizationOpaque(c.code_point)) {
      NormalizeValidRun(form, std::string_view(reinterpret_cast<const char*>(run), p - run), out);
      out->append(reinterpret_cast<const char*>(p), c.size);
      run = p + c.size;
    }
    p += c.size;
  }
  NormalizeValidRun(form, std::string_view(reinterpret_cast<const char*>(run), end - run), out);
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  const auto* begin = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto* end = begin + bytes.size();
  const unsigned char* valid = begin;  // start of the pending well-formed run
  const unsigned char* p = begin;
  while (p < end) {
    if (*p < 0x80) {
      ++p;
      continue;
    }
    const Utf8Char c = DecodeUtf8(p, end);
    if (c.code_point != kInvalid) {
      p += c.size;
      continue;
    }
    out->append(reinterpret_cast<const char*>(valid), p - valid);
    out->append("\xEF\xBF\xBD");
    p += InvalidSubpartSize(p, end);
    valid = p;
  }
  out->append(reinterpret_cast<const char*>(valid), p - valid);
}

}  // namespace rwr::distill::unicode
