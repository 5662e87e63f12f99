#!/usr/bin/env bash
# GPU machine: one slot of a campaign (python -m lra_sfa.campaign), records and small checkpoints back.
#
# Here (the checkout that travels):   mkdir -p .campaign; cp ../shared/device/wheels/*.whl .whl/
#   run with carry [".whl", ".campaign"]:
#   LRA_SFA_GIT_COMMIT=<commit> bash lab/gpu/campaign_slot.sh lra_core 8 [overrides...]
#   (small models, e.g. campaign=needle or fmnist: add concurrency=3 to run three cells at once)
# <minutes> is when the campaign stops starting cells and cuts the running ones; the cut cell's last evaluation,
# the set-up and the packing come on top, so in a 10-minute device call give at most 8.5, and no outer
# `timeout` shorter than the call. The campaign itself is killed 60 s after <minutes> whatever it is doing.
# There: installs the Hydra wheels, unpacks .campaign/work.tgz (the run dirs of cells cut last time),
# runs the campaign for <minutes>, and returns $OUT/records.tgz (the new records, repacked within 10 s of each
# being written, so a killed call keeps them; one file, as a call returns at most 8:
# tar xzf records.tgz -C results/runs), $OUT/campaign.log (its output, kept the same way)
# and $OUT/work.tgz (the run dirs of cells the deadline cut, whose checkpoints are under 16 MiB, e.g.
# Pathfinder's; copy it to .campaign/work.tgz for the next slot). Larger checkpoints (ListOps) cannot travel:
# those cells restart, so a cell that would be cut and whose checkpoint is larger is not started
# (checkpoint_travel_mb=16).
# The compilers' caches travel too (Inductor's graphs, Triton's binaries): $OUT/compile_cache.tar.xz, when
# under 16 MiB (the most one file can come back with); copy it to .campaign/compile_cache.tar.xz, and the next
# slot's first cells skip most of their compilation (a cache made on another card or torch is simply not hit).
# GPU_TESTS=<seconds> (e.g. after a kernel change): the GPU tests (pytest -m gpu tests/test_kernels_gpu.py) run
# beside the campaign for at most that long, into $OUT/gpu_tests.log (unbuffered: a cut run keeps the cases done)
# and $OUT/gpu_summary.csv; the campaign counts them (other_jobs=1), so its records say the device was shared
# and the tables read no steps/s from them. GPU_TESTS_ARGS: more pytest arguments for them (e.g. "-n 2" or "-k wide").
set -u
campaign=$1; minutes=$2; shift 2
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null; export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=/tmp/site:$PWD
export LRA_SFA_CACHE=/tmp/lra_cache PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/compile_cache/inductor TRITON_CACHE_DIR=/tmp/compile_cache/triton
mkdir -p /tmp/campaign /tmp/records /tmp/compile_cache
[ -f .campaign/compile_cache.tar.xz ] && python3 -c "import tarfile
tarfile.open('.campaign/compile_cache.tar.xz').extractall('/tmp/compile_cache', filter='data')"
[ -f .campaign/work.tgz ] && tar xzf .campaign/work.tgz -C /tmp/campaign
cp results/runs/*.json /tmp/records/ 2>/dev/null  # finished cells are skipped
suite=
if [ -n "${GPU_TESTS:-}" ]; then
  ( LRA_SFA_GPU_SUMMARY="$OUT/gpu_summary.csv" timeout "$GPU_TESTS" python3 -m pytest -m gpu tests/test_kernels_gpu.py \
      -v -p no:cacheprovider ${GPU_TESTS_ARGS:-} 2>&1 | grep --line-buffered -v "^=* test s.* starts =*$" > "$OUT/gpu_tests.log"
    echo "pytest exit status ${PIPESTATUS[0]}" >> "$OUT/gpu_tests.log" ) &
  suite=$!; set -- "$@" other_jobs=1
fi
touch /tmp/records.start; mkdir -p /tmp/records.new
copy_new() {  # the new records, repacked whole and swapped in, so $OUT never holds half an archive
  find /tmp/records -name '*.json' -newer /tmp/records.start -exec cp -p {} /tmp/records.new/ \;
  if [ -n "$(ls /tmp/records.new)" ]; then
    tar czf "$OUT/records.tgz.part" -C /tmp/records.new . && mv "$OUT/records.tgz.part" "$OUT/records.tgz"
  fi
}
rm -f /tmp/records.stop
( while [ ! -f /tmp/records.stop ]; do sleep 10; copy_new; done ) & copier=$!
hard_stop=$(python3 -c "print(int(float('$minutes') * 60) + 60)")
timeout "$hard_stop" python3 -m lra_sfa.campaign campaign="$campaign" deadline_minutes="$minutes" store=/tmp/records \
  checkpoint_travel_mb=16 work_dir=/tmp/campaign "$@" 2>&1 | grep --line-buffered -v WARN | tee -a "$OUT/campaign.log"
touch /tmp/records.stop; wait $copier; copy_new  # the loop's last pack ends before the final one starts
[ -n "$suite" ] && wait "$suite"
find /tmp/campaign -name checkpoint.pt -size +16M -delete
python3 - <<'PY'  # only cut cells travel back: a finished cell's record is in records.tgz and its checkpoint is dead weight
import json, pathlib, shutil
for run_dir in pathlib.Path("/tmp/campaign").iterdir():
    record = run_dir / "record.json"
    if run_dir.is_dir() and record.is_file() and not json.loads(record.read_text()).get("stopped_by_time_budget"):
        shutil.rmtree(run_dir)
PY
tar czf "$OUT/work.tgz.part" -C /tmp/campaign . && mv "$OUT/work.tgz.part" "$OUT/work.tgz"
[ "$(stat -c %s "$OUT/work.tgz")" -le $((16 << 20)) ] || echo "work.tgz is over 16 MiB and will not come back: \
the cut cells restart next slot (run fewer cells at once)" | tee -a "$OUT/campaign.log"
if timeout 60 python3 -c "import tarfile  # xz (Python's lzma, no xz binary needed): IR text packs far smaller
with tarfile.open('/tmp/compile_cache.tar.xz', 'w:xz', preset=1) as t: t.add('/tmp/compile_cache', arcname='.')" \
   && [ "$(stat -c %s /tmp/compile_cache.tar.xz)" -le $((16 << 20)) ]; then cp /tmp/compile_cache.tar.xz "$OUT/"
else echo "compile cache not returned (over 16 MiB, or not packed within 60 s)" | tee -a "$OUT/campaign.log"; fi
