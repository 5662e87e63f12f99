"""The LRA paper's Table 2 protocol: training-step speed and memory of the Text model.

``python -m lra_sfa.bench bench=lra_table2`` trains the LRA Text classifier
for ``warmup_steps`` untimed and ``timed_steps`` timed steps at each length
(1K, 2K, 3K, 4K, batch 32) with each backend, and records steps/s, tokens/s
and peak memory; the report divides by full attention's numbers at the same
length (the paper's "speed-up" and memory columns). The model, its pooling and
the optimiser are not restated here: ``text_protocol`` composes
``bench.experiment`` (``experiment=lra_text``, 4 layers, 4 heads, width 256,
MLP 1024) so Table 2 measures exactly the model the Text runs train.

The inputs are synthetic: uniform byte ids 1..256 and random labels,
pre-staged on the device (two batches, alternated), so the numbers are the
model's training step alone (forward, loss, backward, AdamW, schedule), with
no data loading. They hold no padding, so the model attends without a key
padding mask (records say ``key_padding_mask: false``) and each backend runs
its unmasked path: full attention SDPA's cuDNN or FlashAttention kernels,
the strongest dense engines for full-length inputs. The paper ran on 4x4 TPU
v3; compare ratios, not absolutes.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lra_sfa.bench import common
from lra_sfa.bench.sweep import autocast
from lra_sfa.compose import compose_config
from lra_sfa.model import LRAClassifier, cross_entropy
from lra_sfa.optim import build_optimizer
from lra_sfa.placement import compile_wanted
from lra_sfa.schema import COMPILE_MODES

OPTIMIZER_KEYS = ("lr", "schedule", "warmup_steps", "max_steps", "weight_decay", "betas", "eps")


def text_protocol(bench: DictConfig) -> DictConfig:
    """``bench`` with ``model``, ``pooling`` and ``optimizer`` taken from the run config that
    ``experiment=<bench.experiment>`` plus ``bench.overrides`` composes (model group, task pooling,
    trainer optimiser keys): one source for the Text model, shared with training."""
    experiment = bench.get("experiment")
    overrides = [str(item) for item in (bench.get("overrides") or [])]
    try:
        run = compose_config([f"experiment={experiment}", *overrides])
    except Exception as exc:  # Hydra's errors (missing config, bad override) become one line
        raise ValueError(f"bench.experiment={experiment!r} with bench.overrides={overrides} does not compose: "
                         f"{common.first_line(exc)}") from None
    trainer = OmegaConf.to_container(run.trainer, resolve=True)
    return OmegaConf.merge(OmegaConf.to_container(bench, resolve=True), {
        "model": OmegaConf.to_container(run.model, resolve=True), "pooling": str(run.task.pooling),
        "optimizer": {key: trainer[key] for key in OPTIMIZER_KEYS}})


def _build(attn_cfg: DictConfig, length: int, bench: DictConfig, device: torch.device) -> LRAClassifier:
    """The Text model without a key padding mask: the synthetic bytes hold no pad token, so every backend runs
    its unmasked path (full attention SDPA's own kernels, not the masked or variable-length ones) on what is,
    with or without the mask, the same function of these inputs."""
    model_args = {**OmegaConf.to_container(bench.model, resolve=True), "padding": "task"}
    return LRAClassifier(vocab_size=int(bench.vocab_size), num_classes=int(bench.num_classes), seq_len=length,
                         attn_cfg=attn_cfg, pooling=str(bench.pooling), has_padding=False,
                         **model_args).to(device)


def _train_step_fn(model: LRAClassifier, bench: DictConfig, length: int, device, dtype, compiled: bool = False):
    """One closure per cell: a full training step on alternating pre-staged batches (the model's forward under
    torch.compile in ``bench.compile_mode`` where ``compiled``, as training compiles it; reduce-overhead
    replays the forward and backward as CUDA graphs, which takes the host's launch time out of the step)."""
    optimizer, schedule = build_optimizer(model, bench.optimizer)
    batch = int(bench.batch)
    tokens = torch.randint(1, int(bench.vocab_size), (2, batch, length), device=device)  # (2, B, L)
    labels = torch.randint(0, int(bench.num_classes), (2, batch), device=device)  # (2, B)
    attention = model.attention_modules()
    max_steps = int(bench.optimizer.max_steps)
    state = {"step": 0}
    forward = torch.compile(model, mode=str(bench.get("compile_mode", "default"))) if compiled else model

    def step() -> None:
        index = state["step"] % 2
        for module in attention:
            module.on_step(state["step"], max_steps)
        with autocast(device, dtype):
            loss = cross_entropy(forward(tokens[index]), labels[index])
            extras = [t for t in (m.extra_loss() for m in attention) if t is not None]
            total = loss + sum(extras) if extras else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        schedule.step()
        state["step"] += 1
    return step


def _time_steps(step, device: torch.device, bench: DictConfig, graphs: bool = False) -> dict[str, Any]:
    """Warm-up steps (``common.warm_up``), then steps/s over up to ``timed_steps`` steps between
    synchronised clock reads.

    The peak-memory window opens after the warm-up, so compilation and autotuning do not count, except with
    ``graphs`` (CUDA-graph replays): a replay allocates nothing, its memory is the graph pool taken while the
    warm-up recorded and captured the step, so there the window opens before the warm-up."""
    source = common.reset_peak_memory(device) + "_from_capture" if graphs else None
    result = common.warm_up(step, device, int(bench.warmup_steps), float(bench.max_seconds))
    if result["timed_out"]:
        return result
    result["memory_source"] = source or common.reset_peak_memory(device)
    done, start = 0, time.perf_counter()
    while done < int(bench.timed_steps):
        step()
        done += 1
        if done % 5 == 0 and time.perf_counter() - start > float(bench.max_seconds):
            break  # host clock only; the synchronise below closes the interval
    common.synchronize(device)
    seconds = time.perf_counter() - start
    result.update(timed_steps=done, train_seconds=seconds, steps_per_second=done / seconds,
                  ms=seconds / done * 1e3, peak_memory_mb=common.peak_memory_mb(device))
    return result


def run_train_cell(attn_cfg: DictConfig, length: int, bench: DictConfig, device: torch.device,
                   dtype: torch.dtype) -> dict[str, Any]:
    """Measure one (backend, length) cell; returns measured fields and status."""
    common.fresh_cell(int(bench.seed))
    fields: dict[str, Any] = {"status": "error", "reason": None}
    try:
        model = _build(attn_cfg, length, bench, device)
    except ValueError as exc:
        return {**fields, "status": "unsupported", "reason": f"cannot build for this shape: {exc}"}
    heads = int(bench.model.num_heads)
    total = length + (bench.pooling == "cls")
    probe = torch.empty(1, dtype=dtype, device=device).expand(  # (B, H, 1 + L, Dh), one element allocated
        int(bench.batch), heads, total, int(bench.model.d_model) // heads)
    reasons = model.attention_modules()[0].unsupported_reasons(probe, probe, probe, None)
    if reasons:
        return {**fields, "status": "unsupported", "reason": "; ".join(reasons)}
    model.train()
    compiled = compile_wanted(bench.get("compile", False), model, device, 1, "bench.compile")
    fields["compiled"] = compiled
    fields["compile_mode"] = str(bench.get("compile_mode", "default")) if compiled else None
    step, failure = None, None
    try:
        step = _train_step_fn(model, bench, length, device, dtype, compiled)
        graphs = compiled and fields["compile_mode"] == "reduce-overhead"
        timing = _time_steps(step, device, bench, graphs=graphs)
    except Exception as exc:  # every failure becomes a record; the run goes on
        failure = {"status": "oom" if common.is_oom(exc) else "error", "reason": common.first_line(exc)}
    step = None
    attn_path = model.attention_modules()[0].last_path
    del model
    common.free_memory(device)
    if failure:
        return {**fields, **failure}
    fields.update(timing, attn_path=attn_path)
    if timing["timed_out"]:
        seconds = timing["second_call_ms"] / 1e3
        return {**fields, "status": "timeout", "reason": f"a step after the first took {seconds:.1f} s "
                                                         f"> bench.max_seconds={bench.max_seconds}"}
    return {**fields, "status": "ok", "tokens_per_second": timing["steps_per_second"] * int(bench.batch) * length}


def run_table2(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    """Every backend at every length (ascending; a failure stops that backend's lengths)."""
    bench = text_protocol(cfg.bench)
    names = common.selected_attns(bench.attns)
    mode = str(bench.get("compile_mode", "default"))
    if mode not in COMPILE_MODES:
        raise ValueError(f"bench.compile_mode={mode!r} is not one of torch.compile's modes {COMPILE_MODES}")
    base = common.base_record("lra_table2", device, dtype)
    model = OmegaConf.to_container(bench.model, resolve=True)
    budget = float(bench.budget_seconds) if bench.get("budget_seconds") else None
    start, records = time.perf_counter(), []
    for name in names:
        attn_cfg = common.load_attn_cfg(name, (bench.attn_args or {}).get(name))
        args = OmegaConf.to_container(attn_cfg, resolve=True)
        target = args.pop("_target_", None)
        for length in sorted(int(value) for value in bench.lengths):
            if budget is not None and time.perf_counter() - start > budget:
                print(f"bench: budget_seconds={budget:g} spent; stopping before {name} L={length}")
                return records
            measured = run_train_cell(attn_cfg, length, bench, device, dtype)
            record = {**base, "task": "text", "experiment": str(bench.experiment),
                      "data": "synthetic bytes (uniform ids 1..256), pre-staged", "key_padding_mask": False,
                      "attn": name, "attn_target": target, "attn_args": args, "part": "train", "op": "train_step",
                      "seq_len": length, "batch": int(bench.batch), "model": model, "pooling": str(bench.pooling),
                      "steps_per_second": None, "tokens_per_second": None, "peak_memory_mb": None, "ms": None,
                      **measured}
            common.write_bench_record(record, cfg.out_dir)
            records.append(record)
            print(format_train_cell(record), flush=True)
            if record["status"] != "ok":
                break
    return records


def format_train_cell(record: dict) -> str:
    sps = f"{record['steps_per_second']:8.2f} steps/s" if record.get("steps_per_second") else " " * 16
    mem = f"{record['peak_memory_mb']:9.1f} MB" if record.get("peak_memory_mb") is not None else ""
    reason = f"  ({record['reason']})" if record.get("reason") else ""
    return f"{record['attn']:<15} L={record['seq_len']:<6} {record['status']:<11} {sps} {mem}{reason}"


def relative_to_full(records: list[dict]) -> list[dict]:
    """Per (backend, length): steps/s and memory divided by full attention's at that length."""
    full = {r["seq_len"]: r for r in records if r["attn"] == "full" and r["status"] == "ok"}
    rows = []
    for record in records:
        reference = full.get(record["seq_len"])
        ok = record["status"] == "ok" and reference is not None
        rows.append({
            "attn": record["attn"], "seq_len": record["seq_len"], "status": record["status"],
            "steps_per_second": record.get("steps_per_second"), "peak_memory_mb": record.get("peak_memory_mb"),
            "speedup_vs_full": record["steps_per_second"] / reference["steps_per_second"] if ok else None,
            "memory_vs_full": record["peak_memory_mb"] / reference["peak_memory_mb"] if ok else None,
        })
    return rows
