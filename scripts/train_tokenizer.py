#!/usr/bin/env python3
"""Trains rwr's default tokenizer (configs/tokenizer/tokenizer.json) with Hugging Face `tokenizers`.

A byte-level BPE with GPT-NeoX-20B's settings: ByteLevel pre-tokenizer (add_prefix_space false,
trim_offsets true, use_regex true, the GPT-2 split pattern), ByteLevel decoder and post-processor,
no normalizer, all 256 byte symbols in the initial alphabet (so any byte string can be encoded),
and GPT-NeoX's special tokens <|endoftext|> (id 0) and <|padding|> (id 1). Only the vocabulary
differs: it is small (8192 by default) so the file is small and the quick start's model is cheap.

The corpus: the output of `rwr data synth` (contexts, questions and answers; the text the quick
start trains on, from another seed than the quick start's data), text generated here from --seed
(records, dialogue turns and reports with dates and numbers, multilingual sentences, emoji, code),
and the repository's own Markdown docs. Extra text files can be added with --corpus. The shipped
file was made with (the venv is the test venv; Python is never part of the pipeline):

    build/<dir>/bin/rwr data synth --out /tmp/tok_corpus.jsonl --count 300 \
        --context-tokens 4000 --min-context-tokens 500 --seed 1000
    .venv-test/bin/python scripts/train_tokenizer.py --synth-jsonl /tmp/tok_corpus.jsonl \
        --out configs/tokenizer/tokenizer.json
"""

import argparse
import glob
import json
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FIRST = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Gustav", "Hana", "Ivan", "Jun",
         "Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tomoko",
         "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zoe"]
LAST = ["Abara", "Bianchi", "Carter", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito",
        "Jansen", "Kowalski", "Larsen", "Moreau", "Nakamura", "Okafor", "Petrov", "Quispe",
        "Rossi", "Schmidt", "Tanaka", "Usman", "Varga", "Weber", "Xu", "Yilmaz", "Zhang"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Quito", "Tromsø", "Kraków", "Montréal", "Hanoi", "Lagos",
          "Zürich", "Bogotá", "Reykjavík", "Chennai", "Tbilisi", "Valparaíso", "Ulaanbaatar"]
THINGS = ["bicycle", "violin", "telescope", "greenhouse", "sailboat", "camera", "laptop",
          "garden", "bakery", "library card", "passport", "apartment", "piano", "kayak"]
COLORS = ["red", "blue", "green", "amber", "violet", "teal", "silver", "crimson", "ochre"]
ATTRS = ["favorite color", "employer", "home city", "pet's name", "blood type", "locker number",
         "project code", "badge id", "seat number", "license plate", "allergy", "mentor"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
VERBS = ["moved to", "visited", "bought", "sold", "repaired", "painted", "borrowed", "returned",
         "photographed", "described", "mentioned", "forgot about", "recommended", "reviewed"]
MULTILINGUAL = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "El niño comió una manzana en la estación de Sevilla.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από το τεμπέλικο σκυλί.",
    "我们明天在北京见面，然后一起去吃饭。",
    "東京の天気は今日とても良いです。",
    "오늘 서울의 날씨는 매우 좋습니다.",
    "आज मौसम बहुत अच्छा है।",
    "اليوم الطقس جميل جدا في القاهرة.",
    "היום מזג האוויר נעים מאוד בתל אביב.",
    "Hôm nay thời tiết ở Hà Nội rất đẹp.",
    "Bugün İstanbul'da hava çok güzel.",
    "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️ 🎉",
]
CODE = [
    "def encode(text: str) -> list[int]:\n    return [vocab[t] for t in split(text)]\n",
    "for (int i = 0; i < n; ++i) {\n  sum += x[i] * w[i];\n}\n",
    '{"id": 17, "question": "Where does Lena live?", "answer": "Osaka"}\n',
    "SELECT name, city FROM people WHERE age > 30 ORDER BY name;\n",
    "$ rwr data build --input qa.jsonl --out shards/ --seq-len 2048\n",
]


def person(rng):
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def date(rng):
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {rng.randint(1950, 2030)}"


def sentence(rng):
    kind = rng.randrange(8)
    p = person(rng)
    if kind == 0:
        return f"On {date(rng)}, {p} {rng.choice(VERBS)} {rng.choice(CITIES)}."
    if kind == 1:
        return f"{p}'s {rng.choice(ATTRS)} is {rng.choice(COLORS)}-{rng.randint(100, 9999)}."
    if kind == 2:
        return (f"Record #{rng.randint(1, 99999)}: {p}, age {rng.randint(18, 95)}, "
                f"{rng.choice(CITIES)}; balance ${rng.randint(0, 99999)}.{rng.randint(0, 99):02d}.")
    if kind == 3:
        return (f"User: I think I {rng.choice(VERBS)} the {rng.choice(THINGS)} last "
                f"{rng.choice(MONTHS)}, didn't I?\nAssistant: Yes, you said it was "
                f"{rng.choice(COLORS)} and cost {rng.randint(5, 5000)} dollars.")
    if kind == 4:
        return (f"Question: What is {p}'s {rng.choice(ATTRS)}?\nAnswer: "
                f"{rng.choice(COLORS)} {rng.randint(1, 500)}")
    if kind == 5:
        return (f"The report from {rng.choice(CITIES)} ({date(rng)}) lists {rng.randint(2, 400)} "
                f"{rng.choice(THINGS)}s, {rng.randint(0, 100)}% of them {rng.choice(COLORS)}.")
    if kind == 6:
        return rng.choice(MULTILINGUAL)
    return rng.choice(CODE)


def generated_corpus(rng, count):
    for _ in range(count):
        yield " ".join(sentence(rng) for _ in range(rng.randint(3, 12))) + "\n"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(root, "configs/tokenizer/tokenizer.json"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--paragraphs", type=int, default=20000, help="generated paragraphs")
    parser.add_argument("--synth-jsonl", nargs="*", default=[],
                        help="`rwr data synth` output; its context, question and answer fields")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", nargs="*", default=[], help="extra UTF-8 text files")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    texts = list(generated_corpus(rng, args.paragraphs))
    docs = sorted(glob.glob(os.path.join(root, "docs", "*.md")) + [os.path.join(root, "README.md")])
    for path in args.synth_jsonl:
        with open(path, encoding="utf-8") as f:
            for line in f:
                item = json.loads(line)
                texts.append(item["context"] + "\n" + item["question"] + "\n" + item["answer"] + "\n")
    for path in docs + args.corpus:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                       use_regex=True)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                           use_regex=True)
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                    use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=2,
                                  special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tokenizer.save(args.out, pretty=True)
    print(f"train_tokenizer: {args.out}: vocab {tokenizer.get_vocab_size()}, "
          f"{len(texts)} texts, eos id {tokenizer.token_to_id('<|endoftext|>')}", file=sys.stderr)


if __name__ == "__main__":
    main()
