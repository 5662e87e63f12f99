"""Text (IMDB bytes): the official aclImdb tree, caching, errors, and a fast offline failure."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lra_sfa.tasks.base import TaskDataError
from lra_sfa.tasks.text import Text

from .conftest import train_smoke


def write_aclimdb(root, counts=(5, 4), seed=0):
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt with random UTF-8 reviews; returns {path: (text, label)}."""
    rng = random.Random(seed)
    written = {}
    for split, count in zip(("train", "test"), counts):
        for label_name, label in (("neg", 0), ("pos", 1)):
            folder = root / "aclImdb" / split / label_name
            folder.mkdir(parents=True)
            for review_id in rng.sample(range(1000), count):
                rating = rng.randint(7, 10) if label else rng.randint(1, 4)
                words = [rng.choice(["great", "awful", "film", "<br />", "plot", "é", "ünïcode", "ok"])
                         for _ in range(rng.randint(3, 40))]
                text = " ".join(words)
                path = folder / f"{review_id}_{rating}.txt"
                path.write_text(text, encoding="utf-8")
                written[path] = (text, label)
    return root / "aclImdb", written


def test_reads_official_tree(tmp_path):
    folder, written = write_aclimdb(tmp_path)
    task = Text(seq_len=64, data_dir=str(folder))
    data = task.load(tmp_path / "cache")
    assert data.train.inputs.shape == (10, 64) and data.test.inputs.shape == (8, 64)
    assert data.val is data.test and "val = test" in data.source
    assert task.vocab_size == 257 and task.num_classes == 2 and task.has_padding
    # every review appears with its label, as byte + 1, truncated or padded with 0
    rows = {(r[r > 0] - 1).astype(np.uint8).tobytes(): lab for r, lab in zip(data.train.inputs, data.train.labels)}
    for path, (text, label) in written.items():
        if "/train/" not in str(path):
            continue
        raw = text.encode("utf-8")[:64]
        assert rows[raw] == label
    assert data.train.inputs.max() <= 256 and data.train.inputs.min() == 0
    assert sorted(np.unique(data.test.labels)) == [0, 1]


def test_second_load_comes_from_the_cache_and_is_equal(tmp_path, monkeypatch):
    folder, _ = write_aclimdb(tmp_path)
    first = Text(seq_len=32, data_dir=str(folder)).load(tmp_path / "cache")

    def refuse(*args, **kwargs):
        raise AssertionError("aclImdb read again: the cache was not used")

    monkeypatch.setattr(Text, "_read", refuse)
    second = Text(seq_len=32, data_dir=str(folder)).load(tmp_path / "cache")
    monkeypatch.undo()
    np.testing.assert_array_equal(first.train.inputs, second.train.inputs)
    assert len(list((tmp_path / "cache" / "text").glob("*.npz"))) == 1
    Text(seq_len=16, data_dir=str(folder)).load(tmp_path / "cache")  # another length, another cache entry
    assert len(list((tmp_path / "cache" / "text").glob("*.npz"))) == 2


def test_malformed_and_missing_files_are_named(tmp_path):
    folder, _ = write_aclimdb(tmp_path)
    (folder / "train" / "pos" / "notes.txt").write_text("x")
    with pytest.raises(TaskDataError, match=r"notes\.txt: file name is not <id>_<rating>\.txt"):
        Text(seq_len=16, data_dir=str(folder)).load(tmp_path / "cache")
    (folder / "train" / "pos" / "notes.txt").unlink()
    (folder / "train" / "neg" / "5_1.txt").write_text("")
    with pytest.raises(TaskDataError, match=r"5_1\.txt is empty"):
        Text(seq_len=16, data_dir=str(folder)).load(tmp_path / "cache")
    with pytest.raises(TaskDataError, match=r"missing folder .*test/neg"):
        (tmp_path / "partial" / "train" / "pos").mkdir(parents=True)
        Text(seq_len=16, data_dir=str(tmp_path / "partial")).load(tmp_path / "cache")


def test_offline_without_data_fails_without_the_network(tmp_path, monkeypatch, network_attempts):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    with pytest.raises(TaskDataError, match=r"aclImdb.*datasets.load_dataset\('stanfordnlp/imdb'\)"):
        Text(seq_len=16, hf_name="stanfordnlp/imdb").load(tmp_path / "cache")
    assert network_attempts == []


def test_trains_from_official_files(tmp_path):
    folder, _ = write_aclimdb(tmp_path, counts=(6, 4))
    record = train_smoke(tmp_path, ["task=text", f"task.data_dir={folder}", "task.seq_len=64"])
    assert record["task"] == "text" and 0.0 <= record["test_accuracy"] <= 1.0
