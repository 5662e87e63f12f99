"""The campaign: cells expand, finished cells are skipped, a cut cell resumes from its checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from lra_sfa.campaign import Cell, Outcome, _cannot_finish, expand_cells, is_finished, run_campaign
from lra_sfa.campaign_estimates import Estimate, cell_estimates

SMALL = ["task.seq_len=16", "task.max_depth=2", "task.min_length=3", "task.max_length=13", "task.num_train=400",
         "task.num_val=64", "task.num_test=64", "task.workers=1", "trainer.max_steps=12", "trainer.eval_every=6",
         "trainer.batch_size=16"]


def _overrides(items: list[str]) -> str:
    return "overrides=[" + ",".join(f"'{item}'" for item in items) + "]"


def _campaign(tmp_path, *overrides: str):
    cells = "[{experiment: listops_reduced, attns: [full, sfa], seeds: [0]}]"
    with initialize_config_module("lra_sfa.conf", version_base=None):
        return compose("campaign", overrides=[
            f"store={tmp_path / 'store'}", f"work_dir={tmp_path / 'work'}", f"paths.cache_dir={tmp_path / 'cache'}",
            f"campaign.cells={cells}", _overrides(SMALL), "checkpoint_every=4", *overrides])


def test_cells_expand_and_name_themselves():
    cells = expand_cells([{"experiment": "lra_listops", "attns": ["full", "sfa"], "seeds": [0, 1],
                           "overrides": ["attn.topk=2"]}])
    assert len(cells) == 4 and cells[1] == Cell("lra_listops", "full", 1, ("attn.topk=2",))
    assert cells[1].key == "experiment=lra_listops attn=full seed=1 attn.topk=2"
    with pytest.raises(ValueError, match=r"campaign.cells\[0\] lacks \['seeds'\]"):
        expand_cells([{"experiment": "lra_listops", "attns": ["full"]}])
    with pytest.raises(ValueError, match="share the run dir name"):  # one run dir would hold both checkpoints
        expand_cells([{"experiment": "mqar", "attns": ["full"], "seeds": [0], "overrides": ["trainer.lr=[1]"]},
                      {"experiment": "mqar", "attns": ["full"], "seeds": [0], "overrides": ["trainer.lr=(1)"]}])


def test_a_backends_campaign_settings_follow_each_cells_own_overrides():
    spec = [{"experiment": "mqar", "attns": ["full", "sfa_wide"], "seeds": [0], "overrides": ["task.seq_len=256"]}]
    cells = expand_cells(spec, {"sfa_wide": ["attn.D=1024", "attn.k=8"]})
    assert [cell.overrides for cell in cells] == [("task.seq_len=256",),
                                                  ("task.seq_len=256", "attn.D=1024", "attn.k=8")]
    with pytest.raises(ValueError, match=r"attn_overrides names \['sfa_wdie'\], which no cell runs.*'sfa_wide'"):
        expand_cells(spec, {"sfa_wdie": ["attn.D=1024"]})


def test_finished_means_the_last_step_or_a_final_failure():
    assert is_finished({"status": "ok", "steps": 10, "max_steps": 10})
    assert is_finished({"status": "ok", "steps": 4, "max_steps": 10, "stopped_at_val_accuracy": True})
    assert not is_finished({"status": "ok", "steps": 4, "max_steps": 10, "stopped_at_val_accuracy": False})
    assert not is_finished({"status": "ok", "steps": 10, "max_steps": 10, "stopped_by_time_budget": True})
    assert not is_finished({"status": "ok", "steps": 7, "max_steps": 10})
    assert is_finished({"status": "oom", "steps": 0, "max_steps": 10})
    assert not is_finished({"status": "oom", "steps": 0, "max_steps": 10, "trainer": {"concurrent_runs": 3}})
    assert not is_finished({"status": "error", "steps": 0, "max_steps": 10})


def test_campaign_runs_then_skips_finished_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    first = run_campaign(_campaign(tmp_path))
    assert [(outcome.kind, outcome.text.split(",")[0]) for _, outcome in first] == [("ran", "ok")] * 2
    records = [json.loads(path.read_text()) for path in (tmp_path / "store").glob("*.json")]
    assert sorted(r["cell"] for r in records) == [
        "experiment=listops_reduced attn=full seed=0", "experiment=listops_reduced attn=sfa seed=0"]
    assert all(r["git_commit"] == "abc1234" and r["steps"] == r["max_steps"] == 12 for r in records)
    assert sorted(r["attn"] for r in records) == ["full", "sfa"]  # the cell's attn choice, not the campaign app's
    for record in records:  # the overrides that composed the cell, not the campaign's command line
        assert record["overrides"][:3] == ["experiment=listops_reduced", f"attn={record['attn']}", "seed=0"]
        assert "task.seq_len=16" in record["overrides"] and f"cell='{record['cell']}'" in record["overrides"]
    second = run_campaign(_campaign(tmp_path))
    assert all(outcome.kind == "finished_before" and not outcome.left for _, outcome in second)
    assert len(list((tmp_path / "store").glob("*.json"))) == 2
    longer = run_campaign(_campaign(tmp_path, _overrides([*SMALL, "trainer.max_steps=14"]), "dry_run=true"))
    # 12 steps do not finish a 14-step cell; the dry run gives each its seconds at its siblings' rate
    assert all(outcome.kind == "to_run" and outcome.left and outcome.seconds > 0
               and re.fullmatch(r"to run \(about \d+ s\)", outcome.text) for _, outcome in longer), longer


def test_a_cut_cell_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A deadline that has passed cuts the running cell after its first steps; the next run continues it."""
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    cfg = _campaign(tmp_path, "campaign.cells=[{experiment: listops_reduced, attns: [full], seeds: [0]}]",
                    _overrides([*SMALL, "trainer.max_seconds=0.001", "trainer.log_every=2"]))
    cut = run_campaign(cfg)
    assert cut[0][1].kind == "cut" and cut[0][1].text.startswith("cut at step")
    assert cut[0][1].text.endswith("(resumes from its checkpoint)")
    assert len(list((tmp_path / "work").glob("*/checkpoint.pt"))) == 1
    finish = run_campaign(_campaign(tmp_path, "campaign.cells=[{experiment: listops_reduced, attns: [full], "
                                              "seeds: [0]}]"))
    assert finish[0][1].kind == "ran" and finish[0][1].text.startswith("ok")
    records = sorted((json.loads(p.read_text()) for p in (tmp_path / "store").glob("*.json")),
                     key=lambda r: r["steps"])
    assert records[0]["stopped_by_time_budget"] and not records[1]["stopped_by_time_budget"]
    assert records[1]["resumed_from_step"] == records[0]["steps"] and records[1]["steps"] == 12
    cut_step = records[0]["steps"]  # evaluated for the cut's record, but not in the run that resumed from it
    assert records[0]["history"][-1]["step"] == cut_step and cut_step % 6
    assert [point["step"] for point in records[1]["history"]] == [6, 12]


