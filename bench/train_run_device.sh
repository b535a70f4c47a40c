#!/usr/bin/env bash
# Run ON the GPU machine after scripts/device-build.sh (rwr built): `rwr train` itself — the loop
# users run, not train_bench — on a Mamba-size model (MODEL, default mamba-1.4b, random init) for
# STEPS steps (default 4) in two runs: the first stops at half way with a checkpoint, the second
# resumes and finishes. Prints every step's tokens/s, GPU peak and host memory (metrics.jsonl) and
# copies the metrics and logs to $OUT. DATA: a dataset `rwr data build` wrote (on this machine,
# carried: a build with services off has no `rwr distill`), default runs/device-data/data.
# CHECKPOINT_EVERY (default 0: only where each run stops) adds checkpoints written beside the steps.
set -euo pipefail
. "$(dirname "$0")/device_env.sh"
model=${MODEL:-$root/configs/models/mamba-1.4b.yaml}
data=${DATA:-$root/runs/device-data/data}
steps=${STEPS:-4}
checkpoint_every=${CHECKPOINT_EVERY:-0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  cat "$model"
  cat <<EOF
train:
  steps: $steps
  batch_size: 4
  lr: 1.0e-4
  warmup_steps: 1
  checkpoint_every: $checkpoint_every
  keep_checkpoints: 1
  log_every: 1
  device: cuda
EOF
} >"$work/train.yaml"
args=(train --config "$work/train.yaml" --set data.dir="$data" --set train.out_dir="$work/run")
"$rwr" "${args[@]}" --set train.max_steps_this_run=$((steps / 2)) 2>&1 | tee "$out/train_run_1.log"
"$rwr" "${args[@]}" 2>&1 | tee "$out/train_run_2.log"
cp "$work/run/metrics.jsonl" "$out/train_run_metrics.jsonl"
python3 - "$out/train_run_metrics.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "step" not in r or "tokens_per_s" not in r:
        continue
    print(f"step {r['step']}: {r['tokens_per_s']:.0f} tok/s, GPU peak {r['peak_mem_gib']:.1f} GiB, "
          f"host peak {r.get('peak_host_gib', 0):.1f} GiB, host now {r.get('host_gib', 0):.2f} GiB"
          + (f", paused {r['checkpoint_pause_s']:.1f} s for a checkpoint"
             if "checkpoint_pause_s" in r else ""))
PY
grep -h "train: checkpoint\|train: waiting" "$out"/train_run_[12].log
