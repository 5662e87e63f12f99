"""Run records: one flat JSON per run, written atomically, never edited.

A record lands in the run directory (``record.json``) and is copied into a
results store (a folder of ``<date>_<task>_<attn>_<id>.json`` files). Writes go
to a temporary file in the same folder, are fsynced and renamed into place,
so a reader never sees a partial record, and concurrent writers (parallel
sweep jobs) never collide: each record has its own unique file name. JSON is
written strictly (``allow_nan=False``): a record holds null, never NaN or Inf
(``finite_or_null`` replaces them before writing). A failed write (a full
disk) raises an OSError naming the file.

Readers check every field they know the type of (``FIELD_KINDS``): a record
with a wrongly typed field is listed as invalid, never read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from lra_sfa.fileio import chmod_like_open

REQUIRED_FIELDS = (
    "task", "attn", "attn_args", "seq_len", "model", "dtype", "device", "status", "val_accuracy",
    "test_accuracy", "train_seconds", "steps_per_second", "tokens_per_second", "peak_memory_mb", "steps",
    "git_commit", "config_hash", "date",
)
STATUSES = ("ok", "oom", "diverged", "unsupported", "error")
# field -> kind, for the fields readers use; null is valid for all but task, attn and status (a run that
# stopped early has no numbers). number = finite int or float; scores = an object of finite numbers or nulls.
FIELD_KINDS = {
    "task": "str", "attn": "str", "status": "str", "attn_args": "dict", "seq_len": "int", "model": "dict",
    "dtype": "str", "device": "str", "val_accuracy": "number", "test_accuracy": "number",
    "train_seconds": "number", "steps_per_second": "number", "tokens_per_second": "number",
    "peak_memory_mb": "number", "steps": "int", "git_commit": "str", "config_hash": "str", "date": "str",
    "max_steps": "int", "seed": "int", "batch_size": "int", "world_size": "int", "num_train": "int",
    "protocol": "str", "reason": "str", "trainer": "dict", "history": "list", "final_train_loss": "number",
    "stopped_by_time_budget": "bool", "stopped_at_val_accuracy": "bool", "test_accuracy_by_length": "scores",
    "test_accuracy_by_depth": "scores",
}
NOT_NULL = ("task", "attn", "status")


def git_commit() -> str:
    """The current commit of the source tree (with '+dirty' when modified), or 'unknown'.

    ``LRA_SFA_GIT_COMMIT`` overrides it, for copies of the tree without ``.git``
    (the GPU machine receives the working tree only).
    """
    if os.environ.get("LRA_SFA_GIT_COMMIT"):
        return os.environ["LRA_SFA_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def trained_to_end(record: dict) -> bool:
    """Training ended where its configuration ends it: at ``max_steps``, or earlier at the evaluation that
    reached ``trainer.stop_at_val_accuracy`` (``stopped_at_val_accuracy``); never where a time budget cut it."""
    if record.get("stopped_by_time_budget"):
        return False
    steps, max_steps = record.get("steps"), record.get("max_steps")
    return record.get("stopped_at_val_accuracy") is True or (isinstance(steps, int) and steps == max_steps)


def config_hash(config: dict) -> str:
    """A stable hash of a resolved config (independent of key order)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _has_kind(value, kind: str) -> bool:
    if kind == "number":
        return _is_number(value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "scores":
        return isinstance(value, dict) and all(v is None or _is_number(v) for v in value.values())
    return isinstance(value, {"str": str, "dict": dict, "list": list, "bool": bool}[kind])


def field_problems(record: dict, kinds: dict[str, str] = FIELD_KINDS, not_null: tuple = NOT_NULL) -> list[str]:
    """One line per present field whose value is not of its kind (null allowed except for ``not_null``)."""
    problems = []
    for key, kind in kinds.items():
        if key not in record or (record[key] is None and key not in not_null):
            continue
        if not _has_kind(record[key], kind):
            want = {"number": "a finite number", "int": "an integer", "scores": "an object of finite numbers",
                    "dict": "an object", "list": "a list", "str": "a string", "bool": "true or false"}[kind]
            problems.append(f"field '{key}' is {record[key]!r:.60}, expected {want}")
    return problems


def finite_or_null(value: Any, where: str = "") -> tuple[Any, list[str]]:
    """``value`` with every NaN or Inf float (at any depth) replaced by None, and the dotted paths replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, [where or "value"]
    if isinstance(value, dict):
        pairs = [(key, finite_or_null(item, f"{where}.{key}" if where else str(key))) for key, item in value.items()]
        return {key: item for key, (item, _) in pairs}, [path for _, (_, paths) in pairs for path in paths]
    if isinstance(value, (list, tuple)):
        items = [finite_or_null(item, f"{where}[{index}]") for index, item in enumerate(value)]
        return [item for item, _ in items], [path for _, paths in items for path in paths]
    return value, []


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _write_temp(path: Path, data: Any) -> str:
    """JSON into a fsynced temp file beside ``path``; returns the temp file's name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OSError(f"cannot write {path}: the folder {path.parent} is not writable ({exc.strerror})") from None
    try:
        chmod_like_open(fd)  # mkstemp's 0600 would make a shared store unreadable to others
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # a full disk, a quota, an I/O error: name the file (the raw error does not)
        os.unlink(tmp)
        error = OSError(f"cannot write {path} ({exc.strerror or exc})")
        error.errno = exc.errno
        raise error from None
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every file system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON to ``path`` through a temp file + fsync + rename (replaces an existing file)."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_folder(path.parent)
    return path


def store_record(record: dict, store_dir: str | Path) -> Path:
    """Copy a record into the results store under a new unique name (never replaces a file).

    The name is claimed with a hard link from the fsynced temp file, which
    fails if the name exists: two writers can never overwrite each other
    (on a file system without hard links, a rename to the random name).
    """
    date = str(record.get("date", now_iso()))[:10]
    folder = Path(store_dir)
    tmp = _write_temp(folder / ".record.json", record)
    try:
        while True:
            name = f"{date}_{record.get('task', 'task')}_{record.get('attn', 'attn')}_{uuid.uuid4().hex[:8]}.json"
            try:
                os.link(tmp, folder / name)
                break
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system: a random 32-bit name, renamed into place
                os.replace(tmp, folder / name)
                break
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_folder(folder)
    return folder / name


def validate_record(record: Any) -> list[str]:
    """Problems that make a record unusable for tables; empty when valid."""
    if not isinstance(record, dict):
        return [f"not a JSON object ({type(record).__name__})"]
    problems = [f"missing field '{key}'" for key in REQUIRED_FIELDS if key not in record]
    if record.get("status") not in STATUSES:
        problems.append(f"status {record.get('status')!r} not in {STATUSES}")
    return problems + [line for line in field_problems(record) if not line.startswith("field 'status'")]


def load_records(folder: str | Path, kind: str = "run") -> tuple[list[dict], list[tuple[Path, str]]]:
    """Valid records of ``kind`` under ``folder`` (recursively), and the invalid files with reasons.

    Records carry ``kind`` ("run" for training runs, "bench" for benchmark
    cells); other kinds are skipped silently, unreadable or incomplete files
    are returned as invalid, and so are temp files that a killed writer left
    (never read as records; safe to delete).
    """
    valid, invalid = [], []
    for path in sorted(Path(folder).rglob(".*.json.*.tmp")):
        invalid.append((path, "unfinished write (temp file of a killed writer, not a record; safe to delete)"))
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            invalid.append((path, f"unreadable JSON: {exc}"))
            continue
        if isinstance(record, dict) and record.get("kind", "run") != kind:
            continue
        problems = validate_record(record) if kind == "run" else []
        if problems:
            invalid.append((path, "; ".join(problems)))
        else:
            valid.append(record)
    return valid, invalid
