#!/usr/bin/env python3
"""Test peer for rwr's tokenizer parity test: runs Hugging Face `tokenizers` (PyPI) live.

    hf_peer.py --shipped configs/tokenizer/tokenizer.json --text bundled.txt \
        [--synth-jsonl items.jsonl] --out-dir DIR

Writes into DIR:
  <name>.json     each tokenizer under test: the shipped one, and variants derived from it that
                  exercise what the shipped one does not (normalizers, add_prefix_space,
                  use_regex false, "a b" merges, added tokens with every flag, ignore_merges)
  cases.jsonl     one line per (tokenizer, text): {"tokenizer", "kind", "text", "ids", "decoded",
                  "pieces"}; pieces (the pre-tokenizer split of the text, as substrings) only for
                  the shipped tokenizer
  decodes.jsonl   one line per (tokenizer, id list): {"tokenizer", "ids", "skip_special", "text"}
                  for random id lists (partial UTF-8 sequences, special tokens, unknown ids)
The strings come from a seeded generator (--seed), so a failure reproduces.
"""

import argparse
import copy
import json
import os
import random

from tokenizers import Tokenizer

CJK = "我们明天在北京见面然后一起去吃饭東京の天気は今日とても良いです오늘서울의날씨는매우좋습니다漢字仮名交じり文"
EMOJI = ["😀", "👍", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "❤️", "🧑🏿‍💻", "👩‍❤️‍💋‍👨",
         "🤷‍♀️", "1️⃣", "#️⃣", "🫠", "🦀", "✨", "🎉🎉🎉"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "\u0915\u094d\u0937",
             "\u0e01\u0e34\u0e48", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f",
             "\u1100\u1161\u11a8", "\u05e9\u05c1\u05b8", "i\u0307", "\u0627\u0650"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000",
          "\u2028", "\u2003", "\u200b", "\u202f", "\u0085", "\u180e", " \t \n"]
CONTRACTIONS = ["don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "IT'S", "'s", "''",
                "'t'", "O'Neil", "rock'n'roll", "’s", "'re'", "l'ordinateur"]
WORDS = ["the", "quick", "brown", "fox", "Record", "balance", "Zürich", "naïve", "résumé",
         "Москва", "Ελλάδα", "東京", "مرحبا", "שלום", "नमस्ते", "ไทย", "x", "A", "I", "ß", "ǅ"]
PUNCT = list(".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`\"'") + ["...", "—", "–", "«»", "¿", "¡", "©", "°"]
ADDED_LIKE = ["<|endoftext|>", "<|padding|>", "<|endoftext|", "|endoftext|>", "<|user|>",
              "[MASK]", "ﬁre", "日本語", "  ", "<|endoftext|><|endoftext|>"]


def random_code_point(rng):
    while True:
        r = rng.random()
        if r < 0.4:
            cp = rng.randrange(0x20, 0x3000)
        elif r < 0.7:
            cp = rng.randrange(0x3000, 0x10000)
        elif r < 0.9:
            cp = rng.randrange(0x10000, 0x30000)
        else:
            cp = rng.randrange(0, 0x110000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def piece(rng):
    kind = rng.randrange(12)
    if kind == 0:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(1, 12)))
    if kind == 1:
        return rng.choice(EMOJI)
    if kind == 2:
        return rng.choice(COMBINING)
    if kind == 3:
        return rng.choice(SPACES) * rng.randint(1, 3)
    if kind == 4:
        return str(rng.randint(0, 10 ** rng.randint(1, 15)))
    if kind == 5:
        return rng.choice(CONTRACTIONS)
    if kind == 6:
        return rng.choice(WORDS)
    if kind == 7:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 4)))
    if kind == 8:
        return "".join(random_code_point(rng) for _ in range(rng.randint(1, 6)))
    if kind == 9:
        return rng.choice(ADDED_LIKE)
    if kind == 10:
        return " " + rng.choice(WORDS)
    return rng.choice(["\n", " ", "  ", ". ", ", "])


def test_strings(rng, bundled_text):
    strings = ["", " ", "  ", "\n", "\t", "a", "'s", "<|endoftext|>", " <|endoftext|> ",
               "Hello world", "Hello  world", "Hello\n\nworld", "  leading", "trailing  ",
               "\u00a0\u00a0x", "x \u3000y", "1234567890" * 5, "A" * 3000, "é" * 700,
               "🙂" * 300, ".!?" * 400, "ab" * 2000, "\n" * 100, " " * 100 + "x",
               "\t \t \n" * 30, "don't you'll we've I'd they're it's", "こんにちは世界" * 50]
    for _ in range(2200):
        strings.append("".join(piece(rng) for _ in range(rng.randint(1, 12))))
    for _ in range(200):
        strings.append("".join(random_code_point(rng) for _ in range(rng.randint(1, 40))))
    lines = bundled_text.split("\n")
    strings.extend(line for line in lines if line)
    strings.append(bundled_text)
    return strings