def test_a_broken_cell_stops_only_itself(tmp_path, monkeypatch):
    """A cell that fails before it can run (here an attention choice that does not exist) is reported and left
    for the next time; the campaign goes on with the next cell."""
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    outcomes = run_campaign(_campaign(tmp_path, "campaign.cells=[{experiment: listops_reduced, "
                                                "attns: [no_such_backend, full], seeds: [0]}]"))
    assert outcomes[0][1].kind == "error" and outcomes[0][1].left
    assert outcomes[0][1].text.startswith("error (not finished; retried next time)")
    assert outcomes[1][1].text.startswith("ok")


def test_a_cut_cell_whose_checkpoint_stays_behind_says_it_restarts(tmp_path, monkeypatch):
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    cfg = _campaign(tmp_path, "campaign.cells=[{experiment: listops_reduced, attns: [full], seeds: [0]}]",
                    _overrides([*SMALL, "trainer.max_seconds=0.001", "trainer.log_every=2"]), "checkpoint_travel_mb=0")
    (outcome,) = [outcome.text for _, outcome in run_campaign(cfg)]
    assert outcome.startswith("cut at step") and "does not travel: the next slot restarts it" in outcome


def test_concurrent_cells_run_in_their_own_processes_and_say_so(tmp_path, monkeypatch):
    """concurrency=2 runs two cells at once, each in a spawned process; their records say
    trainer.concurrent_runs = 2, and the report's speed column leaves such runs out."""
    from lra_sfa.report.tables import summarise

    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    outcomes = run_campaign(_campaign(tmp_path, "concurrency=2"))
    assert [outcome.text.split(",")[0] for _, outcome in outcomes] == ["ok", "ok"]
    records = [json.loads(path.read_text()) for path in (tmp_path / "store").glob("*.json")]
    assert sorted(r["attn"] for r in records) == ["full", "sfa"]
    assert all(r["trainer"]["concurrent_runs"] == 2 and r["steps"] == 12 for r in records)
    shared = summarise(records[:1])
    assert shared["steps_per_second"] is None and shared["peak_memory_mb"] == records[0]["peak_memory_mb"]
    alone = dict(records[0], trainer={**records[0]["trainer"], "concurrent_runs": 1})
    assert summarise([alone])["steps_per_second"] == alone["steps_per_second"]
    with pytest.raises(ValueError, match="concurrency=0 must be an integer of at least 1"):
        run_campaign(_campaign(tmp_path / "other", "concurrency=0"))


