"""The kernel benchmark on the CPU: its Hydra config, the interleaved protocol, the CSV rows, table, merge and checks.

The sweep and the float64 checks run end to end on tiny shapes: the Triton
kernels under TRITON_INTERPRET=1 (set by conftest before triton is imported),
SDPA on its math backend in place of cuDNN / FA2, and a fake timer in place of
``triton.testing.do_bench`` (CUDA-only) that runs each call and records the order.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module
from torch.nn.attention import SDPBackend

from lra_sfa.bench.kernels import COLUMNS, KERNEL_KEY, RowWriter, old_form_message, protocol, run

COMMIT = "0123456789ab"


def _cfg(tmp_path, *overrides: str):
    with initialize_config_module("lra_sfa.conf", version_base=None):
        return compose("bench_kernels", overrides=[f"out={tmp_path}", *overrides])


def _interpreted() -> bool:
    from lra_sfa.kernels.sfa import triton_fwd

    return type(triton_fwd._flash_sfa_fwd_kernel).__name__ == "InterpretedFunction"


class FakeTimer:
    """Runs each call once and returns a fixed time per kind of call: SFA 1.0, SDPA 2.0 (decode SFA 4.0)."""

    def __init__(self):
        self.order: list[str] = []

    def __call__(self, fn, grads=()) -> float:
        fn()
        name = getattr(fn, "__qualname__", None) or getattr(getattr(fn, "func", None), "__name__", "")
        kind = {"sfa_call.<locals>.run": "sfa", "sdpa_call.<locals>.run": "sdpa", "sfa_decode": "decode"}.get(name,
                                                                                                             "other")
        self.order.append(kind)
        for t in grads:
            t.grad = None
        return {"sfa": 1.0, "sdpa": 2.0, "decode": 4.0}.get(kind, 0.5)


def test_configs_compose_with_every_option_of_the_argparse_form(tmp_path):
    base = _cfg(tmp_path)
    for key in ("mode", "src", "out", "date", "dims", "topks", "lengths", "fwd_extra_lengths", "decode_lengths",
                "tokens", "decode_tokens", "rep_ms", "budget_s", "topk_rows", "ops", "decode_config", "checks"):
        assert key in base, key
    assert (list(base.dims), list(base.topks), list(base.ops)) == ([128, 64], [8], ["fwd", "fwd_bwd"])
    assert list(base.lengths) == [2**i for i in range(10, 17)] and base.repeats >= protocol.MIN_REPEATS
    short = _cfg(tmp_path, "bench_kernels=short")
    assert list(short.lengths) == [1024, 2048, 4096, 8192] and short.batch * short.heads == 256
    full = _cfg(tmp_path, "bench_kernels=full", "dims=[64]")
    assert list(full.topks) == [8, 16] and "decode" in full.ops and list(full.dims) == [64]


def test_rounds_alternate_and_the_ratio_keeps_median_spread_and_verdict():
    order: list[str] = []
    script = {"sfa": iter([1.0, 1.0, 1.0, 1.0, 2.0]), "b_random": iter([1.5, 1.1, 0.9, 1.2, 1.4]),
              "b_sparse": iter([1.2, 1.3, 1.0, 1.3, 3.0])}
    calls = {name: ((lambda n=name: order.append(n)), ()) for name in script}

    def timer(fn, grads):
        fn()
        return next(script[order[-1]])

    times = protocol.interleaved(calls, 5, timer)
    assert order[:6] == ["sfa", "b_random", "b_sparse", "b_sparse", "b_random", "sfa"] and len(order) == 15
    baseline = protocol.faster_input(times, "b")
    assert baseline == [1.2, 1.1, 0.9, 1.2, 1.4]
    stats = protocol.ratio_summary(times["sfa"], baseline)
    assert stats == {"ms": 1.0, "baseline_ms": 1.2, "speedup_median": 1.1, "speedup_min": 0.7, "speedup_max": 1.2,
                     "repeats": 5, "verdict": "tie"}
    assert [protocol.verdict(*spread) for spread in ((1.01, 1.3), (0.5, 0.99), (1.0, 1.2), (0.8, 1.0))] == [
        "faster", "slower", "tie", "tie"]
    with pytest.raises(ValueError, match="at least 5 interleaved repeats"):
        protocol.interleaved(calls, 4, timer)


def test_do_bench_timer_asks_for_the_median_and_resets_gradients(monkeypatch):
    import triton.testing

    seen = {}

    def fake_do_bench(fn, warmup, rep, grad_to_none=None, return_mode="mean"):
        seen.update(warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode=return_mode)
        return 3
    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    leaf = torch.ones(2, requires_grad=True)
    assert protocol.do_bench_timer(10, 40)(lambda: None, (leaf,)) == 3.0
    assert seen == {"warmup": 10, "rep": 40, "grad_to_none": [leaf], "return_mode": "median"}


@pytest.fixture
def cpu_sdpa(monkeypatch):
    """cuDNN and FA2 replaced by SDPA's math backend (the CPU has neither), and a commit from the environment."""
    from lra_sfa.bench.kernels import calls

    if not _interpreted():
        pytest.skip("Triton kernels were compiled for GPU before TRITON_INTERPRET=1 was set")
    monkeypatch.setattr(calls, "BACKENDS", {"cudnn": SDPBackend.MATH, "fa2": SDPBackend.MATH})
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", COMMIT)


