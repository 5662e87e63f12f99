"""The efficiency sweep: every attention backend, lengths doubling to 1M tokens.

For each backend in ``bench.attns`` (default: every ``conf/attn/*.yaml``), each
part (``attention``: the backend alone on random q, k, v of shape
(batch, heads, L, head_dim); ``block``: one pre-LN encoder block,
``lra_sfa.model.Block``, width heads x head_dim, MLP ``mlp_ratio`` x width),
each pass (``fwd`` under ``torch.no_grad``; ``fwd_bwd``: forward and
backward of a random output gradient) and each length in ascending order,
one cell is timed (``common.time_calls``) and written as one record.

A cell that runs out of memory, exceeds ``bench.max_seconds`` in one call,
is unsupported (``unsupported_reasons``, or the backend refuses to be built
for this shape) or raises is recorded with that status, and the series
(backend, part, pass) stops growing L; the sweep goes on with the next one.
On CUDA with dtype bf16/fp16 both parts run under autocast, like training.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa.attention import build_attention
from lra_sfa.bench import common
from lra_sfa.model import Block

PARTS = ("attention", "block")
OPS = ("fwd", "fwd_bwd")


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def padding_mask(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """(batch, length) bool, True = real token; each row keeps a random 50-100% prefix."""
    keep = torch.randint(length // 2 + 1, length + 1, (batch,), device=device)  # (B,)
    return torch.arange(length, device=device)[None, :] < keep[:, None]  # (B, L)


def _probe(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of ``shape`` that allocates one element (for ``unsupported_reasons``)."""
    return torch.empty(1, dtype=dtype, device=device).expand(*shape)


def _attention_fn(backend, shape, op: str, dtype, device, mask):
    q, k, v = (torch.randn(shape, dtype=dtype, device=device, requires_grad=op == "fwd_bwd") for _ in range(3))
    if op == "fwd":
        def call() -> None:
            with torch.no_grad(), autocast(device, dtype):
                backend(q, k, v, mask)
        return call
    grad_out = torch.randn(shape, dtype=dtype, device=device)

    def call() -> None:
        q.grad = k.grad = v.grad = None
        with autocast(device, dtype):
            out = backend(q, k, v, mask)
        out.backward(grad_out.to(out.dtype))
    return call


def _block_fn(block: Block, shape, op: str, dtype, device, mask):
    batch, heads, length, head_dim = shape
    x = torch.randn(batch, length, heads * head_dim, device=device, requires_grad=op == "fwd_bwd")  # (B, L, C)
    if op == "fwd":
        def call() -> None:
            with torch.no_grad(), autocast(device, dtype):
                block(x, mask)
        return call
    grad_out = torch.randn_like(x)

    def call() -> None:
        x.grad = None
        block.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            out = block(x, mask)
        out.backward(grad_out.to(out.dtype))
    return call


def _build(attn_cfg: DictConfig, part: str, bench: DictConfig, length: int, device: torch.device):
    heads, head_dim = int(bench.heads), int(bench.head_dim)
    backend = build_attention(attn_cfg, num_heads=heads, head_dim=head_dim, max_seq_len=length)
    if part == "attention":
        return backend, backend.to(device)
    width = heads * head_dim
    block = Block(width, heads, int(bench.mlp_ratio) * width, backend, dropout=0.0, attn_dropout=0.0)
    return backend, block.to(device)


