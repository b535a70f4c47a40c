#!/usr/bin/env bash
# The main job's stages, given a built rwr: synth → distill (built-in teacher) → cache inspect →
# data build → train (configs/train_tiny.yaml; GPU if present, else CPU) → export → eval on
# held-out items (rwr eval: a note per segment, then the answer) → summary.
#   scripts/pipeline.sh RWR_BINARY OUT_DIR [extra `rwr train` args, e.g. --set train.steps=10]
# scripts/quickstart.sh runs it after setup; the e2e test (tests/e2e) runs a short variant in CI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rwr=$1
out=$2
shift 2
[[ -n "$out" && "$out" != "/" ]] || { echo "pipeline.sh: give an output directory" >&2; exit 2; }
rm -rf "$out"
mkdir -p "$out"
set -x
"$rwr" --version
"$rwr" data synth --config configs/quickstart.yaml --out "$out/qa.jsonl"
"$rwr" distill run --config configs/quickstart.yaml --input "$out/qa.jsonl" \
  --teacher builtin:extractive --cache "$out/cache" --summary-json "$out/distill_summary.json"
"$rwr" cache inspect "$out/cache"
"$rwr" data build --config configs/quickstart.yaml --input "$out/qa.jsonl" --cache "$out/cache" \
  --tokenizer configs/tokenizer/tokenizer.json --out "$out/data" --seq-len 1024
"$rwr" data inspect "$out/data" --json >"$out/data_summary.json"
"$rwr" train --config configs/train_tiny.yaml --set data.dir="$out/data" \
  --set train.out_dir="$out/train" "$@"
"$rwr" export --checkpoint "$out/train" --out "$out/export"
"$rwr" checkpoint inspect "$out/train"
# Held-out questions (another seed) answered the RwR way by the exported model.
"$rwr" data synth --config configs/quickstart.yaml --seed 2 --count 8 --out "$out/heldout.jsonl"
"$rwr" eval --model "$out/export" --input "$out/heldout.jsonl" --segment-tokens 256 \
  --max-note-tokens 48 --max-answer-tokens 16 --out "$out/eval.jsonl" | tee "$out/eval.txt"
set +x

# One summary: what the teacher kept, what training saw, how the loss moved, where the model is.
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
distill = json.loads((out / "distill_summary.json").read_text())
metrics = [json.loads(l) for l in (out / "train/metrics.jsonl").read_text().splitlines() if l.strip()]
losses = [m["loss"] for m in metrics if m.get("kind", "train") == "train" and "loss" in m]
print()
print("quickstart summary")
print(f"  items {distill['items']}, notes kept {distill['notes_kept']}, "
      f"dropped by verification {distill['dropped_by_verification']}, "
      f"negatives {distill['negatives']}, teacher calls {distill['teacher_calls']}")
data = json.loads((out / "data_summary.json").read_text())
print(f"  samples {data.get('documents', data.get('samples', '?'))}, rows {data.get('rows', '?')}, "
      f"tokens {data.get('tokens', '?')}")
if losses:
    print(f"  train loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} logged steps")
print(f"  exported Hugging Face model: {out / 'export'}")
first = json.loads((out / "eval.jsonl").read_text().splitlines()[0])
print(f"  held-out {(out / 'eval.txt').read_text().strip()}")
print(f"  e.g. Q: {first['question']}  reference: {first['reference']!r}  answer: {first['answer']!r}")
PY
