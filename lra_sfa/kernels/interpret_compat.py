"""Three fixes for Triton 3.6's CPU interpreter (TRITON_INTERPRET=1), used by the tests.

1. The interpreter stores scalars as 1-element arrays and converts them with
   ``int(array)`` in ``tensor.__index__`` (used by ``range(0, L, BLOCK)`` over
   a runtime length). numpy 2.3+ refuses ``int()`` of a 1-d array, so every
   kernel that loops to a runtime bound fails. The patched ``__index__`` goes
   through the first element instead.
2. ``tl.dot`` on bfloat16 operands multiplies the raw uint16 bit patterns
   (bf16 is stored as uint16 there), giving numbers near 1e9. The patched dot
   widens bf16 operands to float32 first (exact: bf16 is the top half of fp32).
3. ``x.to(tl.bfloat16)`` from float32 truncates instead of rounding to
   nearest even as the GPU does, which doubles bf16 errors; the patched cast
   rounds to nearest even (NaN stays NaN).

``install()`` is idempotent and does nothing unless TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os

import numpy as np

_INSTALLED = False


def _bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def install() -> None:
    """Patch the interpreter once; no-op unless TRITON_INTERPRET=1."""
    global _INSTALLED
    if _INSTALLED or os.environ.get("TRITON_INTERPRET", "0") != "1":
        return
    import triton.language as tl
    from triton.runtime import interpreter

    original_patch = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, scope) -> None:
        original_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    original_dot = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype == tl.bfloat16 or b.dtype == tl.bfloat16:
            a = interpreter.TensorHandle(_bf16_bits_to_f32(a.data) if a.dtype == tl.bfloat16 else a.data, tl.float32)
            b = interpreter.TensorHandle(_bf16_bits_to_f32(b.data) if b.dtype == tl.bfloat16 else b.data, tl.float32)
        return original_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    original_cast = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return interpreter.TensorHandle(_f32_to_bf16_bits(src.data), dst_type.scalar)
        return original_cast(self, src, dst_type)

    interpreter._patch_lang_tensor = patch_lang_tensor
    interpreter.InterpreterBuilder.cast_impl = cast_impl
    interpreter.InterpreterBuilder.create_dot = create_dot
    _INSTALLED = True
