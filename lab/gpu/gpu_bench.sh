#!/usr/bin/env bash
# On the GPU machine (issue 6): the efficiency sweep, the LRA Table 2 protocol and the harness overhead,
# as run on 2026-11-29 (lengths quadrupling 1K..1M to fit the device budget; bench.lengths takes any list).
#   LRA_SFA_GIT_COMMIT=<local HEAD> bash lab/gpu/gpu_bench.sh SWEEP_ATTNS TABLE2_ATTNS [SWEEP_S] [TABLE2_S]
#   e.g. bash lab/gpu/gpu_bench.sh bigbird,performer_relu,sfa_wide windowed,sfa_window,sfa_wide 300 120
#   ("-" skips a part; "all" = every conf/attn backend; OVERHEAD=0 skips the harness-overhead measurement.)
#   Records come back as one archive, $OUT/bench.tgz:
#   unpack it and copy bench/*.json to results/bench, then `make tables`.
set -u
SWEEP=${1:-all}; TABLE2=${2:-all}; SWEEP_S=${3:-300}; TABLE2_S=${4:-120}
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/bench"
attns() { [[ $1 == all ]] && echo "bench.attns=null" || echo "bench.attns=[$1]"; }
[[ ${OVERHEAD:-1} == 0 ]] || timeout 90 python3 -m lra_sfa.bench.overhead out="$OUT/bench" 2>&1 | tail -2
if [[ $SWEEP != - ]]; then
  timeout $(( SWEEP_S + 60 )) python3 -m lra_sfa.bench out_dir="$OUT/bench" hydra.run.dir=/tmp/bench_sweep \
    "$(attns "$SWEEP")" 'bench.lengths=[1024,4096,16384,65536,262144,1048576]' bench.max_seconds=6 \
    bench.repeats=3 bench.warmup=1 bench.budget_seconds="$SWEEP_S" 2>&1 | tail -4
fi
if [[ $TABLE2 != - ]]; then
  timeout $(( TABLE2_S + 60 )) python3 -m lra_sfa.bench bench=lra_table2 out_dir="$OUT/bench" \
    hydra.run.dir=/tmp/bench_table2 "$(attns "$TABLE2")" bench.budget_seconds="$TABLE2_S" bench.timed_steps=10 \
    2>&1 | tail -4
fi
tar czf "$OUT/bench.tgz" -C "$OUT" bench && rm -rf "$OUT/bench"
