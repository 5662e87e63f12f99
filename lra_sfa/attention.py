"""The one attention protocol every backend implements.

A backend is an ``nn.Module`` whose ``forward`` maps
``q, k, v: (batch, heads, length, head_dim)`` and an optional
``key_padding_mask: (batch, length)`` bool tensor (True = a real token) to an
output of q's shape. Attention is bidirectional unless the model sets the
backend's ``causal`` (``model.causal``): query i then attends keys j <= i only,
which a backend declares it can do with ``supports_causal``.

Each backend declares what it supports through class attributes and answers
``unsupported_reasons``; callers skip with those reasons. Nothing falls back
silently: a backend that has a fast path and a reference path records which
one ran in ``last_path``.

Backends are built from ``conf/attn/<name>.yaml`` with ``build_attention``:
the YAML gives ``_target_`` and the backend's own arguments, and the model adds
the context arguments ``num_heads``, ``head_dim`` and ``max_seq_len`` to the
backends whose constructor names them.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

CONTEXT_ARGS = ("num_heads", "head_dim", "max_seq_len")


class AttentionBackend(nn.Module):
    """Base class: ``forward(q, k, v, key_padding_mask=None) -> out``."""

    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (
        torch.float32,
        torch.float16,
        torch.bfloat16,
    )
    supported_head_dims: ClassVar[tuple[int, ...] | None] = None  # None = any
    supports_mask: ClassVar[bool] = True
    requires_cuda: ClassVar[bool] = False
    # True where torch.compile traces the backend without breaking its graph (plain PyTorch ops, or own kernels
    # behind torch.library custom operators, as FlashSFA's); trainer.compile=auto compiles a model only when
    # every layer's backend says so.
    compile_safe: ClassVar[bool] = False
    # How many (batch, heads, L, L) score tensors one forward keeps for its backward (a backend that builds the
    # dense scores: softmax input and output, a clamp's mask, ...). Above 0, a CPU run estimates that memory
    # before training and is recorded as oom when it exceeds the RAM available (lra_sfa/memory.py).
    score_matrices: ClassVar[int] = 0
    # Whether the backend has a causal form (query i sees keys j <= i), used when the model sets ``causal``.
    supports_causal: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.last_path: str = "none"  # which implementation ran last
        # Whether the caller reads the outputs at padded query rows. A model none of whose outputs depend on
        # them (keys masked in every layer, pooling over real tokens or the release's uniform padded queries)
        # sets it False; a backend may then give those rows any value, and SFA skips computing them.
        self.padding_rows_read: bool = True
        # Whether each row's padding follows all its real tokens (right padding, as where token 0 is the task's
        # pad token); where rows are skipped, SFA then needs no packing (``sfa_attention(padding_is_suffix=)``).
        self.padding_is_suffix: bool = False
        # Whether query i attends keys j <= i only (set by the model from model.causal; the backend must
        # declare supports_causal).
        self.causal: bool = False

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def unsupported_reasons(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> list[str]:
        """Why this backend cannot run these inputs; empty when it can."""
        name = type(self).__name__
        reasons = []
        if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            reasons.append(
                f"{name}: q, k, v must be (batch, heads, length, head_dim) with equal "
                f"batch/heads/length; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        if q.dtype not in self.supported_dtypes:
            reasons.append(f"{name}: dtype {q.dtype} not in {self.supported_dtypes}")
        if self.supported_head_dims is not None and q.shape[-1] not in self.supported_head_dims:
            reasons.append(f"{name}: head_dim {q.shape[-1]} not in {self.supported_head_dims}")
        if key_padding_mask is not None and not self.supports_mask:
            reasons.append(f"{name}: key_padding_mask is not supported")
        if self.requires_cuda and not q.is_cuda:
            reasons.append(f"{name}: needs a CUDA device, got {q.device}")
        if self.causal:
            reasons.extend(f"{name}: {reason} (model.causal=true)" for reason in self.causal_reasons())
        return reasons

    def causal_reasons(self) -> list[str]:
        """Why this backend, as configured, cannot attend causally; empty when it can."""
        return [] if self.supports_causal else ["has no causal form"]

    def extra_loss(self) -> torch.Tensor | None:
        """An auxiliary loss term from the last forward (e.g. load balance)."""
        return None

    def stats(self) -> dict[str, float]:
        """Scalar diagnostics from the last forward, logged into the record."""
        return {}

    def on_step(self, step: int, max_steps: int) -> None:
        """Called by the runner before each training step (e.g. temperature schedules)."""


def check_supported(backend: AttentionBackend, q, k, v, key_padding_mask=None) -> None:
    """Raise a clear ValueError if ``backend`` cannot run these inputs."""
    reasons = backend.unsupported_reasons(q, k, v, key_padding_mask)
    if reasons:
        raise ValueError("; ".join(reasons))


def build_attention(cfg: Any, *, num_heads: int, head_dim: int, max_seq_len: int,
                    name: str | None = None) -> AttentionBackend:
    """Instantiate an attention config, adding the context arguments it accepts.

    ``cfg`` is a DictConfig with ``_target_`` (from ``conf/attn/<name>.yaml``).
    A misspelt target or an argument the class does not take raises a
    ValueError that names the config (``name``, the attn choice, or the target).
    """
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    target = container.get("_target_")
    label = name or target
    where = f"attention config '{label}' (conf/attn/{label}.yaml or your own attn YAML)"
    if not target:
        raise ValueError(f"{where} has no _target_; set it to an importable AttentionBackend class")
    try:
        cls = get_class(target)
    except Exception as exc:  # hydra raises several types here
        raise ValueError(f"{where}: _target_ '{target}' cannot be imported ({exc})") from None
    if not (inspect.isclass(cls) and issubclass(cls, AttentionBackend)):
        raise ValueError(f"{where}: _target_ '{target}' is not a subclass of lra_sfa.attention.AttentionBackend")
    params = inspect.signature(cls.__init__).parameters
    context = {"num_heads": num_heads, "head_dim": head_dim, "max_seq_len": max_seq_len}
    accepts_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [key for key in container if key != "_target_" and key not in params and not accepts_var_kw]
    if unknown:
        valid = [p for p in params if p not in ("self", *CONTEXT_ARGS)]
        retired = " (the name: key is gone: the file name names the backend; delete it)" if "name" in unknown else ""
        raise ValueError(f"{where}: {target} takes no argument(s) {unknown}; valid arguments: {valid}{retired}")
    extra = {key: value for key, value in context.items() if key in params and key not in container}
    try:
        return instantiate(container, **extra)
    except InstantiationException as exc:
        raise ValueError(f"{where}: could not build {target}: {exc}") from None
