"""The LRA encoder: embeddings, pre-LayerNorm blocks with a pluggable attention, pooling, classifier head.

Follows the LRA release's classifier (lra_benchmarks/models/transformer):
token embeddings N(0, 1), sinusoidal or learned positions, pre-LN blocks
(bias-free q/k/v projections, GELU MLP), a final LayerNorm, pooling (a
zero-initialised CLS vector prepended, the mean over real tokens, the
last real token, or ``none``: every position keeps its vector, for per-token
tasks such as MQAR), and a head Dense(mlp_dim) -> ReLU -> Dense(classes).
``qkv_dim`` (default ``d_model``) is the q/k/v width, as LRA's ``qkv_dim``.
For a dual task (retrieval) both documents go through the same encoder; with
``dual_head=paper`` the head takes [x1, x2, x1 * x2, x1 - x2] (the paper's
Eq. 1), with ``dual_head=release`` it takes [x1, x2] through
Dense(mlp_dim) -> ReLU -> Dense(mlp_dim / 2) -> ReLU -> Dense(classes), as the
release's matching code runs (it passes no interaction).

The release's numerical details are options, all set by ``conf/model/lra_base.yaml``:
``init=lra`` (its Flax initialisers, see ``release_init``), ``norm_eps=1e-6``,
``gelu=tanh``, ``proj_bias=false`` (no bias on the attention output
projection) and ``padding=release``: token 0 is padding in every task (the
release derives its mask from ``inputs > 0``, pixels included) and a padded
query averages v over all positions, as the release's query-and-key padding
mask makes it (every score of that row is the same -1e10). ``padding=task``
(the default) takes padding from the task and lets padded queries attend as
any other. PyTorch's defaults stay the defaults elsewhere.

``causal=True`` makes every layer's attention causal (query i attends keys
j <= i), as the decoder-only models of Zoology's MQAR are; the backend must
have a causal form (``AttentionBackend.supports_causal``, ``causal_reasons``), and pooling must
not read the CLS token at position 0, which would then see only itself.

The attention backend is built per layer from ``attn_cfg`` (a conf/attn YAML).
Attention dropout is applied to the attention output (backends do not expose
their probabilities: a kernel that never forms the weights cannot drop them),
which differs from LRA's dropout on the weights; docs/decisions.md says why.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lra_sfa.attention import AttentionBackend, build_attention


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sin/cos position table."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (L, 1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (dim/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention around one AttentionBackend; q/k/v width ``qkv_dim``."""

    def __init__(self, d_model: int, num_heads: int, attention: AttentionBackend, dropout: float,
                 qkv_dim: int | None = None, proj_bias: bool = True, uniform_padded_queries: bool = False) -> None:
        super().__init__()
        qkv_dim = qkv_dim or d_model
        if qkv_dim % num_heads:
            raise ValueError(f"model: qkv_dim={qkv_dim} (d_model when null) must be divisible by num_heads={num_heads}")
        self.num_heads, self.qkv_dim = num_heads, qkv_dim
        self.qkv = nn.Linear(d_model, 3 * qkv_dim, bias=False)
        self.proj = nn.Linear(qkv_dim, d_model, bias=proj_bias)
        self.attention = attention
        self.dropout = nn.Dropout(dropout)
        self.uniform_padded_queries = uniform_padded_queries

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.qkv_dim // self.num_heads)  # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        out = self.attention(q, k, v, key_padding_mask)  # (B, H, L, Dh)
        if self.uniform_padded_queries and key_padding_mask is not None:
            mean_v = v.float().mean(dim=2, keepdim=True).to(out.dtype)  # (B, H, 1, Dh)
            out = torch.where(key_padding_mask[:, None, :, None], out, mean_v)
        out = out.transpose(1, 2).reshape(B, L, self.qkv_dim)  # (B, L, qkv_dim)
        return self.proj(self.dropout(out))


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, mlp_dim: int, attention: AttentionBackend,
                 dropout: float, attn_dropout: float, qkv_dim: int | None = None, norm_eps: float = 1e-5,
                 gelu: str = "exact", proj_bias: bool = True, uniform_padded_queries: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.attn = SelfAttention(d_model, num_heads, attention, attn_dropout, qkv_dim, proj_bias,
                                  uniform_padded_queries)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_dim), nn.GELU(approximate="tanh" if gelu == "tanh" else "none"),
            nn.Dropout(dropout), nn.Linear(mlp_dim, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), key_padding_mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