def test_sweep_writes_protocol_rows_that_name_commit_versions_and_card(tmp_path, cpu_sdpa):
    from lra_sfa.bench.kernels.sweep import run_sweep

    cfg = _cfg(tmp_path, "dims=[16]", "topks=[4]", "lengths=[64]", "ops=[fwd,fwd_bwd,decode]", "decode_lengths=[96]",
               "tokens=128", "decode_tokens=192", "topk_rows=64", "date=2026-12-01",
               "sfa_impl=triton")  # on the CPU, impl=auto is the reference: the kernels run by name
    timer = FakeTimer()
    assert run_sweep(cfg, timer=timer, device="cpu") == []
    rows = list(csv.DictReader((tmp_path / "sfa_vs_sdpa.csv").open()))
    assert list(rows[0]) == COLUMNS and len(rows) == 6  # (decode, fwd, fwd_bwd) x (cudnn, fa2)
    assert [(r["op"], r["baseline"]) for r in rows[::2]] == [("decode", "sdpa_cudnn"), ("fwd", "sdpa_cudnn"),
                                                             ("fwd_bwd", "sdpa_cudnn")]
    for row in rows:
        assert (row["git_commit"], row["torch_version"], row["date"]) == (COMMIT, torch.__version__, "2026-12-01")
        assert row["triton_version"] and row["device"].startswith("cpu") and row["repeats"] == "5"
        assert (row["batch"], row["heads"]) == (("1", "2") if row["op"] == "decode" else ("1", "2"))
        assert float(row["max_rel_err"]) < 0.05
    fwd = next(r for r in rows if r["op"] == "fwd")
    assert (fwd["sfa_path"], fwd["ms"], fwd["baseline_ms"], fwd["verdict"]) == ("triton", "1.0", "2.0", "faster")
    assert (fwd["speedup_median"], fwd["speedup_min"], fwd["speedup_max"]) == ("2.0", "2.0", "2.0")
    decode = rows[0]
    assert (decode["speedup_median"], decode["verdict"]) == ("0.5", "slower")
    # per cell 5 rounds of SFA and (cuDNN, FA2) x (random, sparse) inputs, alternating: the order of round 2 reversed
    cell = timer.order[2:27]  # after the two top-k timings of sfa_topk.csv
    assert cell[:5] == ["decode"] + ["sdpa"] * 4 and cell[5:10] == ["sdpa"] * 4 + ["decode"] and len(timer.order) == 77
    checks = list(csv.DictReader((tmp_path / "sfa_checks.csv").open()))
    assert all(r["passes"] == "True" for r in checks) and len(checks) == 6
    topk = list(csv.DictReader((tmp_path / "sfa_topk.csv").open()))
    assert [(r["topk"], r["git_commit"]) for r in topk] == [("4", COMMIT)]
    assert (tmp_path / "sfa_vs_sdpa.png").is_file()


