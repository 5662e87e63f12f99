"""No file runs code or reaches outside its folder: checkpoints, CIFAR pickles, Pathfinder metadata.

Each planted file carries a pickle whose ``__reduce__`` would create a marker
file when unpickled; the loaders must refuse it with a clear error and the
marker must never appear.
"""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from lra_sfa import checkpoint as ckpt
from lra_sfa.data import EpochSampler
from lra_sfa.optim import build_optimizer
from lra_sfa.tasks.base import TaskDataError
from lra_sfa.tasks.image import Cifar10, read_batch
from lra_sfa.tasks.pathfinder import Pathfinder, write_release

from .test_faults import TINY
from .test_tasks_image import write_cifar


class Planted:
    """Unpickling this runs ``touch marker`` (what an attacker's file would do, harmlessly)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def parts(cfg):
    model = torch.nn.Linear(4, 2)
    optimizer, schedule = build_optimizer(model, cfg.trainer)
    return model, optimizer, schedule, EpochSampler(100, 8, int(cfg.seed))


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_planted_checkpoint_is_refused_without_running(make_cfg, tmp_path, fmt):
    cfg = make_cfg(*TINY)
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_dir.mkdir()
    payload = {key: Planted(marker) for key in ckpt.PAYLOAD_KEYS}
    if fmt == "torch.save":
        torch.save(payload, run_dir / "checkpoint.pt")
    else:
        (run_dir / "checkpoint.pt").write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(run_dir, *parts(cfg), torch.device("cpu"), cfg)
    assert not marker.exists(), "the checkpoint ran code"
    message = str(info.value)
    assert str(run_dir / "checkpoint.pt") in message and "\n" not in message
    assert "system" in message and "refused without running it" in message


def test_checkpoint_round_trip_restores_rng_states_weights_only(make_cfg, tmp_path):
    cfg = make_cfg(*TINY)
    model, optimizer, schedule, sampler = parts(cfg)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    schedule.step()
    np.random.seed(7)
    torch.manual_seed(7)
    random.seed(7)
    path = ckpt.save(tmp_path, model, optimizer, schedule, sampler, ckpt.TrainState(step=1), cfg)
    expected = (np.random.rand(3), torch.rand(3), random.random())
    torch.load(path, weights_only=True)  # only tensors, numbers, strings and containers inside
    fresh = parts(cfg)
    state = ckpt.load(tmp_path, *fresh, torch.device("cpu"), cfg)
    assert state.step == 1 and state.saved_step == 1 and state.resume_forced == {}
    np.testing.assert_array_equal(np.random.rand(3), expected[0])
    assert torch.equal(torch.rand(3), expected[1]) and random.random() == expected[2]
    assert torch.equal(fresh[0].weight, model.weight)
    assert fresh[1].state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_planted_cifar_pickle_is_refused_without_running(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, per_batch=4)
    marker = tmp_path / "pwned"
    batch = {b"data": Planted(marker), b"labels": [0, 1]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(TaskDataError) as info:
        Cifar10(data_dir=str(folder)).load(tmp_path / "cache")
    assert not marker.exists(), "the pickle ran code"
    message = str(info.value)
    assert str(folder / "data_batch_1") in message and "system" in message and "refused" in message


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_restricted_cifar_reader_still_reads_every_pickle_protocol(tmp_path, protocol):
    rng = np.random.default_rng(protocol)
    data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"batch_label": b"training batch 1 of 5", b"labels": [3, 0, 9], b"data": data,
                                   b"filenames": [b"a.png", b"b.png", b"c.png"]}, protocol=protocol))
    tokens, labels = read_batch(path)
    assert tokens.shape == (3, 1024) and labels.tolist() == [3, 0, 9]


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_pathfinder_metadata_cannot_point_outside_the_folder(tmp_path, where):
    images = np.random.default_rng(0).integers(1, 256, size=(4, 32 * 32), dtype=np.uint8)
    labels = np.asarray([0, 1, 0, 1])
    release, outside = tmp_path / "release", tmp_path / "outside"
    write_release(release, images, labels)
    write_release(outside, images, labels)  # a readable image outside the data folder
    target = "../outside/imgs/0" if where == "dotdot" else str(outside / "imgs" / "0")
    (release / "metadata" / "0.npy").write_text(
        "imgs/0 sample_0.png 0 0\n" f"{target} sample_1.png 1 1\n" "imgs/0 sample_2.png 2 0\n")
    task = Pathfinder(data_dir=str(release), num_train=2, num_val=1, num_test=1, n_workers=1)
    with pytest.raises(TaskDataError) as info:
        task.load(tmp_path / "cache")
    message = str(info.value)
    assert f"{release / 'metadata' / '0.npy'}:2" in message and "leaves the data folder" in message
    assert target in message