class LRAClassifier(nn.Module):
    """Encoder + pooling + classifier for LRA tasks; ``forward(tokens) -> logits``.

    tokens: (B, L) long, pad id 0 (or (B, 2, L) when ``dual``).
    """

    def __init__(self, vocab_size: int, num_classes: int, seq_len: int, attn_cfg, d_model: int = 64,
                 num_heads: int = 4, num_layers: int = 2, mlp_dim: int = 128, pooling: str = "cls",
                 dropout: float = 0.1, attn_dropout: float = 0.1, pos: str = "sin", dual: bool = False,
                 has_padding: bool = True, qkv_dim: int | None = None, init: str = "torch",
                 norm_eps: float = 1e-5, gelu: str = "exact", proj_bias: bool = True, padding: str = "task",
                 dual_head: str = "paper", attn_name: str | None = None, causal: bool = False) -> None:
        super().__init__()
        for key, value, valid in (("pooling", pooling, ("cls", "mean", "last", "none")),
                                  ("pos", pos, ("sin", "learned")), ("init", init, ("torch", "lra")),
                                  ("gelu", gelu, ("exact", "tanh")), ("padding", padding, ("task", "release")),
                                  ("dual_head", dual_head, ("paper", "release"))):
            if value not in valid:
                raise ValueError(f"model: {key}={value!r} must be one of {', '.join(valid)}")
        if pooling == "none" and dual:
            raise ValueError("model: pooling=none (per-token outputs) does not apply to a dual (pair) task")
        if causal and pooling == "cls":
            raise ValueError("model: causal=true with pooling=cls: the CLS token at position 0 would attend only "
                             "itself; use pooling last, mean or none")
        release_padding = padding == "release"
        self.pooling, self.dual, self.has_padding = pooling, dual, has_padding or release_padding
        self.release_padding = release_padding
        total_len = seq_len + (pooling == "cls")
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=1.0)
        if pos == "sin":
            self.register_buffer("pos", sinusoidal_positions(total_len, d_model), persistent=False)
        else:
            self.pos = nn.Parameter(torch.randn(total_len, d_model) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if pooling == "cls" else None
        head_dim = (qkv_dim or d_model) // num_heads
        self.blocks = nn.ModuleList(
            Block(d_model, num_heads, mlp_dim,
                  build_attention(attn_cfg, num_heads=num_heads, head_dim=head_dim, max_seq_len=total_len,
                                  name=attn_name),
                  dropout, attn_dropout, qkv_dim, norm_eps, gelu, proj_bias, release_padding)
            for _ in range(num_layers)
        )
        # padded positions reach no output when pooling skips them (cls, masked mean, last) or when the release's
        # padded queries replace the attention's rows there (its mean pooling included): the backends may skip them
        # a task that pads (token 0 its pad token) pads on the right; zero pixels under the release's mask lie anywhere
        for block in self.blocks:
            block.attn.attention.padding_rows_read = not (release_padding or pooling in ("cls", "mean", "last"))
            block.attn.attention.padding_is_suffix = has_padding
            block.attn.attention.causal = causal
        reasons = self.blocks[0].attn.attention.causal_reasons() if causal and self.blocks else []
        if reasons:
            name = attn_name or type(self.blocks[0].attn.attention).__name__
            raise ValueError(f"model: causal=true, but attention '{name}' cannot attend causally: "
                             f"{'; '.join(reasons)}; backends with a causal form: {', '.join(causal_backends())}")
        self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.nli_features = dual and dual_head == "paper"
        if dual and dual_head == "release":
            self.head = nn.Sequential(nn.Linear(2 * d_model, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, mlp_dim // 2),
                                      nn.ReLU(), nn.Linear(mlp_dim // 2, num_classes))
        else:
            head_in = 4 * d_model if dual else d_model
            self.head = nn.Sequential(nn.Linear(head_in, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, num_classes))
        if init == "lra":
            release_init(self)

    def extend_positions(self, seq_len: int) -> None:
        """Make room for inputs of ``seq_len`` tokens (testing beyond the trained length): sinusoidal
        positions are recomputed; learned ones have no rows there and raise ValueError."""
        total_len = seq_len + (self.pooling == "cls")
        if total_len <= self.pos.shape[0]:
            return
        if isinstance(self.pos, nn.Parameter):
            raise ValueError(f"model: pos=learned has {self.pos.shape[0]} positions, none for {total_len}; "
                             "testing at longer lengths needs pos=sin")
        self.pos = sinusoidal_positions(total_len, self.pos.shape[1]).to(self.pos.device)

    def attention_modules(self) -> list[AttentionBackend]:
        return [block.attn.attention for block in self.blocks]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, d_model) pooled representation; (B, L, d_model) with pooling none."""
        B, L = tokens.shape
        mask = tokens != 0 if self.has_padding else torch.ones_like(tokens, dtype=torch.bool)  # (B, L)
        x = self.embed(tokens)  # (B, L, C)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)  # (B, 1 + L, C)
            cls_mask = mask[:, :1] if self.release_padding else mask.new_ones(B, 1)  # the release copies token 0's
            mask = torch.cat([cls_mask, mask], dim=1)  # (B, 1 + L)
        x = self.dropout(x + self.pos[: x.shape[1]])
        key_padding_mask = mask if self.has_padding else None  # no host sync to check for padding
        for block in self.blocks:
            x = block(x, key_padding_mask)
        x = self.norm(x)
        if self.pooling == "none":
            return x
        if self.pooling == "cls":
            return x[:, 0]
        if self.pooling == "mean" and self.release_padding:  # the release averages every position
            return x.mean(1)
        if self.pooling == "mean":
            weights = mask.to(x.dtype)[..., None]  # (B, L, 1)
            return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        last = mask.long().cumsum(1).argmax(1)  # index of the last real token, (B,)
        return x[torch.arange(B, device=x.device), last]

    def forward(self, tokens: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, classes); with pooling none (B, L, classes), or (M, classes) at the M positions
        where ``select`` (B, L) bool is True (the head then runs on those positions only)."""
        if self.dual:
            x1, x2 = self.encode(tokens[:, 0]), self.encode(tokens[:, 1])  # each (B, C)
            pair = [x1, x2, x1 * x2, x1 - x2] if self.nli_features else [x1, x2]
            features = torch.cat(pair, dim=-1)  # (B, 4C) or (B, 2C)
        else:
            features = self.encode(tokens)
        if select is not None:
            if self.pooling != "none":
                raise ValueError(f"model: select= needs pooling none (per-token outputs), not {self.pooling!r}")
            features = features[select]  # (B, L, C) -> (M, C)
        return self.head(features)


def causal_backends() -> list[str]:
    """The conf/attn names whose backend class has a causal form (``supports_causal``), each file read as the run
    config composes it (a file that inherits another, ``sfa_wide_simhash``, takes its ``_target_`` from there).
    A configuration of such a backend may still be refused: its ``causal_reasons()`` say why."""
    from importlib.resources import files

    from hydra.utils import get_class

    from lra_sfa.compose import attn_config

    names = []
    for path in sorted(files("lra_sfa.conf").joinpath("attn").iterdir(), key=lambda entry: entry.name):
        if not path.name.endswith(".yaml"):
            continue
        name = path.name.removesuffix(".yaml")
        try:
            if get_class(attn_config(name)._target_).supports_causal:
                names.append(name)
        except Exception:  # a broken config is reported where it is used, not here
            continue
    return names


def _xavier_uniform(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    nn.init.uniform_(weight, -bound, bound)


def _small_normal_bias(linear: nn.Linear) -> None:
    if linear.bias is not None:
        nn.init.normal_(linear.bias, std=1e-6)


@torch.no_grad()
def release_init(model: LRAClassifier) -> None:
    """The LRA release's Flax initialisers on the encoder and head (embeddings and CLS are already theirs).

    Attention and MLP kernels are Xavier-uniform with N(0, 1e-6) biases. Flax's q/k/v kernels have shape
    (d_model, heads, head_dim) and the output kernel (heads, head_dim, d_model); its fan computation
    takes the last two axes as (in, out) and the rest as receptive field, so q/k/v use
    fan_in = heads * d_model, fan_out = head_dim * d_model and the output projection
    fan_in = qkv_dim, fan_out = heads * d_model: smaller weights than Xavier on the flat matrix, and
    attention logits near zero at the start. The head's Dense layers are Flax's default, LeCun normal
    (truncated at 2 std, rescaled to unit variance) with zero biases.
    """
    for block in model.blocks:
        attn = block.attn
        heads, head_dim = attn.num_heads, attn.qkv_dim // attn.num_heads
        d_model = attn.qkv.in_features
        for part in attn.qkv.weight.chunk(3, dim=0):  # q, k, v: each (qkv_dim, d_model)
            _xavier_uniform(part, heads * d_model, head_dim * d_model)
        _xavier_uniform(attn.proj.weight, attn.qkv_dim, heads * d_model)
        _small_normal_bias(attn.proj)
        for linear in (block.mlp[0], block.mlp[3]):
            _xavier_uniform(linear.weight, linear.in_features, linear.out_features)
            _small_normal_bias(linear)
    for linear in (layer for layer in model.head if isinstance(layer, nn.Linear)):
        std = math.sqrt(1.0 / linear.in_features) / 0.87962566103423978  # truncated normal's std correction
        nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(linear.bias)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; per-token logits (B, L, C) with labels (B, L) skip label -100."""
    if logits.dim() == 3:
        logits, labels = logits.flatten(0, 1), labels.flatten()  # (B, L, C) -> (B * L, C); (B, L) -> (B * L,)
    return F.cross_entropy(logits.float(), labels)
