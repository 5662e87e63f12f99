"""Harness overhead: the runner's training step against a bare loop on pre-staged tensors.

    python -m lra_sfa.bench.overhead                                       # L = 4K, LRA Text-size model, needle data
    python -m lra_sfa.bench.overhead steps=100 "overrides=['attn=sfa']"    # overrides of conf/config.yaml

1. The runner: ``lra_sfa.train.run(cfg)`` on the composed config (by default
   ``experiment=lra_needle`` at ``task.seq_len=4096`` with the LRA Text model
   size: 4 layers, 4 heads, width 256, MLP 1024; batch 32). Its record's
   steps/s covers the timed steps only (warm-up and evaluation excluded) and
   so includes what the harness adds per step: batch gathering and the
   host-to-device copy, ``on_step`` hooks, the loss read every ``log_every``
   steps, the time-budget check.
2. The bare loop: the same model (same seed), optimiser, schedule, autocast
   and gradient clipping, on batches already on the device, one synchronise
   at the end.

overhead = 1 - (bare step time) / (runner step time), from the medians of
``repeats`` alternating measurements. A negative value means the two are
equal within noise. Writes one ``"kind": "bench", "mode": "overhead"``
record under ``out`` (``conf/bench_overhead.yaml``) and prints a summary line.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa.bench import common
from lra_sfa.bench.sweep import autocast
from lra_sfa.data import to_tensors
from lra_sfa.model import LRAClassifier, cross_entropy
from lra_sfa.oldargs import exit_if_old_form, replacement
from lra_sfa.optim import build_optimizer

DEFAULT_OVERRIDES = [
    "experiment=lra_needle", "task.seq_len=4096", "task.num_train=2048", "task.num_val=64", "task.num_test=64",
    "model.d_model=256", "model.num_heads=4", "model.num_layers=4", "model.mlp_dim=1024",
    "trainer.batch_size=32", "trainer.progress=false",
]


def compose_runner_cfg(overrides: list[str], steps: int, run_dir: Path) -> DictConfig:
    """conf/config.yaml with the defaults above, then ``overrides``; evaluation only after the last step."""
    from hydra.core.global_hydra import GlobalHydra

    from lra_sfa.compose import compose_config

    GlobalHydra.instance().clear()
    cfg = compose_config([*DEFAULT_OVERRIDES, *overrides])
    total = int(cfg.trainer.timing_warmup_steps) + steps
    with_steps = {"trainer": {"max_steps": total, "eval_every": total, "max_seconds": None},
                  "run_dir": str(run_dir), "results_dir": None}
    return OmegaConf.merge(cfg, with_steps)


def _resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    return common.resolve_dtype("auto" if precision == "auto" else precision, device)


def bare_step_seconds(cfg: DictConfig, steps: int) -> float:
    """Seconds per step of the same training step on pre-staged device batches."""
    from lra_sfa.recording import build_task

    device = common.resolve_device(str(cfg.trainer.device))
    dtype = _resolve_dtype(str(cfg.trainer.precision), device)
    torch.manual_seed(int(cfg.seed))
    task = build_task(cfg.task)
    data = task.load(cfg.paths.cache_dir)
    model = LRAClassifier(
        vocab_size=task.vocab_size, num_classes=task.num_classes, seq_len=int(cfg.task.seq_len), attn_cfg=cfg.attn,
        pooling=task.pooling, dual=task.dual, has_padding=getattr(task, "has_padding", True),
        **OmegaConf.to_container(cfg.model, resolve=True),
    ).to(device)
    optimizer, schedule = build_optimizer(model, cfg.trainer)
    batch = int(cfg.trainer.batch_size)
    staged = [to_tensors(data.train, torch.arange(i * batch, (i + 1) * batch).numpy() % len(data.train), device)
              for i in range(4)]
    attention, clip = model.attention_modules(), cfg.trainer.grad_clip
    max_steps, warmup = int(cfg.trainer.max_steps), int(cfg.trainer.timing_warmup_steps)
    model.train()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            common.synchronize(device)
            start = time.perf_counter()
        tokens, labels = staged[step % len(staged)]
        for module in attention:
            module.on_step(step, max_steps)
        with autocast(device, dtype):
            loss = cross_entropy(model(tokens), labels)
            extras = [t for t in (m.extra_loss() for m in attention) if t is not None]
            total = loss + sum(extras) if extras else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
        optimizer.step()
        schedule.step()
    common.synchronize(device)
    return (time.perf_counter() - start) / steps


def measure_overhead(overrides: list[str], steps: int = 50, repeats: int = 2) -> dict[str, Any]:
    """Alternate runner and bare-loop measurements ``repeats`` times; returns the overhead record."""
    from lra_sfa.train import run

    runner_s, bare_s, record = [], [], None
    with tempfile.TemporaryDirectory(prefix="lra_overhead_") as tmp:
        cfg = compose_runner_cfg(overrides, steps, Path(tmp))
        for _ in range(repeats):
            record = run(cfg)
            if record["status"] != "ok" or not record.get("steps_per_second"):
                raise RuntimeError(f"overhead: the runner did not finish ({record['status']}: {record.get('reason')})")
            runner_s.append(1.0 / record["steps_per_second"])
            bare_s.append(bare_step_seconds(cfg, steps))
    runner, bare = statistics.median(runner_s), statistics.median(bare_s)
    device = common.resolve_device(str(cfg.trainer.device))
    return {
        **common.base_record("overhead", device, _resolve_dtype(str(cfg.trainer.precision), device)),
        "task": record["task"], "attn": record["attn"], "part": "train", "op": "train_step",
        "seq_len": int(cfg.task.seq_len), "batch": int(cfg.trainer.batch_size), "model": record["model"],
        "overrides": [*DEFAULT_OVERRIDES, *overrides], "timed_steps": steps, "repeats": repeats,
        "runner_step_ms": runner * 1e3, "bare_step_ms": bare * 1e3, "runner_step_ms_all": [s * 1e3 for s in runner_s],
        "bare_step_ms_all": [s * 1e3 for s in bare_s], "overhead_fraction": 1.0 - bare / runner,
        "log_every": int(cfg.trainer.log_every), "status": "ok", "reason": None,
    }


def run_overhead(cfg: DictConfig) -> dict[str, Any]:
    """Measure for ``conf/bench_overhead.yaml`` (``cfg``: its composed config), write and print the record."""
    record = measure_overhead([str(item) for item in cfg.overrides], int(cfg.steps), int(cfg.repeats))
    common.write_bench_record(record, str(cfg.out) if cfg.out else None)
    print(f"harness overhead: {100 * record['overhead_fraction']:.1f}% of a training step "
          f"(runner {record['runner_step_ms']:.2f} ms, bare loop {record['bare_step_ms']:.2f} ms; "
          f"{record['attn']}, L={record['seq_len']}, batch {record['batch']}, {record['device']})")
    return record


@hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="bench_overhead")
def _app(cfg: DictConfig) -> None:
    run_overhead(cfg)


def main() -> None:
    """``python -m lra_sfa.bench.overhead [key=value ...]``; the old ``--steps 100 attn=sfa`` form gets one line."""
    exit_if_old_form(replacement("python -m lra_sfa.bench.overhead", "conf/bench_overhead.yaml", sys.argv[1:],
                                 {"steps": "steps", "repeats": "repeats", "out": "out"}, rest="overrides",
                                 keys=("steps", "repeats", "out", "overrides")))
    _app()


if __name__ == "__main__":
    main()
