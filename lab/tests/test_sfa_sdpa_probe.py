"""lab.sfa_sdpa_probe's timed calls on the CPU (the Triton kernels under TRITON_INTERPRET=1; the probe needs CUDA):
each SFA side runs what it names, and the two sides give the same attention."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported by the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from lab.sfa_sdpa_probe import OPS, calls  # noqa: E402


@pytest.mark.parametrize("op", OPS)
def test_both_sfa_sides_run_and_leave_gradients_on_their_own_leaves(op):
    q, k, v = (torch.randn(1, 2, 48, 16, generator=torch.Generator().manual_seed(seed)) for seed in range(3))
    timed = calls(q, k, v, 4, op)
    assert set(timed) == {"kernels", "sdpa", "cudnn"}
    outputs = {}
    for name in ("kernels", "sdpa"):  # cuDNN is CUDA-only
        run, leaves = timed[name]
        outputs[name] = run()
        assert (len(leaves) == 3) == (op != "fwd")
        assert all(leaf.grad is not None for leaf in leaves)
    if op == "fwd":
        torch.testing.assert_close(outputs["kernels"], outputs["sdpa"], rtol=1e-4, atol=1e-5)
    else:
        for kernel_leaf, sdpa_leaf in zip(timed["kernels"][1], timed["sdpa"][1]):
            torch.testing.assert_close(kernel_leaf.grad, sdpa_leaf.grad, rtol=1e-4, atol=1e-5)
