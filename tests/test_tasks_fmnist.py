"""Fashion-MNIST: idx files in the official format (raw and gz), splits, the fixed permutation, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from lra_sfa.recording import build_task
from lra_sfa.tasks import fmnist
from lra_sfa.tasks.base import TaskDataError
from lra_sfa.tasks.fmnist import FILES, FashionMNIST, positions_permutation, read_idx


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An idx file: big-endian int32 magic, one big-endian int32 per dimension, then uint8 data."""
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> Path:
    data = idx_bytes(array, magic)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_folder(tmp_path: Path, gz: bool) -> tuple[Path, dict[str, np.ndarray]]:
    """60 training and 20 test images of random pixels (zeros included) with labels 0..9."""
    rng = np.random.default_rng(5)
    arrays = {"train_images": rng.integers(0, 256, (60, 28, 28)), "train_labels": rng.integers(0, 10, 60),
              "test_images": rng.integers(0, 256, (20, 28, 28)), "test_labels": rng.integers(0, 10, 20)}
    arrays["train_images"][:, :3] = 0  # black rows: pixel 0 is data, not padding
    folder = tmp_path / "fashion"
    folder.mkdir()
    for key, array in arrays.items():
        write_idx(folder / FILES[key], array, 2051 if key.endswith("images") else 2049, gz)
    return folder, arrays


@pytest.fixture(params=[True, False], ids=["gz", "raw"])
def idx_folder(tmp_path, request):
    return make_folder(tmp_path, request.param)


def _task(folder, **kwargs) -> FashionMNIST:
    return FashionMNIST(data_dir=str(folder), num_val=10, **kwargs)


def test_reads_pixels_in_raster_order_with_labels_and_a_seeded_validation_split(idx_folder, tmp_path):
    folder, arrays = idx_folder
    data = _task(folder).load(tmp_path / "cache")
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20) and data.source == str(folder)
    np.testing.assert_array_equal(data.test.inputs, arrays["test_images"].reshape(20, 784))
    np.testing.assert_array_equal(data.test.labels, arrays["test_labels"])
    assert data.test.inputs[3, 28 * 5 + 7] == arrays["test_images"][3, 5, 7]  # token r * 28 + c = pixel (r, c)
    both = np.concatenate([data.train.inputs, data.val.inputs])
    rows = {bytes(row) for row in arrays["train_images"].reshape(60, 784).astype(np.uint8)}
    assert {bytes(row) for row in both} == rows and len(both) == 60  # a partition of the training images
    again = _task(folder).load(tmp_path / "cache2")
    np.testing.assert_array_equal(again.val.inputs, data.val.inputs)
    other = _task(folder, split_seed=1).load(tmp_path / "cache")
    assert not np.array_equal(other.val.labels, data.val.labels) or not np.array_equal(other.val.inputs,
                                                                                       data.val.inputs)
    task = _task(folder)
    assert (task.vocab_size, task.num_classes, task.has_padding, task.name) == (256, 10, False, "fmnist")
    assert (data.train.inputs == 0).any() and data.train.inputs.max() <= 255


def test_permutation_is_fixed_by_its_seed_and_invertible(idx_folder, tmp_path):
    folder, _ = idx_folder
    plain = _task(folder).load(tmp_path / "c")
    task = _task(folder, permute=True, permutation_seed=3)
    permuted = task.load(tmp_path / "c")
    perm = positions_permutation(3)
    assert sorted(perm) == list(range(784)) and not np.array_equal(perm, np.arange(784))
    np.testing.assert_array_equal(permuted.test.inputs, plain.test.inputs[:, perm])
    np.testing.assert_array_equal(permuted.test.inputs[:, np.argsort(perm)], plain.test.inputs)  # invertible
    np.testing.assert_array_equal(permuted.val.labels, plain.val.labels)
    np.testing.assert_array_equal(positions_permutation(3), perm)  # fixed: the same on every call
    assert not np.array_equal(positions_permutation(4), perm)
    assert task.name == "fmnist_perm" and task.describe()["permutation_seed"] == 3
    import hashlib

    digest = hashlib.sha256(perm.astype("<i8").tobytes()).hexdigest()  # the positions themselves, in the record
    assert task.describe()["permutation_sha256"] == digest and _task(folder).describe()["permutation_sha256"] is None


