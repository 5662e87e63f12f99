#!/usr/bin/env bash
# On the GPU machine (issue 8): the wide-code SFA launch grid, then the benchmark with the default launch.
#   bash scripts/gpu_wide.sh [DATE]
# Writes $OUT/wide/{sfa_wide_explore.csv, sfa_wide.csv, sfa_vs_sdpa.csv, sfa_wide.png}; bring the benchmark
# rows home with `python -m lra_sfa.bench.kernels --mode merge --src <the returned wide folder>`.
set -u
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
DATE=${1:-$(date +%F)}
# 1. the score loops at the winning tile (D = 131072, k = 8), and tiles at large buckets (D = 4096, k = 16)
python3 -m lra_sfa.bench.wide_explore --date "$DATE" --out "$OUT/wide" --lengths 65536:8,1048576:1 \
  --configs compare,16,16,2,1 select,16,16,2,1 select,16,16,4,1 select,16,32,2,1 2>&1 | grep -v WARN
python3 -m lra_sfa.bench.wide_explore --date "$DATE" --out "$OUT/wide" --D 4096 --k 16 --lengths 65536:8 \
  --configs select,16,16,2,1 select,32,32,2,1 select,64,64,4 compare,64,64,4 select,16,64,2,1 2>&1 | grep -v WARN
# 2. the benchmark: exact overlap at D = 131072, k = 8 to 1M; capped (cap = 64) at D = 4096, k = 16
python3 -m lra_sfa.bench.wide --D 131072 --k 8 --variants null --lengths 65536,262144,1048576 \
  --deadline-s 150 --max-call-s 60 --date "$DATE" --out "$OUT/wide" 2>&1 | grep -v WARN
python3 -m lra_sfa.bench.wide --D 4096 --k 16 --variants 64 --lengths 131072,262144,524288,1048576 \
  --deadline-s 150 --max-call-s 30 --date "$DATE" --out "$OUT/wide" 2>&1 | grep -v WARN
