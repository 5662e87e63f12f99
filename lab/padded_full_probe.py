"""GPU probe: dense attention's engines on padded LRA batches, beside SFA, forward and forward+backward.

On the same bf16 inputs (batch 32, 8 heads, head dim 64, a real CLS key at
position 0, each row's tokens then padding), it times with
``triton.testing.do_bench`` (median):

* ``sdpa``: SDPA without a mask, every key real (the kernel SDPA picks; a
  bound for engines that visit padded keys, not for those that skip them);
* ``sdpa+mask``: SDPA with the boolean padding mask (``attn.padded_path=sdpa_mask``);
* ``sdpa+mask cudnn``: the same with SDPA held to cuDNN (blank where cuDNN refuses the mask);
* ``flex+padding``: FlexAttention with the padding block mask (``attn.padded_path=flex``);
* ``varlen``: FlashAttention's variable-length kernel over the real keys (``attn.padded_path=varlen``);
* ``full (auto)``: ``FullAttention()`` as a run builds it; its ``attn_path`` is in ``path``;
* ``sfa``: ``SFAAttention(topk=8)`` on the same padded inputs (k = 2 at Pathfinder's head dim 4);
* ``sfa (padding rows skipped)``: the same with ``padding_rows_read = False``, as the LRA model sets it: real
  tokens packed first, padding rows 0 and not computed (``sfa_attention(skip_padding=True)``);
* ``sfa (padding rows trimmed)`` (right-padded shapes): the same without packing, as the LRA model runs a task
  that pads on the right (``padding_is_suffix = True``): the kernels stop at each row's last real token;
* with ``--compiled`` (ListOps only): ``full varlen compiled`` and ``full flex compiled``, the backend
  under ``torch.compile(fullgraph=True)`` as ``trainer.compile`` wraps the model (a graph break fails).

Each dense engine is first checked against float32 SDPA with the mask on a
copy of the batch whose last row is all padding: ``err_out`` and ``err_grad``
(largest absolute difference of the output and of dq, dk, dv) sit beside
``sdpa+mask``'s own bf16 error. Lengths: ListOps uniform in [500, 2000];
Text log-normal around IMDB's median review (about 970 bytes), clipped to
[50, 4096]; Pathfinder-32 (batch 512, head dim 4) with each pixel real with
probability 0.34 (the share of nonzero pixels in the official generator's
hard images, which the release's mask treats as real), so its padding is
scattered, not trailing. CSV (card, torch, CUDA, cuDNN, triton, commit, one row per
engine, shape and mode) to ``--out``/padded_full_probe.csv and stdout.

    python -m lab.padded_full_probe --out $OUT [--shapes listops,text] [--compiled]

The commit comes from git, or from ``LRA_SFA_GIT_COMMIT`` in a copy without ``.git``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path

import torch
import triton
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.baselines._padded import flex_padded, sdpa_masked, varlen_attention
from lra_sfa.baselines.full import FullAttention
from lra_sfa.records import git_commit
from lra_sfa.sfa import SFAAttention

SHAPES = {  # name: (batch, heads, attention length incl. CLS, head dim)
    "listops": (32, 8, 2001, 64),
    "text": (32, 8, 4097, 64),
    "pathfinder": (512, 8, 1025, 4),
}
PATHFINDER_REAL = 0.34  # nonzero pixels of the official generator's 32 px hard images
COLUMNS = ["card", "torch", "cuda", "cudnn", "triton", "commit", "shape", "batch", "heads", "length", "head_dim",
           "pad_fraction", "engine", "path", "mode", "ms", "vs_sdpa_mask", "err_out", "err_grad", "note"]


def lengths(shape: str, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Real tokens per row (CLS excluded)."""
    if shape == "listops":
        return torch.randint(500, 2001, (batch,), generator=gen)
    normal = torch.randn(batch, generator=gen)
    return (math.log(970.0) + 0.75 * normal).exp().round().long().clamp(50, 4096)


def padded_batch(shape: str, seed: int = 0):
    B, H, L, D = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    if shape == "pathfinder":  # scattered padding: black pixels
        mask = torch.rand(B, L, generator=gen) < PATHFINDER_REAL
        mask[:, 0] = True  # CLS
    else:
        real = lengths(shape, B, gen)
        mask = torch.arange(L)[None, :] <= real[:, None]  # (B, L): CLS at 0, then the row's tokens
    q, k, v = (torch.randn(B, H, L, D, generator=gen).to("cuda", torch.bfloat16) for _ in range(3))
    return q, k, v, mask.cuda()


def sdpa_choice(q, k, v, attn_mask=None) -> str:
    """The kernel SDPA picks for these inputs (cudnn_attention, flash_attention, efficient_attention, math)."""
    choice = torch._fused_sdp_choice(q, k, v, attn_mask)
    names = {int(b): b.name.lower() for b in SDPBackend.__members__.values()}
    return names.get(int(choice), str(choice))


