#!/usr/bin/env bash
# On the GPU machine: training runs of conf/experiment presets under a per-run wall-clock budget
# (trainer.max_seconds; the record says how many steps ran and stopped_by_time_budget).
# Every backend of one experiment gets the same budget, so their accuracies compare at equal training time.
#
#   LRA_SFA_GIT_COMMIT=<local HEAD> bash lab/gpu/gpu_lra_runs.sh SPEC...
#   SPEC = <experiment>=<attn>[,<attn>...]@<seconds>: python -m lra_sfa experiment=<experiment> attn=<attn>
#   The presets are config files: lra_listops, pathfinder_40k (Pathfinder-32 on 40k generated images),
#   lra_needle (1K) / needle_4k, needle_long (trained at 256 tokens, tested at 1K..64K);
#   attn=sfa_wide_simhash is the wide-code operating point (conf/attn/sfa_wide_simhash.yaml).
#   An attn may carry its own overrides, colon-separated: sfa_wide_simhash:bits_start=2 adds attn.bits_start=2
#   (keys "seed" or with a dot, e.g. :seed=1 or :trainer.lr=5e-4, are passed as written).
#   Pathfinder's head dim is 4 (qkv_dim 16, 4 heads): give sfa k=2 of its 4 features, pathfinder_40k=sfa:topk=2.
#   e.g.   bash lab/gpu/gpu_lra_runs.sh lra_listops=performer,bigbird,linformer@90 pathfinder_40k=sfa:topk=2@45
#          bash lab/gpu/gpu_lra_runs.sh needle_long=full,sfa,sfa_wide_simhash:bits_start=2@400
# The device gets no .git: pass the commit so records name it. Records go to $OUT/runs, then into one
# archive, $OUT/runs_lra.tgz (the device returns at most 8 files): unpack it and copy runs/*.json to results/runs.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=/tmp/site:$PWD
export LRA_SFA_RESULTS=$OUT/runs LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
set -f  # no globbing: overrides such as trainer.test_lengths=[...] are passed as written
mkdir -p "$OUT/runs"
declare -A RENAMED=([listops]=lra_listops [pf32]=pathfinder_40k [needle1k]=lra_needle [needle4k]=needle_4k)
for spec in "$@"; do
  experiment=${spec%%=*}; rest=${spec#*=}; attns=${rest%@*}; secs=${rest##*@}
  if [[ -n ${RENAMED[$experiment]:-} ]]; then
    echo "preset $experiment is experiment=${RENAMED[$experiment]} now (conf/experiment/)" >&2; exit 2
  fi
  for attn_spec in ${attns//,/ }; do
    attn=${attn_spec%%:*}; own=""
    if [[ $attn_spec == *:* ]]; then  # key=value overrides: attn.key, unless the key is seed or has a dot
      for kv in $(tr ':' ' ' <<< "${attn_spec#*:}"); do
        [[ ${kv%%=*} == seed || ${kv%%=*} == *.* ]] && own="$own $kv" || own="$own attn.$kv"
      done
    fi
    echo "=== $experiment $attn_spec ($secs s): experiment=$experiment attn=$attn$own"
    timeout $(( secs + 180 )) python3 -m lra_sfa experiment=$experiment attn=$attn $own trainer.max_seconds=$secs \
      trainer.progress=false hydra.run.dir=/tmp/runs/${experiment}_${attn_spec//[:=]/_} 2>&1 | tail -3
  done
done
python3 - <<'PY'
import json, glob, os
for p in sorted(glob.glob(os.environ["OUT"] + "/runs/*.json")):
    r = json.load(open(p))
    print(f"{r['task']:10s} L={r['seq_len']:5d} {r['attn']:12s} {r['status']:8s} steps={r['steps']} val={r['val_accuracy']} "
          f"test={r['test_accuracy']} sps={r['steps_per_second']} path={r.get('attn_path')} mem={r['peak_memory_mb']}MB "
          f"args={r.get('attn_args')} by_length={r.get('test_accuracy_by_length')} "
          f"unsupported={r.get('test_lengths_unsupported')} stats={r.get('attn_stats')} "
          f"test_seconds={r.get('test_seconds_by_length')} stats_by_length={r.get('attn_stats_by_length')}")
PY
tar czf "$OUT/runs_lra.tgz" -C "$OUT" runs && rm -rf "$OUT/runs"
