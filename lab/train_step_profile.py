"""Where a training step's time goes: the kernels of real ``python -m lra_sfa`` steps under ``torch.profiler``.

It runs the project's own training (``lra_sfa.train.run``) on the composed config, with a hook around the
optimiser step: after ``--warmup`` steps (compilation, autotuning and caches done) it profiles ``--steps``
steps and times them, synchronised, then lets the run finish. Per experiment and backend it writes

* ``kernels.csv``: every device kernel (CUDA) or operator (CPU, self time) in the profiled steps, with its
  category (attention, matmul, fused elementwise, optimiser, copy, other), launches and microseconds per step;
* ``summary.csv``: the wall time of a step, the summed kernel time per step and their ratio (``busy``: near 1
  the device is the bound, well below 1 the host issuing work is), kernel launches per step, and the time
  per category; with the card, torch and triton versions, the commit and the overrides.

It answers what the throughput table cannot: whether a protocol's step is bound by the attention, the rest
of the model, the optimiser or the host.

    python -m lab.train_step_profile --out $OUT experiment=lra_pathfinder attn=full [more overrides]

Keys the profile needs are set for you (``trainer.max_steps`` = warm-up + profiled steps, no evaluation
before the end, a small test split, records in ``$OUT/records``); any override given wins over them.
The commit comes from git, or from ``LRA_SFA_GIT_COMMIT`` in a copy without ``.git``.
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from pathlib import Path

import torch

CATEGORIES = (  # first match wins; names are lower-cased
    # the dense engines' kernels, and FlashSFA's own (its backward's dQ, dK/dV and delta kernels, the top-k
    # packing of q and k), whose Triton names say nothing of attention
    ("attention", re.compile(r"flash|fmha|attention|attn|cudnn.*sdpa|sfa|varlen|(?<!log_)softmax"
                             r"|^_(dq|dkdv|delta)_kernel|topk_pack")),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|sm90_|sm80_|matmul|aten::(mm|bmm|addmm|linear)$")),
    ("optimizer", re.compile(r"adam|foreach|multi_tensor|optim")),
    # inductor's generated kernels before copies (their names list every op fused, casts among them), and
    # ATen's copy kernels before its other elementwise ones
    ("fused elementwise", re.compile(r"^triton_")),
    ("copy", re.compile(r"memcpy|memset|copy|cat|index|gather|scatter|nonzero|fill")),
    ("fused elementwise", re.compile(r"elementwise|vectorized|reduce|layer_norm|dropout|gelu|norm")),
)
KERNEL_FIELDS = ["experiment", "attn", "category", "name", "launches_per_step", "us_per_step"]
SUMMARY_FIELDS = ["experiment", "attn", "device", "steps_profiled", "step_wall_us", "kernel_us_per_step",
                  "busy", "launches_per_step", "attention_us", "matmul_us", "optimizer_us", "copy_us",
                  "fused_elementwise_us", "other_us", "compiled", "attn_path", "git_commit", "torch_version",
                  "triton_version", "overrides"]


def category(name: str) -> str:
    """The part of the model a kernel (or operator) name belongs to, by the patterns in CATEGORIES."""
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if pattern.search(lowered)), "other")


def step_table(events, steps: int, on_device: bool) -> dict[str, tuple[float, float]]:
    """Name -> (launches per step, microseconds per step) over the profiled steps: device kernels on a GPU
    (``lab.short_seq_profile.kernel_table``); on a CPU the operators' self time (what each op spent outside
    the ops it called)."""
    if on_device:
        from lab.short_seq_profile import kernel_table

        return kernel_table(events, steps)
    table: dict[str, list[float]] = {}
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CPU and event.self_cpu_time_total > 0:
            count_time = table.setdefault(event.name, [0.0, 0.0])
            count_time[0] += 1
            count_time[1] += event.self_cpu_time_total
    return {name: (count / steps, us / steps) for name, (count, us) in table.items()}


class StepProfiler:
    """Wraps ``lra_sfa.train._train_step``: profiles steps [warmup, warmup + steps) and times them."""

    def __init__(self, inner, warmup: int, steps: int, on_device: bool) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.inner, self.warmup, self.steps, self.on_device = inner, warmup, steps, on_device
        activity = ProfilerActivity.CUDA if on_device else ProfilerActivity.CPU
        self.profiler = profile(activities=[activity])
        self.calls, self.started, self.wall_s, self.events = 0, 0.0, None, None

    def _sync(self) -> None:
        if self.on_device:
            torch.cuda.synchronize()

    def __call__(self, *args, **kwargs):
        if self.calls == self.warmup:
            self._sync()
            self.profiler.start()
            self.started = time.perf_counter()
        loss = self.inner(*args, **kwargs)
        self.calls += 1
        if self.calls == self.warmup + self.steps:
            self._sync()
            self.wall_s = time.perf_counter() - self.started
            self.profiler.stop()
            self.events = self.profiler.events()
        return loss


def profile_run(overrides: list[str], out: Path, warmup: int, steps: int) -> tuple[dict, list[dict]]:
    """Train once under the hook; the summary row and the kernel rows."""
    import lra_sfa.train as train
    from lra_sfa.compose import compose_config
    from lra_sfa.records import git_commit

    defaults = [f"trainer.max_steps={warmup + steps}", f"trainer.eval_every={warmup + steps}",
                f"trainer.checkpoint_every={warmup + steps}", "trainer.progress=false", "task.num_test=512",
                f"results_dir={out / 'records'}", f"run_dir={out / 'runs' / str(time.time_ns())}"]
    given = {item.split("=", 1)[0].lstrip("+~") for item in overrides}
    cfg = compose_config([item for item in defaults if item.split("=", 1)[0] not in given] + overrides)
    on_device = torch.cuda.is_available() and str(cfg.trainer.device) != "cpu"
    hook = StepProfiler(train._train_step, warmup, steps, on_device)
    train._train_step = hook
    try:
        record = train.run(cfg)
    finally:
        train._train_step = hook.inner
    if hook.events is None:
        raise SystemExit(f"lab.train_step_profile: the run ended after {hook.calls} steps, before the "
                         f"{warmup + steps} the profile needs (status {record.get('status')}: "
                         f"{record.get('error')})")
    table = step_table(hook.events, steps, on_device)
    experiment, attn = str(cfg.get("protocol") or cfg.task.name), str(cfg.attn_name)
    kernels = sorted(({"experiment": experiment, "attn": attn, "category": category(name), "name": name,
                       "launches_per_step": round(count, 2), "us_per_step": round(us, 1)}
                      for name, (count, us) in table.items()), key=lambda row: -row["us_per_step"])
    per_category = category_sums(kernels)
    kernel_us = sum(per_category.values())
    wall_us = 1e6 * hook.wall_s / steps
    summary = {"experiment": experiment, "attn": attn,
               "device": torch.cuda.get_device_name() if on_device else "cpu",
               "steps_profiled": steps, "step_wall_us": round(wall_us, 1), "kernel_us_per_step": round(kernel_us, 1),
               "busy": round(kernel_us / wall_us, 3),
               "launches_per_step": round(sum(row["launches_per_step"] for row in kernels), 1),
               **per_category,
               "compiled": record.get("compiled"), "attn_path": record.get("attn_path"),
               "git_commit": git_commit(), "torch_version": torch.__version__,
               "triton_version": _triton_version(), "overrides": " ".join(overrides)}
    return summary, kernels


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return triton.__version__


def _append(path: Path, fields: list[str], rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def category_sums(kernels: list[dict]) -> dict[str, float]:
    """The summary's per-category columns (``attention_us``, ...): microseconds per step of each category."""
    sums = {f"{label.replace(' ', '_')}_us": 0.0 for label, _ in CATEGORIES} | {"other_us": 0.0}
    for row in kernels:
        sums[f"{row['category'].replace(' ', '_')}_us"] += float(row["us_per_step"])
    return {column: round(us, 1) for column, us in sums.items()}


