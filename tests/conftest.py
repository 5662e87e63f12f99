"""Shared fixtures: composed configs with temporary caches and results stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
if not torch.cuda.is_available():
    # CPU CI runs the Triton kernels in the interpreter; @triton.jit reads this when kernels are defined,
    # so it must be set before any test module imports them.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) -> a config whose run dir, results store and cache are under tmp_path."""

    def _make(*overrides: str):
        from lra_sfa.compose import compose_config  # imported here: the GPU machine may lack hydra

        return compose_config([
            f"run_dir={tmp_path / 'run'}", f"results_dir={tmp_path / 'store'}",
            f"paths.cache_dir={tmp_path / 'cache'}", "trainer.progress=false", *overrides,
        ])

    return _make


def attn_names() -> list[str]:
    """Every backend in the registry folder conf/attn/."""
    return sorted(path.stem for path in (CONF / "attn").glob("*.yaml"))


def train_smoke(tmp_path, overrides: list[str]) -> dict:
    """Two training steps of the tiny model through the real runner; returns the record."""
    from lra_sfa.compose import compose_config
    from lra_sfa.train import run

    base = ["model=tiny", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_every=2", "trainer.device=cpu",
            "trainer.progress=false", f"run_dir={tmp_path / 'run'}", "results_dir=null",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    record = run(compose_config(base + overrides))
    assert record["status"] == "ok", record
    assert (tmp_path / "run" / "record.json").is_file()
    return record



@pytest.fixture
def network_attempts(monkeypatch) -> list:
    """Every socket connection the test makes, refused and listed: an offline path must try none (a
    deterministic check where a wall-clock limit would only catch slow retries)."""
    import socket

    attempts: list = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError(f"network refused in this test: {address}")

    def no_lookup(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(f"name lookup refused in this test: {host}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    return attempts
