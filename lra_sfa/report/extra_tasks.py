"""The report's tables and figures for the two non-LRA tasks: sequential Fashion-MNIST and MQAR.

Both stand beside the LRA table and are never averaged into it. Written under ``out_dir``:

    tables/fmnist.md, tables/fmnist.csv   test accuracy (%) per backend for fmnist and fmnist_perm:
                                          mean ± std (n seeds) over protocol-complete seq_fmnist runs
                                          (last step, the settings of conf/experiment/seq_fmnist.yaml),
                                          every group with steps and device, published sMNIST / psMNIST
                                          Transformer numbers as context (MNIST digits: another data set)
    plots/fmnist_accuracy.png             the same headline as a dot plot: per backend, the mean test accuracy
                                          on each order with a bar from its lowest to its highest seed
    tables/mqar.md, tables/mqar.csv       per-query test accuracy (%) per backend and width for each
                                          (length, pairs): the learning rate with the best validation
                                          accuracy of each cell (Zoology reports the best lr of its sweep)
    plots/mqar_width.png                  the Zoology Figure 2 form: accuracy against model width, one line
                                          per backend, one panel per length (a row of panels per pairs)
    plots/mqar_heatmap.png                accuracy over (pairs, length) per backend, best width and lr

A figure with no records is not written (an old copy is removed).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from lra_sfa.markdown import md_table  # noqa: E402
from lra_sfa.records import trained_to_end  # noqa: E402
from lra_sfa.report.headline import protocol_settings  # noqa: E402
from lra_sfa.report.load import attn_order, length_label, short_commit, variant_labels  # noqa: E402

FMNIST_TASKS = ("fmnist", "fmnist_perm")
MQAR_AXES_MODEL = ("d_model", "num_heads", "mlp_dim")  # the width sweep (heads and MLP follow d_model)
MQAR_AXES_TRAINER = ("lr", "batch_size")  # the lr sweep; the batch follows the length
PUBLISHED_TASK = {"fmnist": "sMNIST", "fmnist_perm": "pMNIST"}
FMNIST_PLOT = "fmnist_accuracy.png"
PLOTS = {"mqar_width.png": "MQAR: accuracy against model width per backend (Zoology Figure 2 form)",
         "mqar_heatmap.png": "MQAR: accuracy over (pairs, length) per backend (best width and lr)"}


def _complete(record: dict) -> bool:
    """Trained to its configured end (``trained_to_end``), not cut by the time budget."""
    return record.get("max_steps") is not None and trained_to_end(record)


def follows_protocol(record: dict, protocol: str, free_model: tuple[str, ...] = (),
                     free_trainer: tuple[str, ...] = ()) -> bool:
    """Trained to its last step with the model and training settings of ``conf/experiment/<protocol>.yaml``,
    except the ``free_*`` keys (a sweep's axes); a setting the record lacks is not held against it."""
    if str(record.get("protocol")) != protocol or not _complete(record):
        return False
    expected = protocol_settings(protocol)
    if expected is None:
        return False
    model, trainer, _ = expected
    for have, want, free in ((record.get("model") or {}, model, free_model),
                             (record.get("trainer") or {}, trainer, free_trainer)):
        if any(have[key] != value for key, value in want.items() if key in have and key not in free):
            return False
    return True


def _pct(value) -> float | None:
    return None if value is None else 100.0 * float(value)


def _rows(runs: list[dict], tasks: tuple[str, ...]) -> list[dict]:
    return [r for r in runs if r.get("status") == "ok" and str(r.get("task")) in tasks]


def fmnist_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per ok fmnist / fmnist_perm run."""
    records = _rows(runs, FMNIST_TASKS)
    labels = variant_labels(records, lambda r: str(r["task"]))
    return pd.DataFrame([{
        "task": str(r["task"]), "attn": labels[id(r)], "protocol": str(r.get("protocol", "custom")),
        "seed": r.get("seed"), "test": _pct(r.get("test_accuracy")), "val": _pct(r.get("val_accuracy")),
        "steps": r.get("steps"), "max_steps": r.get("max_steps"), "complete": follows_protocol(r, "seq_fmnist"),
        "permutation_seed": r.get("permutation_seed"), "device": r.get("device"), "date": str(r.get("date", ""))[:10],
        "git_commit": short_commit(r),
    } for r in records], columns=["task", "attn", "protocol", "seed", "test", "val", "steps", "max_steps",
                                  "complete", "permutation_seed", "device", "date", "git_commit"])


def _provenance(frame: pd.DataFrame) -> str:
    """'From runs on <devices>, <dates>, commits <commits>.' for the rows a table was made from."""
    join = lambda column: ", ".join(sorted({str(value) for value in frame[column]}))
    return f"From runs on {join('device')}, {join('date')}, commits {join('git_commit')}."


def _mean_std(values: pd.Series) -> str:
    if values.empty:
        return "—"
    std = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
    return f"{values.mean():.2f}{std} (n={len(values)})"


def fmnist_headline(frame: pd.DataFrame) -> pd.DataFrame:
    """The protocol-complete seq_fmnist runs, the rows of the headline table and plot."""
    return frame[(frame.protocol == "seq_fmnist") & frame.complete]


def fmnist_section(frame: pd.DataFrame, published: dict[str, pd.DataFrame], plot: Path | None = None) -> str:
    """Markdown: the headline table (protocol-complete seq_fmnist runs), every group, published context."""
    parts = ["Test accuracy (%), mean ± std over seeds (n), from runs trained to the last step with the "
             "settings of `experiment=seq_fmnist` (other runs: in the list below). Fashion-MNIST pixels, "
             "784 tokens; fmnist_perm: one fixed permutation of the positions (its seed is in each record)."]
    head = fmnist_headline(frame)
    backends = sorted(set(head.attn), key=attn_order)
    if backends:
        rows = [[b, *(_mean_std(head[(head.attn == b) & (head.task == t)].test) for t in FMNIST_TASKS)]
                for b in backends]
        parts.append(md_table(["backend", *FMNIST_TASKS], rows))
        parts.append(_provenance(head))
        if plot is not None:
            parts.append(f"![Fashion-MNIST: test accuracy per backend and order](../plots/{plot.name})")
    else:
        parts.append("No protocol-complete seq_fmnist runs yet.")
    if not frame.empty:
        groups = frame.groupby(["task", "attn", "protocol", "device"], sort=True)
        rows = [[t, a, p, len(g), f"{g.test.mean():.2f}", f"{g.val.mean():.2f}",
                 f"{int(g.steps.min())}-{int(g.steps.max())} of {int(g.max_steps.max())}", d, g.date.max(),
                 ", ".join(sorted(set(g.git_commit)))]
                for (t, a, p, d), g in groups]
        parts += ["Every group of runs (ad-hoc ones included):",
                  md_table(["task", "backend", "protocol", "runs", "test %", "val %", "steps", "device", "date",
                            "commits"], rows)]
    table = published.get("seq_mnist")
    if table is not None and not table.empty:
        rows = [[r["model"], r["task"], r["test_accuracy"], r["dataset"], f"{r['source']}, {r['table']}"]
                for _, r in table.iterrows()]
        parts += ["Published, for context only: MNIST digits, **a different data set** (not Fashion-MNIST):",
                  md_table(["model", "task", "test %", "data set", "source"], rows)]
    return "\n\n".join(parts)


def mqar_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per ok MQAR run: backend, length, pairs, width, lr, accuracies (%), protocol-complete."""
    records = _rows(runs, ("mqar",))
    labels = variant_labels(records, lambda r: "mqar")
    return pd.DataFrame([{
        "attn": labels[id(r)], "protocol": str(r.get("protocol", "custom")), "seq_len": int(r["seq_len"]),
        "num_pairs": int(r.get("num_pairs") or 0), "d_model": int((r.get("model") or {}).get("d_model") or 0),
        "lr": float((r.get("trainer") or {}).get("lr") or math.nan), "seed": r.get("seed"),
        "test": _pct(r.get("test_accuracy")), "val": _pct(r.get("val_accuracy")),
        "complete": follows_protocol(r, "mqar", MQAR_AXES_MODEL, MQAR_AXES_TRAINER),
        "device": r.get("device"), "date": str(r.get("date", ""))[:10], "git_commit": short_commit(r),
    } for r in records], columns=["attn", "protocol", "seq_len", "num_pairs", "d_model", "lr", "seed", "test",
                                  "val", "complete", "device", "date", "git_commit"])


def mqar_best(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (backend, length, pairs, width): the protocol-complete mqar run with the best validation accuracy
    (over learning rates and seeds; ties go to the smaller lr), with how many runs the cell had."""
    runs = frame[(frame.protocol == "mqar") & frame.complete]
    if runs.empty:
        return runs.assign(runs=pd.Series(dtype=int))
    keys = ["attn", "seq_len", "num_pairs", "d_model"]
    ranked = runs.sort_values(["val", "lr"], ascending=[False, True])
    best = ranked.groupby(keys, sort=True).head(1).set_index(keys)
    best["runs"] = runs.groupby(keys).size()
    return best.reset_index().sort_values(keys).reset_index(drop=True)


def mqar_section(best: pd.DataFrame, plots_made: dict[str, Path | None]) -> str:
    """Markdown: rows backend x width, columns (length, pairs); the lr of each cell in the CSV."""
    parts = ["Per-query test accuracy (%) from `experiment=mqar` runs trained to their end (the last step, or the "
             "evaluation that reached the protocol's validation target) with its settings "
             "(width, lr and length are the sweep's axes); each cell takes the "
             "learning rate with the best validation accuracy (`tables/mqar.csv` names it and the number of runs)."]
    if best.empty:
        parts.append("No protocol-complete mqar runs yet.")
    else:
        cells = sorted({(int(r.seq_len), int(r.num_pairs)) for r in best.itertuples()})
        rows = []
        for backend in sorted(set(best.attn), key=attn_order):
            for width in sorted(set(best[best.attn == backend].d_model)):
                sub = best[(best.attn == backend) & (best.d_model == width)]
                row = [backend, width]
                for length, pairs in cells:
                    hit = sub[(sub.seq_len == length) & (sub.num_pairs == pairs)]
                    row.append(f"{hit.test.iloc[0]:.1f}" if len(hit) else "—")
                rows.append(row)
        parts.append(md_table(["backend", "width", *(f"L={length_label(n)} P={p}" for n, p in cells)], rows))
        parts.append(_provenance(best))
    for name, title in PLOTS.items():
        if plots_made.get(name) is not None:
            parts.append(f"![{title}](../plots/{name})")
    return "\n\n".join(parts)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_fmnist(head: pd.DataFrame, path: Path) -> Path | None:
    """Dot plot of the headline: one row per backend, a marker per order (raster, permuted) at the mean test
    accuracy over seeds with a bar from the lowest to the highest seed, and full attention's mean as lines.
    No speed axis: the campaign ran these small models several to a GPU, so their steps/s are not their own."""
    if head.empty:
        return None
    backends = sorted(set(head.attn), key=attn_order)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(backends) + 1.6))
    styles = {"fmnist": ("o", "tab:blue", -0.12, "raster order (fmnist)"),
              "fmnist_perm": ("s", "tab:orange", 0.12, "permuted (fmnist_perm)")}
    for task, (marker, colour, offset, label) in styles.items():
        for row, backend in enumerate(backends):
            tests = head[(head.attn == backend) & (head.task == task)].test
            if tests.empty:
                continue
            y = row + offset
            ax.plot([tests.min(), tests.max()], [y, y], color=colour, lw=1.5)
            ax.plot(tests.mean(), y, marker, color=colour, label=label)
        full = head[(head.attn == "full") & (head.task == task)].test
        if not full.empty:
            ax.axvline(full.mean(), color=colour, ls="--", lw=0.8, alpha=0.7)
    seeds = lambda backend: ", ".join(str(int(((head.attn == backend) & (head.task == t)).sum())) for t in styles)
    labels = [f"{b} (n = {seeds(b)})" for b in backends]
    ax.set_yticks(range(len(backends)), labels, fontsize=8)
    ax.invert_yaxis()
    low = max(0.0, math.floor(head.test.min() / 10) * 10 - 5)
    ax.set_xlim(low, min(100.0, math.ceil(head.test.max() / 10) * 10 + 5))
    ax.set_xlabel("test accuracy (%): mean over seeds, bar from the lowest to the highest; dashed: full's mean")
    ax.grid(axis="x", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))  # one entry per order
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.set_title(f"Sequential Fashion-MNIST, experiment=seq_fmnist (measured). {_provenance(head)}", fontsize=8)
    return _save(fig, path)


def plot_mqar_width(best: pd.DataFrame, path: Path) -> Path | None:
    """Accuracy against d_model per backend; columns of panels = lengths, rows = numbers of pairs."""
    if best.empty:
        return None
    lengths, pairs = sorted(set(best.seq_len)), sorted(set(best.num_pairs))
    fig, axes = plt.subplots(len(pairs), len(lengths), figsize=(3.6 * len(lengths), 3.0 * len(pairs)),
                             squeeze=False, sharey=True)
    backends = sorted(set(best.attn), key=attn_order)
    colours = {b: plt.cm.tab10(i % 10) for i, b in enumerate(backends)}
    for i, p in enumerate(pairs):
        for j, n in enumerate(lengths):
            ax = axes[i][j]
            for backend in backends:
                sub = best[(best.attn == backend) & (best.seq_len == n) & (best.num_pairs == p)].sort_values("d_model")
                if len(sub):
                    ax.plot(sub.d_model, sub.test, "o-", color=colours[backend], label=backend)
            ax.set_xscale("log", base=2)
            widths = sorted(set(best.d_model))
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.minorticks_off()
            ax.set_title(f"length {length_label(n)}, {p} pairs", fontsize=9)
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            if i == len(pairs) - 1:
                ax.set_xlabel("model width (d_model)")
            if j == 0:
                ax.set_ylabel("per-query accuracy (%)")
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(4, len(handles)), fontsize=8,
               bbox_to_anchor=(0.5, 1.0 + 0.06 / len(pairs)))
    fig.suptitle(f"MQAR (measured): best lr per point. {_provenance(best)}", y=1.0 + 0.12 / len(pairs),
                 fontsize=10)
    return _save(fig, path)


def plot_mqar_heatmap(best: pd.DataFrame, path: Path) -> Path | None:
    """Per backend: accuracy (best width and lr) over pairs (rows) x length (columns)."""
    if best.empty:
        return None
    lengths, pairs = sorted(set(best.seq_len)), sorted(set(best.num_pairs))
    backends = sorted(set(best.attn), key=attn_order)
    cols = min(4, len(backends))
    rows = math.ceil(len(backends) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * len(lengths) * cols + 2.5, 0.9 * len(pairs) * rows + 1.6),
                             squeeze=False, constrained_layout=True)
    image = None
    for ax, backend in zip(axes.flat, backends):
        grid = np.full((len(pairs), len(lengths)), np.nan)  # (pairs, lengths)
        sub = best[best.attn == backend]
        for r in sub.itertuples():
            cell = grid[pairs.index(r.num_pairs), lengths.index(r.seq_len)]
            grid[pairs.index(r.num_pairs), lengths.index(r.seq_len)] = np.nanmax([cell, r.test])
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", origin="lower", aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 60 else "black")
        ax.set_xticks(range(len(lengths)), [length_label(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(pairs)), [str(p) for p in pairs], fontsize=7)
        ax.set_title(backend, fontsize=9)
        ax.set_xlabel("length", fontsize=8)
        ax.set_ylabel("pairs", fontsize=8)
    for ax in list(axes.flat)[len(backends):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="per-query test accuracy (%)", pad=0.04)
    fig.suptitle(f"MQAR (measured): best width and lr per cell; blank = no run. {_provenance(best)}", fontsize=10)
    return _save(fig, path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def extra_tasks_section(runs: list[dict], published: dict[str, pd.DataFrame], out_dir: Path) -> str:
    """Write the fmnist and mqar tables and plots under ``out_dir``; return the markdown for RESULTS.md."""
    out_dir = Path(out_dir)
    fmnist = fmnist_frame(runs)
    fmnist_plot = plot_fmnist(fmnist_headline(fmnist), out_dir / "plots" / FMNIST_PLOT)
    fmnist_md = fmnist_section(fmnist, published, fmnist_plot)
    mqar = mqar_frame(runs)
    best = mqar_best(mqar)
    plots = {"mqar_width.png": plot_mqar_width(best, out_dir / "plots" / "mqar_width.png"),
             "mqar_heatmap.png": plot_mqar_heatmap(best, out_dir / "plots" / "mqar_heatmap.png"),
             FMNIST_PLOT: fmnist_plot}
    for name, made in plots.items():
        if made is None and (out_dir / "plots" / name).exists():
            (out_dir / "plots" / name).unlink()
    mqar_md = mqar_section(best, plots)
    _write(out_dir / "tables" / "fmnist.md", "# Sequential Fashion-MNIST (not LRA)\n\n" + fmnist_md + "\n")
    _write(out_dir / "tables" / "mqar.md", "# MQAR, multi-query associative recall (not LRA)\n\n" + mqar_md + "\n")
    _write(out_dir / "tables" / "fmnist.csv", fmnist.convert_dtypes().to_csv(index=False))
    _write(out_dir / "tables" / "mqar.csv", best.convert_dtypes().to_csv(index=False))
    return "\n\n".join(["### Sequential Fashion-MNIST", fmnist_md.replace("../plots/", "plots/"),
                        "### MQAR (multi-query associative recall)", mqar_md.replace("../plots/", "plots/")])