def run_cell(attn_cfg: DictConfig, part: str, op: str, length: int, bench: DictConfig, device: torch.device,
             dtype: torch.dtype) -> dict[str, Any]:
    """Time one (backend, part, pass, length) cell; returns the record's measured fields and status."""
    shape = (int(bench.batch), int(bench.heads), length, int(bench.head_dim))
    fields: dict[str, Any] = {"status": "error", "reason": None}
    common.fresh_cell(int(bench.seed))
    try:
        backend, module = _build(attn_cfg, part, bench, length, device)
    except ValueError as exc:
        return {**fields, "status": "unsupported", "reason": f"cannot build for this shape: {exc}"}
    mask = padding_mask(shape[0], length, device) if bench.mask else None
    reasons = backend.unsupported_reasons(_probe(shape, dtype, device), _probe(shape, dtype, device),
                                          _probe(shape, dtype, device), mask)
    if reasons:
        return {**fields, "status": "unsupported", "reason": "; ".join(reasons)}
    call, failure = None, None
    try:
        maker = _attention_fn if part == "attention" else _block_fn
        call = maker(module, shape, op, dtype, device, mask)
        timing = common.time_calls(call, device, int(bench.warmup), int(bench.repeats), float(bench.max_seconds))
    except Exception as exc:  # every failure becomes a record; the sweep goes on
        failure = {"status": "oom" if common.is_oom(exc) else "error", "reason": common.first_line(exc)}
    call = None  # drop the inputs (after the except block has released the traceback's frames)
    common.free_memory(device)
    if failure:
        return {**fields, **failure}
    fields.update(timing, attn_path=backend.last_path)
    if timing["timed_out"]:
        seconds = timing["second_call_ms"] / 1e3
        fields.update(status="timeout", reason=f"a call after the first took {seconds:.1f} s "
                                               f"> bench.max_seconds={bench.max_seconds}")
        return fields
    fields.update(status="ok", tokens_per_second=shape[0] * length / (timing["ms"] / 1e3))
    return fields


def _cell_record(base: dict, name: str, attn_cfg: DictConfig, part: str, op: str, length: int, bench: DictConfig,
                 measured: dict) -> dict[str, Any]:
    args = OmegaConf.to_container(attn_cfg, resolve=True)
    target = args.pop("_target_", None)
    width = int(bench.heads) * int(bench.head_dim)
    return {
        **base, "task": "bench", "attn": name, "attn_target": target, "attn_args": args, "part": part, "op": op,
        "seq_len": length, "batch": int(bench.batch), "heads": int(bench.heads), "head_dim": int(bench.head_dim),
        "mlp_dim": int(bench.mlp_ratio) * width if part == "block" else None, "mask": bool(bench.mask),
        "warmup": int(bench.warmup), "max_seconds": float(bench.max_seconds), "tokens_per_second": None,
        "ms": None, "peak_memory_mb": None, **measured,
    }


def run_sweep(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    """The whole sweep; returns the records (also written under ``cfg.out_dir``)."""
    bench = cfg.bench
    names = common.selected_attns(bench.attns)
    attn_cfgs = {name: common.load_attn_cfg(name, (bench.attn_args or {}).get(name)) for name in names}
    parts, ops = list(bench.parts), list(bench.ops)
    for value, valid, key in ((parts, PARTS, "parts"), (ops, OPS, "ops")):
        if not set(value) <= set(valid):
            raise ValueError(f"bench.{key}={value} must be a subset of {list(valid)}")
    lengths = sorted(int(length) for length in bench.lengths)
    base = common.base_record("sweep", device, dtype)
    budget = float(bench.budget_seconds) if bench.get("budget_seconds") else None
    start, records = time.perf_counter(), []
    for name in names:
        for part in parts:
            for op in ops:
                for length in lengths:
                    if budget is not None and time.perf_counter() - start > budget:
                        print(f"bench: budget_seconds={budget:g} spent; stopping before {name} {part} {op} L={length}")
                        return records
                    measured = run_cell(attn_cfgs[name], part, op, length, bench, device, dtype)
                    record = _cell_record(base, name, attn_cfgs[name], part, op, length, bench, measured)
                    common.write_bench_record(record, cfg.out_dir)
                    records.append(record)
                    print(format_cell(record), flush=True)
                    if record["status"] != "ok":
                        break  # stop growing L for this series
    return records


def format_cell(record: dict) -> str:
    ms = f"{record['ms']:10.3f} ms" if record.get("ms") is not None else " " * 13
    mem = f"{record['peak_memory_mb']:9.1f} MB" if record.get("peak_memory_mb") is not None else ""
    reason = f"  ({record['reason']})" if record.get("reason") else ""
    return (f"{record['attn']:<15} {record['part']:<9} {record['op']:<7} L={record['seq_len']:<8} "
            f"{record['status']:<11} {ms} {mem}{reason}")
