"""Check and time the attention baselines on CUDA against cuDNN SDPA.

    python -m lra_sfa.bench.baselines out=results/kernels     # config: conf/bench_baselines.yaml

For every backend named (default: the baselines of baselines/; each
``conf/attn/<name>.yaml`` as the run config composes it):

1. Check, at a small shape with a key padding mask: the CUDA path in bf16
   against the CPU path in float64 on the same (bf16-rounded) inputs, output
   and dq, dk, dv, as ||x - ref|| / ||ref||. For backends with two engines
   (flex and blocked) the plain-PyTorch error is the blocked engine on CUDA in
   bf16, and the pass rule is DESIGN.md's: err <= 2 x plain + 1e-2. Backends
   with one PyTorch path pass at err <= 3e-2.
2. Time forward and forward+backward at each length (bf16, head_dim 64,
   batch x heads x length = ``tokens``, heads 16 where batch >= 2), after
   one warm-up call (compilation), as CUDA-event medians; peak memory is
   ``max_memory_allocated`` over the timed calls, inputs included. The
   baseline is cuDNN SDPA at the same shape. OOM and errors are rows with a
   status, not crashes; ``budget_s`` stops timing early (rows say so).

Writes ``baselines.csv`` (the SFA kernel CSV's columns plus ``status``) and
``baselines.checks.csv``; prints a short table last.
"""

from __future__ import annotations

import copy
import csv
import importlib
import inspect
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa.bench.common import attn_registry
from lra_sfa.bench.timing import time_ms
from lra_sfa.compose import attn_config
from lra_sfa.oldargs import exit_if_old_form, replacement

COLUMNS = ["impl", "op", "batch", "heads", "seq_len", "head_dim", "topk", "dtype", "ms", "baseline",
           "baseline_ms", "speedup", "max_rel_err", "peak_mem_mb", "device", "date", "status"]
CHECK_COLUMNS = ["name", "path", "batch", "heads", "seq_len", "head_dim", "dtype", "err_out", "err_dq", "err_dk",
                 "err_dv", "max_rel_err", "plain_err", "rule", "verdict", "warmup_s", "status"]
DEVICE = "cuda"  # "cpu" under dry_run=true (logic check only, tiny sizes)


def load_backend(name: str, num_heads: int, head_dim: int, max_seq_len: int, **overrides):
    """Instantiate conf/attn/<name>.yaml as composed (the context args its class names are added)."""
    registry = attn_registry()
    if name not in registry:
        raise ValueError(f"bench.baselines: no backend {name!r} in conf/attn/; valid: {', '.join(registry)}")
    cfg = OmegaConf.to_container(attn_config(name), resolve=True)
    module_name, _, class_name = cfg.pop("_target_").rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    params = inspect.signature(cls.__init__).parameters
    context = dict(num_heads=num_heads, head_dim=head_dim, max_seq_len=max_seq_len)
    cfg.update({key: value for key, value in context.items() if key in params and key not in cfg})
    cfg.update(overrides)
    return cls(**cfg)


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    return float((x.double().cpu() - ref).norm() / ref.norm().clamp_min(1e-30))