def recategorize(folder: Path) -> None:
    """Re-derive the categories of ``folder``'s kernels.csv and the per-category sums of its summary.csv
    from the kernel names, after a change to CATEGORIES (the measured times stay as they were)."""
    with (folder / "kernels.csv").open(newline="") as handle:
        kernels = [row | {"category": category(row["name"])} for row in csv.DictReader(handle)]
    with (folder / "summary.csv").open(newline="") as handle:
        summaries = list(csv.DictReader(handle))
    for summary in summaries:
        mine = [row for row in kernels if (row["experiment"], row["attn"]) == (summary["experiment"], summary["attn"])]
        summary.update(category_sums(mine))
    for name, fields, rows in (("kernels.csv", KERNEL_FIELDS, kernels), ("summary.csv", SUMMARY_FIELDS, summaries)):
        (folder / name).unlink()
        _append(folder / name, fields, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.train_step_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recategorize", action="store_true",
                        help="only re-derive the categories of the CSVs already in --out (no run)")
    parser.add_argument("--warmup", type=int, default=30, help="steps before the profile (compilation)")
    parser.add_argument("--steps", type=int, default=20, help="steps profiled")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run, e.g. experiment=lra_pathfinder")
    args = parser.parse_args(argv)
    if args.recategorize:
        recategorize(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    summary, kernels = profile_run(args.overrides, args.out, args.warmup, args.steps)
    _append(args.out / "summary.csv", SUMMARY_FIELDS, [summary])
    _append(args.out / "kernels.csv", KERNEL_FIELDS, kernels)
    print(f"{summary['experiment']} {summary['attn']} on {summary['device']}: {summary['step_wall_us']:.0f} us "
          f"a step, kernels {summary['kernel_us_per_step']:.0f} us (busy {summary['busy']:.2f}), "
          f"{summary['launches_per_step']:.0f} launches")
    for row in kernels[:12]:
        print(f"  {row['us_per_step']:>9.1f} us  {row['launches_per_step']:>6.1f}x  {row['category']:<17} "
              f"{row['name'][:90]}")


if __name__ == "__main__":
    main()
