"""The lab's top-k candidates for wide-code logits select what torch.topk selects (CPU interpreter).

Run with ``python -m pytest -q -p no:xdist lab/tests`` from the repository root.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported by the kernels

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from lab.kernels.row_topk import chunked_topk, triton_row_topk  # noqa: E402


def _same_selection(z, values, index, k):
    """Values equal torch.topk's (descending), and the indices pick exactly those values, each once."""
    expected = z.float().topk(k, dim=-1).values
    assert torch.equal(values.float(), expected)
    assert torch.equal(z.gather(-1, index).float(), expected)
    assert (index.sort(-1).values.diff(dim=-1) > 0).all()  # no index twice


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,width,k,chunk", [(37, 1024, 8, 128), (5, 4096, 16, 256), (9, 96, 8, 32)])
def test_both_designs_select_the_k_largest(dtype, rows, width, k, chunk):
    z = torch.randn(2, rows, width, generator=torch.Generator().manual_seed(rows + width)).to(dtype)
    _same_selection(z, *chunked_topk(z, k, chunk), k)
    _same_selection(z, *triton_row_topk(z, k), k)


def test_ties_keep_the_lowest_index_and_no_index_twice():
    z = torch.randint(0, 4, (33, 64), generator=torch.Generator().manual_seed(0)).float()  # many ties
    values, index = triton_row_topk(z, 8)
    _same_selection(z, values, index, 8)
    for row in range(z.shape[0]):  # among equal values the kernel takes them left to right
        kept = values[row] == values[row, 0]
        leftmost = (z[row] == values[row, 0]).nonzero().flatten()[:int(kept.sum())]
        assert torch.equal(index[row][kept], leftmost)


def test_bad_arguments_are_refused():
    z = torch.randn(4, 64)
    with pytest.raises(ValueError, match="chunk 48 must divide"):
        chunked_topk(z, 8, 48)
    with pytest.raises(ValueError, match="k = 65 must lie in 1..64"):
        triton_row_topk(z, 65)
    with pytest.raises(ValueError, match="contiguous"):
        triton_row_topk(z.t(), 2)


def test_every_candidate_of_the_probe_selects_what_torch_topk_selects():
    from lab.wide_topk_probe import candidates, matches

    z = torch.randn(12, 512, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    table = candidates(512, 8)
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