def variants(shipped):
    """Tokenizer variants as (name, tokenizer.json dict)."""
    out = [("shipped", shipped)]

    v = copy.deepcopy(shipped)  # NFKC, prefix space, "a b" merges, added tokens with every flag
    v["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "NFKC"}]}
    v["pre_tokenizer"]["add_prefix_space"] = True
    v["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in v["model"]["merges"]]
    next_id = max(v["model"]["vocab"].values()) + 1
    extra = [("<|user|>", dict(special=True, normalized=False, lstrip=True, rstrip=True)),
             ("[MASK]", dict(special=True, normalized=False, single_word=True)),
             ("ﬁre", dict(special=False, normalized=True)),
             ("日本語", dict(special=False, normalized=False, single_word=True)),
             ("  ", dict(special=False, normalized=True)),
             ("    ", dict(special=False, normalized=True)),
             ("ing", dict(special=False, normalized=True, rstrip=True))]
    for content, flags in extra:
        in_vocab = v["model"]["vocab"].get(content)  # "ing": an added token the model also has
        token = {"id": next_id if in_vocab is None else in_vocab, "content": content,
                 "single_word": False, "lstrip": False, "rstrip": False, "normalized": True,
                 "special": False}
        token.update(flags)
        v["added_tokens"].append(token)
        next_id += in_vocab is None
    out.append(("nfkc_added", v))

    v = copy.deepcopy(shipped)  # NFC, no regex split (whole pieces are one BPE word), ignore_merges
    v["normalizer"] = {"type": "NFC"}
    v["pre_tokenizer"]["use_regex"] = False
    v["model"]["ignore_merges"] = True
    out.append(("nfc_noregex", v))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shipped", required=True)
    parser.add_argument("--text", required=True, help="bundled UTF-8 text")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--synth-jsonl", help="`rwr data synth` items: their fields are texts too")
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()

    with open(args.shipped, encoding="utf-8") as f:
        shipped = json.load(f)
    with open(args.text, encoding="utf-8") as f:
        bundled = f.read()
    rng = random.Random(args.seed)
    strings = test_strings(rng, bundled)
    if args.synth_jsonl:  # the pipeline's own data: each field, and the whole item as one text
        with open(args.synth_jsonl, encoding="utf-8") as f:
            for line in f:
                item = json.loads(line)
                fields = [item["context"], item["question"], item["answer"]]
                strings.extend(fields + ["\n\n".join(fields) + "<|endoftext|>"])
    os.makedirs(args.out_dir, exist_ok=True)

    with open(os.path.join(args.out_dir, "cases.jsonl"), "w") as cases, \
         open(os.path.join(args.out_dir, "decodes.jsonl"), "w") as decodes:
        for name, spec in variants(shipped):
            path = os.path.join(args.out_dir, name + ".json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(spec, f, ensure_ascii=False)
            tok = Tokenizer.from_file(path)
            pre = tok.pre_tokenizer
            for text in strings:
                ids = tok.encode(text).ids
                line = {"tokenizer": name, "text": text, "ids": ids,
                        "decoded": tok.decode(ids, skip_special_tokens=False)}
                if name == "shipped":
                    pieces = [text[s:e] for _, (s, e) in pre.pre_tokenize_str(text)]
                    assert "".join(pieces) == text
                    line["pieces"] = pieces
                cases.write(json.dumps(line) + "\n")
            size = tok.get_vocab_size(with_added_tokens=True)
            for _ in range(300):
                ids = [rng.randrange(-2, size + 3) if rng.random() < 0.05 else rng.randrange(size)
                       for _ in range(rng.randint(0, 20))]
                hf_ids = [i for i in ids if 0 <= i]  # HF takes unsigned ids
                skip = rng.random() < 0.3
                decodes.write(json.dumps({"tokenizer": name, "ids": hf_ids, "skip_special": skip,
                                          "text": tok.decode(hf_ids, skip_special_tokens=skip)})
                              + "\n")


if __name__ == "__main__":
    main()
