"""Retrieval (AAN): the LRA release TSVs (no header; label, id1, id2, text1, text2), pairs, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lra_sfa.tasks.base import TaskDataError
from lra_sfa.tasks.retrieval import FILES, Retrieval

from .conftest import train_smoke


def write_aan(folder, counts=(12, 5, 6), seed=0):
    """new_aan_pairs.{train,eval,test}.tsv with random documents; returns {split: [(label, text1, text2)]}."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {}
    for (split, name), count in zip(FILES.items(), counts):
        rows[split] = []
        lines = []
        for _ in range(count):
            label = rng.randint(0, 1)
            docs = [" ".join(rng.choice(["citation", "parsing", "naïve", "model", "(1999)", "corpus"])
                             for _ in range(rng.randint(2, 60))) for _ in range(2)]
            ids = [f"{rng.choice(['P', 'W', 'J'])}{rng.randint(0, 99):02d}-{rng.randint(1000, 9999)}" for _ in range(2)]
            lines.append(f"{float(label)}\t{ids[0]}\t{ids[1]}\t{docs[0]}\t{docs[1]}\n")
            rows[split].append((label, *docs))
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return rows


def test_reads_release_tsvs_as_pairs(tmp_path):
    rows = write_aan(tmp_path / "tsv_data")
    task = Retrieval(seq_len=48, data_dir=str(tmp_path / "tsv_data"))
    data = task.load(tmp_path / "cache")
    assert task.dual and task.vocab_size == 257 and task.num_classes == 2
    assert data.train.inputs.shape == (12, 2, 48) and len(data.val) == 5 and len(data.test) == 6
    for split in ("train", "val", "test"):
        part = getattr(data, split)
        for i, (label, text1, text2) in enumerate(rows[split]):
            assert part.labels[i] == label
            for doc, text in zip(part.inputs[i], (text1, text2)):
                raw = text.encode("utf-8")[:48]
                expected = np.zeros(48, np.int64)
                expected[: len(raw)] = np.frombuffer(raw, np.uint8).astype(np.int64) + 1
                np.testing.assert_array_equal(doc, expected)


def test_second_load_uses_cache(tmp_path):
    write_aan(tmp_path / "tsv_data")
    first = Retrieval(seq_len=32, data_dir=str(tmp_path / "tsv_data")).load(tmp_path / "cache")
    second = Retrieval(seq_len=32, data_dir=str(tmp_path / "tsv_data")).load(tmp_path / "cache")
    np.testing.assert_array_equal(first.test.inputs, second.test.inputs)
    assert len(list((tmp_path / "cache" / "retrieval").glob("*.npz"))) == 1


def test_errors_name_file_and_line(tmp_path):
    folder = tmp_path / "tsv_data"
    write_aan(folder)
    path = folder / FILES["val"]
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = "1.0\tA\tB\tonly four fields\n"
    path.write_text("".join(lines))
    with pytest.raises(TaskDataError, match=r"new_aan_pairs\.eval\.tsv line 4: expected 5 tab-separated fields"):
        Retrieval(seq_len=16, data_dir=str(folder)).load(tmp_path / "cache")
    lines[3] = "yes\tA\tB\tx\ty\n"
    path.write_text("".join(lines))
    with pytest.raises(TaskDataError, match=r"eval\.tsv line 4: label b'yes' is not a number"):
        Retrieval(seq_len=16, data_dir=str(folder)).load(tmp_path / "cache")
    lines[3] = "2.0\tA\tB\tx\ty\n"
    path.write_text("".join(lines))
    with pytest.raises(TaskDataError, match=r"eval\.tsv line 4: label 2.0 is not 0 or 1"):
        Retrieval(seq_len=16, data_dir=str(folder)).load(tmp_path / "cache")
    (folder / FILES["test"]).unlink()
    with pytest.raises(TaskDataError, match=r"lacks new_aan_pairs\.test\.tsv"):
        Retrieval(seq_len=16, data_dir=str(folder)).load(tmp_path / "cache")
    with pytest.raises(TaskDataError, match=r"data_dir is required.*tsv_data"):
        Retrieval(seq_len=16).load(tmp_path / "cache")


def test_trains_from_official_files(tmp_path):
    write_aan(tmp_path / "tsv_data")
    record = train_smoke(tmp_path, ["task=retrieval", f"task.data_dir={tmp_path / 'tsv_data'}", "task.seq_len=32"])
    assert record["task"] == "retrieval" and 0.0 <= record["test_accuracy"] <= 1.0
