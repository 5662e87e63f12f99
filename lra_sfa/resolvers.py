"""OmegaConf resolvers that let a config derive one value from another (registered when lra_sfa is imported).

``${floordiv:a,b}`` is the integer ``a // b``; experiment=mqar uses it for a batch of a fixed number
of tokens at any length (``${floordiv:65536,${task.seq_len}}``) and a fixed head width
(``${floordiv:${model.d_model},64}`` heads). ``${mul:a,b}`` is the integer ``a * b``; the Pathfinder
tasks derive their length from the image side (``${mul:${.resolution},${.resolution}}``).
OmegaConf has no arithmetic of its own.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def floordiv(numerator, denominator) -> int:
    """``numerator // denominator`` for positive integers with a quotient of at least 1; ValueError otherwise."""
    a, b = int(numerator), int(denominator)
    if b < 1 or a < b:
        raise ValueError(f"${{floordiv:{numerator},{denominator}}}: needs integers with {numerator} >= "
                         f"{denominator} >= 1 (a quotient of at least 1)")
    return a // b


def mul(a, b) -> int:
    """``a * b`` for integers."""
    return int(a) * int(b)


def register() -> None:
    """Register the resolvers once (importing lra_sfa calls this)."""
    if not OmegaConf.has_resolver("floordiv"):
        OmegaConf.register_new_resolver("floordiv", floordiv)
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", mul)


register()