def run_with_grads(backend, q, k, v, mask, grad_out):
    """(out, dq, dk, dv) detached."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = backend(q, k, v, mask)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), q.grad, k.grad, v.grad


def check_backend(name: str, args, dtype: torch.dtype) -> dict:
    """CUDA path (bf16) vs CPU path (float64) at a small padded shape."""
    B, H, L, D = 2, 4, args.check_length, args.head_dim
    gen = torch.Generator().manual_seed(0)
    q, k, v, g = (torch.randn(B, H, L, D, generator=gen).to(dtype) for _ in range(4))
    mask = torch.arange(L)[None, :] < torch.tensor([L, (3 * L) // 5])[:, None]  # (B, L)
    backend = load_backend(name, H, D, L)
    ref_backend = copy.deepcopy(backend).double()
    ref = run_with_grads(ref_backend, q.double(), k.double(), v.double(), mask, g.double())
    cuda_in = [x.to(DEVICE) for x in (q, k, v)]
    fast = backend.to(DEVICE)
    start = time.perf_counter()
    got = run_with_grads(fast, *cuda_in, mask.to(DEVICE), g.to(DEVICE))
    synchronize()
    warmup_s = time.perf_counter() - start
    errs = [rel_err(x, r) for x, r in zip(got, ref)]
    row = dict(name=name, path=fast.last_path, batch=B, heads=H, seq_len=L, head_dim=D, dtype=str(dtype),
               err_out=errs[0], err_dq=errs[1], err_dk=errs[2], err_dv=errs[3], max_rel_err=max(errs),
               warmup_s=round(warmup_s, 2), status="ok")
    if getattr(fast, "impl", None) is not None and fast.last_path == "flex":
        plain = copy.deepcopy(backend)
        plain.impl = "blocked"
        plain_out = run_with_grads(plain, *cuda_in, mask.to(DEVICE), g.to(DEVICE))
        plain_errs = [rel_err(x, r) for x, r in zip(plain_out, ref)]
        row.update(plain_err=max(plain_errs), rule="err <= 2 x plain + 1e-2")
        row["verdict"] = "pass" if max(errs) <= 2 * max(plain_errs) + 1e-2 else "FAIL"
    else:
        row.update(plain_err="", rule="err <= 3e-2")
        row["verdict"] = "pass" if max(errs) <= 3e-2 else "FAIL"
    finite = all(torch.isfinite(x).all() for x in got)
    if not finite:
        row["verdict"] = "FAIL (non-finite)"
    return row





def shape_for(length: int, tokens: int, max_heads: int = 16) -> tuple[int, int]:
    """(batch, heads): batch x heads x length = tokens, heads <= max_heads, batch >= 2 where possible."""
    heads = max(1, min(max_heads, tokens // (2 * length)))
    return max(1, tokens // (length * heads)), heads


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"


def path_of(backend, q: torch.Tensor) -> str:
    """The path a forward on q's shape takes, without compiling anything at another shape."""
    if hasattr(backend, "resolve_impl"):
        return backend.resolve_impl(q)
    small = q[:, :, :16].detach()
    backend(small, small, small)
    return backend.last_path


