"""Benchmark wide-code SFA (Triton bucket kernels) against cuDNN SDPA, 4K to 1M tokens.

    python -m lra_sfa.bench.wide out=results/kernels     # config: conf/bench_wide.yaml

Shapes: B=1, H=8, head dim 64 (q, k, v bf16 random normal). Codes (``codes``):
``lsh`` (a fixed random projection of q and k to D unit-norm feature directions,
top-k per token, as ``attn=sfa_wide codes=lsh``) or ``simhash`` (k tables of
log2(D/k) orthonormal sign bits, as ``codes=simhash``); with either, feature use
is uniform and a query meets about L k^2 / D keys (plain Gaussian LSH directions
met about 4x that at D = 131072, k = 8; results/kernels/sfa_wide.md).
Variants: ``overlap`` with ``cap=None`` (exact overlap) and with each
``variants`` cap. Times include building the posting lists (sorts) but not the codes;
``codes_ms`` is the time to build the q and k codes at that length
(projection and top-k), reported beside it. cuDNN at large L is measured
with fewer heads and scaled to 8 (heads are independent; ``baseline_note``
says so).

Rows go to ``sfa_wide.csv`` (not to the FlashSFA table ``sfa_vs_sdpa.csv``,
whose rows follow the interleaved protocol of ``bench.kernels``); each replaces
the row of its own cell (``WIDE_KEY``), so a run at another D, k or cap keeps
the earlier ones.

Columns (``COLUMNS``): shape, ms, baseline_ms, speedup, plus mean_candidates (counted pairs per
query), dropped_frac (pairs lost to the cap, 1 - capped / exact candidates,
where the exact run exists at that L), dropped_incidence_frac ((query, key,
feature) incidences outside the windows), mode, cap, D, baseline_note, codes_ms,
codes.
Correctness: at lengths <= check_max_len, forward and gradients against
``wide_dense_reference`` in fp32 from the same codes; ``max_rel_err`` is the
kernel's ||err|| / ||ref||, ``plain_rel_err`` the same dense reference run in
bf16, and ``check`` the DESIGN.md verdict (err <= 2 plain + 1e-2).
Lengths whose projected time exceeds max_call_s are skipped (printed).
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.bench.kernels.rows import RowWriter
from lra_sfa.bench.timing import time_ms
from lra_sfa.kernels.wide.reference import wide_dense_reference
from lra_sfa.kernels.wide.triton_kernel import wide_triton_attention
from lra_sfa.oldargs import exit_if_old_form, replacement
from lra_sfa.sfa_wide import simhash_codes, simhash_planes, unit_columns

WIDE_KEY = ["op", "heads", "seq_len", "head_dim", "topk", "D", "cap", "mode", "codes"]  # one cell of sfa_wide.csv
COLUMNS = ["impl", "op", "batch", "heads", "seq_len", "head_dim", "topk", "dtype", "ms", "baseline",
           "baseline_ms", "speedup", "max_rel_err", "peak_mem_mb", "device", "date", "mean_candidates",
           "dropped_frac", "mode", "cap", "D", "dropped_incidence_frac", "plain_rel_err", "check", "baseline_note",
           "codes_ms", "codes"]


@torch.no_grad()
def lsh_codes(x: torch.Tensor, proj: torch.Tensor, k: int, logits_per_chunk: int = 1 << 32):
    """Top-k of a fixed random projection, chunked over tokens so that one chunk's (H, c, D) logits hold
    at most ``logits_per_chunk`` entries (8 GiB in bf16); x: (1, H, L, d), proj: (H, d, D)."""
    chunk = max(1, min(1 << 16, logits_per_chunk // (proj.shape[0] * proj.shape[2])))
    idx = torch.empty(*x.shape[:3], k, dtype=torch.long, device=x.device)
    val = torch.empty(*x.shape[:3], k, dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[2], chunk):
        z = torch.einsum("bhld,hdf->bhlf", x[:, :, start:start + chunk], proj)  # (1, H, c, D)
        top = z.topk(k, dim=-1)
        idx[:, :, start:start + chunk], val[:, :, start:start + chunk] = top.indices, top.values
    return idx, val


def both_codes(q: torch.Tensor, k: torch.Tensor, proj: torch.Tensor, k_active: int, codes: str = "lsh") -> tuple:
    """(q_idx, q_val, k_idx, k_val): the LSH (top-k of a projection) or SimHash codes of q and k."""
    if codes == "simhash":
        return (*simhash_codes(q, proj, k_active), *simhash_codes(k, proj, k_active))
    return (*lsh_codes(q, proj, k_active), *lsh_codes(k, proj, k_active))


def cudnn_ms(length: int, heads: int, dim: int, backward: bool) -> tuple[float, str]:
    """cuDNN SDPA ms for (1, heads, length, dim), measured on fewer heads at large L and scaled."""
    measured_heads = max(1, min(heads, heads * 131072 // length))
    q, k, v = (torch.randn(1, measured_heads, length, dim, device="cuda", dtype=torch.bfloat16,
                           requires_grad=backward) for _ in range(3))
    grad = torch.randn_like(q)

    def run():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        if backward:
            out.backward(grad)

    ms, _ = time_ms(run, rep_ms=400.0, min_reps=1, max_reps=20)
    note = "" if measured_heads == heads else f"measured at H={measured_heads}, scaled x{heads // measured_heads}"
    return ms * heads / measured_heads, note


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def check(codes, v, D, scale, cap, grad, forward=None) -> tuple[float, float]:
    """(kernel rel err, plain bf16 rel err) vs the fp32 dense reference, output and grads (max).
    ``forward(q_val, k_val, v) -> out`` is the path under test (default: the Triton kernels)."""
    q_idx, q_val, k_idx, k_val = codes
    heads = q_idx.shape[1]

    def grads(fn, dtype):
        leaves = [x.detach().to(dtype).requires_grad_(True) for x in (q_val, k_val, v)]
        out = fn(*leaves)
        return [out.detach(), *torch.autograd.grad((out.float() * grad).sum(), leaves)]

    def dense(qv, kv, vv):  # per head: the capped reference compares k x k codes of every pair
        outs = [wide_dense_reference(q_idx[:, h:h + 1], qv[:, h:h + 1], k_idx[:, h:h + 1], kv[:, h:h + 1],
                                     vv[:, h:h + 1], D, scale, "overlap", cap) for h in range(heads)]
        return torch.cat(outs, dim=1)

    def kernel(qv, kv, vv):
        return wide_triton_attention(q_idx, qv, k_idx, kv, vv, D, scale, "overlap", cap)[0]

    ref = grads(dense, torch.float32)
    plain = grads(dense, torch.bfloat16)
    got = grads(kernel if forward is None else forward, torch.bfloat16)
    return max(rel(g, r) for g, r in zip(got, ref)), max(rel(p, r) for p, r in zip(plain, ref))


def measure_variant(codes, v, D, scale, cap, backward: bool):
    """(ms, peak MiB, stats) for one sfa_wide call (plus backward)."""
    q_idx, q_val, k_idx, k_val = codes
    leaves = [x.detach().requires_grad_(backward) for x in (q_val, k_val, v)]
    grad = torch.randn_like(v)
    holder = {}

    def run():
        out, stats = wide_triton_attention(q_idx, leaves[0], k_idx, leaves[1], leaves[2], D, scale, "overlap", cap)
        holder.update(stats)
        if backward:
            out.backward(grad)

    ms, peak = time_ms(run, rep_ms=400.0, min_reps=1, max_reps=20)
    return ms, peak, {key: float(value) for key, value in holder.items()}


OLD_OPTIONS = {"lengths": "lengths", "heads": "heads", "head-dim": "head_dim", "D": "D", "k": "k",
               "variants": "variants", "codes": "codes", "ops": "ops", "check-max-len": "check_max_len",
               "max-call-s": "max_call_s", "deadline-s": "deadline_s", "out": "out", "date": "date"}


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="bench_wide")
def _app(cfg: DictConfig) -> None:
    if cfg.codes not in ("lsh", "simhash"):
        raise SystemExit(f"lra_sfa.bench.wide: codes={cfg.codes!r} must be lsh or simhash")
    if not torch.cuda.is_available():
        raise SystemExit("lra_sfa.bench.wide needs a CUDA device (timings and the cuDNN baseline are GPU-only)")
    run_bench(cfg)


def main() -> None:
    """``python -m lra_sfa.bench.wide [key=value ...]``; the old ``--flag value`` form gets one line."""
    exit_if_old_form(replacement("python -m lra_sfa.bench.wide", "conf/bench_wide.yaml", sys.argv[1:], OLD_OPTIONS,
                                 lists=("lengths", "variants", "ops")))
    _app()


def run_bench(args: DictConfig) -> None:
    """Every (length, op, cap) cell of ``conf/bench_wide.yaml`` (``args``: its composed config)."""
    began = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = [None if c is None else int(c) for c in args.variants]
    H, d, D, K = args.heads, args.head_dim, args.D, args.k
    scale = 1.0 / math.sqrt(K)
    base = dict(impl="sfa_wide", batch=1, heads=H, head_dim=d, topk=K, dtype="bf16", baseline="sdpa_cudnn",
                device=torch.cuda.get_device_name(), date=args.date, mode="overlap", D=D, codes=args.codes)
    if args.codes == "simhash":  # as attn=sfa_wide codes=simhash
        proj = simhash_planes(H, d, K, (D // K).bit_length() - 1).to("cuda", torch.bfloat16)
    else:  # as attn=sfa_wide codes=lsh
        proj = unit_columns(torch.randn(H, d, D, device="cuda")).to(torch.bfloat16)
    last: dict[tuple, tuple[int, float]] = {}
    candidates_exact: dict[int, float] = {}
    # each row replaces the row of the same cell (other D, k, caps and lengths stay), files rewritten per row
    table = RowWriter(out_dir / "sfa_wide.csv", COLUMNS, key=WIDE_KEY)
    for length in [int(x) for x in args.lengths]:
        q, k, v = (torch.randn(1, H, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        codes = both_codes(q, k, proj, K, args.codes)  # q_idx, q_val, k_idx, k_val
        codes_ms, _ = time_ms(partial(both_codes, q, k, proj, K, args.codes), rep_ms=200.0, min_reps=1, max_reps=5)
        del q, k
        for op in args.ops:
            backward = op == "fwd_bwd"
            base_ms, note = cudnn_ms(length, H, d, backward)
            for cap in variants:
                key = (cap, backward)
                if key in last:
                    prev_len, prev_ms = last[key]
                    growth = (length / prev_len) ** (2 if cap is None else 1)
                    projected = prev_ms * growth / 1e3
                    if projected > args.max_call_s or time.time() - began > args.deadline_s:
                        print(f"skip cap={cap} {op} L={length}: projected {projected:.1f} s", flush=True)
                        continue
                ms, peak, stats = measure_variant(codes, v, D, scale, cap, backward)
                last[key] = (length, ms)
                cands = stats["candidates"]
                if cap is None:
                    candidates_exact[length] = cands
                row = dict(base, op=op, seq_len=length, cap="null" if cap is None else cap, ms=f"{ms:.3f}",
                           baseline_ms=f"{base_ms:.3f}", speedup=f"{base_ms / ms:.3f}",
                           peak_mem_mb=f"{peak:.0f}", mean_candidates=f"{cands / (H * length):.1f}",
                           dropped_incidence_frac=f"{1 - stats['incidences_kept'] / stats['incidences_total']:.4f}",
                           baseline_note=note, codes_ms=f"{codes_ms:.3f}")
                if length in candidates_exact:
                    row["dropped_frac"] = f"{1 - cands / candidates_exact[length]:.4f}"
                if length <= args.check_max_len:
                    err, plain = check(codes, v, D, scale, cap, torch.randn_like(v, dtype=torch.float32))
                    row.update(max_rel_err=f"{err:.2e}", plain_rel_err=f"{plain:.2e}",
                               check="pass" if err <= 2 * plain + 1e-2 else "FAIL")
                table.write(row)
                print(f"L={length:>8} {op:7} cap={str(cap):5} {ms:10.2f} ms  cudnn {base_ms:10.2f} ms  "
                      f"x{base_ms / ms:6.2f}  cand/q {cands / (H * length):9.1f}  "
                      f"peak {peak:8.0f} MiB  {row.get('check', '')}", flush=True)
    plot(out_dir)


def plot(out_dir: Path) -> None:
    """sfa_wide.png: ms against L per variant and op, beside cuDNN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(out_dir / "sfa_wide.csv", dtype={"cap": "string"}).sort_values("seq_len")
    frame["cap"] = frame["cap"].fillna("null")  # pandas reads the word null as missing
    frame["codes"] = frame["codes"].fillna("lsh")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, op in zip(axes, ("fwd", "fwd_bwd")):
        part = frame[frame["op"] == op]
        for (features, topk, cap, codes), rows in part.groupby(["D", "topk", "cap", "codes"]):
            ax.loglog(rows["seq_len"], rows["ms"], "o-", label=f"sfa_wide {codes} D={features} k={topk} cap={cap}")
        base = part.drop_duplicates("seq_len")
        ax.loglog(base["seq_len"], base["baseline_ms"], "k--", label="cuDNN SDPA")
        ax.set_title(f"{op}, B=1 H=8 d=64 bf16")
        ax.set_xlabel("tokens")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[0].legend(fontsize=7)
    dates = ", ".join(sorted(frame["date"].astype(str).unique()))
    fig.suptitle(f"wide-code SFA (code building not timed), {frame['device'].iloc[0]}, {dates}")
    fig.tight_layout()
    fig.savefig(out_dir / "sfa_wide.png", dpi=120)


if __name__ == "__main__":
    main()
