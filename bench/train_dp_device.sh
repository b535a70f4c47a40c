#!/usr/bin/env bash
# Run ON a multi-GPU device machine (kind nvidia-h200-x2 or -x4, a call carrying .deb): builds the
# GPU node and runs every test there (the multigpu label too: `rwr train` under mpirun, NCCL,
# ZeRO-1), then the data-parallel training step — train_bench alone on one GPU, then under mpirun
# on every GPU of the machine, once per MODES entry (overlap: the gradient sums and the parameter
# all-gather overlapping compute; serial-reduce: the gradients summed all at once before the
# optimizer; serial-gather: the all-gather waited for at the end of the step; serial-optimizer:
# AdamW in line before the all-gather instead of bucket by bucket with it) — so that the
# weak-scaling efficiency (per-GPU tokens/s on N GPUs over one GPU's) comes from one call. Logs
# (train_dp.txt) and JSON in $OUT.
#   CASES=2048x4 STEPS=5 MODES="overlap serial-reduce" [PHASES=1] [TRACE=1] bash bench/train_dp_device.sh
# QUICK=1 builds only what the multigpu tests and the bench need and runs only those tests;
# SKIP_TESTS=1 builds only the bench.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out}
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
carried="$root/.deb/root/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$carried${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ -n "${SKIP_TESTS:-}" ]]; then
  RWR_BUILD_TARGETS="train_bench" . "$root/scripts/device-build.sh" > "$out/build.log" 2>&1
elif [[ -n "${QUICK:-}" ]]; then
  RWR_BUILD_TARGETS="rwr train_mpi_cuda_test mamba_cuda_test train_bench" \
    . "$root/scripts/device-build.sh" > "$out/build.log" 2>&1
  grep -E "error|FAILED" "$out/build.log" | head -20
  # The multigpu tests, and the one-GPU model's (its buffers and optimizer changed with ZeRO-1).
  ctest --test-dir "$root/build/gpu" -R "DataParallelTrainCuda|MambaCuda|TrainCuda" \
    --output-on-failure > "$out/ctest.log" 2>&1
else
  bash "$root/scripts/device-test.sh"
fi
echo "tests rc=$?"
grep -E "DataParallelTrainCuda|tests passed" "$out/ctest.log" | head
gpus=$(nvidia-smi -L | wc -l)
cases=${CASES:-2048x4}
steps=${STEPS:-5}
bench="$root/build/gpu/bench/train_bench"
echo "== one GPU"
"$bench" --cases "$cases" --steps "$steps" --json "$out/train_1gpu.json" 2>&1 |
  tee -a "$out/train_dp.txt"
for mode in ${MODES:-overlap serial-reduce}; do
  echo "== $gpus GPUs (mpirun), $mode"
  case $mode in
    overlap) flags= ;;
    serial-reduce) flags=--dp-serial-reduce ;;
    serial-gather) flags=--dp-serial ;;
    serial-optimizer) flags=--serial-optimizer ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  mpirun -np "$gpus" --bind-to none "$bench" --cases "$cases" --steps "$steps" $flags \
    --json "$out/train_${gpus}gpu_$mode.json" 2>&1 | tee -a "$out/train_dp.txt"
done
# TRACE=1: a CUPTI timeline of one step on rank 0 (bench/kernel_trace.h).
[[ -n "${TRACE:-}" ]] && mpirun -np "$gpus" --bind-to none --tag-output "$bench" --cases "$cases" \
  --steps 2 --trace-last-step 2>&1 | grep '\[1,0\]' | tee -a "$out/train_dp.txt"
[[ -n "${PHASES:-}" ]] && mpirun -np "$gpus" --bind-to none "$bench" --cases "$cases" \
  --steps "$steps" --phases 2>&1 | tee -a "$out/train_dp.txt"
