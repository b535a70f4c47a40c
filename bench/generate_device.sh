#!/usr/bin/env bash
# Run ON the GPU machine after scripts/device-test.sh (or scripts/device-build.sh) in the same
# call: `rwr generate` with Mamba-2.8B shapes (random init, bf16 weights) on the GPU — a long
# context (about 32k tokens) in 2048-token segments, a note per segment, then the answer — with
# the segment notes written one at a time and 16 at once, and the same on the tiny model on the
# CPU for scale. Writes generate_*.json (the --json output: tokens, seconds) and the GPU memory
# in use over each GPU run (generate_*_mem.txt, MiB) to $OUT.
set -euo pipefail
. "$(dirname "$0")/device_env.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A context of about 32k tokens: the synthetic QA generator's text.
"$rwr" data synth --out "$work/qa.jsonl" --count 1 --context-tokens 32000 --seed 5 --log-level warn
python3 - "$work" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
item = json.loads((w / "qa.jsonl").read_text().splitlines()[0])
(w / "ctx.txt").write_text(item["context"])
(w / "question.txt").write_text(item["question"])
PY
question=$(cat "$work/question.txt")
"$rwr" model init --config "$root/configs/models/mamba-2.8b.yaml" --out "$work/m28" --dtype bf16 \
  --log-level warn
for at_once in 16 1; do
  # GPU memory in use (the CUDA context included), sampled every 50 ms over the run.
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 \
    > "$out/generate_m28_rows${at_once}_mem.txt" &
  sampler=$!
  "$rwr" generate --model "$work/m28" --tokenizer "$root/configs/tokenizer/tokenizer.json" \
    --context-file "$work/ctx.txt" --question "$question" --segment-tokens 2048 \
    --segments-at-once "$at_once" --max-note-tokens 64 --max-answer-tokens 32 --device cuda \
    --precision bf16 --json --log-level warn | tee "$out/generate_m28_bf16_rows$at_once.json"
  kill "$sampler"
  echo "rows $at_once: GPU memory in use at most $(sort -n "$out/generate_m28_rows${at_once}_mem.txt" | tail -1) MiB"
done
"$rwr" model init --config "$root/configs/models/tiny.yaml" --out "$work/tiny" --log-level warn
"$rwr" generate --model "$work/tiny" --tokenizer "$root/configs/tokenizer/tokenizer.json" \
  --context-file "$work/ctx.txt" --question "$question" --segment-tokens 2048 \
  --max-note-tokens 64 --max-answer-tokens 32 --device cpu --json --log-level warn \
  | tee "$out/generate_tiny_cpu.json"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$out/generate_gpu.txt"
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
one, many = (json.loads((out / f"generate_m28_bf16_rows{n}.json").read_text()) for n in (1, 16))
same = sum(a["note"] == b["note"] for a, b in zip(one["segments"], many["segments"]))
print(f"segment notes equal one at a time and 16 at once: {same} of {len(one['segments'])}; "
      f"{one['seconds']:.2f} s vs {many['seconds']:.2f} s")
PY
