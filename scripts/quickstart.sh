#!/usr/bin/env bash
# The README's main job on the embedded default, end to end, on this machine (GPU if present,
# else CPU). Does its own setup (dependencies, build). Output goes to runs/quickstart/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target rwr
rwr=build/release/bin/rwr
out=${RWR_QUICKSTART_OUT:-runs/quickstart}
mkdir -p "$out"

"$rwr" --version
"$rwr" config show --config configs/quickstart.yaml >"$out/resolved_config.yaml"
echo "quickstart: resolved config in $out/resolved_config.yaml"
