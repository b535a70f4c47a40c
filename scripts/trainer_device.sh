#!/usr/bin/env bash
# Run ON the GPU machine (a device call carrying .deb, see scripts/device-deps.sh): builds only the
# trainer's GPU targets, runs the CUDA parity test (HF fixtures), the training-step benchmark at
# Mamba-2.8B shapes, and (when given export directories) the HF from_pretrained check of rwr
# exports. Logs and JSON go to $OUT.
#   bash scripts/trainer_device.sh [--bench-args "..."|none] [--exports "dir1 dir2"]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out}
mkdir -p "$out"
bench_args="--cases 2048x1,2048x4,8192x1 --long 32768,65536,131072 --steps 5"
exports=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --bench-args) bench_args=$2; shift 2 ;;
    --exports) exports=$2; shift 2 ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
done
export CMAKE_PREFIX_PATH="$root/.deb/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export LD_LIBRARY_PATH="$root/.deb/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
git -C "$root" rev-parse --short HEAD 2>/dev/null | tee "$out/commit.txt"
for d in $exports; do
  PYTHONUNBUFFERED=1 python3 "$root/scripts/make_hf_fixtures.py" --check-export "$d" 2>&1 \
    | grep -v -i "warn\|falling back" | tee -a "$out/hf_export_check.log"
done
cmake -S "$root" -B "$root/build/gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRWR_SERVICES=OFF \
  -DRWR_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$root/build/gpu" -j "$(nproc)" --target mamba_cuda_test train_bench >"$out/build.log" 2>&1 \
  || { grep -E "error" -A5 "$out/build.log" | head -60; exit 1; }
"$root/build/gpu/tests/trainer/mamba_cuda_test" 2>&1 | tee "$out/mamba_cuda_test.log" | grep -E "OK|FAIL|rel|Failure|Expected|Which|actual|\.cc:"
[[ "$bench_args" == none ]] && exit 0
cd "$root" && ./build/gpu/bench/train_bench --model configs/models/mamba-2.8b.yaml $bench_args \
  --json "$out/train_bench.json" 2>&1 | tee "$out/train_bench.log"