def test_sweep_with_sfa_impl_sdpa_times_and_checks_sdpa_on_the_codes(tmp_path, cpu_sdpa):
    """sfa_impl=sdpa: the SFA side is SDPA on the zero-filled codes, named so in every row and passing the float64
    check of the sampled rows, forward and forward+backward."""
    from lra_sfa.bench.kernels.sweep import run_sweep

    cfg = _cfg(tmp_path, "dims=[16]", "topks=[4]", "lengths=[64]", "tokens=128", "topk_rows=0", "sfa_impl=sdpa")
    assert run_sweep(cfg, timer=FakeTimer(), device="cpu") == []
    rows = list(csv.DictReader((tmp_path / "sfa_vs_sdpa.csv").open()))
    checks = list(csv.DictReader((tmp_path / "sfa_checks.csv").open()))
    assert {r["op"] for r in rows} == {"fwd", "fwd_bwd"} and {r["sfa_path"] for r in rows} == {"sdpa"}
    assert all(r["passes"] == "True" for r in checks) and {r["fwd_config"] for r in checks} == {
        "sdpa on topk_pack codes"}


def test_sweep_skips_cells_past_the_budget_and_refuses_bad_grids(tmp_path, cpu_sdpa):
    from lra_sfa.bench.kernels.sweep import run_sweep

    cfg = _cfg(tmp_path, "dims=[16]", "topks=[4]", "lengths=[64,128]", "tokens=256", "topk_rows=0", "budget_s=0")
    assert run_sweep(cfg, timer=FakeTimer(), device="cpu") == [
        "fwd L=64 d=16 k=4", "fwd_bwd L=64 d=16 k=4", "fwd L=128 d=16 k=4", "fwd_bwd L=128 d=16 k=4"]
    for bad, match in (("repeats=3", "at least 5"), ("ops=[fwd,bwd]", "not among"), ("baselines=[flash3]", "one of"),
                       ("batch=4", "set both"), ("sfa_impl=flash", "sfa_impl='flash' must be one of")):
        with pytest.raises(ValueError, match=match):
            run_sweep(_cfg(tmp_path, bad), timer=FakeTimer(), device="cpu")


def _protocol_rows(path, commit="c0ffee0"):
    writer = RowWriter(path, COLUMNS, key=KERNEL_KEY)
    base = dict(impl="sfa_triton", batch=32, heads=8, head_dim=128, topk=8, dtype="bf16", sfa_path="gluon",
                max_rel_err="2.0e-03", peak_mem_mb=900.0, repeats=5, git_commit=commit, torch_version="2.11.0",
                triton_version="3.6.0", cudnn_version="91900", date="2026-12-01")
    cells = [("NVIDIA H100 80GB HBM3", "decode", 8192, 1.2, 1.30, 1.25, 1.36, "faster"),
             ("NVIDIA H100 80GB HBM3", "fwd", 2048, 1.0, 1.05, 0.98, 1.10, "tie"),
             ("NVIDIA H100 80GB HBM3", "fwd", 1024, 0.9, 0.62, 0.60, 0.66, "slower"),
             ("NVIDIA H200", "fwd", 1024, 0.8, 0.70, 0.69, 0.71, "slower")]
    for device, op, length, ms, median, low, high, verdict in cells:
        for baseline, scale in (("sdpa_cudnn", 1.0), ("sdpa_fa2", 1.5)):
            writer.write(dict(base, device=device, op=op, seq_len=length, ms=ms, baseline=baseline,
                              baseline_ms=round(ms * median * scale, 4), speedup_median=round(median * scale, 4),
                              speedup_min=round(low * scale, 4), speedup_max=round(high * scale, 4),
                              verdict=verdict if scale == 1.0 else protocol.verdict(low * scale, high * scale)))
    return writer


