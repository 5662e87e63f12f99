"""Error checks for the SFA kernels at benchmark sizes (sampled query rows).

At L up to 512K the full reference is out of reach, but each output row (and
each row of dQ) depends only on its own query row and all keys. So the
checks recompute a sample of rows exactly, in float64, from the codes the
kernel used (the support comes from ``topk_pack``; ``topk_agrees`` checks that
support against torch.topk separately by comparing the kept magnitudes), and
the same rows in plain PyTorch at the kernel's dtype. The DESIGN.md pass rule
is then ``err(kernel) <= 2 * err(torch, same dtype) + margin``.
"""

from __future__ import annotations

import math

import torch

# fp32's margin covers rounding noise on an exactly-zero dQ / dK (L = 1, constant softmax)
MARGINS = {torch.float32: 5e-5, torch.float16: 5e-4, torch.bfloat16: 2e-3}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Frobenius-norm relative error in float64.

    The denominator has a floor of RMS 1e-2 so that an exactly-zero reference
    (dQ and dK at L = 1, where the softmax is constant) compares rounding noise
    on an absolute scale instead of dividing by zero.
    """
    x, ref = x.detach().double(), ref.detach().double()
    floor = 1e-2 * math.sqrt(max(ref.numel(), 1))
    return float((x - ref).norm() / max(float(ref.norm()), floor))


def passes(kernel_err: float, torch_err: float, dtype: torch.dtype) -> bool:
    """The DESIGN.md rule: kernel error within 2x plain PyTorch's plus a small dtype margin."""
    return kernel_err <= 2.0 * torch_err + MARGINS[dtype]


def topk_agrees(x: torch.Tensor, values: torch.Tensor, topk: int) -> bool:
    """Kept magnitudes (sorted) equal torch.topk's exactly: same support up to ties."""
    ref = torch.topk(x.float().abs(), topk, dim=-1).values
    got = values.float().abs().sort(dim=-1, descending=True).values
    return bool(torch.equal(ref, got))


def rows_attention(qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                   dtype: torch.dtype, dout: torch.Tensor | None = None, q_support: torch.Tensor | None = None):
    """Exact SFA for query ``rows`` of codes qd, kd (BH, L, D) and v in ``dtype``.

    Returns (out rows (BH, R, D), dq rows or None). With ``dout`` (BH, R, D)
    it also returns dQ for those rows, masked by ``q_support`` (BH, R, D) bool.
    """
    scale = 1.0 / math.sqrt(qd.shape[-1])
    q = qd[:, rows].to(dtype)
    k, vv = kd.to(dtype), v.to(dtype)
    scores = (q @ k.transpose(1, 2)) * scale  # (BH, R, L)
    probs = torch.softmax(scores, dim=-1)
    out = probs @ vv  # (BH, R, D)
    if dout is None:
        return out, None
    g = dout.to(dtype)
    dp = g @ vv.transpose(1, 2)  # (BH, R, L)
    delta = (g * out).sum(-1, keepdim=True)  # (BH, R, 1)
    dq = ((probs * (dp - delta)) @ k) * scale  # (BH, R, D)
    return out, dq * q_support.to(dtype)


def plain_attention(qd: torch.Tensor, kd: torch.Tensor, v: torch.Tensor,
                    key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(qd kd^T / sqrt(D)) v in the inputs' dtype with plain autograd ops; all-padding rows give 0."""
    scores = qd @ kd.transpose(-1, -2) / math.sqrt(qd.shape[-1])  # (B, H, L, L)
    if key_padding_mask is None:
        return torch.softmax(scores, dim=-1) @ v
    has_key = key_padding_mask.any(dim=-1)[:, None, None, None]  # (B, 1, 1, 1)
    keep = key_padding_mask[:, None, None, :] | ~has_key  # (B, 1, 1, L)
    probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) * has_key.to(scores.dtype)
    return probs @ v


def full_check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int,
               key_padding_mask: torch.Tensor | None, fn) -> dict:
    """Forward and backward of ``fn`` (a flash_sfa-like callable) against float64, whole tensors.

    The float64 reference (``sfa_chunked``) and the plain-PyTorch one
    (``plain_attention``, autograd in the kernel's dtype) run on the kernel's
    own codes (no second top-k, so no tie ambiguity), with gradients masked to
    the kernel's supports; the supports themselves are checked with
    ``topk_agrees``. ``out_nograd`` is ``fn`` again without autograd (the
    forward-only path). Returns errors and the pass verdict.
    """
    from lra_sfa.kernels.sfa.reference import sfa_chunked
    from lra_sfa.kernels.sfa.topk_pack import topk_pack

    dim = q.shape[-1]
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = fn(*leaves, topk, topk, key_padding_mask)
    gen = torch.Generator(device=out.device).manual_seed(out.numel())
    grad = torch.randn(out.shape, generator=gen, device=out.device).to(out.dtype)
    out.backward(grad)
    q_vals, q_idx, qd = topk_pack(q.detach(), topk)
    k_vals, k_idx, kd = topk_pack(k.detach(), topk)
    supports = [torch.zeros_like(t, dtype=torch.bool).scatter_(-1, i.long(), True) for t, i in ((q, q_idx), (k, k_idx))]
    result = {"topk_ok": topk_agrees(q, q_vals, topk) and topk_agrees(k, k_vals, topk)}
    refs = {}
    for dtype in (torch.float64, q.dtype):
        ref_leaves = [t.detach().to(dtype).requires_grad_(True) for t in (qd, kd, v)]
        if dtype == torch.float64:
            ref_out = sfa_chunked(*ref_leaves, dim, dim, key_padding_mask)
        else:
            ref_out = plain_attention(*ref_leaves, key_padding_mask)
        ref_out.backward(grad.to(dtype))
        refs[dtype] = [ref_out.detach(), ref_leaves[0].grad * supports[0], ref_leaves[1].grad * supports[1],
                       ref_leaves[2].grad]
    with torch.no_grad():  # the forward-only path (for 16-bit inputs it fuses q's top-k into the kernel)
        out_nograd = fn(q.detach(), k.detach(), v.detach(), topk, topk, key_padding_mask)
    got = [out.detach()] + [t.grad for t in leaves] + [out_nograd]
    names = ("out", "dq", "dk", "dv", "out_nograd")
    for name, mine, exact, plain in zip(names, got, refs[torch.float64] + refs[torch.float64][:1],
                                        refs[q.dtype] + refs[q.dtype][:1]):
        result[f"{name}_err"] = rel_err(mine, exact)
        result[f"{name}_torch_err"] = rel_err(plain, exact)
        result[f"{name}_ok"] = passes(result[f"{name}_err"], result[f"{name}_torch_err"], q.dtype)
    result["ok"] = result["topk_ok"] and all(result[f"{n}_ok"] for n in names)
    return result
