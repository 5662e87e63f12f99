"""How the kernel benchmark measures a ratio: interleaved repeats, the median and spread, and a verdict.

A cell times SFA and its baselines in ``repeats`` rounds. In each round every
call is timed once by the timer (on the GPU ``triton.testing.do_bench``: CUDA
events, the L2 cache flushed before each run, the median of the runs), and the
order alternates between rounds: SFA first and the baselines after it, then
the reverse, and so on. Clock and temperature drift (both sides share a power
cap) thus falls on both sides alike, and the spread over rounds shows what a
re-run would move. Each round gives one ratio baseline / SFA; a row keeps
their median, min and max, and the verdict: "faster" only when every round's
ratio is above 1, "slower" when every one is below 1, otherwise "tie".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

MIN_REPEATS = 5  # rounds per ratio: fewer cannot show a spread worth a verdict
TIMERS = ("do_bench", "cudagraph")
VERDICTS = ("faster", "slower", "tie")

# a timed call: the closure and the tensors whose .grad is reset before each run (its backward's leaves)
Call = tuple[Callable[[], object], Sequence[torch.Tensor]]
Timer = Callable[[Callable[[], object], Sequence[torch.Tensor]], float]


def do_bench_timer(warmup_ms: float, rep_ms: float) -> Timer:
    """A timer that returns ``triton.testing.do_bench``'s median (milliseconds) of one call."""
    from triton.testing import do_bench

    def timer(fn: Callable[[], object], grads: Sequence[torch.Tensor] = ()) -> float:
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(grads) or None,
                              return_mode="median"))

    return timer


def cudagraph_timer(rep_ms: float) -> Timer:
    """A timer that returns ``triton.testing.do_bench_cudagraph``'s median (milliseconds) of one call: the call is
    run once (compilation, autotuning), captured in a CUDA graph and replayed, so the host's cost of issuing its
    kernels is left out, as in a training step captured whole (``compile_mode=reduce-overhead``)."""
    from triton.testing import do_bench_cudagraph

    def timer(fn: Callable[[], object], grads: Sequence[torch.Tensor] = ()) -> float:
        return float(do_bench_cudagraph(fn, rep=rep_ms, grad_to_none=list(grads) or None, return_mode="median"))

    return timer


def make_timer(name: str, warmup_ms: float, rep_ms: float) -> Timer:
    """The timer called ``name`` (``TIMERS``); a ValueError names the valid ones."""
    if name == "do_bench":
        return do_bench_timer(warmup_ms, rep_ms)
    if name == "cudagraph":
        return cudagraph_timer(rep_ms)
    raise ValueError(f"timer={name!r} must be one of {TIMERS}")


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round ``round_index``: as given in even rounds, reversed in odd ones."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def interleaved(calls: dict[str, Call], repeats: int, timer: Timer) -> dict[str, list[float]]:
    """{name: one time per round} for every call, timed in alternating order over ``repeats`` rounds."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats={repeats}: a ratio needs at least {MIN_REPEATS} interleaved repeats")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for index in range(repeats):
        for name in round_order(list(calls), index):
            fn, grads = calls[name]
            times[name].append(timer(fn, grads))
    return times


def verdict(low: float, high: float) -> str:
    """"faster" when the whole spread of the ratio is above 1, "slower" when it is below 1, else "tie"."""
    if low > 1.0:
        return "faster"
    if high < 1.0:
        return "slower"
    return "tie"


def ratio_summary(sfa_ms: Sequence[float], baseline_ms: Sequence[float]) -> dict:
    """The row fields of one SFA-vs-baseline ratio from per-round times (round i of each side together)."""
    if len(sfa_ms) != len(baseline_ms) or not sfa_ms:
        raise ValueError(f"ratio_summary: {len(sfa_ms)} SFA and {len(baseline_ms)} baseline rounds")
    ratios = [base / sfa for sfa, base in zip(sfa_ms, baseline_ms)]
    low, high = min(ratios), max(ratios)
    return {"ms": round(statistics.median(sfa_ms), 4), "baseline_ms": round(statistics.median(baseline_ms), 4),
            "speedup_median": round(statistics.median(ratios), 4), "speedup_min": round(low, 4),
            "speedup_max": round(high, 4), "repeats": len(ratios), "verdict": verdict(low, high)}


def faster_input(times: dict[str, list[float]], name: str) -> list[float]:
    """Per round, the faster of a baseline on random and on top-k-sparsified inputs (the one less
    favourable to SFA): ``times[name + "_random"]`` and ``times[name + "_sparse"]``."""
    return [min(a, b) for a, b in zip(times[f"{name}_random"], times[f"{name}_sparse"])]


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak allocated MiB during one call of ``fn`` (inputs included) after a warm-up call (compilation and
    autotuning never count); NaN off CUDA."""
    fn()
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def provenance(device: torch.device, date: str) -> dict[str, str]:
    """What produced a row: the card, the commit (``LRA_SFA_GIT_COMMIT`` where the tree has no .git),
    torch's, Triton's and cuDNN's versions, and the date."""
    from lra_sfa.recording import device_name, library_versions
    from lra_sfa.records import git_commit

    versions = library_versions(device)
    return {"device": device_name(device), "git_commit": git_commit(), "torch_version": torch.__version__,
            "triton_version": versions["triton_version"] or "", "cudnn_version": versions["cudnn_version"] or "",
            "date": date}
