"""Timing for the benchmark scripts: one warm-up call, then CUDA-event medians and peak memory."""

from __future__ import annotations

import statistics
import time

import torch


def time_ms(fn, rep_ms: float = 300.0, min_reps: int = 3, max_reps: int = 50,
            cuda: bool = True) -> tuple[float, float]:
    """(median ms, peak MiB allocated during the timed calls) of ``fn()`` after one warm-up call.

    Repeats until at least ``min_reps`` calls and ``rep_ms`` of measured time (at most
    ``max_reps`` calls). ``cuda=False`` times with a host clock (CPU dry runs) and
    reports no memory (NaN).
    """
    fn()
    if not cuda:
        times = []
        for _ in range(min_reps):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
        return statistics.median(times), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(max_reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if len(times) >= min_reps and sum(times) >= rep_ms:
            break
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20
