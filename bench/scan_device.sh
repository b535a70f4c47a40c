#!/usr/bin/env bash
# Run ON the GPU machine (device call carrying .deb, see scripts/device-deps.sh): builds only the
# scan-kernel targets, runs their GPU tests and the benchmark, and leaves logs in $OUT.
#   bash bench/scan_device.sh [build|test|bench|all|profile|sweep] [scan_bench args...]
# (build: the targets only)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
what=${1:-all}; shift || true
out=${OUT:-$root/build/scan-device-out}
mkdir -p "$out"
export CMAKE_PREFIX_PATH="$root/.deb/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export LD_LIBRARY_PATH="$root/.deb/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee "$out/gpu.txt"
# A project of only common/, scan_kernels/, its tests and the bench, so that other areas' needs
# (utf8proc, ...) do not stop this build on a bare GPU machine.
src="$root/build/gpu-scan-src"
mkdir -p "$src"
cat >"$src/CMakeLists.txt" <<CMK
cmake_minimum_required(VERSION 3.25)
project(rwr_scan VERSION 0.1.0 LANGUAGES C CXX)
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
set(RWR_CUDA ON)
set(RWR_SERVICES OFF)
set(RWR_TESTS ON)
set(RWR_BENCH OFF)
set(CMAKE_CUDA_ARCHITECTURES 90)
list(APPEND CMAKE_MODULE_PATH $root/cmake)
include(RwrDependencies)
include_directories($root)
add_subdirectory($root/common common)
add_subdirectory($root/scan_kernels scan_kernels)
enable_testing()
add_subdirectory($root/tests/scan_kernels tests)
add_executable(scan_bench $root/bench/scan_bench.cu)
target_link_libraries(scan_bench PRIVATE rwr_scan_kernels CUDA::cudart fmt::fmt)
set_property(TARGET scan_bench PROPERTY CUDA_STANDARD 17)
CMK
# -include initializer_list: common/shutdown.cc misses that include and GCC 13 (device) rejects it.
cmake -S "$src" -B "$root/build/gpu-scanonly" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_FLAGS="-include initializer_list" \
  >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$root/build/gpu-scanonly" -j "$(nproc)" --target scan_bench scan_cuda_test scan_cpu_test \
  >"$out/build.log" 2>&1 || { grep -E "error|FAILED" "$out/build.log" | head -30; exit 1; }
rc=0
if [[ $what == test || $what == all ]]; then
  (cd "$root/build/gpu-scanonly" && ctest -R "Scan|Conv" --output-on-failure -j 4 >"$out/ctest.log" 2>&1) || rc=1
  grep -E "tests passed|Failed|\(Failed\)|Skipped\)" "$out/ctest.log" | head -40
fi
if [[ $what == profile ]]; then
  # Nsight Compute, by default on one forward + backward at T = 8192 (skipping the forward-only
  # warm-up runs). NCU_KERNELS (a regex), NCU_SKIP, NCU_COUNT and NCU_NAME (the report's file
  # name in $OUT) pick other launches, e.g. NCU_KERNELS=SinglePass NCU_SKIP=3 NCU_COUNT=1.
  ncu_txt="$out/${NCU_NAME:-ncu}.txt"
  ncu --clock-control none --set full -k "regex:${NCU_KERNELS:-Scan}" \
    --launch-skip "${NCU_SKIP:-8}" --launch-count "${NCU_COUNT:-4}" \
    "$root/build/gpu-scanonly/scan_bench" --t 8192 --reps 1 "$@" >"$ncu_txt" 2>&1 || rc=1
  grep -E "Scan|SinglePass|Wide|Reduce|Duration|Issue Slots Busy|Executed Ipc A|Achieved Occupancy|Registers Per|Compute \(SM\) Throughput|Memory Throughput|Stall|Block Limit Reg|One or More|No Eligible|Warp Cycles Per Issued|Executed Instructions  " "$ncu_txt" | head -150
fi
if [[ $what == bench || $what == all ]]; then
  "$root/build/gpu-scanonly/scan_bench" --json "$out/scan_bench.json" "$@" 2>&1 | tee "$out/scan_bench.txt" || rc=1
fi
if [[ $what == sweep ]]; then
  # A second table (say, chunk counts x variants) beside the main one: sweep.txt only.
  "$root/build/gpu-scanonly/scan_bench" "$@" >"$out/sweep.txt" 2>&1 || rc=1
  grep -A200 "^op " "$out/sweep.txt"
fi
exit $rc
