"""``python -m lra_sfa.demo`` (make run): a Hydra app over the training config, one run per backend, a comparison."""

from __future__ import annotations

import pandas as pd
import pytest
from hydra.errors import ConfigCompositionException

from lra_sfa.compose import compose_config
from lra_sfa.demo import run_demo


def test_config_is_the_training_config_with_the_reduced_listops():
    cfg = compose_config(["trainer.max_steps=100", "demo.backends=[full,performer]"], config_name="demo")
    assert cfg.protocol == "listops_reduced" and cfg.task.max_length == 128 and cfg.trainer.max_steps == 100
    assert list(cfg.demo.backends) == ["full", "performer"] and cfg.demo.out_dir == "outputs/demo"
    with pytest.raises(ConfigCompositionException, match="max_stepz"):
        compose_config(["trainer.max_stepz=100"], config_name="demo")  # a typo fails before any run


def test_one_run_per_backend_then_the_comparison(tmp_path):
    tiny = ["task.num_train=64", "task.num_val=16", "task.num_test=16", "trainer.max_steps=2",
            "trainer.eval_every=2", "trainer.batch_size=8", "trainer.progress=false", "trainer.device=cpu",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    out = tmp_path / "demo"
    frame = run_demo(["full", "sfa"], out, tiny)
    assert list(frame["attention"]) == ["full", "sfa"] and (frame["status"] == "ok").all()
    assert (frame["steps"] == 2).all()
    assert pd.read_csv(out / "comparison.csv")["attention"].tolist() == ["full", "sfa"]
    assert "trainer.max_steps=2" in (out / "comparison.md").read_text().splitlines()[0]
    assert len(list((out / "runs").glob("*.json"))) == 2 and (out / "sfa" / "record.json").is_file()
    with pytest.raises(ValueError, match=r"demo.backends: \['nope'\] not in conf/attn/; valid: .*sfa"):
        run_demo(["nope"], out, tiny)