def engines(q, k, v, mask, compiled: bool, right_padded: bool) -> dict:
    """name -> (call(q, k, v, mask), path label; None: the backend's last_path after the call)."""
    topk = 8 if q.shape[-1] >= 16 else 2
    full, sfa, sfa_skip, sfa_trim = FullAttention(), *(SFAAttention(topk=topk) for _ in range(3))
    sfa_skip.padding_rows_read = sfa_trim.padding_rows_read = False
    sfa_trim.padding_is_suffix = True
    bool_mask = mask[:, None, None, :]

    def cudnn_masked(q, k, v, m):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return sdpa_masked(q, k, v, m)

    return {
        "sdpa": (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v), f"sdpa ({sdpa_choice(q, k, v)})"),
        "sdpa+mask": (sdpa_masked, f"sdpa+mask ({sdpa_choice(q, k, v, bool_mask)})"),
        "sdpa+mask cudnn": (cudnn_masked, "sdpa+mask (cudnn_attention)"),
        "flex+padding": (flex_padded, "flex+padding"),
        "varlen": (varlen_attention, "varlen"),
        "full (auto)": (full, None),
        "sfa": (sfa, None),
        "sfa (padding rows skipped)": (sfa_skip, None),
    } | ({"sfa (padding rows trimmed)": (sfa_trim, None)} if right_padded else {}) | ({
        "full varlen compiled": (torch.compile(FullAttention("varlen"), fullgraph=True), "varlen"),
        "full flex compiled": (torch.compile(FullAttention("flex"), fullgraph=True), "flex+padding"),
    } if compiled else {})


def errors(fn, q, k, v, mask, grad) -> tuple[float, float]:
    """Largest |difference| of out and of (dq, dk, dv) from float32 SDPA with the mask; last row all padding."""
    mask = mask.clone()
    mask[-1] = False
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    refs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, mask)
    ref = sdpa_masked(*refs, mask)
    grads = torch.autograd.grad(out, leaves, grad)
    ref_grads = torch.autograd.grad(ref, refs, grad.float())
    err_out = (out.float() - ref).abs().max().item()
    err_grad = max((g.float() - r).abs().max().item() for g, r in zip(grads, ref_grads))
    return err_out, err_grad


def time_engine(fn, q, k, v, mask, grad) -> dict[str, float]:
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: fn(q, k, v, mask), warmup=25, rep=100, return_mode="median")
    both = triton.testing.do_bench(lambda: torch.autograd.grad(fn(*leaves, mask), leaves, grad),
                                   warmup=25, rep=100, return_mode="median")
    return {"fwd": fwd, "fwd+bwd": both}


def probe_shape(shape: str, env: dict, compiled: bool) -> list[dict]:
    q, k, v, mask = padded_batch(shape)
    B, H, L, D = q.shape
    grad = torch.randn_like(q)
    base = dict(env, shape=shape, batch=B, heads=H, length=L, head_dim=D,
                pad_fraction=round(1.0 - mask.float().mean().item(), 3))
    rows = []
    for name, (fn, path) in engines(q, k, v, mask, compiled, right_padded=shape != "pathfinder").items():
        row = dict(base, engine=name, path=path, err_out="", err_grad="", note="")
        try:
            if name != "sdpa" and not name.startswith("sfa"):  # those compute other functions (no mask; codes)
                row["err_out"], row["err_grad"] = (f"{e:.2e}" for e in errors(fn, q, k, v, mask, grad))
            times = time_engine(fn, q, k, v, mask, grad)
            if row["path"] is None:
                row["path"] = fn.last_path
        except Exception as exc:  # a kernel that refuses these inputs is a row with its reason, not a crash
            row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            times = {"fwd": float("nan"), "fwd+bwd": float("nan")}
        rows.extend(dict(row, mode=mode, ms=ms) for mode, ms in times.items())
        print(f"{shape:8s} {name:20s} {str(row['path']):30s} fwd {times['fwd']:8.3f} ms  fwd+bwd "
              f"{times['fwd+bwd']:8.3f} ms  err {row['err_out']} / {row['err_grad']} {row['note']}",
              file=sys.stderr, flush=True)
    reference = {row["mode"]: row["ms"] for row in rows if row["engine"] == "sdpa+mask"}
    for row in rows:  # > 1: faster than sdpa+mask
        row["vs_sdpa_mask"] = f"{reference[row['mode']] / row['ms']:.3f}"
        row["ms"] = f"{row['ms']:.4f}"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for padded_full_probe.csv")
    parser.add_argument("--shapes", default="listops,text", help=f"comma-separated, from {sorted(SHAPES)}")
    parser.add_argument("--compiled", action="store_true", help="also the backend under torch.compile (ListOps)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("padded_full_probe: needs a CUDA GPU")
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        raise SystemExit(f"padded_full_probe: --shapes {unknown} not among {sorted(SHAPES)}")
    env = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(), "triton": triton.__version__, "commit": git_commit()}
    rows = [row for shape in args.shapes.split(",")
            for row in probe_shape(shape, env, args.compiled and shape == "listops")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "padded_full_probe.csv", "w", newline="") as fh:
        for stream in (fh, sys.stdout):
            writer = csv.DictWriter(stream, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
