#!/usr/bin/env bash
# On the GPU machine: the non-LRA tasks to their protocols (issue 24, section 3).
#   LRA_SFA_GIT_COMMIT=<local HEAD> bash scripts/gpu_extra_tasks.sh fmnist <attn,...> <seeds, e.g. 0,1,2>
#   LRA_SFA_GIT_COMMIT=<local HEAD> bash scripts/gpu_extra_tasks.sh mqar <attn,...> <lengths> <pairs> <widths> <lrs>
# fmnist: experiment=seq_fmnist on task=fmnist and task=fmnist_perm, every attn, every seed; the idx files
#   come from $FMNIST_DIR (default data/fashion-mnist: copy /usr/share/datasets/fashion-mnist/*.gz there and
#   carry that folder, the device has no package access).
# mqar: experiment=mqar over attn x length x pairs x width x lr; a (length, pairs) with 4 * pairs > length
#   cannot be generated and is skipped. An attn may carry overrides after a colon: sfa:topk=16.
# e.g.  bash scripts/gpu_extra_tasks.sh fmnist full,sfa 0,1,2
#       bash scripts/gpu_extra_tasks.sh mqar full,sfa,sfa:topk=16 256,1024,4096 16,64,256 128 1e-3,2.2e-3
# Records go to $OUT/runs, then into one archive $OUT/runs_extra.tgz: unpack it and copy runs/*.json to
# results/runs. MAX_SECONDS (optional) caps each run; a capped run is recorded as shorter than the protocol.
# EXTRA (optional) adds overrides to every run, e.g. a smoke test: EXTRA="trainer.max_steps=2 task.num_train=64".
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=${PYTHONPATH:-}:$PWD
export LRA_SFA_RESULTS=$OUT/runs LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
mkdir -p "$OUT/runs"
budget=${MAX_SECONDS:+trainer.max_seconds=$MAX_SECONDS}
attn_args() {  # "sfa:topk=16" -> "attn=sfa attn.topk=16"
  local spec=$1 out="attn=${1%%:*}"
  [[ $spec == *:* ]] && for kv in $(tr ':' ' ' <<< "${spec#*:}"); do out="$out attn.$kv"; done
  echo "$out"
}
train() {  # one run; its own run dir
  local dir=/tmp/runs/$1; shift
  echo "=== $*"
  python3 -m lra_sfa "$@" $budget ${EXTRA:-} trainer.progress=false hydra.run.dir="$dir" 2>&1 | tail -2
}
case ${1:-} in
  fmnist)
    data=${FMNIST_DIR:-data/fashion-mnist}
    for task in fmnist fmnist_perm; do for spec in ${2//,/ }; do for seed in ${3//,/ }; do
      train "${task}_${spec//[:=]/_}_s$seed" experiment=seq_fmnist task=$task $(attn_args "$spec") seed=$seed \
        task.data_dir="$data"
    done; done; done ;;
  mqar)
    for spec in ${2//,/ }; do for n in ${3//,/ }; do for p in ${4//,/ }; do
      (( 4 * p > n )) && { echo "skip L=$n P=$p (needs L >= $((4 * p)))"; continue; }
      for w in ${5//,/ }; do for lr in ${6//,/ }; do
        train "mqar_${spec//[:=]/_}_L${n}_P${p}_d${w}_lr$lr" experiment=mqar $(attn_args "$spec") \
          task.seq_len=$n task.num_pairs=$p model.d_model=$w trainer.lr=$lr
      done; done
    done; done; done ;;
  *) echo "usage: $0 fmnist <attns> <seeds> | mqar <attns> <lengths> <pairs> <widths> <lrs>" >&2; exit 2 ;;
esac
python3 - <<'PY'
import json, glob, os
for p in sorted(glob.glob(os.environ["OUT"] + "/runs/*.json")):
    r = json.load(open(p))
    print(f"{r['task']:11s} L={r['seq_len']:5d} P={r.get('num_pairs')} d={r['model'].get('d_model')} "
          f"lr={r['trainer'].get('lr')} {r['attn']:10s} seed={r['seed']} {r['status']:8s} steps={r['steps']} "
          f"val={r['val_accuracy']} test={r['test_accuracy']} sps={r['steps_per_second']} reason={r['reason']}")
PY
tar czf "$OUT/runs_extra.tgz" -C "$OUT" runs && rm -rf "$OUT/runs"
