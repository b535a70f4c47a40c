#!/usr/bin/env bash
# Run ON the GPU machine (a device call carrying .deb, see scripts/device-deps.sh): builds only the
# trainer's GPU targets, runs the CUDA model tests (HF fixtures, determinism), the training-step
# benchmark at Mamba-2.8B shapes — each --bench argument list in its own process, so one that runs
# out of memory does not starve the next — optionally an Nsight Systems kernel summary of one case,
# and (when given export directories) the HF from_pretrained check of rwr exports.
#   bash scripts/trainer_device.sh [--bench "train_bench args"]... [--nsys "train_bench args"]
#                                  [--exports "dir1 dir2"] [--no-test]
# Output in $OUT (few files, the device tool returns at most 8): trainer_device.log (everything),
# train_bench.jsonl (one JSON result per bench run), nsys_kernels.txt.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out}
mkdir -p "$out"
log="$out/trainer_device.log"
benches=()
nsys_args=""
exports=""
run_test=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --bench) benches+=("$2"); shift 2 ;;
    --nsys) nsys_args=$2; shift 2 ;;
    --exports) exports=$2; shift 2 ;;
    --no-test) run_test=0; shift ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
done
[[ ${#benches[@]} -eq 0 ]] && benches=("--cases 2048x1,2048x4,8192x1 --chunk-tokens 8192 --steps 5")
export CMAKE_PREFIX_PATH="$root/.deb/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export LD_LIBRARY_PATH="$root/.deb/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=0
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null) $(git -C "$root" status --short | wc -l) files changed"
} | tee "$log"
for d in $exports; do
  PYTHONUNBUFFERED=1 python3 "$root/scripts/make_hf_fixtures.py" --check-export "$d" 2>&1 \
    | grep -v -i "warn\|falling back" | tee -a "$log"
done
cmake -S "$root" -B "$root/build/gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRWR_SERVICES=OFF \
  -DRWR_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >>"$log" 2>&1 || { tail -30 "$log"; exit 1; }
cmake --build "$root/build/gpu" -j "$(nproc)" --target mamba_cuda_test train_bench >"$out/build.txt" 2>&1 \
  || { grep -E "error" -A5 "$out/build.txt" | head -60; exit 1; }
rm -f "$out/build.txt"
if [[ $run_test == 1 ]]; then
  "$root/build/gpu/tests/trainer/mamba_cuda_test" 2>&1 | tee -a "$log" \
    | grep -E "OK|FAIL|rel|Failure|Expected|Which|actual|differ|\.cc:"
fi
cd "$root" || exit 1
for args in "${benches[@]}"; do
  echo "== train_bench $args" | tee -a "$log"
  # shellcheck disable=SC2086
  ./build/gpu/bench/train_bench --model configs/models/mamba-2.8b.yaml $args --json "$out/one.json" \
    2>&1 | tee -a "$log"
  [[ -f "$out/one.json" ]] && { tr -d '\n' <"$out/one.json"; echo; } >>"$out/train_bench.jsonl"
  rm -f "$out/one.json"
done
if [[ -n "$nsys_args" ]]; then
  if command -v nsys >/dev/null; then
    # shellcheck disable=SC2086
    nsys profile -o /tmp/rwr_prof --force-overwrite true --trace cuda \
      ./build/gpu/bench/train_bench --model configs/models/mamba-2.8b.yaml $nsys_args >>"$log" 2>&1
    nsys stats --report cuda_gpu_kern_sum --format table /tmp/rwr_prof.nsys-rep 2>/dev/null \
      | cut -c1-220 | head -60 >"$out/nsys_kernels.txt"
    head -40 "$out/nsys_kernels.txt"
  else
    echo "nsys not found on this machine" | tee -a "$log"
  fi
fi
