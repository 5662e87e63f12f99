"""ListOps: generator faithful to LRA, labels checked by an independent evaluator, official TSV files."""

from __future__ import annotations

import numpy as np
import pytest

from lra_sfa.tasks import listops
from lra_sfa.tasks.base import TaskDataError


def _eval_parenthesised(source: str) -> int:
    """An independent evaluator: recursive descent over the parenthesised official Source."""
    tokens = source.split()
    pos = 0

    def node():
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token.isdigit():
            return ("leaf", int(token))
        if token != "(":
            return ("atom", token)
        left, right = node(), node()
        assert tokens[pos] == ")"
        pos += 1
        return ("pair", left, right)

    def flatten(tree, out):
        if tree[0] == "pair":
            flatten(tree[1], out)
            flatten(tree[2], out)
        else:
            out.append(tree[1])
        return out

    def evaluate(items):
        op, args = items[0], []
        i = 1
        while items[i] != "]":
            if isinstance(items[i], str):
                depth, j = 1, i + 1
                while depth:
                    depth += 1 if isinstance(items[j], str) and items[j].startswith("[") else 0
                    depth -= 1 if items[j] == "]" else 0
                    j += 1
                args.append(evaluate(items[i:j]))
                i = j
            else:
                args.append(items[i])
                i += 1
        return {"[MIN": min, "[MAX": max, "[MED": lambda a: int(np.median(a)),
                "[SM": lambda a: sum(a) % 10}[op](args)

    flat = flatten(node(), [])
    return flat[0] if len(flat) == 1 else evaluate(flat)


def test_generator_labels_lengths_and_uniqueness():
    rows = listops.generate(300, min_length=20, max_length=120, seed=5, workers=2)
    assert len(rows) == 300 and len({source for source, _ in rows}) == 300
    for source, target in rows:
        length = len(listops.tokenize(source))
        assert 20 < length < 120
        assert target == _eval_parenthesised(source)
    assert len({target for _, target in rows}) == 10


def test_generator_is_deterministic_per_seed():
    a = listops.generate(50, 10, 60, seed=1, workers=1)
    assert a == listops.generate(50, 10, 60, seed=1, workers=2)
    assert a != listops.generate(50, 10, 60, seed=2, workers=1)


def test_default_parameters_are_the_lra_ones():
    task = listops.ListOps()
    assert task.gen == {"min_length": 500, "max_length": 2000, "max_depth": 10, "max_args": 10, "seed": 0}
    assert task.sizes == {"train": 96_000, "val": 2_000, "test": 2_000}


def _write_official(folder, rows_per_split=4):
    rows = listops.generate(3 * rows_per_split, 5, 40, seed=9, workers=1)
    for i, split in enumerate(listops.SPLITS):
        listops.write_tsv(folder / f"basic_{split}.tsv", rows[i * rows_per_split : (i + 1) * rows_per_split])
    return rows


def test_official_tsv_roundtrip_and_tokenisation(tmp_path):
    rows = _write_official(tmp_path)
    assert (tmp_path / "basic_train.tsv").read_text().startswith("Source\tTarget\n( ")
    data = listops.ListOps(seq_len=64, data_dir=str(tmp_path)).load(tmp_path / "cache")
    assert data.train.inputs.shape == (4, 64)
    source, target = rows[0]
    tokens = listops.tokenize(source)
    assert "(" not in tokens and ")" not in tokens and "]" not in tokens and tokens[-1] == "X"
    expected = [listops.VOCAB[t] for t in tokens]
    assert data.train.inputs[0, : len(expected)].tolist() == expected
    assert np.all(data.train.inputs[0, len(expected) :] == 0)
    assert data.train.labels[0] == target


def test_released_file_sample_parses(tmp_path):
    """A line in the layout of the LRA release (parenthesised, tab, integer target)."""
    (tmp_path / "basic_train.tsv").write_text("Source\tTarget\n( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )\t9\n")
    split = listops.read_tsv(tmp_path / "basic_train.tsv", 16)
    assert split.labels.tolist() == [9]
    assert listops.evaluate_tokens(listops.tokenize("( ( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) ] )")) == 9


@pytest.mark.parametrize(
    "content, message",
    [
        ("Source\tTarget\n( [MAX 1 ] )\tseven\n", "line 2: Target 'seven' is not an integer"),
        ("Src\tTgt\n", "line 1: expected header"),
        ("Source\tTarget\n[MAX 1 ]\n", "line 2: expected 2 tab-separated fields"),
        ("Source\tTarget\n", "no examples"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "basic_train.tsv"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=message) as info:
        listops.read_tsv(path, 16)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TaskDataError, match="basic_train.tsv"):
        listops.ListOps(seq_len=16, data_dir=str(tmp_path)).load(tmp_path)


def test_generated_data_is_cached(tmp_path):
    task = listops.ListOps(seq_len=32, num_train=40, num_val=5, num_test=5, min_length=5, max_length=30, workers=1)
    first = task.load(tmp_path)
    folder = next((tmp_path / "listops").iterdir())
    stamp = (folder / "basic_train.tsv").stat().st_mtime_ns
    second = task.load(tmp_path)
    assert (folder / "basic_train.tsv").stat().st_mtime_ns == stamp
    assert np.array_equal(first.train.inputs, second.train.inputs)
    assert (folder / "tokens_32.npz").is_file()
