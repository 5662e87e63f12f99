#!/usr/bin/env bash
# On the GPU machine (issue 3): time the SFA decode kernel's launch grid (BLOCK_N, warps, stages, split
# programs per SM) at a 128K context, then re-run the decode part of the kernel sweep with the fastest one.
#   bash scripts/gpu_decode.sh [DATE]
# Writes $OUT/decode/sfa_explore.csv (the grid) and $OUT/decode/sfa_vs_sdpa.csv + sfa_checks.csv (decode rows
# only, as `python -m lra_sfa.bench.kernels --mode sweep --ops decode` writes them): merge those into
# results/kernels/ in place of the older decode rows, then `python -m lra_sfa.bench.kernels --mode plot`.
set -u
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
DATE=${1:-$(date +%F)}
python3 -m lra_sfa.bench.kernels --mode explore --sections decode --out "$OUT/decode" --decode-configs \
  64,4,3,4 64,4,3,8 32,4,3,16 32,4,4,16 32,4,5,16 32,4,3,32 32,4,4,32 16,2,3,32 32,8,3,16 64,4,4,16 64,8,4,8 \
  2>&1 | grep -v WARN
best=$(python3 - "$OUT/decode/sfa_explore.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["name"].startswith("sfa_decode")]
best = min(rows, key=lambda r: float(r["ms"]))["name"].split()[-4:]  # bnN wN sN pN
print(",".join(part[1:] if part[0] != "b" else part[2:] for part in best))
PY
)
echo "decode config (BLOCK_N,warps,stages,programs_per_sm): $best"
python3 -m lra_sfa.bench.kernels --mode sweep --ops decode --decode-config "$best" --out "$OUT/decode" \
  --date "$DATE" --rep-ms 200 2>&1 | grep -v WARN
