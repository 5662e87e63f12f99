"""Launch grid of the wide-code SFA kernels (score loop, tile size, warps) and their host-side stages.

    python -m lab.wide_explore --out results/kernels

For each length: codes drawn uniformly at random (one feature from each of k equal slices of D, so
feature use is uniform as with unit-direction LSH codes and a query meets about L k^2 / D keys; LSH
codes themselves take seconds to build at 1M tokens, bench.wide times them), B=1, head dim 64, bf16.
Per launch config: forward and forward+backward ms scaled to 8 heads (measured on ``heads`` heads,
heads are independent), and the output's error against the fp32 dense reference at a small shape
(``check`` as DESIGN.md: err <= 2 plain bf16 err + 1e-2). A ``plan`` row times the posting lists and
work items alone (``build_plan`` + ``_work_items``), which every call includes.
Writes ``sfa_wide_explore.csv`` (rewritten after each row; a re-measured cell replaces its row).
"""

from __future__ import annotations

import argparse
import datetime
import math
from functools import partial
from pathlib import Path

import torch

from lra_sfa.bench.kernels import RowWriter
from lra_sfa.bench.timing import time_ms
from lra_sfa.bench.wide import check
from lra_sfa.kernels.wide.plan import build_plan
from lra_sfa.kernels.wide.posting import wide_posting_attention
from lra_sfa.kernels.wide.triton_kernel import DEFAULT_BLOCKS, _work_items, wide_triton_attention

COLUMNS = ["config", "op", "seq_len", "heads_measured", "D", "topk", "bucket_size", "ms_8_heads", "max_rel_err",
           "plain_rel_err", "check", "device", "date"]
EXPLORE_KEY = ["config", "op", "seq_len", "D", "topk"]  # one cell; a re-run replaces its own rows
DEFAULT_CONFIGS = ["compare,64,64,4", "select,64,64,4", "select,64,32,4", "select,32,64,4", "select,32,32,2",
                   "select,32,32,4", "select,16,32,2", "select,16,16,1", "select,16,16,2"]


def uniform_codes(heads: int, length: int, num_features: int, k: int, dtype=torch.bfloat16):
    """(idx, val) of shape (1, heads, length, k): slot t holds a feature of slice t of D (distinct)."""
    width = num_features // k
    idx = torch.randint(0, width, (1, heads, length, k), device="cuda") + torch.arange(k, device="cuda") * width
    val = torch.randn(1, heads, length, k, device="cuda").abs().to(dtype)
    return idx, val


def parse_config(text: str) -> dict:
    """"scores,BLOCK_M,BLOCK_N,warps[,backward warps]" -> wide_triton_attention keywords; "posting" -> the
    PyTorch posting path (``wide_posting_attention``), which ``attn=sfa_wide impl=auto`` takes for short lists."""
    if text == "posting":
        return {"posting": True}
    scores, bm, bn, *warps = text.split(",")
    return dict(scores=scores, blocks=(int(bm), int(bn)), num_warps=tuple(int(w) for w in warps) * (3 - len(warps)))


def check_config(config: dict, num_features: int, k: int) -> tuple[float, float]:
    """(kernel, plain bf16) rel err of output and grads against fp32 at L=4096, H=2 (``bench.wide.check``)."""
    torch.manual_seed(0)
    q_idx, q_val = uniform_codes(2, 4096, num_features, k)
    k_idx, k_val = uniform_codes(2, 4096, num_features, k)
    v = torch.randn(1, 2, 4096, 64, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(1, 2, 4096, 64, device="cuda")
    scale = 1 / math.sqrt(k)

    def forward(qv, kv, vv):
        return call_forward(config, q_idx, qv, k_idx, kv, vv, num_features, scale)

    return check((q_idx, q_val, k_idx, k_val), v, num_features, scale, None, grad, forward)


def plan_only(q_idx: torch.Tensor, k_idx: torch.Tensor, num_features: int) -> None:
    """The host-side stages of one call: posting lists and work items."""
    _, heads, length, k = q_idx.shape
    qi, ki = q_idx.reshape(heads, length, k), k_idx.reshape(heads, length, k)
    plan = build_plan(qi, ki, None, num_features, None)
    group = torch.arange(heads, device=q_idx.device)[:, None, None]
    _work_items(plan, (group * num_features + qi).reshape(-1), DEFAULT_BLOCKS[0])


def call_forward(config, q_idx, q_val, k_idx, k_val, v, num_features, scale) -> torch.Tensor:
    """Exact-overlap output through the Triton path with ``config`` (or the posting path)."""
    fn = wide_posting_attention if config.get("posting") else partial(wide_triton_attention, **config)
    return fn(q_idx, q_val, k_idx, k_val, v, num_features, scale, "overlap")[0]


def call(q_idx, k_idx, leaves, num_features, scale, config, grad) -> None:
    """One forward (and backward when ``grad`` is given)."""
    out = call_forward(config, q_idx, leaves[0], k_idx, leaves[1], leaves[2], num_features, scale)
    if grad is not None:
        out.backward(grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="65536:8,262144:2,1048576:1", help="length:heads measured")
    parser.add_argument("--D", type=int, default=131072)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS,
                        help="scores,BLOCK_M,BLOCK_N,warps[,bwd warps]")
    parser.add_argument("--ops", default="fwd,fwd_bwd")
    parser.add_argument("--out", default="results/kernels")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("lab.wide_explore needs a CUDA device")
    table = RowWriter(Path(args.out) / "sfa_wide_explore.csv", COLUMNS, key=EXPLORE_KEY)
    D, K = args.D, args.k
    base = dict(D=D, topk=K, device=torch.cuda.get_device_name(), date=args.date)
    checks = {}
    for text in args.configs:
        err, plain = check_config(parse_config(text), 4096, K)
        checks[text] = dict(max_rel_err=f"{err:.2e}", plain_rel_err=f"{plain:.2e}",
                            check="pass" if err <= 2 * plain + 1e-2 else "FAIL")
        print(f"check {text}: {checks[text]}", flush=True)
    for item in args.lengths.split(","):
        length, heads = (int(x) for x in item.split(":"))
        bucket = length * K / D
        q_idx, q_val = uniform_codes(heads, length, D, K)
        k_idx, k_val = uniform_codes(heads, length, D, K)
        v = torch.randn(1, heads, length, 64, device="cuda", dtype=torch.bfloat16)
        grad = torch.randn_like(v)
        scale = 1 / math.sqrt(K)
        row0 = dict(base, seq_len=length, heads_measured=heads, bucket_size=f"{bucket:.1f}")
        ms, _ = time_ms(partial(plan_only, q_idx, k_idx, D), rep_ms=300.0, min_reps=2, max_reps=10)
        table.write(dict(row0, config="plan", op="fwd", ms_8_heads=f"{ms * 8 / heads:.3f}"))
        print(f"L={length} plan {ms * 8 / heads:.2f} ms (8 heads)", flush=True)
        for text in args.configs:
            config = parse_config(text)
            for op in args.ops.split(","):
                backward = op == "fwd_bwd"
                leaves = [x.detach().requires_grad_(backward) for x in (q_val, k_val, v)]

                run = partial(call, q_idx, k_idx, leaves, D, scale, config, grad if backward else None)
                ms, _ = time_ms(run, rep_ms=300.0, min_reps=2, max_reps=10)
                table.write(dict(row0, **checks[text], config=text, op=op, ms_8_heads=f"{ms * 8 / heads:.3f}"))
                print(f"L={length} {op:7} {text:18} {ms * 8 / heads:9.2f} ms (8 heads)", flush=True)


if __name__ == "__main__":
    main()
