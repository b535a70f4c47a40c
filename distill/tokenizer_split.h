// The GPT-2 split pattern of Hugging Face's ByteLevel pre-tokenizer, by hand:
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// with Oniguruma's classes (\p{L} = general category L*, \p{N} = N*, \s = Unicode White_Space)
// and its leftmost-first alternation. Every byte of the input lands in exactly one piece, in order.
// Bytes that are not well-formed UTF-8 are one-byte characters of class "other" ([^\s\p{L}\p{N}]).
#pragma once

#include <string_view>
#include <vector>

#include "distill/unicode.h"

namespace rwr::distill {

namespace split_internal {

inline constexpr unicode::CharClass kL = unicode::CharClass::kLetter;
inline constexpr unicode::CharClass kN = unicode::CharClass::kNumber;
inline constexpr unicode::CharClass kS = unicode::CharClass::kSpace;
inline constexpr unicode::CharClass kO = unicode::CharClass::kOther;

// Class of each ASCII byte.
inline constexpr unicode::CharClass kAsciiClass[128] = {
    kO, kO, kO, kO, kO, kO, kO, kO, kO, kS, kS, kS, kS, kS, kO, kO,  // 00-0F: \t \n \v \f \r
    kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO,  // 10-1F
    kS, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO, kO,  // 20-2F: space, punct
    kN, kN, kN, kN, kN, kN, kN, kN, kN, kN, kO, kO, kO, kO, kO, kO,  // 30-3F: digits
    kO, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL,  // 40-4F
    kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kO, kO, kO, kO, kO,  // 50-5F
    kO, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL,  // 60-6F
    kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kL, kO, kO, kO, kO, kO,  // 70-7F
};

struct ClassifiedChar {
  unicode::CharClass cls;
  int size;
};

inline ClassifiedChar CharAt(const unsigned char* p, const unsigned char* end) {
  if (*p < 0x80) return {kAsciiClass[*p], 1};
  const unicode::Utf8Char c = unicode::DecodeUtf8(p, end);
  return {unicode::Classify(c.code_point), c.size};
}

}  // namespace split_internal

// Calls emit(std::string_view piece) for each piece of `text`, in order.
template <typename Emit>
void SplitGpt2(std::string_view text, Emit&& emit) {
  using namespace split_internal;
  const auto* begin = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = begin + text.size();
  const unsigned char* p = begin;
  auto piece = [&](const unsigned char* from, const unsigned char* to) {
    emit(std::string_view(reinterpret_cast<const char*>(from), static_cast<size_t>(to - from)));
  };
  while (p < end) {
    // 's|'t|'re|'ve|'m|'ll|'d
    if (*p == '\'' && p + 1 < end) {
      const unsigned char c1 = p[1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        piece(p, p + 2);
        p += 2;
        continue;
      }
      if (p + 2 < end) {
        const unsigned char c2 = p[2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
          piece(p, p + 3);
          p += 3;
          continue;
        }
      }
    }
    // ' ?\p{L}+' | ' ?\p{N}+' | ' ?[^\s\p{L}\p{N}]+'
    const unsigned char* q = (*p == ' ' && p + 1 < end) ? p + 1 : p;
    ClassifiedChar c = CharAt(q, end);
    if (c.cls != kS) {
      const unicode::CharClass cls = c.cls;
      q += c.size;
      while (q < end) {
        c = CharAt(q, end);
        if (c.cls != cls) break;
        q += c.size;
      }
      piece(p, q);
      p = q;
      continue;
    }
    // '\s+(?!\S)' | '\s+': a whitespace run keeps its last character for the next piece when a
    // non-space follows (so " word" stays together), unless the run is that one character.
    q = p;
    const unsigned char* last = p;
    int count = 0;
    while (q < end) {
      c = CharAt(q, end);
      if (c.cls != kS) break;
      last = q;
      q += c.size;
      ++count;
    }
    const unsigned char* stop = (q == end || count == 1) ? q : last;
    piece(p, stop);
    p = stop;
  }
}

// The pieces as a list (tests and tools).
inline std::vector<std::string_view> SplitGpt2(std::string_view text) {
  std::vector<std::string_view> pieces;
  SplitGpt2(text, [&](std::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

}  // namespace rwr::distill