def test_cudagraph_timer_asks_for_the_median_and_a_bad_timer_is_named(monkeypatch):
    import triton.testing

    seen = {}

    def fake_do_bench_cudagraph(fn, rep=20, grad_to_none=None, quantiles=None, return_mode="mean"):
        seen.update(rep=rep, grad_to_none=grad_to_none, return_mode=return_mode)
        return 2
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", fake_do_bench_cudagraph)
    leaf = torch.ones(2, requires_grad=True)
    assert protocol.make_timer("cudagraph", 10, 40)(lambda: None, (leaf,)) == 2.0
    assert seen == {"rep": 40, "grad_to_none": [leaf], "return_mode": "median"}
    with pytest.raises(ValueError, match=r"timer='graphs' must be one of \('do_bench', 'cudagraph'\)"):
        protocol.make_timer("graphs", 10, 40)


def test_cells_timed_in_cuda_graphs_are_rows_and_a_table_of_their_own(tmp_path, cpu_sdpa):
    """timer=cudagraph rows say so, sit beside the do_bench rows of the same cells (a re-run replaces only its own
    timer's rows), and the README gets a second table for them; the first table and the report keep do_bench."""
    from lra_sfa.bench.kernels.sweep import run_sweep
    from lra_sfa.report.kernels import measured_kernels

    grid = ["dims=[16]", "topks=[4]", "lengths=[64]", "ops=[fwd]", "tokens=128", "topk_rows=0", "date=2026-12-01"]
    for timer in ("do_bench", "cudagraph", "cudagraph"):
        run_sweep(_cfg(tmp_path, *grid, f"timer={timer}"), timer=FakeTimer(), device="cpu")
    rows = list(csv.DictReader((tmp_path / "sfa_vs_sdpa.csv").open()))
    assert sorted((r["timer"], r["baseline"]) for r in rows) == [
        ("cudagraph", "sdpa_cudnn"), ("cudagraph", "sdpa_fa2"), ("do_bench", "sdpa_cudnn"), ("do_bench", "sdpa_fa2")]
    (tmp_path / "README.md").write_text("# Kernels\n\n## Table\n\nold\n")
    run(_cfg(tmp_path, "mode=table"))
    text = (tmp_path / "README.md").read_text()
    main, graphs = text.split("### Timed in CUDA graphs")
    assert main.count("| cpu") == 1 and graphs.count("| cpu") == 1 and "2 rows of `sfa_vs_sdpa.csv`" in graphs
    assert measured_kernels(tmp_path / "sfa_vs_sdpa.csv").count("| cpu") == 2  # do_bench only: cuDNN and FA2
    with pytest.raises(ValueError, match="timer='nope' must be one of"):
        run_sweep(_cfg(tmp_path, *grid, "timer=nope"), timer=FakeTimer(), device="cpu")


def test_table_shows_median_spread_and_verdict_per_card(tmp_path):
    _protocol_rows(tmp_path / "sfa_vs_sdpa.csv")
    (tmp_path / "README.md").write_text("# Kernels\n\nintro kept\n\n## Table\n\nold table\n")
    run(_cfg(tmp_path, "mode=table"))
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# Kernels\n\nintro kept\n\n## Table\n\n8 rows of `sfa_vs_sdpa.csv`") and "old" not in text
    assert "`c0ffee0` (8 rows)" in text and "`NVIDIA H200` (2 rows)" in text and "`5` (8 rows)" in text
    lines = [line for line in text.splitlines() if line.startswith("| H")]
    assert [[cell.strip() for cell in line.split("|")[1:6]] for line in lines] == [
        ["H100 80GB HBM3", "fwd", "128", "8", "1024"], ["H100 80GB HBM3", "fwd", "128", "8", "2048"],
        ["H100 80GB HBM3", "decode", "128", "8", "8192"], ["H200", "fwd", "128", "8", "1024"]]
    assert "| 32x8 | gluon | 1.000 | 1.050 | 1.05 (0.98-1.10) | tie | 1.575 | 1.57 (1.47-1.65) | faster |" in lines[1]
    assert "| 0.62 (0.60-0.66) | slower |" in lines[0]
    run(_cfg(tmp_path, "mode=plot"))
    assert (tmp_path / "sfa_vs_sdpa.png").is_file()
    (tmp_path / "README.md").write_text("no section\n")
    with pytest.raises(SystemExit, match="README.md has no"):
        run(_cfg(tmp_path, "mode=table"))
    (tmp_path / "sfa_vs_sdpa.csv").unlink()
    (tmp_path / "README.md").write_text("# Kernels\n\n## Table\n\nstale\n")
    run(_cfg(tmp_path, "mode=table"))  # no CSV yet (make tables before the first sweep): the section says so
    assert (tmp_path / "README.md").read_text().startswith("# Kernels\n\n## Table\n\nNo rows measured under")


