#!/usr/bin/env bash
# Run ON the GPU machine (a device call carrying .deb, see scripts/device-deps.sh): where one
# training step's time goes, with no event timing of the trainer's own in the way. First the step's
# GPU timeline from CUPTI (train_bench --trace-last-step: busy and idle time, the longest idle gaps
# and the host calls during them). With --ncu, also every kernel of one step timed by Nsight
# Compute (gpu__time_duration; clocks and caches left alone; kernels one at a time) and summed per
# kernel, and the scan kernels alone in scan_bench at the same shape and layout.
#   bash bench/step_kernels_device.sh [--case 2048x4] [--top 40] [--ncu]
# Output in $OUT: step_kernels.txt.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out}
mkdir -p "$out"
case_tb=2048x4
top=40
ncu=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --case) case_tb=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --ncu) ncu=1; shift ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
done
T=${case_tb%x*}
B=${case_tb#*x}
export CMAKE_PREFIX_PATH="$root/.deb/root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export LD_LIBRARY_PATH="$root/.deb/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=0
cmake -S "$root" -B "$root/build/gpu" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRWR_SERVICES=OFF \
  -DRWR_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null 2>&1 || { echo "configure failed"; exit 1; }
cmake --build "$root/build/gpu" -j "$(nproc)" --target train_bench scan_bench 2>&1 \
  | grep -E "error|FAILED"
train_bench=("$root/build/gpu/bench/train_bench" --model "$root/configs/models/mamba-2.8b.yaml"
             --cases "$case_tb")
# ncu's CSV (after the program's own output) → per kernel: launches, total ms, median µs.
summarise() {  # label, top
  python3 -c '
import csv, statistics, sys
label, top = sys.argv[1], int(sys.argv[2])
rows = list(csv.reader(sys.stdin))  # the program output comes first, then the table
start = next((i for i, r in enumerate(rows) if "Kernel Name" in r and "ID" in r), None)
if start is None: sys.exit(f"{label}: no ncu table")
head = rows[start]
name, dur = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
times = {}
for r in rows[start + 1:]:
    try: ns = float(r[dur].replace(",", ""))  # ncu writes thousands separators
    except (ValueError, IndexError): continue
    k = r[name].replace("(anonymous namespace)", "")
    k = k.split("<")[0].split("(")[0].split("::")[-1].removeprefix("void ")
    times.setdefault(k[:60], []).append(ns / 1e6)
total = sum(sum(v) for v in times.values())
print(f"{label}: {sum(len(v) for v in times.values())} launches, {total:.1f} ms of kernel time")
for k, v in sorted(times.items(), key=lambda kv: -sum(kv[1]))[:top]:
    print(f"  {k:60} {len(v):5}  {sum(v):8.2f} ms  median {statistics.median(v) * 1e3:9.1f} us")
' "$1" "$2"
}
metrics=(--clock-control none --cache-control none --metrics gpu__time_duration.sum --csv
         --page raw --print-units base)
{
  nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
  # SM clock, power and the reasons the clock is held back, every 20 ms through the timed steps.
  nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_event_reasons.active \
    --format=csv,noheader,nounits -lms 20 >/tmp/smi.csv 2>&1 &
  smi=$!
  "${train_bench[@]}" --steps 5 | tail -1
  kill $smi
  python3 -c '
import collections, statistics, sys
rows = [[f.strip() for f in l.split(",")] for l in open("/tmp/smi.csv") if l.count(",") == 2]
busy = [r for r in rows if float(r[1]) > 250]  # samples while the GPU works (watts)
if not busy: sys.exit("clock samples: none while busy: " + open("/tmp/smi.csv").read()[:200])
clk, watts = [float(r[0]) for r in busy], [float(r[1]) for r in busy]
print(f"  {len(busy)} busy samples: SM clock min {min(clk):.0f} median {statistics.median(clk):.0f} "
      f"MHz, power median {statistics.median(watts):.0f} max {max(watts):.0f} W, reasons "
      + str(dict(collections.Counter(r[2] for r in busy))))
'
  "${train_bench[@]}" --steps 2 --trace-last-step | tail -n +3
  [[ $ncu == 1 ]] || exit 0
  ncu "${metrics[@]}" --profile-from-start off "${train_bench[@]}" --steps 1 --profile-last-step \
    2>"$out/ncu_step.log" | summarise "one step, kernels one at a time" "$top"
  ncu "${metrics[@]}" -k "regex:ScanBackwardKernel|SinglePassForwardKernel|ScanForwardKernel" \
    --launch-skip 4 --launch-count 40 "$root/build/gpu/bench/scan_bench" --bt "${B}x${T}" \
    --reps 10 --ops scan --trainer-io 2>"$out/ncu_scan_bench.log" \
    | summarise "scan_bench, same shape and layout" 10
} | tee "$out/step_kernels.txt"