def make_ops(backend, q, k, v, grad_out):
    """Forward (with autograd on, as in training) and forward+backward closures."""

    def fwd():
        return backend(q, k, v)

    def fwd_bwd():
        for x in (q, k, v):
            x.grad = None
        backend(q, k, v).backward(grad_out)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def sdpa_ops(q, k, v, grad_out):
    """cuDNN SDPA (the math kernel under dry_run=true)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    kernel = SDPBackend.CUDNN_ATTENTION if DEVICE == "cuda" else SDPBackend.MATH

    def fwd():
        with sdpa_kernel(kernel):
            return sdpa(q, k, v)

    def fwd_bwd():
        for x in (q, k, v):
            x.grad = None
        with sdpa_kernel(kernel):
            sdpa(q, k, v).backward(grad_out)

    return {"fwd": fwd, "fwd_bwd": fwd_bwd}


def measure(ops: dict, args, meta: dict, impl: str, baseline: dict | None, writer, deadline: float) -> dict:
    """Time each op of one backend at one shape; returns {op: ms} for the ops that ran."""
    done = {}
    for op, fn in ops.items():
        row = dict(meta, impl=impl, op=op)
        if baseline is not None:
            row.update(baseline="sdpa_cudnn", baseline_ms=round(baseline[op], 4) if op in baseline else "")
        if time.time() > deadline:
            writer(dict(row, status="skipped: budget_s reached"))
            continue
        try:
            ms, peak = time_ms(fn, args.rep_ms, max_reps=30, cuda=DEVICE == "cuda")
        except torch.cuda.OutOfMemoryError:
            writer(dict(row, status="oom"))
            empty_cache()
            continue
        except Exception as exc:  # recorded, not fatal: one backend's failure must not stop the sweep
            writer(dict(row, status=f"error: {type(exc).__name__}: {str(exc)[:160]}"))
            empty_cache()
            continue
        done[op] = ms
        speedup = round(baseline[op] / ms, 3) if baseline and op in baseline else ""
        writer(dict(row, ms=round(ms, 4), speedup=speedup, peak_mem_mb=round(peak, 1), status="ok"))
    return done


def sweep(args, dtype: torch.dtype, checks: dict, writer, deadline: float) -> None:
    D = args.head_dim
    for L in args.lengths:
        B, H = shape_for(L, args.tokens)
        meta = dict(batch=B, heads=H, seq_len=L, head_dim=D, dtype=args.dtype, device=device_name(), date=args.date)
        gen = torch.Generator(device=DEVICE).manual_seed(L)
        q, k, v, g = (torch.randn(B, H, L, D, generator=gen, device=DEVICE, dtype=dtype) for _ in range(4))
        for x in (q, k, v):
            x.requires_grad_(True)
        baseline = measure(sdpa_ops(q, k, v, g), args, meta, "sdpa_cudnn", None, writer, deadline)
        if DEVICE != "cuda":
            baseline = {}
        for name in args.names:
            variants = [None] + (["blocked"] if L in args.blocked_lengths else [])
            for impl in variants:
                try:
                    backend = load_backend(name, H, D, L).to(DEVICE)
                    if impl is not None and not hasattr(backend, "resolve_impl"):
                        continue
                    if impl is not None:
                        backend.impl = impl
                    path = path_of(backend, q)
                except Exception as exc:
                    writer(dict(meta, impl=name, op="build", status=f"error: {type(exc).__name__}: {exc}"[:200]))
                    continue
                err = checks.get(name, {}).get("max_rel_err" if impl is None else "plain_err", "")
                extra = dict(topk=getattr(backend, "topk", ""), max_rel_err=err)
                measure(make_ops(backend, q, k, v, g), args, dict(meta, **extra), f"{name}_{path}", baseline,
                        writer, deadline)
                del backend
                empty_cache()
        del q, k, v, g
        empty_cache()


def probe(name: str, length: int, args, dtype: torch.dtype) -> None:
    """Print where one forward of ``name`` spends its time: host wall clock vs CUDA kernels (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    B, H = shape_for(length, args.tokens)
    q, k, v, g = (torch.randn(B, H, length, args.head_dim, device=DEVICE, dtype=dtype) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    backend = load_backend(name, H, args.head_dim, length).to(DEVICE)
    ops = make_ops(backend, q, k, v, g)
    for op in ("fwd", "fwd_bwd"):
        ops[op]()
        synchronize()
        start = time.perf_counter()
        for _ in range(5):
            ops[op]()
        synchronize()
        host_ms = 1e3 * (time.perf_counter() - start) / 5
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            ops[op]()
            synchronize()
        print(f"probe {name} L={length} B={B} H={H} {op}: wall {host_ms:.3f} ms/call, path {backend.last_path}")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=60))
    print("dynamo counters:", {key: dict(value) for key, value in torch._dynamo.utils.counters.items()
                               if key in ("stats", "recompiles", "graph_break")})
    if backend.last_path == "flex":
        probe_flex_variants(backend, q.detach(), k.detach(), v.detach(), args)


def probe_flex_variants(backend, q, k, v, args) -> None:
    """Forward-only (no grad) ms of FlexAttention: our mask without and with the padding lookup, and a bare band."""
    from torch.nn.attention.flex_attention import BlockMask

    from lra_sfa.baselines._engines import FLEX_TILE, build_block_mask, compiled_flex

    B, _, L, D = q.shape
    pattern = backend.pattern(L, q.device)
    all_real = torch.ones(B, L, dtype=torch.bool, device=q.device)
    ours = build_block_mask(pattern, None, B)
    variants = {"ours": ours, "ours+padding_lookup": build_block_mask(pattern, all_real, B)}
    radius = getattr(pattern, "radius_value", None)
    if radius is not None:
        variants["bare_band"] = BlockMask.from_kv_blocks(
            ours.kv_num_blocks, ours.kv_indices, ours.full_kv_num_blocks, ours.full_kv_indices, BLOCK_SIZE=FLEX_TILE,
            seq_lengths=(L, L), mask_mod=lambda b, h, q_idx, kv_idx: (q_idx - kv_idx).abs() <= radius)
    for label, block_mask in variants.items():
        with torch.no_grad():
            try:
                call = lambda bm=block_mask: compiled_flex()(q, k, v, block_mask=bm, scale=D**-0.5)
                ms, _ = time_ms(call, args.rep_ms, max_reps=30, cuda=DEVICE == "cuda")
                print(f"probe flex variant {label:20s} fwd(no grad) {ms:.3f} ms")
            except Exception as exc:
                print(f"probe flex variant {label:20s} error {type(exc).__name__}: {str(exc)[:200]}")


