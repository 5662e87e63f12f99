#!/usr/bin/env bash
# GPU machine: training steps/s of short runs, one at a time (nothing else on the GPU), for the
# throughput table. Each argument is one run's overrides; every run is cut at 150 s.
#
#   LRA_SFA_GIT_COMMIT=<commit> bash lab/gpu/throughput_probe.sh "experiment=lra_listops trainer.max_steps=300" ...
#
# Installs the Hydra wheels (.whl, carried) and the project itself, editable: the package maps
# lra_sfa.tasks and lra_sfa.baselines onto the top-level folders, which a bare PYTHONPATH does not.
set -u
python3 -c "import hydra" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site; }
python3 -c "import lra_sfa.tasks" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . \
  >/dev/null 2>&1 || { echo "throughput_probe: pip install -e . failed" >&2; exit 1; }
export LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
mkdir -p "$OUT/probe"
set -f
index=0
for overrides in "$@"; do
  index=$((index + 1))
  timeout 150 python3 -m lra_sfa $overrides trainer.progress=false results_dir=$OUT/probe \
    hydra.run.dir=/tmp/probe/$index 2>&1 | grep -E "status=|Error|error" | tail -2
done
python3 - <<'PY'
import glob, json, os
for path in sorted(glob.glob(os.environ["OUT"] + "/probe/*.json")):
    r = json.load(open(path))
    print(f"{r['protocol']:16s} {r['attn']:6s} L={r['seq_len']} steps={r['steps']} sps={r['steps_per_second'] and round(r['steps_per_second'], 1)} "
          f"compiled={r.get('compiled')} resident={r.get('data_on_device')} mode={r['trainer'].get('compile_mode')} "
          f"mem={r['peak_memory_mb'] and round(r['peak_memory_mb'])} {r['status']} {r.get('reason') or ''}")
PY
