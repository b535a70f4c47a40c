#!/usr/bin/env bash
# The README's main job, shortened for CI: every stage runs for real on the embedded default
# (synth → built-in teacher → cache → shards → train a tiny model on CPU → export → eval), then
# the outputs are checked: notes were kept, shards carry loss tokens, the loss fell, the export is
# a loadable Hugging Face layout (read back by the PyPI safetensors peer when the venv is there),
# and every held-out item has a prediction with its segment notes.
set -euo pipefail
rwr=$1
root=$2
out=$3
venv_python=$root/.venv-test/bin/python

log=$(bash "$root/scripts/pipeline.sh" "$rwr" "$out" --set train.steps=16 \
  --set train.checkpoint_every=8 --set train.log_every=4 2>&1) || { echo "$log"; exit 1; }

fail() { echo "$log" | tail -40; echo "FAIL: $*"; exit 1; }
grep -q "quickstart summary" <<<"$log" || fail "no summary"
python3 - "$out" <<'PY' || fail "pipeline outputs are wrong"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
d = json.loads((out / "distill_summary.json").read_text())
assert d["items"] == 64 and d["notes_kept"] > 32 and d["failures"] == 0, d
data = json.loads((out / "data_summary.json").read_text())
assert data["documents"] > 0 and 0 < data["loss_fraction"] < 1, data
losses = [json.loads(l)["loss"] for l in (out / "train/metrics.jsonl").read_text().splitlines() if l.strip()]
assert len(losses) == 16 and losses[-1] < losses[0] - 0.4, losses
config = json.loads((out / "export/config.json").read_text())
assert config["model_type"] == "mamba" and config["vocab_size"] >= 8192, config
for f in ("model.safetensors", "tokenizer.json"):
    assert (out / "export" / f).stat().st_size > 0, f
predictions = [json.loads(l) for l in (out / "eval.jsonl").read_text().splitlines()]
assert [p["id"] for p in predictions] == [f"synth-2-{i:06d}" for i in range(8)], predictions
assert all(p["segments"] and p["reference"] for p in predictions), predictions[0]
PY
if [[ -x "$venv_python" ]]; then
  "$venv_python" - "$out/export/model.safetensors" <<'PY' || fail "safetensors peer cannot read the export"
import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    names = list(f.keys())
assert "backbone.embeddings.weight" in names and "backbone.norm_f.weight" in names, names[:5]
PY
fi
echo "pipeline ok: $(grep 'train loss' <<<"$log")"
