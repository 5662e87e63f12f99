"""The lab's top-k candidate and the probe's table select what torch.topk selects (CPU interpreter).

Run with ``python -m pytest -q -p no:xdist lab/tests`` from the repository root.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported by the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from lab.kernels.row_topk import chunked_topk  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,width,k,chunk", [(37, 1024, 8, 128), (5, 4096, 16, 256), (9, 96, 8, 32)])
def test_the_chunked_topk_selects_the_k_largest(dtype, rows, width, k, chunk):
    z = torch.randn(2, rows, width, generator=torch.Generator().manual_seed(rows + width)).to(dtype)
    assert torch.equal(z.gather(-1, chunked_topk(z, k, chunk)), z.topk(k, dim=-1).values)
    with pytest.raises(ValueError, match=f"chunk {width + 1} must divide the last dim {width}"):
        chunked_topk(z, k, width + 1)


def test_every_candidate_of_the_probe_selects_what_torch_topk_selects():
    from lab.wide_topk_probe import candidates, matches

    z = torch.randn(12, 512, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    table = candidates(512, 8)  # the triton rows run lra_sfa.kernels.wide.topk_triton under the interpreter
    assert {method for method, _ in table} == {"torch", "chunked", "triton"}
    assert all(matches(z, fn(z), 8) for fn in table.values())


def test_the_two_value_paths_agree_with_their_gradients():
    from lab.wide_topk_probe import value_paths

    gen = torch.Generator().manual_seed(7)
    code_map = torch.randn(2, 16, 128, generator=gen)
    h = torch.randn(3, 2, 10, 16, generator=gen)
    idx = torch.einsum("bhle,hef->bhlf", h, code_map).topk(4, dim=-1).indices
    grad = torch.randn(3, 2, 10, 4, generator=gen)
    results = []
    for fn in value_paths(2, 128, 4).values():
        leaves = (h.clone().requires_grad_(), code_map.clone().requires_grad_())
        out = fn(*leaves, idx)
        out.backward(grad)
        results.append((out.detach(), leaves[0].grad, leaves[1].grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
