"""One test per failure a run must survive, each checking what is left on disk afterwards.

Kill and resume, unusable checkpoints, unwritable folders, values of the wrong
type, bad inputs, a non-finite loss, CUDA out of memory (raised by a patched
forward on the CPU) and the results store under concurrent and killed writers.
CLI tests run ``python -m lra_sfa`` in a subprocess; ``prelude`` is Python run
in that process first (a monkeypatch), so faults can be injected end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lra_sfa.records import REQUIRED_FIELDS, load_records, store_record, write_json_atomic
from lra_sfa.tasks.listops import ListOps
from lra_sfa.train import run

ORIGINAL_LISTOPS_LOAD = ListOps.load

TINY = [
    "task=listops", "model=tiny", "task.seq_len=16", "task.max_depth=2", "task.min_length=3", "task.max_length=13",
    "task.num_train=400", "task.num_val=64", "task.num_test=64", "task.workers=1", "trainer.batch_size=8",
    "trainer.eval_every=5", "trainer.progress=false", "trainer.device=cpu",
]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One data cache for every CLI test (entries are keyed by the task's parameters)."""
    return tmp_path_factory.mktemp("cache")


def cli_command(*args: str, prelude: str = "") -> list[str]:
    code = textwrap.dedent(prelude) + "\nfrom lra_sfa.__main__ import main\nmain()\n"
    return [sys.executable, "-c", code, *args]


