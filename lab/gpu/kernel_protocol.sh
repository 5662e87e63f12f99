#!/usr/bin/env bash
# On the GPU machine (issue 23): the SFA kernel benchmark by the interleaved protocol, and the float64 checks.
#   Here (the checkout that travels): cp ../shared/device/wheels/*.whl .whl/   (Hydra; run with carry [".whl"])
#   LRA_SFA_GIT_COMMIT=$(git rev-parse --short=12 HEAD) bash lab/gpu/kernel_protocol.sh [PARTS]
# PARTS, comma-separated (default: sweep), each sized to share one 10-minute device call as shown:
#   sweep      the default grid: L = 1K..64K, d = 64 and 128, k = 8, fwd and fwd_bwd (budget_s, about 6 minutes)
#   short      bench_kernels=short: L = 1K..8K at batch x heads = 256 (LRA's lengths)
#   short-graph  the same grid with timer=cudagraph (each call captured in a CUDA graph: no host launch cost)
#   gpu-tests  pytest -m gpu -n 2 tests/test_kernels_gpu.py with its summary (sfa_gpu_checks.csv; two workers
#              halve the Triton compile time, and two L = 32K float64 references still fit one card); it needs
#              a call of its own (at 0afcb08, 42 of its 73 tests in 310 s did not finish)
#   gpu-checks   the same for the float64 check table alone (test_kernels_match_float64: every dispatched
#              path, fwd/dQ/dK/dV, d = 64 and 128, L = 1K, 8K, 32K; sfa_gpu_checks.csv)
#   gpu-rest     the other GPU tests (causal, padding, wide codes, top-k, opcheck, compile, CUDA graphs);
#              gpu-checks and gpu-rest together are gpu-tests, each small enough to share a call
#   padded     python -m lab.padded_full_probe: dense engines and SFA (rows computed / skipped) on padded ListOps,
#              Text and Pathfinder batches (padded_full_probe.csv, about 2 minutes)
#   table2     the LRA Table 2 protocol (python -m lra_sfa.bench bench=lra_table2), every backend eager, into
#              $OUT/kernels/table2.tgz (bench records, one per backend and length, packed because a call returns
#              at most 8 files: tar xzf table2.tgz -C results/bench; at most 5.5 minutes)
#   table2-compiled  the same for full and sfa under torch.compile, as training runs them (at most 4 minutes;
#              `table2,table2-compiled` fits one call)
#   table2-graphs  the same with compile_mode=reduce-overhead (forward and backward replayed as CUDA graphs: no
#              host launch time in the step, the larger share of an SFA call at 1K; at most 4 minutes)
#   profile    python -m lab.short_seq_profile at L = 1K and 4K, d = 64 and 128: each SFA call's kernels, launches
#              and host time beside cuDNN's (results/kernels/short_seq/), packed as $OUT/kernels/profile.tgz
#              (summary.csv, kernels.csv; about 1 minute)
# e.g. one call `... kernel_protocol.sh sweep`, a second `... kernel_protocol.sh gpu-tests`, a third `short,profile`.
# Everything lands in $OUT/kernels (CSVs written row by row, so a time-out keeps the rows done, plus log.txt);
# at home: python -m lra_sfa.bench.kernels mode=merge src=<the returned kernels folder>, then mode=table.
# Extra Hydra overrides for the sweeps go in $OVERRIDES (e.g. OVERRIDES='repeats=7 budget_s=300').
# One table at one commit over several calls (main moves on between them): run the script from that commit's
# tree. Here: git archive --format=tar.gz -o .campaign/tree.tgz <commit>   (carry [".whl", ".campaign"]); there:
#   mkdir /tmp/tree && tar xzf .campaign/tree.tgz -C /tmp/tree && cp -r .whl /tmp/tree/ && cd /tmp/tree &&
#   LRA_SFA_GIT_COMMIT=<commit> bash lab/gpu/kernel_protocol.sh sweep
# (the script must be that commit's too: a part it does not know is reported as unknown).
set -u
PARTS=${1:-sweep}
[ -n "${LRA_SFA_GIT_COMMIT:-}" ] || echo "warning: LRA_SFA_GIT_COMMIT is not set: rows will say git_commit=unknown"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/kernels"
log() { grep --line-buffered -v WARN | tee -a "$OUT/kernels/log.txt"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv 2>&1 | log
python3 -c "import importlib.util as u, torch  # which dense baselines the machine has (FlashAttention-3 or not)
print('flash_attn (FA2 package):', u.find_spec('flash_attn') is not None, '| flash_attn_interface (FA3):',
      u.find_spec('flash_attn_interface') is not None, '| cuDNN', torch.backends.cudnn.version())" 2>&1 | log
for part in ${PARTS//,/ }; do
  case $part in
    sweep) timeout 570 python3 -m lra_sfa.bench.kernels out="$OUT/kernels" budget_s=450 hydra.run.dir=/tmp/bench_kernels \
             ${OVERRIDES:-} 2>&1 | log ;;
    short) timeout 250 python3 -m lra_sfa.bench.kernels bench_kernels=short out="$OUT/kernels" topk_rows=0 budget_s=200 \
             hydra.run.dir=/tmp/bench_kernels ${OVERRIDES:-} 2>&1 | log ;;
    short-graph) timeout 250 python3 -m lra_sfa.bench.kernels bench_kernels=short timer=cudagraph out="$OUT/kernels" \
                   topk_rows=0 budget_s=200 hydra.run.dir=/tmp/bench_kernels ${OVERRIDES:-} 2>&1 | log ;;
    gpu-tests|gpu-checks|gpu-rest)
      case $part in gpu-checks) select=(-k test_kernels_match_float64) ;; gpu-rest) select=(-k "not test_kernels_match_float64") ;;
        *) select=() ;; esac
      LRA_SFA_GPU_SUMMARY="$OUT/kernels/sfa_gpu_checks.csv" timeout 540 python3 -m pytest -m gpu -q -n 2 -p no:logging \
        -p no:cacheprovider "${select[@]}" tests/test_kernels_gpu.py 2>&1 | tail -40 | log ;;
    padded) timeout 200 python3 -m lab.padded_full_probe --out "$OUT/kernels" --shapes listops,text,pathfinder \
              --compiled 2>&1 | log ;;
    table2) timeout 330 python3 -m lra_sfa.bench bench=lra_table2 out_dir=/tmp/table2 \
              hydra.run.dir=/tmp/bench_table2 bench.budget_seconds=270 2>&1 | tail -20 | log ;;
    table2-compiled) timeout 240 python3 -m lra_sfa.bench bench=lra_table2 out_dir=/tmp/table2 \
              hydra.run.dir=/tmp/bench_table2c 'bench.attns=[full,sfa]' bench.compile=true \
              bench.budget_seconds=180 2>&1 | tail -20 | log ;;
    table2-graphs) timeout 240 python3 -m lra_sfa.bench bench=lra_table2 out_dir=/tmp/table2 \
              hydra.run.dir=/tmp/bench_table2g 'bench.attns=[full,sfa]' bench.compile=true \
              bench.compile_mode=reduce-overhead bench.budget_seconds=180 2>&1 | tail -20 | log ;;
    profile) timeout 150 python3 -m lab.short_seq_profile --out /tmp/profile --lengths 1024,4096 --dims 64,128 \
               2>&1 | tail -20 | log
             tar czf "$OUT/kernels/profile.tgz" -C /tmp/profile . ;;
    *) echo "kernel_protocol.sh: unknown part '$part' (sweep, short, short-graph, gpu-tests, gpu-checks, gpu-rest, padded, table2," \
            "table2-compiled, table2-graphs, profile)" | log ;;
  esac
  # the Table 2 records so far, repacked after each part (a later part's time-out keeps the earlier ones)
  [ -d /tmp/table2 ] && tar czf "$OUT/kernels/table2.tgz" -C /tmp/table2 .
done
