"""Make Triton 3.6's CPU interpreter work with numpy >= 2.3.

The interpreter stores scalars as 1-element arrays and converts them with
``int(array)`` in ``tensor.__index__`` (used by ``range(0, L, BLOCK)`` over a
runtime length). numpy 2.3+ refuses ``int()`` of a 1-d array, so every kernel
that loops to a runtime bound fails under TRITON_INTERPRET=1. ``install()``
wraps the interpreter's tensor patcher so ``__index__`` goes through
``.item()`` instead. It touches nothing when the interpreter is not in use.
"""

from __future__ import annotations

import os

_INSTALLED = False


def install() -> None:
    """Patch the interpreter once (idempotent); no-op unless TRITON_INTERPRET=1."""
    global _INSTALLED
    if _INSTALLED or os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    _INSTALLED = True
