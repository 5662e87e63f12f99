#!/usr/bin/env bash
# On the GPU machine (issue 3): time the SFA decode kernel's launch grid (BLOCK_N, warps, stages, split
# programs per SM; single-pass and bounded designs, the latter with and without register prefetch; two-pass
# lost on 2026-11-29) at a 128K context, then re-runs the decode part of the kernel sweep with the fastest one (earlier grids: results/kernels/sfa_decode_grid_*.csv).
#   bash lab/gpu/gpu_decode.sh [DATE]
# The grid runs at head dim 128, so the sweep re-runs the head-dim-128 decode rows only.
# Writes $OUT/decode/sfa_explore.csv (the grid) and $OUT/decode/sfa_vs_sdpa.csv + sfa_checks.csv (decode rows
# only, as `python -m lra_sfa.bench.kernels mode=sweep ops=[decode]` writes them); bring them home with
# `python -m lra_sfa.bench.kernels mode=merge src=<the returned decode folder>` (replaces those cells only).
# Carry the Hydra wheels (cp ../shared/device/wheels/*.whl .whl/; carry [".whl"]) and set LRA_SFA_GIT_COMMIT.
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
DATE=${1:-$(date +%F)}
python3 -m lab.kernel_explore --sections decode --out "$OUT/decode" --decode-configs \
  32,4,3,16 32,4,3,16,2 32,4,3,32,2 32,4,3,16,3 32,4,3,24,3 32,4,3,32,3 32,4,3,64,3 64,4,3,32,3 \
  2>&1 | grep -v WARN
best=$(python3 - "$OUT/decode/sfa_explore.csv" <<'PY'
import csv, sys
designs = {"bounded": 1, "prefetch": 1}  # lra_sfa.bench.kernels.decode.DECODE_DESIGNS: 0 online, 1 bounded
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["name"].startswith("sfa_decode") and r["ms"] != "nan"]
words = min(rows, key=lambda r: float(r["ms"]))["name"].split()  # "sfa_decode L=.. B*H=.. bnN wN sN pN[ design]"
design = designs.get(words[-1], 0)
fields = words[-5:-1] if design else words[-4:]
print(",".join(part[2:] if part.startswith("bn") else part[1:] for part in fields) + f",{design}")
PY
)
echo "decode config (BLOCK_N,warps,stages,programs_per_sm,design): $best"
python3 -m lra_sfa.bench.kernels mode=sweep 'ops=[decode]' 'dims=[128]' "decode_config=[$best]" out="$OUT/decode" \
  date="$DATE" 'topks=[8,16]' hydra.run.dir=/tmp/bench_kernels 2>&1 | grep -v WARN
