#!/usr/bin/env python3
"""Hugging Face side of bench/tokenizer_bench (one thread; never part of the pipeline).

  tokenizer_bench_hf.py --generate OUT.txt       writes the default benchmark text (seeded)
  tokenizer_bench_hf.py --tokenizer T --text F   times HF on F, one document per line; prints JSON
                                                 {encode_s, encode_batch_s, decode_s, tokens, ids_hash}
"""

import os

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import json
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def generate(path):
    sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
    import train_tokenizer  # the same generator the shipped tokenizer was trained on, other seed

    rng = random.Random(99)
    parts = list(train_tokenizer.generated_corpus(rng, 14000))
    with open(os.path.join(HERE, "..", "tests", "tokenizer", "data", "bundled.txt"),
              encoding="utf-8") as f:
        parts.append(f.read())
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(parts))


def lines(text):
    parts = text.split("\n")
    docs = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        docs.append(parts[-1])
    return docs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--generate")
    parser.add_argument("--tokenizer")
    parser.add_argument("--text")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if args.generate:
        generate(args.generate)
        return

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.text, encoding="utf-8") as f:
        docs = lines(f.read())
    all_ids = []
    for doc in docs:  # warm-up pass (fills HF's word cache, as rwr's cold pass does)
        all_ids.extend(tok.encode(doc).ids)
    encode, batch = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        for doc in docs:
            tok.encode(doc)
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        tok.encode_batch(docs)
        batch.append(time.perf_counter() - start)
    start = time.perf_counter()
    tok.decode(all_ids, skip_special_tokens=False)
    decode = time.perf_counter() - start
    h = 1469598103934665603
    for i in all_ids:
        h = ((h ^ i) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    print(json.dumps({"encode_s": statistics.median(encode), "encode_batch_s": statistics.median(batch),
                      "decode_s": decode, "tokens": len(all_ids), "ids_hash": h}))


if __name__ == "__main__":
    main()