def test_an_older_csv_is_refused_by_name(tmp_path):
    old = tmp_path / "sfa_vs_sdpa.csv"
    old.write_text("impl,op,seq_len,head_dim,topk,baseline,speedup\nsfa_triton,fwd,1024,64,8,sdpa_cudnn,0.5\n")
    (tmp_path / "README.md").write_text("## Table\n")
    with pytest.raises(SystemExit, match=r"sfa_vs_sdpa.csv lacks the protocol's columns \['speedup_median'"):
        run(_cfg(tmp_path, "mode=table"))
    with pytest.raises(SystemExit, match="lacks the protocol's columns"):
        run(_cfg(tmp_path / "results", "mode=merge", f"src={tmp_path}"))


def test_merge_replaces_cells_of_one_card_and_keeps_the_other_cards(tmp_path):
    results, device_run = tmp_path / "results", tmp_path / "run"
    _protocol_rows(results / "sfa_vs_sdpa.csv")
    _protocol_rows(device_run / "sfa_vs_sdpa.csv", commit="beef123")
    again = list(csv.DictReader((device_run / "sfa_vs_sdpa.csv").open()))
    RowWriter(device_run / "sfa_vs_sdpa.csv", COLUMNS).write(again[0])  # the run measured one H100 cell
    run(_cfg(results, "mode=merge", f"src={device_run}"))
    rows = list(csv.DictReader((results / "sfa_vs_sdpa.csv").open()))
    assert len(rows) == 8 and [r["git_commit"] for r in rows].count("beef123") == 1
    assert rows[0]["git_commit"] == "beef123" and rows[0]["device"] == "NVIDIA H100 80GB HBM3"
    assert (results / "sfa_vs_sdpa.png").is_file()
    with pytest.raises(SystemExit, match="none of"):
        run(_cfg(results, "mode=merge", f"src={tmp_path / 'empty'}"))
    with pytest.raises(ValueError, match="mode=merge needs src="):
        run(_cfg(results, "mode=merge"))


def test_the_argparse_form_names_its_replacement_in_one_line():
    assert old_form_message(["--mode", "sweep", "--dims", "64", "128", "--out", "X", "--decode-config", "32,4,3,16"]) \
        == ("python -m lra_sfa.bench.kernels takes Hydra overrides now (conf/bench_kernels.yaml): --mode sweep "
            "--dims 64 128 --out X --decode-config 32,4,3,16 -> python -m lra_sfa.bench.kernels mode=sweep "
            "dims=[64,128] out=X decode_config=[32,4,3,16]")
    assert old_form_message(["--fwd-extra-lengths=262144", "--budget-s", "400"]).endswith(
        "fwd_extra_lengths=[262144] budget_s=400")
    assert "python -m lab.kernel_explore" in old_form_message(["--mode", "explore", "--sections", "decode"])
    assert old_form_message(["mode=sweep", "dims=[64]"]) is None and old_form_message(["--cfg", "job"]) is None
    done = subprocess.run([sys.executable, "-m", "lra_sfa.bench.kernels", "--mode", "table"], capture_output=True,
                          text=True)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "python -m lra_sfa.bench.kernels takes Hydra overrides now (conf/bench_kernels.yaml): --mode table -> "
        "python -m lra_sfa.bench.kernels mode=table"]


