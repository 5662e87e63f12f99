"""The fmnist and MQAR tables and plots: their own files, protocol-complete cells, best lr by validation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd

from lra_sfa import report
from lra_sfa.records import store_record
from lra_sfa.report.extra_tasks import extra_tasks_section, mqar_best, mqar_frame
from lra_sfa.report.headline import protocol_settings
from lra_sfa.report.load import load_published

from .test_report import run_record, write_published


def fmnist_runs(rng: random.Random) -> list[dict]:
    model, trainer, _ = protocol_settings("seq_fmnist")
    runs = []
    for task in ("fmnist", "fmnist_perm"):
        for attn, seeds in (("full", 3), ("sfa", 3), ("linear", 1)):
            for seed in range(seeds):
                runs.append(run_record(rng, task, attn, 784, "seq_fmnist", seed=seed, max_steps=4300, steps=4300,
                                       permutation_seed=0 if task == "fmnist_perm" else None, model=model,
                                       trainer=trainer))
    runs.append(run_record(rng, "fmnist", "windowed", 784, "seq_fmnist", steps=900, max_steps=4300, model=model,
                           trainer=trainer, stopped_by_time_budget=True))  # short: never a headline cell
    runs.append(run_record(rng, "fmnist", "bigbird", 784, "seq_fmnist", steps=4300, max_steps=4300,
                           model={**model, "d_model": 64}, trainer=trainer))  # another width: exploration
    return runs


def mqar_runs(rng: random.Random) -> list[dict]:
    runs = []
    for attn in ("full", "sfa", "linear"):
        for length in (256, 1024):
            for pairs in (16, 64):
                for width in (64, 128):
                    for lr in (1e-3, 1e-2):
                        runs.append(run_record(rng, "mqar", attn, length, "mqar", num_pairs=pairs,
                                               model={"d_model": width}, trainer={"lr": lr}, steps=5000,
                                               max_steps=5000))
    return runs


def test_fmnist_table_is_protocol_complete_mean_std_with_published_context(tmp_path):
    rng = random.Random(0)
    runs = fmnist_runs(rng)
    text = extra_tasks_section(runs, load_published(write_published(tmp_path / "published")), tmp_path)
    table = (tmp_path / "tables" / "fmnist.md").read_text()
    full = [100 * r["test_accuracy"] for r in runs if r["task"] == "fmnist" and r["attn"] == "full"]
    assert f"{np.mean(full):.2f} ± {np.std(full, ddof=1):.2f} (n=3)" in table
    headline = table.split("Every group")[0]
    assert "windowed" not in headline and "bigbird" not in headline
    assert "| linear |" in headline and "(n=1)" in headline
    assert "windowed" in table and "bigbird" in table  # listed with their steps among every group
    assert "a different data set" in table and "96.5" in table and "pMNIST" in table
    frame = pd.read_csv(tmp_path / "tables" / "fmnist.csv")
    assert len(frame) == len(runs) and set(frame.task) == {"fmnist", "fmnist_perm"}
    assert "Sequential Fashion-MNIST" in text and not (tmp_path / "plots" / "mqar_width.png").exists()
    plot = tmp_path / "plots" / "fmnist_accuracy.png"  # the headline as a dot plot, linked from both documents
    assert plot.stat().st_size > 10_000 and "(../plots/fmnist_accuracy.png)" in table
    assert "(plots/fmnist_accuracy.png)" in text
    extra_tasks_section([r for r in runs if r["attn"] == "windowed"], {}, tmp_path)  # no complete run: no plot
    assert not plot.exists()
    assert "No protocol-complete seq_fmnist runs yet." in (tmp_path / "tables" / "fmnist.md").read_text()


def test_mqar_cells_take_the_lr_with_the_best_validation_accuracy(tmp_path):
    runs = mqar_runs(random.Random(1))
    best = mqar_best(mqar_frame(runs))
    assert len(best) == 3 * 2 * 2 * 2 and (best.runs == 2).all()
    for row in best.itertuples():
        cell = [r for r in runs if r["attn"] == row.attn and r["seq_len"] == row.seq_len
                and r["num_pairs"] == row.num_pairs and r["model"]["d_model"] == row.d_model]
        chosen = max(cell, key=lambda r: r["val_accuracy"])
        assert row.lr == chosen["trainer"]["lr"] and abs(row.test - 100 * chosen["test_accuracy"]) < 1e-9
    extra_tasks_section(runs, {}, tmp_path)
    table = (tmp_path / "tables" / "mqar.md").read_text()
    assert "L=1K P=64" in table and "| sfa | 128 |" in table
    for name in ("mqar_width.png", "mqar_heatmap.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000
    extra_tasks_section([], {}, tmp_path)  # no records: the old figures go
    assert not (tmp_path / "plots" / "mqar_width.png").exists()
    assert "No protocol-complete mqar runs yet." in (tmp_path / "tables" / "mqar.md").read_text()


def test_make_tables_shows_both_beside_the_lra_table_not_in_it(tmp_path):
    folder = tmp_path / "results"
    write_published(folder / "published")
    rng = random.Random(2)
    for record in [*fmnist_runs(rng), *mqar_runs(rng),
                   run_record(rng, "listops", "full", 2000, "lra_listops")]:
        store_record(record, folder / "runs")
    report.build_report(folder, folder, folder / "published", None)
    page = Path(folder / "RESULTS.md").read_text()
    accuracy = pd.read_csv(folder / "tables" / "accuracy.csv")
    extra = accuracy[accuracy.task.isin(["fmnist", "fmnist_perm", "mqar"])]
    assert extra.column.isna().all()  # in no LRA column, so never in the LRA table or its average
    headline = page.split("## Accuracy (LRA Table 1 form)")[1].split("### Published")[0]
    assert "fmnist" not in headline and "mqar" not in headline
    assert "## Other tasks: sequential Fashion-MNIST and MQAR" in page and "(plots/mqar_width.png)" in page
    assert (folder / "tables" / "fmnist.md").is_file() and (folder / "tables" / "mqar.csv").is_file()
