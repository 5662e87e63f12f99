"""Timing for the benchmark scripts: one warm-up call, then CUDA-event medians and peak memory."""

from __future__ import annotations

import statistics
import time

import torch


def call_ms(fn, cuda: bool) -> float:
    """Milliseconds of one ``fn()``: CUDA events on the GPU, the host clock otherwise."""
    if not cuda:
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_ms(fn, rep_ms: float = 300.0, min_reps: int = 3, max_reps: int = 50,
            cuda: bool = True, queued: bool = False) -> tuple[float, float]:
    """(median ms, peak MiB allocated during the timed calls) of ``fn()`` after one warm-up call.

    Repeats until at least ``min_reps`` calls and ``rep_ms`` of measured time (at most
    ``max_reps`` calls). ``cuda=False`` times with a host clock (CPU dry runs) and
    reports no memory (NaN). By default each call starts on an idle GPU (a host sync
    after each), so the host's launch work before the first kernel is counted.
    ``queued=True`` issues the calls back to back with CUDA events around each and one
    sync at the end (as ``triton.testing.do_bench``): the host prepares call i+1 while
    the GPU runs call i, as in a training or decoding loop, and each event pair times
    the GPU work of one call.
    """
    fn()
    if not cuda:
        return statistics.median(call_ms(fn, False) for _ in range(min_reps)), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if queued:
        reps = min(max_reps, max(min_reps, round(rep_ms / max(call_ms(fn, True), 1e-3))))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) for start, end in events]
        return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20
    times = []
    for _ in range(max_reps):
        times.append(call_ms(fn, True))
        if len(times) >= min_reps and sum(times) >= rep_ms:
            break
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**20
