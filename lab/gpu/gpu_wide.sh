#!/usr/bin/env bash
# On the GPU machine (issue 8): the wide-code SFA benchmark with the default launch: exact overlap at
# D = 131072, k = 8 to 1M tokens, and capped (cap = 64) at D = 4096, k = 16 from 128K to 1M.
#   bash lab/gpu/gpu_wide.sh [DATE]          (about 5 minutes; the launch grid: python -m lab.wide_explore)
# Writes $OUT/wide/{sfa_wide.csv, sfa_wide.png} and $OUT/wide/log.txt; bring the rows home with
# `python -m lra_sfa.bench.kernels mode=merge src=<the returned wide folder>`.
set -u
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
DATE=${1:-$(date +%F)}
mkdir -p "$OUT/wide"
run() { timeout "$1" "${@:2}" 2>&1 | grep --line-buffered -v WARN | tee -a "$OUT/wide/log.txt"; }
run 300 python3 -m lra_sfa.bench.wide D=131072 k=8 'variants=[null]' 'lengths=[65536,262144,1048576]' \
  deadline_s=150 max_call_s=60 date="$DATE" out="$OUT/wide"
run 200 python3 -m lra_sfa.bench.wide D=4096 k=16 'variants=[64]' 'lengths=[131072,262144,524288,1048576]' \
  deadline_s=120 max_call_s=30 date="$DATE" out="$OUT/wide"
