#!/usr/bin/env bash
# The Slurm deployment for real (label slurm): a one-node cluster (deploy/slurm/local-cluster.sh)
# runs the pipeline that deploy/slurm/submit-pipeline.sh submits — distill → publish → build →
# train → export → eval, each its own job, chained by afterok; the train job data parallel, two
# ranks under mpirun (two tasks). Mid-training the train job gets the time-limit warning (USR1 to
# its batch script, as --signal=B:USR1@300 sends it): rwr checkpoints and exits 0, the job
# requeues itself, and its next run resumes. Checked: every job COMPLETED, the train job ran two
# ranks twice and its second run resumed, both ranks wrote their optimizer files, each step is
# logged once and the last is train.steps, the export is a Hugging Face layout, and the eval
# answered every held-out item. Then a job whose work ends as the warning comes is not requeued.
#
#   tests/deploy/slurm_test.sh RWR_BINARY SOURCE_DIR WORK_DIR
# Exit 77 (skipped) where this machine cannot run a cluster (not root, no slurm-wlm or munge).
set -euo pipefail
rwr=$(realpath "$1") src=$(realpath "$2") work=$3
for tool in munged slurmctld slurmd sbatch; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done
[[ $(id -u) == 0 ]] || { echo "SKIP: a local slurmd needs root"; exit 77; }
rm -rf "$work" && mkdir -p "$work" && work=$(realpath "$work")

# mpirun (the train job's two ranks) runs as root here only when told so; jobs inherit this.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Under the asan preset: LeakSanitizer reports what Open MPI leaves allocated at exit (its
# components, unloaded by MPI_Finalize, leave no frame to suppress by), failing the train job's
# ranks; the jobs run without leak detection (rwr's own leaks are its single-process tests' to
# find). Ignored by builds without ASan.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
cluster=$work/cluster
trap '"$src/deploy/slurm/local-cluster.sh" stop "$cluster" || true' EXIT
eval "$("$src/deploy/slurm/local-cluster.sh" start "$cluster")"

fail() {
  echo "FAIL: $*"
  squeue -a || true
  scontrol show job "$train" || true
  for log in "$work"/run/logs/*.log; do echo "== $log"; tail -20 "$log"; done
  tail -20 "$cluster/log/slurmctld.log"
  exit 1
}
# wait_for SECONDS CONDITION...: polls CONDITION (a command) every 0.5 s.
wait_for() {
  local seconds=$1
  shift
  for _ in $(seq $((seconds * 2))); do "$@" && return 0; sleep 0.5; done
  return 1
}
job_field() { scontrol show job "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
job_is() { [[ $(job_field "$1" "$2") == "$3" ]]; }  # job_is JOB FIELD VALUE

"$rwr" data synth --count 48 --context-tokens 400 --seed 3 --out "$work/qa.jsonl" --log-level warn
"$rwr" data synth --count 3 --context-tokens 300 --seed 4 --out "$work/heldout.jsonl" --log-level warn
# One config for every stage; paths in it absolute (a job runs in the submitting directory).
cat "$src/configs/train_tiny.yaml" - >"$work/run.yaml" <<YAML
build:
  seq_len: 512
  tokenizer: $src/configs/tokenizer/tokenizer.json
YAML
jobs=$(RWR=$rwr "$src/deploy/slurm/submit-pipeline.sh" --config "$work/run.yaml" \
  --input "$work/qa.jsonl" --teacher builtin:extractive --out "$work/run" \
  --eval-input "$work/heldout.jsonl" --train-sbatch "--ntasks 2") ||
  fail "submit-pipeline failed"
echo "$jobs"
train=$(awk '$1 == "train" {print $2}' <<<"$jobs")
eval_job=$(awk '$1 == "eval" {print $2}' <<<"$jobs")
metrics=$work/run/train/metrics.jsonl
logged() { [[ -f $metrics ]] && (($(wc -l <"$metrics") >= $1)); }

# The time-limit warning, once training is under way.
wait_for 240 logged 10 || fail "training did not start"
scancel --batch --signal=USR1 "$train"
wait_for 60 job_is "$train" Restarts 1 || fail "the train job was not requeued"
# A requeued job may start again only after a delay Slurm adds (about 2 minutes); skip it once the
# job is back in the queue and the node is idle (Slurm's delay is what keeps a requeued job from
# starting on a node still cleaning up after its last run).
wait_for 60 job_is "$train" JobState PENDING || fail "the requeued train job is not pending"
node_idle() { [[ $(sinfo -h -o %T) == idle ]]; }
wait_for 60 node_idle || fail "the node did not finish the train job's first run"
# slurmd refuses a job credential issued in the same second as the revocation of the job's last
# one ("Job credential revoked").
sleep 2
scontrol update JobId="$train" StartTime=now
wait_for 300 job_is "$eval_job" JobState COMPLETED || fail "the eval did not complete"

for stage in distill publish build train export eval; do
  id=$(awk -v s=$stage '$1 == s {print $2}' <<<"$jobs")
  [[ $(job_field "$id" JobState) == COMPLETED ]] || fail "$stage job $id: $(job_field "$id" JobState)"
done
train_log=$(cat "$work"/run/logs/train-*.log)
grep -q "requeueing job $train" <<<"$train_log" || fail "no requeue in the train log"
grep -q "resuming from" <<<"$train_log" || fail "the second run did not resume"
grep -q "2 ranks (MPI" <<<"$train_log" || fail "the train job did not run 2 ranks"
for rank in 0 1; do
  [[ -f $work/run/train/checkpoints/step_00000060/optimizer_rank0000$rank.safetensors ]] ||
    fail "no optimizer file of rank $rank in the last checkpoint"
done
python3 - "$metrics" "$work/run/export" "$work/run/eval.jsonl" <<'PY' || fail "outputs are wrong"
import json, pathlib, sys
steps = [json.loads(l)["step"] for l in pathlib.Path(sys.argv[1]).read_text().splitlines()]
assert steps == list(range(1, 61)), steps  # train.steps of configs/train_tiny.yaml
config = json.loads((pathlib.Path(sys.argv[2]) / "config.json").read_text())
assert config["model_type"] == "mamba", config
predictions = [json.loads(l) for l in pathlib.Path(sys.argv[3]).read_text().splitlines()]
assert [p["id"] for p in predictions] == [f"synth-4-{i:06d}" for i in range(3)], predictions
print(f"{len(steps)} steps logged once each; export OK; {len(predictions)} held-out answers")
PY

# A run that had finished its work when the warning came is not requeued: a stand-in for rwr that
# exits 0 at USR1 without saying it stopped early (RWR_STOPPED_EARLY_FILE).
cat >"$work/finishing-rwr" <<'SH'
#!/usr/bin/env bash
trap 'exit 0' USR1
touch "$1"
while true; do sleep 0.2; done
SH
chmod +x "$work/finishing-rwr"
finishing=$(RWR=$work/finishing-rwr sbatch --parsable --output "$work/finishing.log" \
  "$src/deploy/slurm/rwr-job.sbatch" "$work/finishing.started") || fail "sbatch failed"
started() { [[ -f $work/finishing.started ]]; }
wait_for 120 started || fail "the finishing job did not start"
scancel --batch --signal=USR1 "$finishing"
wait_for 60 job_is "$finishing" JobState COMPLETED || fail "the finishing job did not complete"
job_is "$finishing" Restarts 0 || fail "a job whose work was done was requeued"
grep -q "rwr had finished its work; not requeued" "$work/finishing.log" ||
  fail "no 'not requeued' in $(cat "$work/finishing.log")"
echo "PASS"
