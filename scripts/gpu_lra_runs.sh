#!/usr/bin/env bash
# On the GPU machine: LRA-protocol training runs under a per-run wall-clock budget
# (trainer.max_seconds; the record says how many steps ran and stopped_by_time_budget).
# Usage there: LRA_SFA_GIT_COMMIT=<local HEAD> bash scripts/gpu_lra_runs.sh <seconds for listops> <seconds for
# pathfinder> <seconds for needle>   (the device gets no .git: pass the commit so records name it)
set -u
LISTOPS_S=${1:-100}; PF_S=${2:-50}; NEEDLE_S=${3:-40}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=/tmp/site:$PWD
export LRA_SFA_RESULTS=$OUT/runs LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
common="trainer.progress=false"
one() {  # one run with a hard outer timeout; failures are recorded by the runner itself where it can
  local name=$1; shift
  echo "=== $name: $*"
  timeout $(( ${SECS} + 150 )) python3 -m lra_sfa "$@" $common hydra.run.dir=/tmp/runs/$name 2>&1 | tail -4
}
SECS=$LISTOPS_S one listops_full experiment=lra_listops attn=full trainer.max_seconds=$LISTOPS_S
SECS=$LISTOPS_S one listops_sfa experiment=lra_listops attn=sfa trainer.max_seconds=$LISTOPS_S
PF="experiment=lra_pathfinder task.num_train=40000 task.num_val=2000 task.num_test=2000 trainer.eval_every=500"
SECS=$PF_S one pf32_full $PF attn=full trainer.max_seconds=$PF_S
# Pathfinder-32's model has head_dim 4 (qkv_dim 16, 4 heads): below the Triton kernel's head dims, so the
# chunked PyTorch path runs (recorded as attn_path=reference), with k=2 of 4 features.
SECS=$PF_S one pf32_sfa $PF attn=sfa attn.topk=2 attn.impl=reference trainer.max_seconds=$PF_S
SECS=$NEEDLE_S one needle_full experiment=lra_needle attn=full trainer.max_seconds=$NEEDLE_S
SECS=$NEEDLE_S one needle_sfa experiment=lra_needle attn=sfa trainer.max_seconds=$NEEDLE_S
ls $OUT/runs
python3 - <<'PY'
import json, glob, os
for p in sorted(glob.glob(os.environ["OUT"] + "/runs/*.json")):
    r = json.load(open(p))
    print(f"{r['task']:10s} {r['attn']:5s} {r['status']:8s} steps={r['steps']:5d} val={r['val_accuracy']} test={r['test_accuracy']} "
          f"sps={r['steps_per_second']} path={r.get('attn_path')} mem={r['peak_memory_mb']:.0f}MB")
PY
