#!/usr/bin/env bash
# On the GPU machine (issue 7): a run killed with SIGKILL after its first checkpoint and resumed, beside the
# same run uninterrupted; then a 2-job Hydra multirun sweep. Records go to $OUT/runs (the results store),
# and a summary comparing the step counts is printed; they come back as one archive, $OUT/runs_resume.tgz.
#   LRA_SFA_GIT_COMMIT=<local HEAD> bash lab/gpu/gpu_resume_sweep.sh   (after gpu_lra_runs.sh's set-up)
set -u
export LRA_SFA_RESULTS=$OUT/runs LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
run="python3 -m lra_sfa experiment=listops_reduced attn=sfa trainer.checkpoint_every=100 trainer.progress=false"
echo "=== uninterrupted reference"
timeout 300 $run hydra.run.dir=/tmp/resume_ref 2>&1 | tail -2
echo "=== interrupted: SIGKILL once checkpoint.pt exists"
rm -rf /tmp/resume_cut
$run hydra.run.dir=/tmp/resume_cut > /tmp/resume_cut.log 2>&1 &
pid=$!
for _ in $(seq 1200); do [[ -f /tmp/resume_cut/checkpoint.pt ]] && break; sleep 0.1; done
kill -9 $pid; wait $pid 2>/dev/null
echo "killed pid $pid; record before resume: $(ls /tmp/resume_cut/record.json 2>&1)"
echo "=== resume=true"
timeout 300 $run hydra.run.dir=/tmp/resume_cut resume=true 2>&1 | tail -2
echo "=== 2-job sweep"
timeout 400 python3 -m lra_sfa -m experiment=listops_reduced attn=full,sfa trainer.progress=false \
  hydra.sweep.dir=/tmp/sweep2 2>&1 | tail -4
python3 - <<'PY'
import json
ref, res = (json.load(open(f"/tmp/{d}/record.json")) for d in ("resume_ref", "resume_cut"))
for name, r in (("reference", ref), ("resumed", res)):
    print(f"{name:10s} status={r['status']} steps={r['steps']} resumed_from_step={r.get('resumed_from_step')} "
          f"test={r['test_accuracy']} val={r['val_accuracy']}")
print("same final step:", ref["steps"] == res["steps"])
import glob
for p in sorted(glob.glob("/tmp/sweep2/*/record.json")):
    r = json.load(open(p)); print(p, r["attn"], r["status"], r["steps"], r["test_accuracy"])
PY
tar czf "$OUT/runs_resume.tgz" -C "$OUT" runs && rm -rf "$OUT/runs"
