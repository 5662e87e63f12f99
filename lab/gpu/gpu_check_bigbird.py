"""GPU check: BigBird through FlexAttention (impl=flex) equals the blocked PyTorch engine, with padding,
forward and gradients, at a ListOps-like shape. Prints the max abs differences."""

import torch

from lra_sfa.baselines.bigbird import BigBirdAttention

torch.manual_seed(0)
B, H, L, D = 4, 8, 2000, 64
q, k, v = (torch.randn(B, H, L, D, device="cuda", requires_grad=True) for _ in range(3))
mask = torch.ones(B, L, dtype=torch.bool, device="cuda")
for b, n in enumerate((2000, 1500, 731, 64)):
    mask[b, n:] = False
grad = torch.randn(B, H, L, D, device="cuda")
results = {}
for impl in ("blocked", "flex"):
    for t in (q, k, v):
        t.grad = None
    out = BigBirdAttention(num_heads=H, impl=impl)(q, k, v, key_padding_mask=mask)
    out.backward(grad)
    results[impl] = [out.detach()] + [t.grad.clone() for t in (q, k, v)]
for name, a, b in zip(("out", "dq", "dk", "dv"), results["blocked"], results["flex"]):
    real = mask[:, None, :, None].expand_as(a)  # padded query rows are not compared
    print(f"bigbird flex vs blocked {name}: max abs diff {(a - b)[real].abs().max().item():.2e} "
          f"(max abs {a[real].abs().max().item():.2e})")