def test_jobs_beside_the_campaign_count_as_sharing_the_device(tmp_path, monkeypatch):
    """other_jobs=1 (a GPU test suite in the same slot): one cell at a time, yet each record says two processes
    shared the device, so the report reads no speed from it."""
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    outcomes = run_campaign(_campaign(tmp_path, "other_jobs=1"))
    assert [outcome.text.split(",")[0] for _, outcome in outcomes] == ["ok", "ok"]
    records = [json.loads(path.read_text()) for path in (tmp_path / "store").glob("*.json")]
    assert sorted(r["trainer"]["concurrent_runs"] for r in records) == [2, 2]
    with pytest.raises(ValueError, match="other_jobs=-1 must be an integer of at least 0"):
        run_campaign(_campaign(tmp_path / "other", "other_jobs=-1"))


@pytest.mark.parametrize("path", ["~/.cache/lra_sfa", "/data/a b=c", "/data/it's", "C:\\data\\"])
def test_cell_paths_reach_the_run_whole(path):
    """The campaign passes its folders to each cell as overrides: a home-relative default, spaces, '=', quotes
    and trailing backslashes all arrive unchanged (the unquoted ``~`` of the default cache folder did not parse)."""
    from lra_sfa.campaign import _quoted
    from lra_sfa.compose import compose_config

    assert compose_config([_quoted("paths.cache_dir", path)]).paths.cache_dir == path


def test_campaign_needs_a_commit(tmp_path, monkeypatch):
    monkeypatch.setattr("lra_sfa.records.git_commit", lambda: "unknown")
    with pytest.raises(ValueError, match="LRA_SFA_GIT_COMMIT"):
        run_campaign(_campaign(tmp_path))


def test_a_cell_that_would_be_cut_and_lose_its_checkpoint_is_not_started(tmp_path, monkeypatch):
    """With checkpoint_travel_mb set, a cell whose siblings' records say it cannot finish before the deadline,
    and whose checkpoint would not travel, is left for a later slot; without it, the cell runs."""
    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    one_seed = "campaign.cells=[{experiment: listops_reduced, attns: [full], seeds: [0]}]"
    run_campaign(_campaign(tmp_path, one_seed))
    (path,) = (tmp_path / "store").glob("*.json")
    record = json.loads(path.read_text())
    assert record["wall_seconds"] >= record["train_seconds"] > 0
    record["steps_per_second"] = 12 / 1000  # as if the whole run took 1000 s at this rate
    path.write_text(json.dumps(record))
    estimates = cell_estimates(tmp_path / "store", tmp_path / "work")
    estimate = estimates["experiment=listops_reduced attn=full"]
    megabytes = estimate.megabytes
    per_parameter = 16 if record["trainer"]["test_weights"] == "best_val" else 12  # + the best-val weights
    assert estimate.step_seconds() == pytest.approx(1000 / 12)
    assert estimate.seconds(12) == estimate.seconds(12, warm=True) >= 1000
    assert estimate.seconds(24) - estimate.seconds(12) == pytest.approx(1000)  # a longer protocol costs its steps
    assert megabytes == pytest.approx(1.05 * per_parameter * record["num_parameters"] / 2**20)
    two_seeds = "campaign.cells=[{experiment: listops_reduced, attns: [full, sfa], seeds: [1]}]"
    planned = run_campaign(_campaign(tmp_path, two_seeds, "deadline_minutes=5", "checkpoint_travel_mb=0"))
    assert planned[0][1].kind == "not_started" and planned[0][1].text.startswith("not started: needs about")
    assert planned[1][1].kind == "not_started"  # no sfa record: the experiment's full record is the prior
    kept = run_campaign(_campaign(tmp_path, two_seeds, "deadline_minutes=5",
                                  f"checkpoint_travel_mb={megabytes + 1:.0f}"))
    assert kept[0][1].text.startswith("ok")  # its checkpoint would travel: cut or not, the time is not lost


def test_cells_sharing_the_device_are_planned_at_the_shared_rate(tmp_path):
    """A 400 s cell fits 500 s alone; two at once may each take twice as long, so it is not started."""
    cfg = _campaign(tmp_path, "checkpoint_travel_mb=1")
    cell = Cell("listops_reduced", "full", 1)  # 12 steps (SMALL)
    estimates = {"experiment=listops_reduced attn=full": Estimate(((1, 25.0),), 100.0, 0.0, 50.0)}
    assert _cannot_finish(cell, cfg, estimates, 500.0) is None
    assert _cannot_finish(cell, cfg, estimates, 500.0, concurrent_runs=2).text.startswith(
        "not started: needs about 800 s")


