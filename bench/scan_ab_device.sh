#!/usr/bin/env bash
# Run ON the GPU machine (device call carrying .deb): an A/B of the scan kernels within one call —
# H100 machines differ by up to 2% from each other, more than the changes worth measuring. Builds
# the working tree and a baseline revision's scan_kernels/ side by side (bench/scan_device.sh on
# each), runs the working tree's scan and conv GPU tests, then the benchmark of both, alternating
# A and B for --rounds rounds.
#   bash bench/scan_ab_device.sh BASE [--rounds 2] [scan_bench args...]
# BASE: a folder holding the baseline's scan_kernels/ — made here before the call with
#   mkdir -p build/ab-base && git archive REV scan_kernels | tar x -C build/ab-base
# and carried (carry: [".deb", "build/ab-base"]) — or a revision of the device's .git, which is
# the copy of the session's first call and can be older than HEAD here (seen: 20e22af there
# while HEAD here was three commits on).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
base_rev=$1; shift
rounds=2
if [[ ${1:-} == --rounds ]]; then rounds=$2; shift 2; fi
out=${OUT:-$root/build/scan-device-out}
mkdir -p "$out"
base=/tmp/rwr-scan-base
rm -rf "$base" && mkdir -p "$base"
# The baseline tree: the working tree with scan_kernels/ as of BASE_REV.
(cd "$root" && tar cf - common scan_kernels tests/scan_kernels bench cmake) | (cd "$base" && tar xf -)
ln -s "$root/.deb" "$base/.deb"  # the carried libraries, not a copy
if [[ -d $base_rev/scan_kernels ]]; then
  cp -r "$base_rev/scan_kernels" "$base/"
else
  (cd "$root" && git archive "$base_rev" scan_kernels) | (cd "$base" && tar xf -)
fi
echo "baseline: $base_rev ($(cd "$root" && git rev-parse --short HEAD 2>/dev/null) is the device's HEAD)"
OUT=$out/a bash "$root/bench/scan_device.sh" test || { echo "tests failed"; exit 1; }
OUT=$out/b bash "$base/bench/scan_device.sh" build >/dev/null 2>&1 ||
  { echo "baseline build failed"; exit 1; }
export LD_LIBRARY_PATH="$root/.deb/root/usr/lib/x86_64-linux-gnu"
for r in $(seq "$rounds"); do
  echo "== round $r: A (working tree)"
  "$root/build/gpu-scanonly/scan_bench" "$@" 2>/dev/null | grep -A30 "^op " | grep -v "^(Di\|^op"
  echo "== round $r: B ($base_rev)"
  "$base/build/gpu-scanonly/scan_bench" "$@" 2>/dev/null | grep -A30 "^op " | grep -v "^(Di\|^op"
done
