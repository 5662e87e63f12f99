"""The sweep's prefill rows: SFA forward (and forward+backward) against cuDNN and FA2 SDPA at one shape.

Dense baselines are timed on random q, k and on the top-k-sparsified q, k; the
faster (less favourable to SFA) is used. SFA times include the top-k of q and
k. Errors: sampled query rows recomputed in float64 (``kernels.sfa.check``).
"""

from __future__ import annotations

import torch

from lra_sfa.bench.kernels.calls import BACKENDS, DEVICE, leaf, random_qkv, sdpa_call, sfa_call, time_ms
from lra_sfa.bench.kernels.rows import SFA_IMPL, RowWriter
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa.autograd import flash_sfa
from lra_sfa.kernels.sfa.dispatch import gluon_config, gluon_eligible
from lra_sfa.kernels.sfa.topk_pack import topk_pack

CHECK_ROWS, CHECK_HEADS = 128, 2


def check_prefill(q, k, v, topk: int, out, dq, grad_out) -> dict:
    """Sampled-row errors of the kernel's out (and dq) against float64, with plain-PyTorch errors."""
    batch, heads, length, dim = q.shape
    flat = (batch * heads, length, dim)
    q_vals, q_idx, qd = topk_pack(q.detach(), topk)
    k_vals, _, kd = topk_pack(k.detach(), topk)
    topk_ok = sfa_check.topk_agrees(q.detach(), q_vals, topk) and sfa_check.topk_agrees(k.detach(), k_vals, topk)
    heads_used = slice(0, min(CHECK_HEADS, batch * heads))
    rows = torch.randperm(length, device=DEVICE)[:CHECK_ROWS].sort().values
    qd, kd, vf = (t.reshape(flat)[heads_used] for t in (qd, kd, v.detach()))  # (h, L, D)
    g = support = None
    if grad_out is not None:
        g = grad_out.reshape(flat)[heads_used][:, rows]  # (h, R, D)
        idx = q_idx.reshape(*flat[:2], -1)[heads_used][:, rows].long()  # (h, R, k)
        support = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    ref_out, ref_dq = sfa_check.rows_attention(qd, kd, vf, rows, torch.float64, g, support)
    pt_out, pt_dq = sfa_check.rows_attention(qd, kd, vf, rows, q.dtype, g, support)
    got = out.reshape(flat)[heads_used][:, rows]
    result = {"kernel_err": sfa_check.rel_err(got, ref_out), "torch_err": sfa_check.rel_err(pt_out, ref_out)}
    if dq is not None:
        result["kernel_err"] = max(result["kernel_err"],
                                   sfa_check.rel_err(dq.reshape(flat)[heads_used][:, rows], ref_dq))
        result["torch_err"] = max(result["torch_err"], sfa_check.rel_err(pt_dq, ref_dq))
    result["ok"] = topk_ok and sfa_check.passes(result["kernel_err"], result["torch_err"], q.dtype)
    return result


def _tuned_forward_config() -> str:
    """The forward tile configuration the autotuner used for the latest call (its kwargs and launch sizes)."""
    from lra_sfa.kernels.sfa import triton_fwd as fwd

    config = getattr(fwd.flash_sfa_fwd_tuned, "best_config", None)  # set by the autotuner's first run
    if config is None:
        return ""
    options = " ".join(f"{name}={value}" for name, value in config.kwargs.items())
    return f"{options} warps={config.num_warps} stages={config.num_stages}"


def forward_config(q: torch.Tensor) -> str:
    """What ran the forward of q (B, H, L, D) without padding: the Gluon kernel, or the Triton autotuner's pick."""
    if not gluon_eligible(q, False):
        return _tuned_forward_config()
    return "gluon ws " + " ".join(f"{name}={value}" for name, value in gluon_config(q.shape[-2]).items())


def bench_prefill(out_rows: RowWriter, checks: RowWriter, meta: dict, op: str, cache: dict, rep_ms: float) -> None:
    batch, heads, length, dim, topk = (meta[k] for k in ("batch", "heads", "seq_len", "head_dim", "topk"))
    q, k, v = random_qkv(batch, heads, length, dim, torch.bfloat16, seed=length + dim)
    grad = None if op == "fwd" else torch.randn_like(q)
    leaves = (q, k, v) if grad is None else tuple(leaf(t) for t in (q, k, v))
    sfa_ms, peak = time_ms(sfa_call(*leaves, topk, grad), rep_ms)
    for t in leaves:
        t.grad = None
    out = flash_sfa(*leaves, topk, topk)
    dq = None
    if grad is not None:
        out.backward(grad)
        dq = leaves[0].grad
    check = check_prefill(q, k, v, topk, out.detach(), dq, grad)
    fwd_config = forward_config(q)
    _, _, qd = topk_pack(q, topk)
    _, _, kd = topk_pack(k, topk)
    for name in BACKENDS:
        key = (name, op, batch, heads, length, dim)
        if key not in cache:
            args = (q, k, v) if grad is None else tuple(leaf(t) for t in (q, k, v))
            cache[key] = time_ms(sdpa_call(name, *args, grad), rep_ms)[0]
        sparse_args = (qd, kd, v) if grad is None else tuple(leaf(t) for t in (qd, kd, v))
        sparse_ms = time_ms(sdpa_call(name, *sparse_args, grad), rep_ms)[0]
        base_ms = min(cache[key], sparse_ms)
        row = dict(meta, impl=SFA_IMPL, op=op, ms=round(sfa_ms, 4), baseline=f"sdpa_{name}",
                   baseline_ms=round(base_ms, 4), speedup=round(base_ms / sfa_ms, 4),
                   max_rel_err=f"{check['kernel_err']:.3e}", peak_mem_mb=round(peak, 1))
        out_rows.write(row)
        checks.write(dict(row, baseline_random_ms=round(cache[key], 4), baseline_sparse_ms=round(sparse_ms, 4),
                          torch_err=f"{check['torch_err']:.3e}", passes=check["ok"], fwd_config=fwd_config))
        print(f"{op:8s} L={length:>7d} d={dim:3d} k={topk:2d} B={batch} H={heads}: sfa {sfa_ms:8.3f} ms  "
              f"{name} {base_ms:8.3f} ms  x{base_ms / sfa_ms:5.2f}  err {check['kernel_err']:.2e} "
              f"(torch {check['torch_err']:.2e}) {'ok' if check['ok'] else 'FAIL'}", flush=True)
