#!/usr/bin/env bash
# Submits the RwR pipeline as Slurm jobs, each stage its own job, each starting when the one before
# it succeeded (--dependency=afterok):
#
#   distill  rwr distill run INPUT → OUT/cache (rwr-job.sbatch: requeued at its time limit)
#   publish  rwr cache publish → OUT/cache.published.JOBID (JOBID: the distill job's)
#   build    rwr data build (INPUT + the published cache) → OUT/data
#   train    rwr train → OUT/train (rwr-job.sbatch: requeued at its time limit)
#   export   rwr export → OUT/export (Hugging Face layout)
#   eval     with --eval-input: rwr eval of the export on held-out items → OUT/eval.jsonl
#            (rwr-job.sbatch: requeued at its time limit, continuing OUT/eval.jsonl)
#
#   deploy/slurm/submit-pipeline.sh --config run.yaml --input qa.jsonl --teacher rwr://host:7700 \
#     --out runs/rwr1 [--train-sbatch "--time 24:00:00 --ntasks-per-node 8 --gres gpu:8"] \
#     [--sbatch "--partition x"] \
#     [--eval-input heldout.jsonl] [--eval-sbatch "--gres gpu:1"]
#
# --config is one YAML for every stage (docs/configuration.md); the jobs run in the submitting
# directory, so relative paths in it (build.tokenizer, model.init_from, ...) resolve against that.
# Prints one line per job: stage and job id. RWR names the binary (default: rwr on PATH). A train
# job of several tasks trains data parallel, one rank per task (rwr-job.sbatch).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rwr=${RWR:-rwr}
config='' input='' teacher='' out='' train_sbatch='' sbatch_args='' eval_input='' eval_sbatch=''
while (($#)); do
  case $1 in
    --config) config=$2; shift 2 ;;
    --input) input=$2; shift 2 ;;
    --teacher) teacher=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --train-sbatch) train_sbatch=$2; shift 2 ;;
    --sbatch) sbatch_args=$2; shift 2 ;;
    --eval-input) eval_input=$2; shift 2 ;;
    --eval-sbatch) eval_sbatch=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "submit-pipeline: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
for required in config input teacher out; do
  [[ -n ${!required} ]] || { echo "submit-pipeline: --$required is required (--help)" >&2; exit 2; }
done
[[ -f $config ]] || { echo "submit-pipeline: --config $config: no such file" >&2; exit 2; }
[[ -f $input ]] || { echo "submit-pipeline: --input $input: no such file" >&2; exit 2; }
if [[ -n $eval_input ]]; then
  [[ -f $eval_input ]] || { echo "submit-pipeline: --eval-input $eval_input: no such file" >&2; exit 2; }
  eval_input=$(realpath "$eval_input")
fi
config=$(realpath "$config") input=$(realpath "$input")
mkdir -p "$out/logs"
out=$(realpath "$out")

# submit NAME AFTER SBATCH-ARGS... → the job id (AFTER: the job it waits for, or "").
submit() {
  local name=$1 after=$2
  shift 2
  # shellcheck disable=SC2086  # the extra sbatch arguments are words on purpose
  RWR=$rwr sbatch --parsable --job-name "rwr-$name" --output "$out/logs/$name-%j.log" \
    ${after:+--dependency=afterok:$after --kill-on-invalid-dep=yes} $sbatch_args "$@" | cut -d';' -f1
}
command_line() { printf '%q ' "$@"; }

distill=$(submit distill "" "$here/rwr-job.sbatch" distill run --config "$config" \
  --input "$input" --teacher "$teacher" --cache "$out/cache")
published=$out/cache.published.$distill
publish=$(submit publish "$distill" \
  --wrap "$(command_line "$rwr" cache publish "$out/cache" --to "$published")")
build=$(submit build "$publish" --wrap "$(command_line "$rwr" data build --config "$config" \
  --input "$input" --cache "$published" --out "$out/data" --overwrite)")
# shellcheck disable=SC2086
train=$(submit train "$build" $train_sbatch "$here/rwr-job.sbatch" train --config "$config" \
  --set data.dir="$out/data" --set train.out_dir="$out/train")
export_job=$(submit export "$train" --wrap "$(command_line "$rwr" export --checkpoint \
  "$out/train" --out "$out/export" --overwrite)")
printf 'distill %s\npublish %s\nbuild %s\ntrain %s\nexport %s\n' "$distill" "$publish" "$build" \
  "$train" "$export_job"
if [[ -n $eval_input ]]; then
  # shellcheck disable=SC2086
  eval_job=$(submit eval "$export_job" $eval_sbatch "$here/rwr-job.sbatch" eval \
    --model "$out/export" --input "$eval_input" --out "$out/eval.jsonl")
  printf 'eval %s\n' "$eval_job"
fi
