"""``run(cfg) -> dict``: one training run, an explicit loop, one record.

The loop is plain PyTorch so that time and memory are attributable:
AdamW with warmup and decay, gradient clipping, bf16 autocast on CUDA,
evaluation on val every ``trainer.eval_every`` steps (training stops after the one
that reaches ``trainer.stop_at_val_accuracy``, where set), and on test the weights
``trainer.test_weights`` names (best_val, or final as the LRA release does).
On CUDA the model can be compiled (``trainer.compile``) and small splits sit
on the GPU (``trainer.data_on_device``); neither changes what is computed.
Timing excludes the first ``trainer.timing_warmup_steps`` steps (compilation,
autotuning) and evaluation; the clock is read after a device synchronise.
Memory: ``max_memory_allocated`` on CUDA, peak RSS on CPU.
Under torchrun the model is wrapped in DDP and rank 0 alone writes.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa import checkpoint as ckpt
from lra_sfa import distributed as dist
from lra_sfa import faults, memory
from lra_sfa.data import EpochSampler, to_tensors
from lra_sfa.evaluation import autocast, evaluate, task_loss
from lra_sfa.model import LRAClassifier
from lra_sfa.optim import build_optimizer
from lra_sfa.placement import compile_choice, place_data
from lra_sfa.progress import StepClock, TrainProgress
from lra_sfa.recording import RunRecord, attn_name, build_task, peak_memory_mb


class Diverged(RuntimeError):
    """The loss became NaN or Inf."""


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
    mask = torch.ones(1, seq_len, device=device, dtype=torch.bool) if model.has_padding else None
    return model.attention_modules()[0].unsupported_reasons(probe, probe, probe, mask)


@dataclass
class LoopContext:
    """What the loop needs besides the model: data, device, ranks, where to write, what it is doing."""

    cfg: DictConfig
    data: object
    device: torch.device
    dtype: torch.dtype
    env: dist.DistEnv
    run_dir: Path
    resume: bool
    where: dict = field(default_factory=lambda: {"phase": "setup", "shape": []})
    progress: TrainProgress | None = None
    started: float = field(default_factory=time.perf_counter)  # the run's start: trainer.max_seconds counts from it


@dataclass
class LoopOutcome:
    """What training leaves for the test pass: its state, whether the time budget cut it, and the timing."""

    state: ckpt.TrainState
    out_of_time: bool
    timed_seconds: float
    timed_steps: int
    reached_target: bool = False  # stopped at trainer.stop_at_val_accuracy


def _train_step(model, raw_model, attention, optimizer, schedule, tokens, labels, ctx: LoopContext, step: int):
    """One optimiser step; returns the detached task loss (without auxiliary terms) for logging."""
    tcfg = ctx.cfg.trainer
    for module in attention:
        module.on_step(step, int(tcfg.max_steps))
    with autocast(ctx.device, ctx.dtype):
        loss = task_loss(model, tokens, labels)
        extras = [t for t in (m.extra_loss() for m in attention) if t is not None]
        total = loss + sum(extras) if extras else loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if tcfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), float(tcfg.grad_clip))
    optimizer.step()
    schedule.step()
    return loss.detach()


def _reduced_loss(loss_sum: torch.Tensor, loss_count: int, over_budget: bool, env) -> tuple[float, bool]:
    """Mean training loss over the interval and all ranks, and whether any rank ran out of time (one sync)."""
    both = dist.sum_across(torch.stack([loss_sum.float(), torch.tensor(float(over_budget), device=loss_sum.device)]),
                           env)
    return float(both[0]) / (loss_count * env.world_size), bool(both[1] > 0)


def _eval_point(raw_model, state: ckpt.TrainState, ctx: LoopContext) -> None:
    tcfg = ctx.cfg.trainer
    ctx.where["phase"] = "eval on val"
    val = evaluate(raw_model, ctx.data.val, int(tcfg.eval_batch_size or tcfg.batch_size), ctx.device, ctx.dtype,
                   ctx.env, ctx.where, ctx.progress)
    state.history.append({"step": state.step, "loss": state.last_loss, "val_accuracy": val["accuracy"]})
    if val["accuracy"] > state.best_val:
        state.best_val, state.best_step = val["accuracy"], state.step
        if tcfg.get("test_weights", "best_val") == "best_val":
            state.best_weights = {k: v.detach().clone() for k, v in raw_model.state_dict().items()}


def train_loop(model, ctx: LoopContext, record: RunRecord) -> LoopOutcome:
    """Train with a validation pass every ``eval_every`` steps; raises Diverged on a non-finite loss."""
    cfg, data, device, env, run_dir = ctx.cfg, ctx.data, ctx.device, ctx.env, ctx.run_dir
    tcfg = cfg.trainer
    raw_model = model.module if hasattr(model, "module") else model
    optimizer, schedule = build_optimizer(raw_model, tcfg)
    sampler = EpochSampler(len(data.train), int(tcfg.batch_size), int(cfg.seed), env.rank, env.world_size)
    state = ckpt.TrainState()
    if ctx.resume:
        state = ckpt.load(run_dir, raw_model, optimizer, schedule, sampler, device, cfg, env,
                          force=cfg.resume == "force")
        if state.resume_forced:
            record.update(resume_forced=state.resume_forced)
        if state.saved_max_steps is not None and state.saved_max_steps != int(tcfg.max_steps):  # a schedule that
            record.update(max_steps_changed_on_resume={"checkpoint": state.saved_max_steps,  # spans max_steps changed
                                                       "now": int(tcfg.max_steps)})
    commit = record.data["git_commit"]
    if state.commits and state.commits[-1] != commit:  # earlier stretches ran other code: the record names them
        record.update(earlier_commits=list(state.commits))
    if not state.commits or state.commits[-1] != commit:
        state.commits.append(commit)
    max_steps, eval_every, log_every = int(tcfg.max_steps), int(tcfg.eval_every), int(tcfg.log_every)
    timing_warmup = min(int(tcfg.timing_warmup_steps), max(0, max_steps - state.step - 1))
    attention = raw_model.attention_modules()
    loss_sum, loss_count = torch.zeros((), device=device), 0
    clock = StepClock(sync=lambda: dist.synchronize(device))  # the record's steps_per_second and the bar's rate
    progress = TrainProgress(max_steps, enabled=env.is_main and bool(tcfg.progress))
    ctx.progress = progress
    progress.start(state.step)
    model.train()
    budget = float(tcfg.max_seconds) if tcfg.get("max_seconds") else None  # from the run's start: set-up counts
    loop_start, out_of_time = time.perf_counter(), False
    target = tcfg.get("stop_at_val_accuracy")
    reached = target is not None and any(point["val_accuracy"] >= target for point in state.history)  # resumed
    while state.step < max_steps and not out_of_time and not reached:
        if state.step - state.start_step == timing_warmup:
            clock.resume()  # timing starts after the warm-up steps
        tokens, labels = to_tensors(data.train, sampler.next_indices(), device)
        ctx.where.update(phase="train step", shape=list(tokens.shape))
        loss_sum += _train_step(model, raw_model, attention, optimizer, schedule, tokens, labels, ctx, state.step)
        state.step += 1
        loss_count += 1
        clock.step()
        is_eval = state.step % eval_every == 0 or state.step == max_steps
        if state.step % log_every == 0 or is_eval:  # one host sync (and one all-reduce) per log interval
            over_budget = budget is not None and time.perf_counter() - ctx.started > budget
            mean_loss, out_of_time = _reduced_loss(loss_sum, loss_count, over_budget, env)
            loss_sum.zero_()
            loss_count = 0
            if not math.isfinite(mean_loss):
                raise Diverged(f"loss became {mean_loss} by step {state.step}")
            state.last_loss = mean_loss
            progress.update(state.step, loss=mean_loss, val=state.best_val, rate=clock.rate())
        cut_here = out_of_time and not is_eval
        if cut_here and tcfg.checkpoint_every:  # before the cut's evaluation, which an uninterrupted run never makes:
            _save_checkpoint(raw_model, optimizer, schedule, sampler, state, ctx, record)  # the resumed run matches it
        if is_eval or out_of_time:
            timed = clock.pause()  # evaluation is not training time
            _eval_point(raw_model, state, ctx)
            reached = target is not None and state.history[-1]["val_accuracy"] >= target  # equal on every rank
            progress.update(state.step, loss=state.last_loss, val=state.best_val, rate=clock.rate())
            if not progress.enabled and env.is_main:  # a plain line per evaluation for logs
                print(f"step {state.step}/{max_steps}  loss {state.last_loss:.4f}  val "
                      f"{state.history[-1]['val_accuracy']:.4f}  {time.perf_counter() - loop_start:.0f} s", flush=True)
            if timed:
                clock.resume()
        if tcfg.checkpoint_every and not cut_here and (state.step % int(tcfg.checkpoint_every) == 0 or out_of_time):
            _save_checkpoint(raw_model, optimizer, schedule, sampler, state, ctx, record)  # a cut run resumes here
    # a budget that runs out at the last step (or at the evaluation that reached the target) cut nothing
    cut = out_of_time and state.step < max_steps and not reached
    # every exit follows an evaluation, so every timed step lies in a closed segment; the segment opened after
    # the last evaluation holds no step (only, at most, the final checkpoint's write) and is left out
    return LoopOutcome(state, cut, clock.seconds, clock.steps, reached)


def _save_checkpoint(raw_model, optimizer, schedule, sampler, state, ctx: LoopContext, record: RunRecord) -> None:
    """A checkpoint that cannot be written (a full disk) does not stop training: the results stay valid, the
    previous checkpoint stays usable, and the failure is printed and kept in the record."""
    try:
        ckpt.save(ctx.run_dir, raw_model, optimizer, schedule, sampler, state, ctx.cfg, ctx.env)
    except ckpt.CheckpointWriteError as exc:
        print(f"lra-sfa: warning: {exc}; training goes on", file=sys.stderr)
        record.update(checkpoint_errors=[*record.data.get("checkpoint_errors", []), str(exc)])


def test_pass(raw_model, outcome: LoopOutcome, ctx: LoopContext, record: RunRecord) -> None:
    """The ``trainer.test_weights`` weights on test (and at ``trainer.test_lengths``); fill the record."""
    tcfg, state, attention = ctx.cfg.trainer, outcome.state, raw_model.attention_modules()
    record.set_timing(outcome.timed_seconds, outcome.timed_steps, int(tcfg.batch_size), int(ctx.cfg.task.seq_len))
    test_weights = tcfg.get("test_weights", "best_val")
    final_val = state.history[-1]["val_accuracy"] if state.history else None
    if test_weights == "best_val" and state.best_weights is not None:
        raw_model.load_state_dict(state.best_weights)
    ctx.where["phase"] = "eval on test"
    test = evaluate(raw_model, ctx.data.test, int(tcfg.eval_batch_size or tcfg.batch_size), ctx.device, ctx.dtype,
                    ctx.env, ctx.where, ctx.progress)
    record.update(
        val_accuracy=state.best_val, best_step=state.best_step, test_accuracy=test["accuracy"],
        test_weights=test_weights, final_val_accuracy=final_val,
        steps=state.step, final_train_loss=state.last_loss, history=state.history,
        resumed_from_step=state.start_step if ctx.resume else None, stopped_by_time_budget=outcome.out_of_time,
        stopped_at_val_accuracy=outcome.reached_target,
        attn_path=attention[0].last_path, attn_stats=_attention_stats(attention),
        **{f"test_{key}": value for key, value in test.items() if key.startswith("accuracy_by_")},
    )
    lengths = list(tcfg.get("test_lengths") or [])
    if lengths and outcome.out_of_time:  # a cut run resumes; its record is no result, so its time goes to training
        record.update(test_lengths_skipped="the run was cut by trainer.max_seconds")
    elif lengths:
        ctx.where["phase"] = "test at other lengths"
        by_length, by_depth, unsupported, extra = _test_at_lengths(raw_model, lengths, ctx)
        record.update(test_accuracy_by_length={**record.data.get("test_accuracy_by_length", {}), **by_length},
                      test_accuracy_by_depth_at_length=by_depth, test_lengths_unsupported=unsupported, **extra)
    if ctx.progress is not None:
        ctx.progress.stop()  # after the test passes, which show their batches on it


def _test_at_lengths(raw_model, lengths: list[int], ctx) -> tuple[dict, dict, dict, dict]:
    """The trained model on the task's test split generated at each length (train and val splits not
    made). Tokens per batch stay those of the training length (batch scaled by seq_len / length, at
    least 1). Returns accuracy by length, accuracy by depth at each length (where the task has depths)
    and the reason for each length that could not run (a task that cannot be generated at that
    length, learned positions, a backend bounded by the trained length, out of memory), and per
    length the wall-clock seconds of the test pass (``test_seconds_by_length``, synchronised) and the
    attention stats of its last batch (``attn_stats_by_length``, e.g. sfa_wide's candidates per query
    on the trained model's own codes)."""
    cfg = ctx.cfg
    base_len = int(cfg.task.seq_len)
    base_batch = int(cfg.trainer.eval_batch_size or cfg.trainer.batch_size)
    by_length, by_depth, unsupported = {}, {}, {}
    seconds, stats = {}, {}
    attention = raw_model.attention_modules()
    for length in lengths:
        try:
            overrides = {"seq_len": int(length)}
            overrides.update({key: 0 for key in ("num_train", "num_val") if key in cfg.task})
            task = build_task(OmegaConf.merge(cfg.task, overrides))
            raw_model.extend_positions(int(length))
            reasons = _check_supported(raw_model, cfg, ctx.device, ctx.dtype, int(length))
            if reasons:
                raise ValueError("; ".join(reasons))
            split = task.load(cfg.paths.cache_dir).test
        except ValueError as exc:
            unsupported[str(length)] = str(exc)
            continue
        ctx.where["shape"] = [len(split), int(length)]
        batch = max(1, base_batch * base_len // int(length))
        try:
            start = time.perf_counter()
            result = evaluate(raw_model, split, batch, ctx.device, ctx.dtype, ctx.env, ctx.where, ctx.progress)
            dist.synchronize(ctx.device)
            seconds[str(length)] = round(time.perf_counter() - start, 3)
        except torch.cuda.OutOfMemoryError:  # the trained model's own results are kept
            torch.cuda.empty_cache()
            unsupported[str(length)] = f"out of memory testing {batch} x {length} tokens"
            continue
        by_length[str(length)] = result["accuracy"]
        stats[str(length)] = _attention_stats(attention)
        if "accuracy_by_depth" in result:
            by_depth[str(length)] = result["accuracy_by_depth"]
    return by_length, by_depth, unsupported, {"test_seconds_by_length": seconds, "attn_stats_by_length": stats}


def _attention_stats(modules) -> dict[str, float]:
    stats = {}
    for index, module in enumerate(modules):
        stats.update({f"layer{index}.{key}": float(value) for key, value in module.stats().items()})
    return stats


def _build_model(cfg, task, device) -> LRAClassifier:
    return LRAClassifier(
        vocab_size=task.vocab_size, num_classes=task.num_classes, seq_len=int(cfg.task.seq_len),
        attn_cfg=cfg.attn, attn_name=attn_name(cfg), pooling=task.pooling, dual=task.dual, has_padding=task.has_padding,
        **OmegaConf.to_container(cfg.model, resolve=True),
    ).to(device)


def _wrap_for_ranks(model: LRAClassifier, ctx: LoopContext, record: RunRecord):
    """DDP around the model when there are several ranks; unused parameters are found by a probe step."""
    cfg, env = ctx.cfg, ctx.env
    if env.world_size == 1:
        return model
    choice = cfg.trainer.get("find_unused_parameters", "auto")
    if choice == "auto":
        tokens = to_tensors(ctx.data.train, np.arange(1), env.device)[0]
        ctx.where.update(phase="DDP probe step", shape=list(tokens.shape))
        unused = dist.unused_parameters(model, tokens)
        choice = bool(unused)
        record.update(ddp_unused_parameters=unused[:20])
    record.update(ddp_find_unused_parameters=bool(choice))
    return dist.wrap_ddp(model, env.device, find_unused=bool(choice))


def _resume_mode(cfg, run_dir: Path, env: dist.DistEnv) -> bool:
    """resume=true/false as given (force: true); resume=auto continues when <run_dir>/checkpoint.pt exists (rank 0
    decides)."""
    if cfg.resume == "auto":
        return bool(dist.broadcast_object(ckpt.exists(run_dir), env))
    return bool(cfg.resume)


def _finished(cfg, run_dir: Path, env: dist.DistEnv) -> dict | None:
    """Unless resume=false, the record of a run in ``run_dir`` that already reached max_steps (else None)."""
    if cfg.resume is False:
        return None
    record = dist.broadcast_object(ckpt.finished_record(run_dir, cfg) if env.is_main else None, env)
    if record is not None and env.is_main:
        print(f"lra-sfa: {run_dir} already finished ({record['steps']} of {cfg.trainer.max_steps} steps, status ok); "
              "record.json and the results store are left as they are", file=sys.stderr)
    return record


def run(cfg: DictConfig) -> dict:
    """One training run from a composed config; returns (and writes) its record."""
    faults.check_config_types(cfg)
    env = dist.setup(cfg.trainer.device)
    record = None
    try:
        record = _run(cfg, env)
        return record
    finally:
        if record is None or record["status"] != "oom" or env.world_size == 1:
            dist.teardown(env)  # after an OOM on one rank the others may sit in a collective: no teardown


def _run(cfg: DictConfig, env: dist.DistEnv) -> dict:
    started = time.perf_counter()
    device = env.device
    run_dir = Path(dist.broadcast_object(str(Path(str(cfg.run_dir)).expanduser()), env))  # rank 0's folder
    faults.check_writable(run_dir, "run dir")
    if cfg.results_dir:
        faults.check_writable(cfg.results_dir, "results store (results_dir)")
    finished = _finished(cfg, run_dir, env)
    if finished is not None:
        return finished
    torch.manual_seed(int(cfg.seed) + env.rank)
    dtype = _resolve_dtype(cfg.trainer.precision, device)
    record = RunRecord(cfg, device, dtype, env.world_size)
    task = build_task(cfg.task)
    record.update(**task.describe())
    model = _build_model(cfg, task, device)  # before the data: a bad attention config fails in seconds
    refusal = memory.cpu_refusal(model.attention_modules()[0], cfg, device, dtype, env.world_size)
    if refusal:  # the OOM killer would end the run with no record
        record.update(**refusal[1])
        return record.finish("oom", refusal[0], run_dir, env)
    data = task.load(cfg.paths.cache_dir)
    faults.check_task_data(data, task)
    record.update(data_source=data.source, num_train=len(data.train))
    ctx = LoopContext(cfg, data, device, dtype, env, run_dir, _resume_mode(cfg, run_dir, env), started=started)
    try:
        ctx.where["phase"] = "model set-up"
        record.update(num_parameters=sum(p.numel() for p in model.parameters()))
        reasons = _check_supported(model, cfg, device, dtype, int(cfg.task.seq_len))
        if reasons:
            return record.finish("unsupported", "; ".join(reasons), run_dir, env)
        compiled = compile_choice(cfg, model, device, env.world_size)
        record.update(compiled=compiled)
        resident_mb = place_data(cfg, data, device, record)
        model = _wrap_for_ranks(model, ctx, record)
        if compiled:
            model = torch.compile(model, mode=str(cfg.trainer.get("compile_mode", "default")))
        dist.reset_peak_memory(device)
        outcome = train_loop(model, ctx, record)
        test_pass(model.module if hasattr(model, "module") else model, outcome, ctx, record)
    except torch.cuda.OutOfMemoryError as exc:
        reason, fields = faults.describe_oom(exc, ctx.where, cfg, dtype)
        record.update(**fields)
        model = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return record.finish("oom", reason, run_dir, env)
    except Diverged as exc:
        return record.finish("diverged", str(exc), run_dir, env)
    # the resident splits are the same for every backend: the peak is the run's own memory above them
    record.update(peak_memory_mb=dist.max_across(peak_memory_mb(device), env) - resident_mb,
                  resident_data_mb=round(resident_mb, 1))
    return record.finish("ok", None, run_dir, env)