def cli_env(root: Path, cache: Path) -> dict:
    return {**os.environ, "LRA_SFA_RESULTS": str(root / "store"), "LRA_SFA_CACHE": str(cache),
            "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def cli(*args: str, root: Path, cache: Path, prelude: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m lra_sfa ARGS`` (after ``prelude``) in ``root``, results store root/store."""
    return subprocess.run(cli_command(*args, prelude=prelude), cwd=root, env=cli_env(root, cache),
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("lra-sfa: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def stored(root: Path) -> list[dict]:
    valid, invalid = load_records(root / "store")
    assert not invalid, invalid
    return valid


# ---------------------------------------------------------------- kill and resume

SLOW_STEPS = """
import time
import lra_sfa.train as train
_step = train._train_step
def _slow_step(*args, **kwargs):
    time.sleep(0.05)
    return _step(*args, **kwargs)
train._train_step = _slow_step
"""


def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted(tmp_path, shared_cache):
    args = [*TINY, "trainer.max_steps=60", "trainer.checkpoint_every=10", "trainer.eval_every=20"]
    reference = cli(*args, f"hydra.run.dir={tmp_path / 'reference'}", root=tmp_path, cache=shared_cache)
    assert reference.returncode == 0, reference.stderr
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(cli_command(*args, f"hydra.run.dir={run_dir}", prelude=SLOW_STEPS), cwd=tmp_path,
                            env=cli_env(tmp_path, shared_cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()
    assert not (run_dir / "record.json").exists()
    records_before = len(stored(tmp_path))  # the reference run's record only
    (run_dir / ".checkpoint.killed.tmp").write_bytes(b"\x80half a checkpoint")  # a write cut off by the kill

    resumed = cli(*args, f"hydra.run.dir={run_dir}", "resume=true", root=tmp_path, cache=shared_cache)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((run_dir / "record.json").read_text())
    expected = json.loads((tmp_path / "reference" / "record.json").read_text())
    assert record["status"] == "ok" and record["steps"] == expected["steps"] == 60
    assert record["resumed_from_step"] in (10, 20, 30, 40, 50)
    assert record["test_accuracy"] == expected["test_accuracy"]
    assert record["final_train_loss"] == pytest.approx(expected["final_train_loss"], rel=1e-5)
    assert [h["step"] for h in record["history"]] == [20, 40, 60]
    assert [h["val_accuracy"] for h in record["history"]] == [h["val_accuracy"] for h in expected["history"]]
    assert not list(run_dir.glob(".checkpoint.*.tmp"))
    assert len(stored(tmp_path)) == records_before + 1


def test_resume_auto_starts_fresh_then_continues(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "trainer.max_steps=10", "trainer.checkpoint_every=5", "resume=auto")
    first = run(cfg)
    assert first["status"] == "ok" and first["resumed_from_step"] is None
    longer = run(make_cfg(*TINY, "trainer.max_steps=15", "trainer.checkpoint_every=5", "resume=auto"))
    assert longer["steps"] == 15 and longer["resumed_from_step"] == 10


# ---------------------------------------------------------------- unusable checkpoints


def _damage(path: Path, damage: str) -> None:
    if damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()


def test_corrupt_checkpoint_is_one_line_error(make_cfg, tmp_path, shared_cache):
    run_dir = tmp_path / "run"
    run(make_cfg(*TINY, "trainer.max_steps=5", "trainer.checkpoint_every=5"))
    record_before = (run_dir / "record.json").read_bytes()
    _damage(run_dir / "checkpoint.pt", "garbage")
    damaged = (run_dir / "checkpoint.pt").read_bytes()
    result = cli(*TINY, "trainer.max_steps=10", f"hydra.run.dir={run_dir}", "resume=true", root=tmp_path,
                 cache=shared_cache)
    assert_one_line_error(result, str(run_dir / "checkpoint.pt"), "corrupt")
    assert (run_dir / "checkpoint.pt").read_bytes() == damaged  # left as found
    assert (run_dir / "record.json").read_bytes() == record_before


@pytest.mark.parametrize("damage, fragment", [("truncated", "corrupt"), ("missing", "no checkpoint")])
def test_unusable_checkpoint_raises_checkpoint_error(make_cfg, tmp_path, damage, fragment):
    from lra_sfa.checkpoint import CheckpointError

    run(make_cfg(*TINY, "trainer.max_steps=5", "trainer.checkpoint_every=5"))
    _damage(tmp_path / "run" / "checkpoint.pt", damage)
    with pytest.raises(CheckpointError, match=fragment) as info:
        run(make_cfg(*TINY, "trainer.max_steps=10", "resume=true"))
    assert "\n" not in str(info.value)
    assert json.loads((tmp_path / "run" / "record.json").read_text())["steps"] == 5


def test_checkpoint_of_another_model_shape_is_refused(make_cfg, tmp_path, shared_cache):
    run_dir = tmp_path / "run"
    run(make_cfg(*TINY, "trainer.max_steps=5", "trainer.checkpoint_every=5"))
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    result = cli(*TINY, "model.d_model=32", "trainer.max_steps=10", f"hydra.run.dir={run_dir}", "resume=true",
                 root=tmp_path, cache=shared_cache)
    assert_one_line_error(result, "different model", "new hydra.run.dir")
    assert (run_dir / "checkpoint.pt").read_bytes() == checkpoint
    assert json.loads((run_dir / "record.json").read_text())["steps"] == 5


# ---------------------------------------------------------------- unwritable output


def test_unwritable_hydra_run_dir_is_one_line_error(tmp_path, shared_cache):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "out"
    result = cli(*TINY, "trainer.max_steps=2", f"hydra.run.dir={target}", root=tmp_path, cache=shared_cache)
    assert_one_line_error(result, str(target), "not writable")
    assert blocker.read_text() == "not a folder"
    assert not list(tmp_path.rglob("record.json"))


@pytest.mark.parametrize("key, what", [("run_dir", "run dir"), ("results_dir", "results store")])
def test_unwritable_run_dir_or_store_fails_before_training(make_cfg, tmp_path, key, what):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=f"{what} .*a_file/out is not writable"):
        run(make_cfg(*TINY, "trainer.max_steps=2", f"{key}={blocker / 'out'}"))
    assert blocker.read_text() == "not a folder"
    assert not list(tmp_path.rglob("record.json")) and not list(tmp_path.rglob("checkpoint.pt"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_run_dir_is_one_line_error(tmp_path, shared_cache):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = cli(*TINY, "trainer.max_steps=2", f"run_dir={locked}", root=tmp_path, cache=shared_cache)
        assert_one_line_error(result, str(locked), "not writable")
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o700)


# ---------------------------------------------------------------- config values of the wrong type


def test_wrong_type_is_one_line_error_naming_the_key(tmp_path, shared_cache):
    out = tmp_path / "out"
    result = cli(*TINY, "trainer.max_steps=abc", f"hydra.run.dir={out}", root=tmp_path, cache=shared_cache)
    assert_one_line_error(result, "trainer.max_steps='abc'", "expected an integer")
    assert not (out / "record.json").exists() and not (tmp_path / "store").exists()


@pytest.mark.parametrize("override, fragments", [
    ("trainer.lr=fast", ("trainer.lr='fast'", "a number")),
    ("trainer.progress=maybe", ("trainer.progress='maybe'", "true or false")),
    ("model.num_layers=2.5", ("model.num_layers=2.5", "an integer")),
    ("trainer.grad_clip=high", ("trainer.grad_clip='high'", "a number or null")),
    ("trainer.batch_size=0", ("trainer.batch_size=0", "at least 1")),
    ("resume=sometimes", ("resume='sometimes'", "true, false, auto or force")),
])
def test_wrong_type_names_key_and_expected_type(make_cfg, tmp_path, override, fragments):
    with pytest.raises(ValueError) as info:
        run(make_cfg(*TINY, override))
    assert all(fragment in str(info.value) for fragment in fragments), str(info.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "store").exists()


def test_every_shipped_experiment_passes_the_type_check(make_cfg):
    from lra_sfa.faults import check_config_types

    for path in sorted((Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml")):
        check_config_types(make_cfg(f"experiment={path.stem}"))


# ---------------------------------------------------------------- bad inputs, non-finite loss

BAD_INPUTS = """
import numpy as np
from lra_sfa.tasks import listops
_load = listops.ListOps.load
def _damaged(self, cache_dir):
    data = _load(self, cache_dir)
    kind = {kind!r}
    if kind == "nan":
        data.train.inputs = data.train.inputs.astype(np.float32)
        data.train.inputs[7, 3] = np.nan
    elif kind == "inf":
        data.val.inputs = data.val.inputs.astype(np.float64)
        data.val.inputs[2, 0] = np.inf
    elif kind == "token":
        data.test.inputs = data.test.inputs.copy()
        data.test.inputs[5, 1] = self.vocab_size
    else:
        data.train.labels = data.train.labels.copy()
        data.train.labels[9] = -1
    return data
listops.ListOps.load = _damaged
"""


def test_nan_in_inputs_is_one_line_error(tmp_path, shared_cache):
    out = tmp_path / "out"
    result = cli(*TINY, "trainer.max_steps=3", f"hydra.run.dir={out}", root=tmp_path, cache=shared_cache,
                 prelude=BAD_INPUTS.format(kind="nan"))
    assert_one_line_error(result, "task listops", "train inputs of example 7", "nan")
    assert not (out / "record.json").exists()


@pytest.mark.parametrize("kind, fragments", [
    ("inf", ("val inputs of example 2", "token id inf")),
    ("token", ("test inputs of example 5", "token id 17,", "[0, 17)")),
    ("label", ("train labels of example 9", "label -1,", "[0, 10)")),
])
def test_bad_inputs_name_split_example_and_value(make_cfg, tmp_path, kind, fragments):
    exec(BAD_INPUTS.format(kind=kind), {})  # patches ListOps.load; undone below
    from lra_sfa.tasks import listops

    try:
        with pytest.raises(ValueError) as info:
            run(make_cfg(*TINY, "trainer.max_steps=3"))
    finally:
        listops.ListOps.load = ORIGINAL_LISTOPS_LOAD
    assert all(fragment in str(info.value) for fragment in fragments), str(info.value)
    assert not (tmp_path / "run" / "record.json").exists()


NAN_LOSS = """
import torch
import lra_sfa.evaluation as evaluation
_ce, _calls = evaluation.cross_entropy, [0]
def _nan_after_three(logits, labels):
    _calls[0] += 1
    loss = _ce(logits, labels)
    return loss * float("nan") if _calls[0] > 3 else loss
evaluation.cross_entropy = _nan_after_three
"""


def test_nan_loss_is_recorded_as_diverged(tmp_path, shared_cache):
    out = tmp_path / "out"
    result = cli(*TINY, "trainer.max_steps=20", "trainer.log_every=2", f"hydra.run.dir={out}", root=tmp_path,
                 cache=shared_cache, prelude=NAN_LOSS)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "status=diverged" in result.stdout and "loss became nan by step 4" in result.stdout
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "diverged" and record["reason"] == "loss became nan by step 4"
    assert [r["status"] for r in stored(tmp_path)] == ["diverged"]


# ---------------------------------------------------------------- CUDA out of memory


@pytest.mark.parametrize("phase", ["train step", "eval on val"])
def test_cuda_oom_is_recorded_with_the_shape(make_cfg, tmp_path, monkeypatch, phase):
    from lra_sfa.model import LRAClassifier

    forward = LRAClassifier.forward

    def out_of_memory(self, tokens, *args, **kwargs):
        if self.training == (phase == "train step"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(self, tokens, *args, **kwargs)

    monkeypatch.setattr(LRAClassifier, "forward", out_of_memory)
    record = run(make_cfg(*TINY, "trainer.max_steps=5", "trainer.eval_batch_size=16"))
    shape = [8, 16] if phase == "train step" else [16, 16]
    assert record["status"] == "oom"
    assert record["oom_phase"] == phase and record["oom_shape"] == shape
    assert f"in {phase} at tokens shape {tuple(shape)}" in record["reason"]
    assert "Tried to allocate 20.00 GiB" in record["reason"]
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert on_disk["status"] == "oom" and on_disk["oom_shape"] == shape
    valid, invalid = load_records(tmp_path / "store")
    assert [r["status"] for r in valid] == ["oom"] and not invalid


# ---------------------------------------------------------------- the results store

WRITER = """
import sys
from lra_sfa.records import store_record, write_json_atomic
store, worker, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = {{key: None for key in {fields!r}}}
for index in range(count):
    record = dict(base, task="listops", attn="full", status="ok", date="2026-11-28", worker=worker, index=index,
                  padding=[index] * size)
    store_record(record, store)
    write_json_atomic(store + "/latest.json", record)
"""


def _writer(store: Path, worker: int, count: int, size: int) -> subprocess.Popen:
    code = WRITER.format(fields=list(REQUIRED_FIELDS))
    return subprocess.Popen([sys.executable, "-c", code, str(store), str(worker), str(count), str(size)])


def test_store_survives_concurrent_writers(tmp_path):
    store = tmp_path / "store"
    writers = [_writer(store, worker, 40, 10) for worker in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    valid, invalid = load_records(store)
    assert not invalid
    assert len(valid) == 4 * 40 + 1  # every stored record, plus latest.json (replaced 160 times, always whole)
    assert {(r["worker"], r["index"]) for r in valid} == {(w, i) for w in range(4) for i in range(40)}
    assert not list(store.glob(".*.tmp"))


def test_store_never_holds_a_partial_record_after_kills(tmp_path):
    store = tmp_path / "store"
    for attempt in range(3):
        writer = _writer(store, attempt, 10_000, 200_000)  # ~1 MB records: a kill lands mid-write
        deadline = time.monotonic() + 60
        while len(list(store.glob("*.json"))) < 2 + attempt and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=30) == -signal.SIGKILL
    valid, invalid = load_records(store)
    assert len(valid) >= 3
    assert all(len(r["padding"]) == 200_000 for r in valid)  # every visible record is whole
    assert all("unfinished write" in reason for _, reason in invalid)  # only the killed writers' temp files


def test_report_tells_valid_from_invalid(tmp_path):
    store = tmp_path / "store"
    good = {key: None for key in REQUIRED_FIELDS} | {"task": "listops", "attn": "full", "status": "ok"}
    store_record(good, store)
    (store / "truncated.json").write_text(json.dumps(good)[:40])
    (store / "incomplete.json").write_text(json.dumps({"task": "listops", "status": "ok"}))
    (store / "badstatus.json").write_text(json.dumps(good | {"status": "great"}))
    write_json_atomic(store / "nested" / "ok.json", good)
    (store / ".x.json.abc123.tmp").write_text("{")
    valid, invalid = load_records(store)
    assert len(valid) == 2
    reasons = {path.name: reason for path, reason in invalid}
    assert reasons["truncated.json"].startswith("unreadable JSON")
    assert "missing field 'attn'" in reasons["incomplete.json"]
    assert "status 'great'" in reasons["badstatus.json"]
    assert "unfinished write" in reasons[".x.json.abc123.tmp"]
