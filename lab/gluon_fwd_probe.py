"""GPU probe of the Gluon forward's configurations: repeatability, agreement with the Triton kernel, time.

Runs each configuration several times on one random input (L=16K, d=128, k=8, B*H=16, bf16 by default) and
reports how many runs differ bitwise from the first, how many 64-row blocks differ from the Triton kernel's
output, the largest relative difference, and the median time (triton.testing.do_bench), beside cuDNN on the
same codes. Writes ``gluon_fwd_probe.csv`` under --out. Needs an H200 (sm_90).

    python -m lab.gluon_fwd_probe --out DIR --configs 64,64,3,1,128 64,64,3,2,168,240,1
"""
from __future__ import annotations

import argparse
import csv
import datetime
from pathlib import Path

import torch
import triton

from lra_sfa.kernels.sfa import triton_fwd as fwd
from lra_sfa.kernels.sfa.gluon_fwd import gluon_ws_forward
from lra_sfa.kernels.sfa.launcher import launch_forward
from lra_sfa.kernels.sfa.tiles import key_padding
from lra_sfa.kernels.sfa.topk_pack import topk_pack


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--scale", type=float, default=1.0, help="input scale (40 makes every block fall back)")
    parser.add_argument("--configs", nargs="+", required=True,
                        help="BLOCK_M,BLOCK_N,stages,consumers,maxnreg[,consumer_regs]")
    args = parser.parse_args()
    torch.manual_seed(0)
    bh, length, dim = args.heads, args.length, 128
    q, k, v = (args.scale * torch.randn(1, bh, length, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qd, kd = (topk_pack(t, args.topk)[2].reshape(bh, length, dim) for t in (q, k))
    v = (v / args.scale).reshape(bh, length, dim)
    ref, _ = launch_forward(qd, kd, v, key_padding(None, q.device), bh, False,
                            fwd.fwd_config(64, 64, 4, 3, bounded=True))
    rows = []
    shaped = [t.reshape(1, bh, length, dim) for t in (qd, kd, v)]
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        cudnn_ms = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(*shaped),
                                           warmup=100, rep=300)
    print(f"cudnn {cudnn_ms:.4f} ms", flush=True)
    for text in args.configs:
        cfg = tuple(int(x) for x in text.split(","))
        try:
            outs = [gluon_ws_forward(qd, kd, v, *cfg)[0].clone() for _ in range(args.repeats)]
            torch.cuda.synchronize()
            unstable = sum(not torch.equal(o, outs[0]) for o in outs[1:])
            blocks = [int((o.float() - ref.float()).abs().reshape(bh, length // 64, -1).amax(-1).gt(0).sum())
                      for o in outs]
            rel = max(float((o.float() - ref.float()).norm() / ref.float().norm()) for o in outs)
            finite = all(bool(torch.isfinite(o).all()) for o in outs)
            ms = triton.testing.do_bench(lambda cfg=cfg: gluon_ws_forward(qd, kd, v, *cfg), warmup=100, rep=300)
            note = f"runs differing from the first={unstable}/{args.repeats - 1} blocks differing from triton={blocks}"
        except Exception as exc:  # a config the compiler or the launch rejects is reported, not fatal
            ms, rel, finite, note = float("nan"), float("nan"), False, repr(exc)[:300]
        print(f"{text:28s} {ms:8.4f} ms  rel={rel:.1e} finite={finite} {note}", flush=True)
        rows.append(dict(config=text, ms=ms, cudnn_ms=cudnn_ms, rel_vs_triton=rel, finite=finite, note=note,
                         seq_len=length, heads=bh, topk=args.topk, scale=args.scale,
                         device=torch.cuda.get_device_name(), date=datetime.date.today().isoformat()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gluon_fwd_probe.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
