"""``run(cfg) -> dict``: one training run, an explicit loop, one record.

The loop is plain PyTorch so that time and memory are attributable:
AdamW with warmup and decay, gradient clipping, bf16 autocast on CUDA,
evaluation on val every ``trainer.eval_every`` steps, the best-val weights
evaluated on test. Timing excludes the first ``trainer.timing_warmup_steps``
steps (compilation, autotuning) and evaluation; the clock is read after a
device synchronise. Memory: ``max_memory_allocated`` on CUDA, peak RSS on CPU.
Under torchrun the model is wrapped in DDP and rank 0 alone writes.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa import checkpoint as ckpt
from lra_sfa import distributed as dist
from lra_sfa.data import EpochSampler, eval_batches, to_tensors
from lra_sfa.model import LRAClassifier, cross_entropy
from lra_sfa.optim import build_optimizer
from lra_sfa.progress import TrainProgress
from lra_sfa.recording import RunRecord, build_task, peak_memory_mb
from lra_sfa.tasks.base import Split


class Diverged(RuntimeError):
    """The loss became NaN or Inf."""


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model, split: Split, batch_size: int, device, dtype, env: dist.DistEnv) -> dict[str, float]:
    """Accuracy on a split (reduced across ranks), plus accuracy per value of each meta key."""
    model.eval()
    correct = np.zeros(len(split), dtype=bool)
    seen = np.zeros(len(split), dtype=bool)
    for indices in eval_batches(len(split), batch_size, env.rank, env.world_size):
        tokens, labels = to_tensors(split, indices, device)
        with _autocast(device, dtype):
            logits = model(tokens)
        correct[indices] = (logits.argmax(-1) == labels).cpu().numpy()
        seen[indices] = True
    correct, seen = dist.merge_flags(correct, env), dist.merge_flags(seen, env)
    model.train()
    result = {"accuracy": float(correct[seen].mean())}
    for key, values in split.meta.items():
        result[f"accuracy_by_{key}"] = {
            str(value): float(correct[values == value].mean()) for value in np.unique(values)
        }
    return result


def _resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    choices = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision not in choices:
        raise ValueError(f"trainer.precision={precision!r} must be one of auto, {', '.join(choices)}")
    return choices[precision]


def _check_supported(model: LRAClassifier, cfg, device, dtype, seq_len: int) -> list[str]:
    heads = int(cfg.model.num_heads)
    dim = int(cfg.model.get("qkv_dim") or cfg.model.d_model) // heads
    probe = torch.zeros(1, heads, seq_len, dim, device=device, dtype=dtype)
    return model.attention_modules()[0].unsupported_reasons(probe, probe, probe, None)


def train_loop(cfg, model, data, device, dtype, env, record: RunRecord, run_dir: Path) -> None:
    """Train, evaluate and fill ``record``; raises Diverged on a non-finite loss."""
    tcfg = cfg.trainer
    raw_model = model.module if hasattr(model, "module") else model
    optimizer, schedule = build_optimizer(raw_model, tcfg)
    sampler = EpochSampler(len(data.train), int(tcfg.batch_size), int(cfg.seed), env.rank, env.world_size)
    state = ckpt.TrainState()
    if cfg.resume:
        state = ckpt.load(run_dir, raw_model, optimizer, schedule, sampler, device, cfg)
    max_steps, eval_every, log_every = int(tcfg.max_steps), int(tcfg.eval_every), int(tcfg.log_every)
    timing_warmup = min(int(tcfg.timing_warmup_steps), max(0, max_steps - state.step - 1))
    attention = raw_model.attention_modules()
    loss_sum, loss_count = torch.zeros((), device=device), 0
    timed_seconds, timed_steps, segment_start = 0.0, 0, None
    progress = TrainProgress(max_steps, enabled=env.is_main and bool(tcfg.progress))
    progress.start(state.step)
    model.train()
    budget = float(tcfg.max_seconds) if tcfg.get("max_seconds") else None
    loop_start, out_of_time = time.perf_counter(), False
    while state.step < max_steps and not out_of_time:
        if state.step - state.start_step == timing_warmup and segment_start is None:
            dist.synchronize(device)
            segment_start = time.perf_counter()
        tokens, labels = to_tensors(data.train, sampler.next_indices(), device)
        for module in attention:
            module.on_step(state.step, max_steps)
        with _autocast(device, dtype):
            loss = cross_entropy(model(tokens), labels)
            extras = [t for t in (m.extra_loss() for m in attention) if t is not None]
            total = loss + sum(extras) if extras else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), float(tcfg.grad_clip))
        optimizer.step()
        schedule.step()
        state.step += 1
        if segment_start is not None:
            timed_steps += 1
        loss_sum += loss.detach()
        loss_count += 1
        if budget is not None and state.step % log_every == 0:
            out_of_time = time.perf_counter() - loop_start > budget  # checked where we sync anyway
        is_eval = state.step % eval_every == 0 or state.step == max_steps or out_of_time
        if state.step % log_every == 0 or is_eval:
            mean_loss = float(loss_sum) / loss_count  # one host sync per log interval
            loss_sum.zero_()
            loss_count = 0
            if not math.isfinite(mean_loss):
                raise Diverged(f"loss became {mean_loss} by step {state.step}")
            state.last_loss = mean_loss
            progress.update(state.step, loss=mean_loss, val=state.best_val)
        if is_eval:
            if segment_start is not None:
                dist.synchronize(device)
                timed_seconds += time.perf_counter() - segment_start
            val = evaluate(model, data.val, int(tcfg.eval_batch_size or tcfg.batch_size), device, dtype, env)
            state.history.append({"step": state.step, "loss": state.last_loss, "val_accuracy": val["accuracy"]})
            if val["accuracy"] > state.best_val:
                state.best_val, state.best_step = val["accuracy"], state.step
                state.best_weights = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}
            progress.update(state.step, loss=state.last_loss, val=state.best_val)
            if segment_start is not None:
                dist.synchronize(device)
                segment_start = time.perf_counter()
        if tcfg.checkpoint_every and state.step % int(tcfg.checkpoint_every) == 0 and env.is_main:
            ckpt.save(run_dir, raw_model, optimizer, schedule, sampler, state, cfg)
    progress.stop()
    record.set_timing(timed_seconds, timed_steps, int(tcfg.batch_size), int(cfg.task.seq_len))
    if state.best_weights is not None:
        raw_model.load_state_dict(state.best_weights)
    test = evaluate(model, data.test, int(tcfg.eval_batch_size or tcfg.batch_size), device, dtype, env)
    record.update(
        val_accuracy=state.best_val, best_step=state.best_step, test_accuracy=test["accuracy"],
        steps=state.step, final_train_loss=state.last_loss, history=state.history,
        resumed_from_step=state.start_step if cfg.resume else None, stopped_by_time_budget=out_of_time,
        attn_path=attention[0].last_path, attn_stats=_attention_stats(attention),
        **{f"test_{key}": value for key, value in test.items() if key.startswith("accuracy_by_")},
    )


def _attention_stats(modules) -> dict[str, float]:
    stats = {}
    for index, module in enumerate(modules):
        stats.update({f"layer{index}.{key}": float(value) for key, value in module.stats().items()})
    return stats


def run(cfg: DictConfig) -> dict:
    """One training run from a composed config; returns (and writes) its record."""
    env = dist.setup(cfg.trainer.device)
    device = env.device
    torch.manual_seed(int(cfg.seed) + env.rank)
    run_dir = Path(cfg.run_dir).expanduser()
    dtype = _resolve_dtype(cfg.trainer.precision, device)
    record = RunRecord(cfg, device, dtype, env.world_size)
    task = build_task(cfg.task)
    record.update(**task.describe())
    data = task.load(cfg.paths.cache_dir)
    record.update(data_source=data.source, num_train=len(data.train))
    seq_len = int(cfg.task.seq_len)
    model = LRAClassifier(
        vocab_size=task.vocab_size, num_classes=task.num_classes, seq_len=seq_len, attn_cfg=cfg.attn,
        pooling=task.pooling, dual=task.dual, has_padding=getattr(task, "has_padding", True),
        **OmegaConf.to_container(cfg.model, resolve=True),
    ).to(device)
    record.update(num_parameters=sum(p.numel() for p in model.parameters()))
    reasons = _check_supported(model, cfg, device, dtype, seq_len)
    if reasons:
        return record.finish("unsupported", "; ".join(reasons), run_dir, env)
    if env.world_size > 1:
        model = dist.wrap_ddp(model, device)
    dist.reset_peak_memory(device)
    try:
        train_loop(cfg, model, data, device, dtype, env, record, run_dir)
    except torch.cuda.OutOfMemoryError as exc:
        shape = f"batch={cfg.trainer.batch_size}, seq_len={seq_len}, model={dict(cfg.model)}"
        return record.finish("oom", f"CUDA out of memory at {shape}: {str(exc).splitlines()[0]}", run_dir, env)
    except Diverged as exc:
        return record.finish("diverged", str(exc), run_dir, env)
    record.update(peak_memory_mb=peak_memory_mb(device))
    return record.finish("ok", None, run_dir, env)
