#!/usr/bin/env bash
# Installs every Debian package that rwr's build, tests and deploy tests need, plus a Python
# virtualenv (.venv-test/) holding the test peers from PyPI. Idempotent and quiet: a second run
# with everything present returns in about a second. Run as root on Debian 12.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

debian_packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libabsl-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  librocksdb-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  libyaml-cpp-dev nlohmann-json3-dev libfmt-dev libspdlog-dev libcli11-dev
  libssl-dev libxxhash-dev libre2-dev libutf8proc-dev
  slurm-wlm munge
  python3-venv
)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
  log=$(mktemp)
  if ! { export DEBIAN_FRONTEND=noninteractive
         apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-deps: apt-get failed installing: ${missing[*]}" >&2
    exit 1
  fi
  rm -f "$log"
fi

# Test peers (never part of the pipeline): HF tokenizers + safetensors for parity, grpcio for an
# outside client, mlserver as a real KServe v2 server. Pinned so CI is reproducible.
venv="$root/.venv-test"
python_packages=(tokenizers==0.23.2 safetensors==0.8.0 numpy mlserver==1.7.1 grpcio grpcio-tools)
stamp="$venv/.rwr-installed"
want=$(printf '%s\n' "${python_packages[@]}")
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  python=$(command -v python3)
  log=$(mktemp)
  if ! { "$python" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check "${python_packages[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-deps: pip failed installing the test peers into $venv" >&2
    exit 1
  fi
  rm -f "$log"
  printf '%s' "$want" >"$stamp"
fi
