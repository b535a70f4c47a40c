#!/usr/bin/env bash
# Run ON the GPU machine (a device call carrying .deb; see scripts/device-deps.sh): builds the whole
# GPU-node configuration (CUDA on, services off) and runs every test there — the gpu label and the
# CPU twins — writing ctest's log to $OUT.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# The image's python3 carries HF tokenizers (the same 0.23.2 the venv pins): the parity peer.
. "$root/scripts/device-build.sh" -DRWR_TOKENIZER_PEER_PYTHON="$(command -v python3)" \
  > "$out/build.log" 2>&1
grep -E "error|FAILED" "$out/build.log" | head -20
ctest --test-dir "$root/build/gpu" -j 8 --output-on-failure "$@" > "$out/ctest.log" 2>&1
rc=$?
grep -E "tests passed|Label|^ *(gpu|cpu) *=|Total Test|\(Failed\)|\(Subprocess|Not Run" "$out/ctest.log" | head -40
exit $rc
