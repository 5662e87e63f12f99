#!/usr/bin/env bash
# On the GPU machine: LRA-protocol training runs under a per-run wall-clock budget
# (trainer.max_seconds; the record says how many steps ran and stopped_by_time_budget).
# Every backend of one task gets the same budget, so their accuracies compare at equal training time.
#
#   LRA_SFA_GIT_COMMIT=<local HEAD> bash lab/gpu/gpu_lra_runs.sh SPEC...
#   SPEC = <preset>=<attn>[,<attn>...]@<seconds>
#   presets: listops (experiment=lra_listops), pf32 (experiment=lra_pathfinder, 40k generated images),
#            needle1k / needle4k (experiment=lra_needle at seq_len 1024 / 4096),
#            needle_long (trained at 256 tokens, then tested at 1K, 4K, 16K and 64K: trainer.test_lengths)
#   attn "sfa_wide_simhash" = attn=sfa_wide with SimHash codes at D = 131072, k = 8 (the operating point
#   that met the 1M speed target; results/kernels/sfa_wide.md); any attn may carry its own overrides,
#   colon-separated: sfa_wide_simhash:bits_start=2 adds attn.bits_start=2 (keys "seed" or with a dot,
#   e.g. :seed=1 or :trainer.lr=5e-4, are passed as written)
#   needle_long trains a fixed trainer.max_steps=$NEEDLE_STEPS (default 3000) for every backend, so they are
#   trained the same way; give it a budget that does not bind (the record says if it did)
#   e.g.   bash lab/gpu/gpu_lra_runs.sh listops=performer,bigbird,linformer@90 pf32=sfa@45 needle1k=full,sfa@30
#          bash lab/gpu/gpu_lra_runs.sh needle_long=full,sfa,sfa_wide_simhash:bits_start=2@400
# The device gets no .git: pass the commit so records name it. Records go to $OUT/runs, then into one
# archive, $OUT/runs_lra.tgz (the device returns at most 8 files): unpack it and copy runs/*.json to results/runs.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=/tmp/site:$PWD
export LRA_SFA_RESULTS=$OUT/runs LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
set -f  # no globbing: overrides such as trainer.test_lengths=[...] are passed as written
mkdir -p "$OUT/runs"
preset() {  # the overrides of one preset and attention
  case $1 in
    listops) echo "experiment=lra_listops" ;;
    pf32) echo "experiment=lra_pathfinder task.num_train=40000 task.num_val=2000 task.num_test=2000 trainer.eval_every=500" ;;
    needle1k) echo "experiment=lra_needle task.seq_len=1024" ;;
    needle4k) echo "experiment=lra_needle task.seq_len=4096" ;;
    needle_long) echo "experiment=lra_needle task.seq_len=256 trainer.test_lengths=[1024,4096,16384,65536]" \
                      "trainer.max_steps=${NEEDLE_STEPS:-3000} trainer.eval_every=500" ;;
    *) echo "unknown preset '$1' (valid: listops pf32 needle1k needle4k needle_long)" >&2; exit 2 ;;
  esac
}
for spec in "$@"; do
  name=${spec%%=*}; rest=${spec#*=}; attns=${rest%@*}; secs=${rest##*@}
  args=$(preset "$name") || exit 2
  for attn_spec in ${attns//,/ }; do
    attn=${attn_spec%%:*}; own=""
    if [[ $attn_spec == *:* ]]; then  # key=value overrides: attn.key, unless the key is seed or has a dot
      for kv in $(tr ':' ' ' <<< "${attn_spec#*:}"); do
        [[ ${kv%%=*} == seed || ${kv%%=*} == *.* ]] && own="$own $kv" || own="$own attn.$kv"
      done
    fi
    extra="attn=$attn"
    # Pathfinder-32's model has head_dim 4 (qkv_dim 16, 4 heads): below the Triton kernels' sizes, so
    # the Triton kernels run zero-padded to 16 (exact), with k=2 of 4 features.
    [[ $name == pf32 && $attn == sfa ]] && extra="attn=sfa attn.topk=2"
    [[ $attn == sfa_wide_simhash ]] && extra="attn=sfa_wide attn.codes=simhash attn.D=131072 attn.k=8"
    extra="$extra $own"
    echo "=== $name $attn_spec ($secs s): $args $extra"
    timeout $(( secs + 180 )) python3 -m lra_sfa $args $extra trainer.max_seconds=$secs trainer.progress=false \
      hydra.run.dir=/tmp/runs/${name}_${attn_spec//[:=]/_} 2>&1 | tail -3
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
