#!/usr/bin/env bash
# The README's test command: installs what is missing, builds (Release, ccache), runs every test
# that can run on this machine. GPU tests skip cleanly without a GPU; on a GPU node run
# `ctest --test-dir build/release -L gpu`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
ctest --test-dir build/release --output-on-failure -j "$(nproc)" "$@"
