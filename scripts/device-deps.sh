#!/usr/bin/env bash
# Run HERE (the dev machine) before a device call: the GPU machines lack abseil, utf8proc and xxhash, so download the
# Debian packages (abseil, utf8proc, xxhash) and unpack them into .deb/root (git-ignored), which the device call carries
# (carry: [".deb"]). scripts/device-build.sh points CMake and the loader at it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.deb/pkgs" "$root/.deb/root"
cd "$root/.deb/pkgs"
# The marker names the package set, so adding a package re-runs the download.
marker="$root/.deb/root/.done-absl-utf8proc-xxhash"
if [[ ! -f "$marker" ]]; then
  apt-get download -q libabsl-dev libabsl20220623 libutf8proc-dev libutf8proc2 libxxhash-dev \
    libxxhash0 >/dev/null
  for f in *.deb; do dpkg -x "$f" "$root/.deb/root"; done
  rm -f ./*.deb
  touch "$marker"
fi
