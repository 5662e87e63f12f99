#!/usr/bin/env bash
# GPU machine: protocol runs of `python -m lra_sfa`, several at once on one GPU, records into $OUT.
#
#   LRA_SFA_GIT_COMMIT=<commit> bash lab/gpu/protocol_runs.sh "<overrides of run 1>" "<overrides of run 2>" ...
#
# Each argument is one run's overrides, e.g. "experiment=lra_listops attn=full seed=1". The data of the first
# run's task is generated once before the runs start (they share the cache). Runs go in parallel: two
# ListOps protocol runs at once shared an H100 evenly (11.1 + 12.5 steps/s, against 22.9 alone), so there
# they gain nothing in total and each takes twice as long; smaller models may gain. Plan a call so every
# run ends inside its 10 minutes (a run that does not returns nothing; trainer.max_seconds cuts it with a
# record instead). Compare steps/s only between runs that shared the GPU the same way. Each run logs one
# line per evaluation. Records and logs come back as $OUT/runs.tgz.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=/tmp/site:$PWD
export LRA_SFA_RESULTS=$OUT/runs/records LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
mkdir -p "$OUT/runs/records" "$OUT/runs/logs"
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > "$OUT/runs/logs/gpu.txt"
set -f
start=$(date +%s)
python3 - $1 <<'PY'
import sys, time
from hydra import compose, initialize_config_module
from lra_sfa.recording import build_task
with initialize_config_module("lra_sfa.conf", version_base=None):
    cfg = compose("config", overrides=sys.argv[1:])
t = time.time(); build_task(cfg.task).load(cfg.paths.cache_dir); print(f"data ready in {time.time() - t:.0f} s")
PY
index=0
for overrides in "$@"; do
  index=$((index + 1))
  python3 -m lra_sfa $overrides trainer.progress=false hydra.run.dir=/tmp/runs/$index \
    > "$OUT/runs/logs/run$index.log" 2>&1 &
done
wait
echo "all runs done in $(( $(date +%s) - start )) s"
python3 - <<'PY'
import glob, json, os
for path in sorted(glob.glob(os.environ["OUT"] + "/runs/records/*.json")):
    r = json.load(open(path))
    print(f"{r['protocol']:18s} {r['attn']:10s} seed={r['seed']} {r['status']:8s} steps={r['steps']}/{r['max_steps']} "
          f"val={r['val_accuracy']} final_val={r.get('final_val_accuracy')} test={r['test_accuracy']} "
          f"sps={r['steps_per_second'] and round(r['steps_per_second'], 1)} compiled={r.get('compiled')} "
          f"resident={r.get('data_on_device')} path={r.get('attn_path')} mem={r['peak_memory_mb'] and round(r['peak_memory_mb'])}")
PY
tail -n 3 "$OUT"/runs/logs/run*.log
tar czf "$OUT/runs.tgz" -C "$OUT" runs && rm -rf "$OUT/runs"
