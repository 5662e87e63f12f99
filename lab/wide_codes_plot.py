"""Candidates per query, occupancy and accuracy against L from ``lab.wide_codes_analysis`` CSVs (per label, layer)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_dir(out: Path) -> Path:
    """Draw ``out/wide_codes.png`` from every ``out/*.csv`` but the ``*_types.csv`` ones."""
    frames = [pd.read_csv(path) for path in sorted(Path(out).glob("*.csv")) if not path.stem.endswith("_types")]
    data = pd.concat(frames)
    data = data[data["table"].astype(str) == "all"].sort_values("seq_len")
    fig, (cand_ax, occ_ax, acc_ax) = plt.subplots(1, 3, figsize=(17, 4.5))
    frame_layers = data.groupby("label")["layer"].min()
    for (label, layer), frame in data.groupby(["label", "layer"]):
        line, = cand_ax.plot(frame["seq_len"], frame["candidates_per_query"], "o-", label=f"{label}, layer {layer}")
        occ_ax.plot(frame["seq_len"], frame["occupancy_mean"], "o-", color=line.get_color(),
                    label=f"{label}, layer {layer}: mean")
        occ_ax.plot(frame["seq_len"], frame["occupancy_max"], "^:", color=line.get_color(),
                    label=f"{label}, layer {layer}: max")
        if layer == frame_layers[label]:  # accuracy is the model's, one line per label
            acc_ax.plot(frame["seq_len"], 100 * frame["accuracy"], "o-", color=line.get_color(), label=label)
    # one isotropic reference per code space: fixed D, and D(L) for labels analysed with attn.D_grow_from
    grown = data.groupby("label")["D"].transform("nunique") > 1
    for is_grown, name, colour in ((False, "D", "k"), (True, "D(L)", "0.5")):
        iso = data[grown == is_grown].drop_duplicates("seq_len")
        if iso.empty:
            continue
        cand_ax.plot(iso["seq_len"], iso["isotropic_candidates"], "--", color=colour,
                     label=f"isotropic L k^2 / {name}")
        cand_ax.plot(iso["seq_len"], 2 * iso["isotropic_candidates"], ":", color=colour,
                     label=f"2 x isotropic ({name})")
        occ_ax.plot(iso["seq_len"], iso["occupancy_isotropic"], "--", color=colour,
                    label=f"isotropic (Poisson, non-empty, {name})")
    cand_ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="candidates per query (kernel count)",
                title="Candidates per query")
    occ_ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="keys per non-empty bucket",
               title="Bucket occupancy (all tables)")
    acc_ax.set(xscale="log", ylim=(0, 100), xlabel="sequence length L", ylabel="accuracy (%)",
               title="Accuracy on the analysed sequences")
    cand_ax.legend(fontsize=7)
    acc_ax.legend(fontsize=7)
    occ_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = Path(out) / "wide_codes.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