def test_configs_compose_and_fmnist_perm_inherits(make_cfg, idx_folder):
    folder, _ = idx_folder
    base, perm = make_cfg("task=fmnist").task, make_cfg("task=fmnist_perm").task
    assert base._target_ == perm._target_ and (base.permute, perm.permute) == (False, True)
    assert perm.seq_len == 784 and perm.num_val == 5000 and "permutation_seed" in perm
    task = build_task(make_cfg("task=fmnist_perm", f"task.data_dir={folder}", "task.permutation_seed=9").task)
    assert (task.describe()["task"], task.describe()["permutation_seed"]) == ("fmnist_perm", 9)


@pytest.mark.parametrize("damage, words", [
    (lambda raw: (7).to_bytes(4, "big") + raw[4:], "magic number 7, expected 2051"),
    (lambda raw: raw[:-100], "truncated"),
    (lambda raw: raw[:10], "truncated"),
    (lambda raw: raw + b"\x00", "longer than its header says"),
])
@pytest.mark.parametrize("gz", [True, False])
def test_a_bad_file_gives_one_line_naming_it(tmp_path, damage, words, gz):
    raw = damage(idx_bytes(np.zeros((3, 28, 28), np.uint8), 2051))
    path = tmp_path / ("imgs.gz" if gz else "imgs")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(TaskDataError) as err:
        read_idx(path, 2051)
    assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_a_broken_gzip_and_a_labels_file_as_images_name_the_file(idx_folder, tmp_path):
    folder, _ = idx_folder
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"x" * 1000)[:30])
    with pytest.raises(TaskDataError, match="broken.gz"):
        read_idx(broken, 2051)
    labels = next(folder.glob("train-labels*"))
    with pytest.raises(TaskDataError, match="magic number 2049, expected 2051"):
        read_idx(labels, 2051)


def test_missing_files_say_how_to_install_them(idx_folder, tmp_path):
    folder, _ = idx_folder
    next(folder.glob("t10k-labels*")).unlink()
    with pytest.raises(TaskDataError) as err:
        _task(folder).load(tmp_path / "c")
    assert "t10k-labels-idx1-ubyte" in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)
    with pytest.raises(TaskDataError, match="does not exist"):
        _task(tmp_path / "nowhere").load(tmp_path / "c")


def test_without_data_it_fails_without_the_network(tmp_path, monkeypatch, network_attempts):
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", tmp_path / "no-package")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    with pytest.raises(TaskDataError) as err:
        FashionMNIST(hf_name="fashion_mnist_missing_here").load(tmp_path / "c")
    assert network_attempts == []  # offline: fails at once, no connection tried (so no retries to wait for)
    assert "apt-get install dataset-fashion-mnist" in str(err.value) and "task.data_dir" in str(err.value)


def test_a_short_run_on_the_idx_files(tmp_path):
    from .conftest import train_smoke

    folder, _ = make_folder(tmp_path, gz=True)
    record = train_smoke(tmp_path, ["task=fmnist_perm", f"task.data_dir={folder}", "task.num_val=10", "attn=sfa"])
    assert record["status"] == "ok" and record["task"] == "fmnist_perm" and record["permutation_seed"] == 0
    assert record["data_source"] == str(folder) and record["seq_len"] == 784


@pytest.mark.skipif(not fmnist.DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_debian_package_is_the_default_source(tmp_path):
    data = FashionMNIST().load(tmp_path)
    assert data.source == str(fmnist.DEBIAN_DIR)
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert np.bincount(data.test.labels).tolist() == [1000] * 10


def test_seq_fmnist_attention_reaches_the_classifier():
    """Under seq_fmnist no pixel is padding: with the same weights, two backends give different logits on images
    whose first pixel is black (with the release's padding the CLS token would copy pixel 0's mask, see no
    attention, and every backend would give the same logits)."""
    import torch

    from lra_sfa.compose import compose_config
    from lra_sfa.train import _build_model

    logits = []
    tokens = torch.randint(1, 256, (4, 784), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0
    for attn in ("full", "linear"):
        cfg = compose_config(["experiment=seq_fmnist", f"attn={attn}"])
        assert cfg.model.padding == "task"
        torch.manual_seed(0)
        model = _build_model(cfg, build_task(cfg.task), torch.device("cpu")).eval()
        with torch.no_grad():
            logits.append(model(tokens))
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)