def test_a_rate_recorded_beside_other_runs_is_not_scaled_for_sharing_again(tmp_path, monkeypatch):
    """Siblings that ran two at a time give the two-at-a-time rate as measured; three at a time is scaled from
    it (the worst case), and a cell alone is not assumed faster than measured beside another."""
    import lra_sfa.records

    def record(attn, runs, rate):
        return {"cell": f"experiment=x attn={attn} seed=0", "steps_per_second": rate, "wall_seconds": 120.0,
                "train_seconds": 100.0, "trainer": {"concurrent_runs": runs}, "num_parameters": 1000}

    records = [record("full", 2, 0.5), record("full", 2, 0.4), record("sfa", 1, 1.0)]
    monkeypatch.setattr(lra_sfa.records, "load_records", lambda folder: (records, []))
    store = tmp_path / "store"
    store.mkdir()
    estimate = cell_estimates(store, tmp_path / "work")["experiment=x attn=full"]
    assert estimate.rates == ((2, 2.5),)  # the slower of the two
    assert estimate.step_seconds(2) == pytest.approx(2.5)
    assert estimate.step_seconds(3) == pytest.approx(2.5 * 3 / 2)
    assert estimate.step_seconds(1) == pytest.approx(2.5)
    assert estimate.seconds(10, concurrent_runs=2) == pytest.approx(10 * 2.5 + 20.0)
    prior = cell_estimates(store, tmp_path / "work")["experiment=x"]  # every backend: solo and shared rates
    assert prior.rates == ((1, 1.0), (2, 2.5)) and prior.step_seconds(4) == pytest.approx(5.0)


def test_an_outcome_says_whether_its_cell_is_left_and_refuses_unknown_kinds():
    assert [Outcome(kind, "x").left for kind in ("finished_before", "ran", "cut", "not_started", "to_run", "error")] \
        == [False, False, True, True, True, True]
    with pytest.raises(ValueError, match="'done' is not one of"):
        Outcome("done", "x")


def test_a_cell_after_its_sibling_is_planned_without_the_cold_start(tmp_path):
    """After a sibling ran in the same process (data cached, kernels compiled), the warm estimate applies."""
    cfg = _campaign(tmp_path, "checkpoint_travel_mb=1")
    cell = Cell("listops_reduced", "full", 1)  # 12 steps of 25 s, 100 s of set-up when cold
    estimates = {"experiment=listops_reduced attn=full": Estimate(((1, 25.0),), 100.0, 0.0, 50.0)}
    assert _cannot_finish(cell, cfg, estimates, 350.0).text.startswith("not started: needs about 400 s")
    assert _cannot_finish(cell, cfg, estimates, 350.0, warm=True) is None


CAMPAIGNS = sorted(path.stem for path in (Path(__file__).parents[1] / "conf" / "campaign").glob("*.yaml"))


@pytest.mark.parametrize("name", CAMPAIGNS)
def test_every_shipped_campaign_cell_composes_and_validates(name):
    """Each cell of each conf/campaign YAML composes as its run would (with its overrides) and passes the schema
    checks, so a typo fails here, not minutes into a GPU slot."""
    from lra_sfa.compose import compose_config
    from lra_sfa.schema import validate_config

    with initialize_config_module("lra_sfa.conf", version_base=None):
        spec = compose("campaign", overrides=[f"campaign={name}"]).campaign
    cells = expand_cells(spec.cells, spec.get("attn_overrides"))
    assert cells, name
    for experiment, attn, overrides in sorted({(c.experiment, c.attn, c.overrides) for c in cells}):
        cfg = compose_config([f"experiment={experiment}", f"attn={attn}", *overrides])
        validate_config(cfg)
        assert cfg.attn_name == attn and cfg.protocol, (experiment, attn)


def test_a_cell_is_warm_only_after_a_sibling_actually_ran_and_estimates_are_reread(tmp_path, monkeypatch):
    """Seed 0 not started (no warm-up happened), seed 1 runs cold, seed 2 after it warm; another backend cold;
    the estimates are re-read after each cell that ran."""
    import lra_sfa.campaign as campaign

    monkeypatch.setenv("LRA_SFA_GIT_COMMIT", "abc1234")
    seen, reads = [], []
    monkeypatch.setattr(campaign, "cell_estimates", lambda store, work: reads.append(1) or {})

    def fake_run(cell, cfg, estimates, deadline, concurrent_runs, warm=False):
        seen.append((cell.attn, cell.seed, warm))
        return (Outcome("not_started", "not started: needs about 900 s") if cell.seed == 0
                else Outcome("ran", "ok, test 0.5"))
    monkeypatch.setattr(campaign, "_run_cell", fake_run)
    cells = "campaign.cells=[{experiment: listops_reduced, attns: [full], seeds: [0, 1, 2]}, " \
            "{experiment: listops_reduced, attns: [sfa], seeds: [1]}]"
    run_campaign(_campaign(tmp_path, cells))
    assert seen == [("full", 0, False), ("full", 1, False), ("full", 2, True), ("sfa", 1, False)]
    assert len(reads) == 1 + 3  # once before the cells, then after each of the three that ran
