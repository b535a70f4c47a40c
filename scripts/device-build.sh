#!/usr/bin/env bash
# Run ON the GPU machine (from a device call carrying .deb, see scripts/device-deps.sh): configures
# the gpu-node preset (CUDA on, services off) against the carried abseil and builds. Source it
# (`. scripts/device-build.sh`) so LD_LIBRARY_PATH stays set for the tests that follow.
# RWR_BUILD_TARGETS="rwr train_bench" builds only those (a shorter call).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CMAKE_PREFIX_PATH="$root/.deb/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export LD_LIBRARY_PATH="$root/.deb/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=0
mkdir -p "$root/build"
cmake -S "$root" -B "$root/build/gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRWR_SERVICES=OFF \
  -DRWR_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 "$@" >"$root/build/gpu-configure.log" 2>&1 \
  || { cat "$root/build/gpu-configure.log"; return 1 2>/dev/null || exit 1; }
grep -A8 'rwr .* configuration' "$root/build/gpu-configure.log"
cmake --build "$root/build/gpu" -j "$(nproc)" ${RWR_BUILD_TARGETS:+--target $RWR_BUILD_TARGETS} 2>&1 |
  grep -E 'error|FAILED|warning: .*spill'
true
