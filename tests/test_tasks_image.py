"""Image (CIFAR-10 grey): official pickles (b'data', b'labels'), TF grey levels, splits, errors, offline."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lra_sfa.tasks.base import TaskDataError
from lra_sfa.tasks.image import TEST_FILE, TRAIN_FILES, Cifar10, rgb_to_gray

from .conftest import train_smoke


def write_cifar(folder, per_batch=20, seed=0):
    """cifar-10-batches-py with random images; returns (train rgb (N, 3072), labels, test rgb, labels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in TRAIN_FILES + (TEST_FILE,):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        out.append((data, np.asarray(labels)))
    train = (np.concatenate([d for d, _ in out[:5]]), np.concatenate([lab for _, lab in out[:5]]))
    return train, out[5]


def test_grayscale_matches_tensorflow_formula():
    # tf.image.rgb_to_grayscale on uint8: float32 x/255, weights (0.2989, 0.587, 0.114), then x*255.5 truncated
    rgb = np.asarray([[255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0], [10, 200, 30]], np.uint8)
    expected = [255, 76, 149, 29, 0, int((10 * 0.2989 + 200 * 0.587 + 30 * 0.114) / 255 * 255.5)]
    assert rgb_to_gray(rgb).tolist() == expected
    rng = np.random.default_rng(1)
    many = rng.integers(0, 256, size=(500, 3), dtype=np.uint8)
    reference = np.floor(many.astype(np.float64) / 255 @ np.asarray([0.2989, 0.587, 0.114]) * 255.5)
    assert np.abs(rgb_to_gray(many).astype(np.float64) - reference).max() <= 1


def test_reads_official_pickles(tmp_path, monkeypatch):
    (train_rgb, train_labels), (test_rgb, test_labels) = write_cifar(tmp_path / "cifar-10-batches-py")
    task = Cifar10(data_dir=str(tmp_path / "cifar-10-batches-py"))
    data = task.load(tmp_path / "cache")
    assert task.vocab_size == 256 and task.num_classes == 10 and Cifar10.has_padding is False
    assert [len(data.train), len(data.val), len(data.test)] == [90, 10, 20]  # train[:90%], train[90%:], test
    expected = rgb_to_gray(train_rgb.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)).reshape(-1, 1024)
    np.testing.assert_array_equal(np.concatenate([data.train.inputs, data.val.inputs]), expected)
    np.testing.assert_array_equal(np.concatenate([data.train.labels, data.val.labels]), train_labels)
    np.testing.assert_array_equal(data.test.labels, test_labels)
    # pixel (row 3, col 5) of image 0: planes R, G, B of 1024 values each
    r, g, b = (int(test_rgb[0, plane * 1024 + 3 * 32 + 5]) for plane in range(3))
    assert data.test.inputs[0, 3 * 32 + 5] == rgb_to_gray(np.asarray([r, g, b], np.uint8))

    def refuse(*args, **kwargs):
        raise AssertionError("CIFAR pickles read again: the cache was not used")

    monkeypatch.setattr(Cifar10, "_read", staticmethod(refuse))
    again = Cifar10(data_dir=str(tmp_path / "cifar-10-batches-py")).load(tmp_path / "cache")
    np.testing.assert_array_equal(again.test.inputs, data.test.inputs)


def test_malformed_pickles_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(TaskDataError, match=r"data_batch_3: b'data' is uint8 \(4, 100\)"):
        Cifar10(data_dir=str(folder)).load(tmp_path / "cache")
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": 1}, f)
    with pytest.raises(TaskDataError, match=r"data_batch_3 must hold a dict with keys b'data' and b'labels'"):
        Cifar10(data_dir=str(folder)).load(tmp_path / "cache")
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(TaskDataError, match=r"data_batch_3 is not a readable CIFAR pickle"):
        Cifar10(data_dir=str(folder)).load(tmp_path / "cache")
    write_cifar(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(TaskDataError, match=r"missing file .*test_batch.*cifar-10-python\.tar\.gz"):
        Cifar10(data_dir=str(folder)).load(tmp_path / "cache")


def test_offline_without_data_fails_without_the_network(tmp_path, monkeypatch, network_attempts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(TaskDataError, match=r"cifar-10-batches-py"):
        Cifar10().load(tmp_path / "cache")
    assert network_attempts == []
    with pytest.raises(ValueError, match="seq_len=1000 must be 1024"):
        Cifar10(seq_len=1000)


def test_trains_from_official_files(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", per_batch=8)
    record = train_smoke(tmp_path, ["task=image", f"task.data_dir={tmp_path / 'cifar-10-batches-py'}"])
    assert record["task"] == "image" and 0.0 <= record["test_accuracy"] <= 1.0
