"""A user's own attention class and YAML, outside the package, run from the CLI (docs/custom_attention.md).

Writes a module and ``conf/attn/<name>.yaml`` into a temporary folder, then runs
``python -m lra_sfa ... attn=<name> hydra.searchpath=[file://<folder>/conf]``
with PYTHONPATH pointing at the module, on a tiny generated ListOps, and
checks the run record. Also: a misspelt ``_target_`` and an unknown argument
fail with an error naming the attention config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MODULE = textwrap.dedent(
    '''
    import torch

    from lra_sfa.attention import AttentionBackend


    class ClippedAttention(AttentionBackend):
        """Softmax attention with the scores clipped to [-clip, clip]."""

        def __init__(self, head_dim: int, clip: float = 5.0):
            super().__init__()
            self.scale, self.clip = head_dim**-0.5, clip

        def forward(self, q, k, v, key_padding_mask=None):
            scores = (q @ k.transpose(-1, -2) * self.scale).clamp(-self.clip, self.clip)
            if key_padding_mask is not None:
                scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
            self.last_path = "user_torch"
            return torch.softmax(scores, dim=-1).nan_to_num(0.0) @ v
    '''
)

TINY_RUN = [
    "task=listops", "model=tiny", "trainer.max_steps=2", "trainer.eval_every=2", "task.seq_len=64",
    "task.num_train=64", "task.num_val=16", "task.num_test=16", "task.min_length=8", "task.max_length=60",
    "task.workers=1", "trainer.batch_size=8", "trainer.device=cpu", "trainer.progress=false", "results_dir=null",
]


def make_user_folder(root: Path, yaml_text: str) -> Path:
    (root / "conf" / "attn").mkdir(parents=True)
    (root / "my_clipped_attention.py").write_text(MODULE)
    (root / "conf" / "attn" / "mine.yaml").write_text(yaml_text)
    return root


def run_cli(root: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "lra_sfa", *TINY_RUN, "attn=mine", f"hydra.searchpath=[file://{root / 'conf'}]",
            f"paths.cache_dir={root / 'cache'}", f"hydra.run.dir={run_dir}", *extra]
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)


GOOD_YAML = "_target_: my_clipped_attention.ClippedAttention\nclip: 3.0\n"


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    return make_user_folder(tmp_path_factory.mktemp("user_attention"), GOOD_YAML)


def test_user_attention_from_outside_the_package_trains_and_records(user_folder):
    run_dir = user_folder / "run"
    result = run_cli(user_folder, run_dir, "attn.clip=2.0")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "record.json").read_text())
    assert record["status"] == "ok" and record["steps"] == 2
    assert record["attn"] == "mine"
    assert record["attn_target"] == "my_clipped_attention.ClippedAttention"
    assert record["attn_args"]["clip"] == 2.0
    assert record["attn_path"] == "user_torch"


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("_target_: my_clipped_attention.ClipedAttention\n",
         r"attention config 'mine'.*cannot be imported"),
        ("_target_: my_clipped_attention.ClippedAttention\nclip_value: 3.0\n",
         r"attention config 'mine'.*clip_value.*valid arguments: \['clip'\]"),
    ],
    ids=["misspelt_target", "unknown_argument"],
)
def test_bad_user_yaml_fails_with_an_error_naming_it(tmp_path, yaml_text, expected):
    import re

    root = make_user_folder(tmp_path / "user", yaml_text)
    result = run_cli(root, tmp_path / "run")
    assert result.returncode != 0
    assert re.search(expected, result.stderr), result.stderr[-3000:]
    assert "conf/attn/mine.yaml" in result.stderr