def test_gpu_modes_stop_with_one_line_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for mode in ("sweep", "check"):
        with pytest.raises(SystemExit, match=f"mode={mode} needs a CUDA device"):
            run(_cfg(tmp_path, f"mode={mode}"))
    with pytest.raises(ValueError, match="must be one of"):
        run(_cfg(tmp_path, "mode=bench"))
    with pytest.raises(SystemExit, match="python -m lab.kernel_explore"):
        run(_cfg(tmp_path, "mode=explore"))


def test_check_cases_cover_gluon_and_triton_at_every_asked_shape():
    from lra_sfa.bench.kernels.check import CASES

    bf16 = {(c.kernels, c.dim, c.length, c.expected) for c in CASES if c.dtype == torch.bfloat16 and not c.padding}
    for length in (1024, 8192, 32768):
        assert {("auto", 128, length, "gluon"), ("auto", 64, length, "triton_fwd+gluon_bwd"),
                ("triton", 128, length, "triton"), ("triton", 64, length, "triton")} <= bf16
    for length in (1024, 8192):  # SDPA on the codes, where impl="auto" may take it
        assert {("sdpa", 64, length, "sdpa"), ("sdpa", 128, length, "sdpa")} <= bf16
    assert len({c.label for c in CASES}) == len(CASES)


def test_a_check_row_names_the_forward_and_backward_kernels(cpu_sdpa, tmp_path):
    from lra_sfa.bench.kernels.check import CHECK_COLUMNS, CheckCase, check_case

    for case in (CheckCase(64, 16, 4, True, torch.float32, 1.0, "auto", "triton"),
                 CheckCase(128, 32, 8, False, torch.bfloat16, 1.0, "triton", "triton")):
        row, res = check_case(case, "cpu")
        assert set(row) == set(CHECK_COLUMNS)
        assert (row["fwd_path"], row["bwd_path"], row["path"], row["git_commit"]) == ("triton", "triton", "triton",
                                                                                      COMMIT)
        assert row["ok"] and res["ok"] and all(float(row[f"{n}_err"]) < 0.05 for n in ("out", "dq", "dk", "dv"))
    row, res = check_case(CheckCase(64, 16, 4, True, torch.float32, 1.0, "sdpa", "sdpa"), "cpu")
    assert (row["fwd_path"], row["bwd_path"], row["path"]) == ("sdpa", "sdpa", "sdpa") and row["ok"] and res["ok"]


def test_the_report_reads_the_median_and_verdict_per_card(tmp_path):
    from lra_sfa.report.kernels import measured_kernels

    _protocol_rows(tmp_path / "sfa_vs_sdpa.csv")
    short = RowWriter(tmp_path / "sfa_vs_sdpa.csv", COLUMNS, key=KERNEL_KEY)
    short.write(dict(short.rows[4], batch="64", speedup_median="0.5", verdict="slower"))  # 1K at another shape
    text = measured_kernels(tmp_path / "sfa_vs_sdpa.csv")
    lines = {tuple(cell.strip() for cell in line.split("|")[1:6]): line
             for line in text.splitlines() if line.startswith("| NVIDIA")}
    h100 = lines[("NVIDIA H100 80GB HBM3", "fwd", "128", "8", "sdpa_cudnn")]
    assert "| 0.62 slower (32x8); 0.50 slower (64x8) | 1.05 tie |" in h100
    assert "| 1.30 faster |" in lines[("NVIDIA H100 80GB HBM3", "decode", "128", "8", "sdpa_cudnn")]
    assert "| 0.70 slower |" in lines[("NVIDIA H200", "fwd", "128", "8", "sdpa_cudnn")]
    assert "interleaved repeats" in text
    old = tmp_path / "old.csv"
    old.write_text("impl,op,seq_len,head_dim,topk,baseline,speedup,device,date\n"
                   "sfa_triton,fwd,1024,64,8,sdpa_cudnn,0.5,H200,2026-11-29\n")
    assert "| fwd | 64 | 8 | sdpa_cudnn | 0.50 |" in measured_kernels(old)
