"""Does MQAR need causal attention here? ``python -m lra_sfa`` with ``attn=full`` made causal.

    python -m lab.mqar_causal_probe experiment=mqar attn=full task.seq_len=64 ...   (any lra_sfa overrides)

The harness attends both ways (``lra_sfa/attention.py``); Zoology trains causal language models. This
probe runs one ordinary training run in which every ``F.scaled_dot_product_attention`` call without a
mask is made causal (``is_causal=True``), so ``attn=full`` on an unpadded task (MQAR has no padding)
becomes causal full attention and nothing else changes. A call with a mask is refused: the probe is
for unpadded tasks only. Its record says ``attn=full``, so send it to a folder of its own
(``results_dir=...``), never to the published store. Results: ``results/mqar_cpu/``.
"""

from __future__ import annotations

import runpy
import sys

from torch.nn import functional as F

_bidirectional = F.scaled_dot_product_attention


def _causal(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
    if attn_mask is not None:
        raise ValueError("mqar_causal_probe: a masked attention call; the probe is for unpadded tasks only")
    return _bidirectional(q, k, v, dropout_p=dropout_p, is_causal=True, **kwargs)


def main() -> None:
    F.scaled_dot_product_attention = _causal
    sys.argv = ["lra_sfa", *sys.argv[1:]]
    runpy.run_module("lra_sfa", run_name="__main__")


if __name__ == "__main__":
    main()
