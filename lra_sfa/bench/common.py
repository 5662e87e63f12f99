"""Shared pieces of the efficiency benchmarks (``python -m lra_sfa.bench``).

Device and dtype choice, a clock that is honest on CUDA (events, read after a
synchronise) and on the CPU (``perf_counter``), per-cell peak memory
(``max_memory_allocated`` after a reset on CUDA; the process's peak RSS on
the CPU, reset per cell through ``/proc/self/clear_refs`` where Linux allows
it), OOM detection, loading ``conf/attn/<name>.yaml`` and writing one bench
record per cell into the results store.
"""

from __future__ import annotations

import gc
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa.bench.timing import call_ms
from lra_sfa.recording import device_name
from lra_sfa.records import finite_or_null, git_commit, now_iso, write_json_atomic

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BENCH_STATUSES = ("ok", "oom", "timeout", "unsupported", "error")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cuda", "cpu"):
        raise ValueError(f"bench.device={name!r} must be one of auto, cuda, cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("bench.device=cuda but no CUDA device is visible")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on CUDA, fp32 on CPU (as the trainer's precision=auto)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"bench.dtype={name!r} must be one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_peak_rss_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak-memory window; returns how the peak will be measured."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_memory_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        return "cpu_peak_rss_cell"
    except OSError:
        return "cpu_peak_rss_process"  # never reset: the process's lifetime peak


def peak_memory_mb(device: torch.device) -> float:
    """Peak since ``reset_peak_memory`` (CUDA allocated, or CPU resident set) in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = _read_peak_rss_kib()
    if kib is None:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (2**20 if sys.platform == "darwin" else 2**10)
    return kib / 2**10


def fresh_cell(seed: int) -> None:
    """Start a benchmark cell as a separate process would: seeded, and no compiled variants left over.

    Without the reset, the cells of a sweep pile compiled variants of one
    function (FlexAttention) onto each other until torch.compile's recompile
    limit; a first GPU sweep ran later cells through the unfused fallback.
    Compilation happens in the untimed warm-up calls.
    """
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(seed)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    """A CUDA OOM, or a CPU allocation failure."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def timed_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call, between synchronised clock reads."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def warm_up(fn: Callable[[], Any], device: torch.device, warmup: int, max_seconds: float) -> dict[str, Any]:
    """Untimed calls before timing: ``warmup`` of them (at least one).

    The first call includes compilation and autotuning; when it exceeds
    ``max_seconds`` a second call decides: if that one exceeds it too the
    cell has timed out (``timed_out``), else the cost was compilation.
    """
    first = timed_call(fn, device)
    result: dict[str, Any] = {"first_call_ms": first * 1e3, "timed_out": False}
    done = 1
    if first > max_seconds:
        second = timed_call(fn, device)
        result.update(second_call_ms=second * 1e3, timed_out=second > max_seconds)
        done = 2
    if not result["timed_out"]:
        for _ in range(max(0, warmup - done)):
            fn()
        synchronize(device)
    return result


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int,
               max_seconds: float) -> dict[str, Any]:
    """Time ``fn`` after the warm-up (``warm_up``); stops early when ``max_seconds`` is spent.

    Returns ms (median), ms_min, ms_max, repeats (timed calls), first_call_ms
    (compilation included), timed_out (then nothing was timed) and
    memory_source. Peak memory covers the timed calls (inputs included).
    """
    result = warm_up(fn, device, warmup, max_seconds)
    if result["timed_out"]:
        return result
    result["memory_source"] = reset_peak_memory(device)
    times = []
    budget_start = time.perf_counter()
    for _ in range(max(1, repeats)):
        times.append(call_ms(fn, device.type == "cuda"))
        if time.perf_counter() - budget_start > max_seconds:
            break
    times.sort()
    result.update(ms=times[len(times) // 2], ms_min=times[0], ms_max=times[-1], repeats=len(times),
                  peak_memory_mb=peak_memory_mb(device))
    return result


def conf_root() -> Path:
    """The installed Hydra config root (``lra_sfa.conf``)."""
    import lra_sfa.conf as conf_pkg

    return Path(conf_pkg.__file__).resolve().parent


def attn_registry() -> list[str]:
    """Every backend name in conf/attn/ (the registry folder)."""
    return sorted(path.stem for path in (conf_root() / "attn").glob("*.yaml"))


def load_attn_cfg(name: str, overrides: dict | None = None) -> DictConfig:
    """conf/attn/<name>.yaml as composed (a file may inherit another) with ``overrides`` merged in; an
    unknown name lists the valid ones."""
    from lra_sfa.compose import attn_config

    path = conf_root() / "attn" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"bench.attns: no backend '{name}' (no {path}); valid names: {attn_registry()}")
    cfg = attn_config(name)
    if overrides:
        cfg = OmegaConf.merge(cfg, overrides)
    return cfg


def selected_attns(attns: Any) -> list[str]:
    """``bench.attns``: null (or 'all') = the whole registry, else the given list."""
    if attns is None or attns == "all":
        return attn_registry()
    if isinstance(attns, str):
        return [attns]
    return [str(name) for name in attns]


def base_record(mode: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Fields every bench record of one invocation shares."""
    return {
        "kind": "bench", "mode": mode, "device": device_name(device), "device_type": device.type,
        "dtype": dtype_name(dtype), "git_commit": git_commit(), "date": now_iso(),
        "torch_version": torch.__version__,
    }


def write_bench_record(record: dict[str, Any], out_dir: str | Path | None) -> Path | None:
    """One JSON per cell, written atomically under a unique name; None when ``out_dir`` is null."""
    if not out_dir:
        return None
    name = "_".join(str(record.get(key, "x")) for key in ("mode", "attn", "part", "op")) + f"_L{record['seq_len']}"
    name = name.replace("/", "-")
    path = Path(out_dir) / f"{str(record['date'])[:10]}_{name}_{uuid.uuid4().hex[:8]}.json"
    record, replaced = finite_or_null(record)  # strict JSON: a NaN or Inf timing is null, and listed
    if replaced:
        record["non_finite_fields"] = replaced
        if record.get("status") == "ok":
            record.update(status="error", reason=f"non-finite {', '.join(replaced)} (recorded as null)")
    return write_json_atomic(path, record)
