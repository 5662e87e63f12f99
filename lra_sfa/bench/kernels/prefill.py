"""The sweep's prefill rows: SFA forward (and forward+backward) against cuDNN and FA2 SDPA at one shape.

All calls of a cell run on the same bf16 inputs. Dense baselines are timed on
random q, k and on the top-k-sparsified q, k, and in each round the faster of
the two (the one less favourable to SFA) is the baseline. SFA's time includes
the top-k of q and k. The calls are timed by ``protocol.interleaved``. Errors:
sampled query rows recomputed in float64 (``kernels.sfa.check``).
"""

from __future__ import annotations

import statistics
from functools import partial

import torch

from lra_sfa.bench.kernels import protocol
from lra_sfa.bench.kernels.calls import leaf, random_qkv, sdpa_call, sfa_call
from lra_sfa.bench.kernels.rows import SFA_IMPL, RowWriter
from lra_sfa.kernels.sfa import check as sfa_check
from lra_sfa.kernels.sfa.api import sfa_attention, sfa_path
from lra_sfa.kernels.sfa.autograd import flash_sfa
from lra_sfa.kernels.sfa.dispatch import gluon_config, gluon_eligible, kernel_path
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
    rows = torch.randperm(length, device=q.device)[:CHECK_ROWS].sort().values
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


def prefill_calls(q, k, v, topk: int, grad, backends: list[str], impl: str = "auto") -> dict[str, protocol.Call]:
    """The cell's timed calls on one set of inputs: "sfa" (top-k included) and, per SDPA backend,
    "<name>_random" (q, k as given) and "<name>_sparse" (their top-k codes). With ``grad``, each call runs
    forward and backward on leaves of its own, whose gradients the timer resets between runs."""
    _, _, qd = topk_pack(q, topk)
    _, _, kd = topk_pack(k, topk)

    def leaves(*tensors) -> tuple:
        return tensors if grad is None else tuple(leaf(t) for t in tensors)

    sfa_leaves = leaves(q, k, v)
    calls = {"sfa": (sfa_call(*sfa_leaves, topk, grad, impl), sfa_leaves if grad is not None else ())}
    for name in backends:
        for inputs, tensors in (("random", (q, k, v)), ("sparse", (qd, kd, v))):
            args = leaves(*tensors)
            calls[f"{name}_{inputs}"] = (sdpa_call(name, *args, grad), args if grad is not None else ())
    return calls


def _sfa_outputs(q, k, v, topk: int, grad, impl: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SFA's output (and, with ``grad``, dQ) once more, on fresh leaves, for the float64 check."""
    attend = flash_sfa if impl == "kernels" else partial(sfa_attention, impl=impl)
    if grad is None:
        with torch.no_grad():
            return attend(q, k, v, topk, topk), None
    leaves = tuple(leaf(t) for t in (q, k, v))
    out = attend(*leaves, topk, topk)
    out.backward(grad)
    return out.detach(), leaves[0].grad


def bench_prefill(out_rows: RowWriter, checks: RowWriter, meta: dict, op: str, timer: protocol.Timer,
                  repeats: int, backends: list[str], device: torch.device, impl: str = "auto") -> None:
    """One cell: SFA against each SDPA backend at meta's shape, ``repeats`` interleaved rounds, one row each.
    ``impl``: ``sfa_attention``'s (what a model runs), or "kernels" for the FlashSFA kernels alone."""
    batch, heads, length, dim, topk = (meta[k] for k in ("batch", "heads", "seq_len", "head_dim", "topk"))
    q, k, v = random_qkv(batch, heads, length, dim, torch.bfloat16, seed=length + dim, device=device)
    grad = None if op == "fwd" else torch.randn_like(q)
    sfa_leaves = (q, k, v) if grad is None else tuple(leaf(t) for t in (q, k, v))
    peak = protocol.peak_mib(sfa_call(*sfa_leaves, topk, grad, impl), device)  # before the baselines' inputs exist
    path = (kernel_path(q.device, q.dtype, length, dim, False, "auto", backward=grad is not None)
            if impl == "kernels" else sfa_path(*sfa_leaves, impl=impl))
    del sfa_leaves
    calls = prefill_calls(q, k, v, topk, grad, backends, impl)
    times = protocol.interleaved(calls, repeats, timer)
    out, dq = _sfa_outputs(q, k, v, topk, grad, impl)
    check = check_prefill(q, k, v, topk, out, dq, grad)
    fwd_config = "sdpa on topk_pack codes" if path == "sdpa" else forward_config(q)
    for name in backends:
        stats = protocol.ratio_summary(times["sfa"], protocol.faster_input(times, name))
        row = dict(meta, impl=SFA_IMPL, op=op, sfa_path=path, baseline=f"sdpa_{name}", **stats,
                   max_rel_err=f"{check['kernel_err']:.3e}", peak_mem_mb=round(peak, 1))
        out_rows.write(row)
        checks.write(dict(row, torch_err=f"{check['torch_err']:.3e}", passes=check["ok"], fwd_config=fwd_config,
                          **{f"baseline_{inputs}_ms": round(statistics.median(times[f"{name}_{inputs}"]), 4)
                             for inputs in ("random", "sparse")}))
        print(f"{op:8s} L={length:>7d} d={dim:3d} k={topk:2d} B={batch} H={heads} {path}: sfa {stats['ms']:8.3f} ms  "
              f"{name} {stats['baseline_ms']:8.3f} ms  x{stats['speedup_median']:5.2f} "
              f"[{stats['speedup_min']:.2f}-{stats['speedup_max']:.2f}] {stats['verdict']:6s} "
              f"err {check['kernel_err']:.2e} (torch {check['torch_err']:.2e}) {'ok' if check['ok'] else 'FAIL'}",
              flush=True)