class RowWriter:
    """Appends dict rows to a CSV (flushed per row) and keeps them for the summary."""

    def __init__(self, path: Path, columns: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.columns, self.file = columns, path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=columns)
        self.writer.writeheader()

    def __call__(self, row: dict) -> None:
        row = {c: row.get(c, "") for c in self.columns}
        self.rows.append(row)
        self.writer.writerow(row)
        self.file.flush()


def summary(rows: list[dict]) -> str:
    """ms (fwd+bwd) per impl and length, then cuDNN."""
    lengths = sorted({int(r["seq_len"]) for r in rows if r["seq_len"] != ""})
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    lines = ["fwd+bwd ms (status if not ok) | " + " | ".join(f"L={n}" for n in lengths)]
    for impl in impls:
        cells = []
        for n in lengths:
            match = [r for r in rows if r["impl"] == impl and r["op"] == "fwd_bwd" and r["seq_len"] == n]
            cells.append("-" if not match else (str(match[0]["ms"]) if match[0]["status"] == "ok"
                                                else match[0]["status"][:20]))
        lines.append(f"{impl:28s} | " + " | ".join(cells))
    return "\n".join(lines)


OLD_OPTIONS = {name: name.replace("-", "_") for name in (
    "out", "names", "lengths", "blocked-lengths", "tokens", "head-dim", "dtype", "check-length", "rep-ms",
    "budget-s", "date", "dry-run", "probe")}


def run(args: DictConfig) -> None:
    """Checks then timings for ``conf/bench_baselines.yaml`` (``args``: its composed config)."""
    global DEVICE
    if args.dtype not in ("bf16", "fp16"):
        raise SystemExit(f"lra_sfa.bench.baselines: dtype={args.dtype!r} must be bf16 or fp16")
    if args.dry_run:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        raise SystemExit("lra_sfa.bench.baselines needs a CUDA device (or dry_run=true for a CPU logic check)")
    for attr in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, attr):
            setattr(torch._dynamo.config, attr, 64)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    deadline = time.time() + args.budget_s
    out = Path(args.out)
    for name in args.probe:
        probe(name, args.lengths[0], args, dtype)
    check_writer = RowWriter(out / "baselines.checks.csv", CHECK_COLUMNS)
    checks = {}
    for name in args.names:
        try:
            row = check_backend(name, args, dtype)
        except Exception as exc:
            row = dict(name=name, status=f"error: {type(exc).__name__}: {str(exc)[:200]}", verdict="FAIL")
        check_writer(row)
        checks[name] = row
        print(f"check {name:16s} {row.get('path', '')!s:8s} err={row.get('max_rel_err', '')!s:.9} "
              f"plain={row.get('plain_err', '')!s:.9} warmup={row.get('warmup_s', '')}s {row['verdict']} "
              f"{row['status'] if row['status'] != 'ok' else ''}", flush=True)
    writer = RowWriter(out / "baselines.csv", COLUMNS)
    sweep(args, dtype, checks, writer, deadline)
    print(summary(writer.rows))


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="bench_baselines")
def _app(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """``python -m lra_sfa.bench.baselines [key=value ...]``; the old ``--flag value`` form gets one line."""
    exit_if_old_form(replacement("python -m lra_sfa.bench.baselines", "conf/bench_baselines.yaml", sys.argv[1:],
                                 OLD_OPTIONS, lists=("names", "lengths", "blocked-lengths", "probe")))
    _app()


if __name__ == "__main__":
    main()
