#!/usr/bin/env bash
# The README's main job on the embedded default, end to end: synthetic long-context QA → built-in
# extractive teacher → note cache → token shards → train a tiny Mamba (GPU if present, else CPU)
# → export in the Hugging Face layout → rwr eval on held-out items. Does its own setup
# (dependencies, build), then runs scripts/pipeline.sh. Everything goes to runs/quickstart/
# (override with RWR_QUICKSTART_OUT); a rerun starts fresh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target rwr
exec bash scripts/pipeline.sh "$root/build/release/bin/rwr" "${RWR_QUICKSTART_OUT:-runs/quickstart}"
