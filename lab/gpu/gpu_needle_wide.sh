#!/usr/bin/env bash
# On the GPU machine (issue 8): the SimHash operating point D = 262144, k = 16 (16 tables of 14 bits):
# its 1M-token forward against cuDNN, then the needle trained at 256 tokens and tested to 64K
# (3000 steps, bits annealed from 2), and full attention again under a second seed (the noise of
# the 64K baseline).   LRA_SFA_GIT_COMMIT=<hash> bash lab/gpu/gpu_needle_wide.sh
set -u
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null && export PYTHONPATH=/tmp/site
# the package install maps the top-level tasks/ and baselines/ into lra_sfa (PYTHONPATH=$PWD alone does not)
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1 LRA_SFA_RESULTS=$OUT/runs LRA_SFA_CACHE=/tmp/lra_cache
mkdir -p "$OUT/wide" "$OUT/runs"
# two calls: one length list would project the 1M time quadratically from 2K and skip it (it did, once)
for lengths in 2048 1048576; do
  timeout 150 python3 -m lra_sfa.bench.wide codes=simhash D=262144 k=16 'variants=[null]' 'ops=[fwd]' \
    "lengths=[$lengths]" max_call_s=100 out="$OUT/wide" 2>&1 | grep --line-buffered -v WARN | tee -a "$OUT/wide/log.txt"
done
set -f
timeout 120 python3 -m lra_sfa experiment=lra_needle task.seq_len=256 'trainer.test_lengths=[1024,4096,16384,65536]' \
  trainer.max_steps=3000 trainer.eval_every=500 attn=full seed=1 trainer.progress=false \
  hydra.run.dir=/tmp/runs/full_seed1 2>&1 | tail -n 2
bash lab/gpu/gpu_lra_runs.sh \
  needle_long=sfa_wide_simhash:D=262144:k=16:bits_start=2:bits_anneal=0.9@230 2>&1 | grep -v WARN | tail -n 4
