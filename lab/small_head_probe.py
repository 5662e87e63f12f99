"""GPU probe: dense attention at LRA's small head dims, by SDPA engine and by zero-padding of the head dim.

LRA Pathfinder's protocol model attends with head dim 4 (batch 512, 8 heads,
1025 positions with CLS); Image's with head dim 8. SDPA's fast kernels tile the
head dim (tensor-core MMAs take 16 bf16 values along it), so at d = 4 most of
each product is padding, and which engine SDPA picks matters. On the same bf16
inputs this times (``triton.testing.do_bench``, median), forward and
forward+backward:

* ``default``: SDPA's own choice (``picked`` names SDPA's choice at the row's padded width);
* each engine held by ``sdpa_kernel`` (``flash``, ``efficient``, ``cudnn``,
  ``math``), blank with the error where it refuses the shape;
* ``pad<P>+<engine>``: q, k, v zero-padded along the head dim to P (8, 16),
  the scale kept at 1/sqrt(d), the output sliced back: exactly the same
  attention (a zero feature adds nothing to a score, and v's zero columns are
  cut off), so a cheaper padded engine is a free speed-up for ``attn=full``.

Each row's output and input gradients are checked against float32 math SDPA
(``err_out``, ``err_grad``: largest absolute difference). CSV (card, versions,
commit, one row per shape, engine and mode) to ``--out``/small_head_probe.csv.

    python -m lab.small_head_probe --out $OUT [--shapes 512x8x1025x4,256x8x1025x8]

The commit comes from git, or from ``LRA_SFA_GIT_COMMIT`` in a copy without ``.git``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from contextlib import nullcontext
from pathlib import Path

import torch
import triton
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.records import git_commit

ENGINES = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
           "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
COLUMNS = ["card", "torch", "cuda", "cudnn", "triton", "commit", "batch", "heads", "length", "head_dim", "engine",
           "picked", "mode", "ms", "vs_default", "err_out", "err_grad", "note"]


def padded_sdpa(q, k, v, width: int, engine: SDPBackend | None):
    """SDPA on q, k, v zero-padded along the head dim to ``width``, scale 1/sqrt(original d), sliced back."""
    dim = q.shape[-1]
    pad = (0, width - dim)
    with sdpa_kernel(engine) if engine is not None else nullcontext():
        out = F.scaled_dot_product_attention(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), scale=1 / math.sqrt(dim))
    return out[..., :dim]


def variants(dim: int) -> dict[str, tuple[int, SDPBackend | None]]:
    """name -> (padded head dim, engine or None for SDPA's choice)."""
    table = {"default": (dim, None)}
    table.update({name: (dim, engine) for name, engine in ENGINES.items()})
    for width in (8, 16):
        if width > dim:
            table[f"pad{width}+default"] = (width, None)
            table.update({f"pad{width}+{name}": (width, engine) for name, engine in ENGINES.items() if name != "math"})
    return table


def timings(q, k, v, grad, width: int, engine: SDPBackend | None) -> dict[str, float]:
    """Median ms of a forward (no grad) and of a forward+backward of ``padded_sdpa``."""
    def forward():
        with torch.no_grad():
            padded_sdpa(q, k, v, width, engine)

    def forward_backward():
        torch.autograd.grad(padded_sdpa(q, k, v, width, engine), (q, k, v), grad)

    return {mode: triton.testing.do_bench(call, warmup=50, rep=300)
            for mode, call in (("fwd", forward), ("fwd_bwd", forward_backward))}


def picked(q, k, v) -> str:
    names = {int(b): b.name.lower() for b in SDPBackend.__members__.values()}
    choice = torch._fused_sdp_choice(q, k, v)
    return names.get(int(choice), str(choice))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.small_head_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--shapes", default="512x8x1025x4,256x8x1025x8",
                        help="comma-separated batch x heads x length x head_dim")
    args = parser.parse_args(argv)
    meta = dict(card=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), triton=triton.__version__, commit=git_commit())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "small_head_probe.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for shape in args.shapes.split(","):
            batch, heads, length, dim = (int(x) for x in shape.split("x"))
            gen = torch.Generator(device="cuda").manual_seed(0)
            q, k, v, grad = (torch.randn(batch, heads, length, dim, device="cuda", generator=gen,
                                         dtype=torch.bfloat16) for _ in range(4))
            q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
            small = [t[:8].detach().float().requires_grad_(True) for t in (q, k, v)]
            with sdpa_kernel(SDPBackend.MATH):
                ref = F.scaled_dot_product_attention(*small)
            ref_grads = torch.autograd.grad(ref, small, grad[:8].float())
            base: dict[str, float] = {}
            for name, (width, engine) in variants(dim).items():
                row = dict(meta, batch=batch, heads=heads, length=length, head_dim=dim, engine=name,
                           picked=picked(*(F.pad(t, (0, width - dim)) for t in (q, k, v))))
                try:
                    sub = [t[:8].detach().requires_grad_(True) for t in (q, k, v)]
                    check = padded_sdpa(*sub, width, engine)
                    grads = torch.autograd.grad(check, sub, grad[:8])
                    row["err_out"] = (check.float() - ref).abs().max().item()
                    row["err_grad"] = max((g.float() - r).abs().max().item() for g, r in zip(grads, ref_grads))
                except RuntimeError as error:
                    writer.writerow(dict(row, note=str(error).splitlines()[0][:160]))
                    continue
                if name.endswith("math") and batch * heads * length * length > 2**32:
                    writer.writerow(dict(row, note="math skipped: its score matrix would not fit"))
                    continue

                for mode, ms in timings(q, k, v, grad, width, engine).items():
                    base.setdefault(mode, ms)  # "default" runs first
                    writer.writerow(dict(row, mode=mode, ms=round(ms, 4), vs_default=round(base[mode] / ms, 3)))
                    handle.flush()
                    print(f"{shape} {name:18s} {mode:8s} {ms:8.3f} ms  x{base[mode] / ms:.2f}  {row['picked']}",
                          flush=True)


if __name__ == "__main__":
    main()
