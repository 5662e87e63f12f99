"""Needle in a haystack: the needle is where the depth says, the label is its value, heatmap output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lra_sfa.report.needle import plot_needle_heatmap
from lra_sfa.tasks.needle import QUERY, Needle, make_split

from .conftest import train_smoke


def _layout(task: Needle):
    g = task.gen
    first_key = 2 + g["filler_vocab"]
    first_value = first_key + g["num_keys"]
    return first_key, first_value


@pytest.mark.parametrize("seq_len,num_pairs", [(64, 1), (300, 4), (1000, 16)])
def test_needle_at_stated_depth_and_label_is_its_value(tmp_path, seq_len, num_pairs):
    task = Needle(seq_len=seq_len, num_pairs=num_pairs, num_train=50, num_val=20, num_test=40, seed=7)
    data = task.load(tmp_path)
    first_key, first_value = _layout(task)
    for split in (data.train, data.val, data.test):
        x = split.inputs.astype(np.int64)
        assert x.shape == (len(split), seq_len) and x.min() >= 1 and x.max() < task.vocab_size
        assert (x[:, -2] == QUERY).all() and (x[:, :-2] != QUERY).all()
        query_key = x[:, -1]
        assert ((query_key >= first_key) & (query_key < first_value)).all()
        np.testing.assert_array_equal(split.meta["length"], seq_len)
        for row, depth, label, key in zip(x, split.meta["depth"], split.labels, query_key):
            hay = row[:-2]
            start = int(round(depth * (seq_len - 4)))
            assert hay[start] == key and hay[start + 1] == first_value + label  # the needle, at its depth
            assert np.count_nonzero(hay == key) == 1  # the queried key occurs once in the haystack
            keys = hay[(hay >= first_key) & (hay < first_value)]
            values = np.flatnonzero(hay >= first_value)
            assert len(keys) == num_pairs == len(np.unique(keys)) == len(values)
            key_positions = np.flatnonzero((hay >= first_key) & (hay < first_value))
            np.testing.assert_array_equal(hay[values - 1], hay[key_positions])  # every value follows its key
    grid = task.depth_grid()
    assert set(np.unique(data.test.meta["depth"])) == set(np.round(grid, 4))
    assert len(set(data.test.labels.tolist())) > 3


def test_extreme_depths_touch_the_ends():
    rng = np.random.default_rng(0)
    split = make_split(rng, 2, 128, np.asarray([0.0, 1.0]), 1, 8, 16, 10)
    first_key = 2 + 8
    assert split.inputs[0, 0] >= first_key and split.inputs[0, 1] >= first_key + 16
    assert split.inputs[1, 124] == split.inputs[1, -1] and split.inputs[1, -2] == QUERY


def test_long_sequences_are_cheap(tmp_path):
    task = Needle(seq_len=1 << 18, num_pairs=2, num_train=4, num_val=2, num_test=5)
    data = task.load(tmp_path)
    assert data.test.inputs.dtype == np.int16 and data.test.inputs.shape == (5, 1 << 18)
    again = Needle(seq_len=1 << 18, num_pairs=2, num_train=4, num_val=2, num_test=5).load(tmp_path)
    np.testing.assert_array_equal(again.test.inputs, data.test.inputs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="data_dir must be null"):
        Needle(data_dir="/somewhere")
    with pytest.raises(ValueError, match="too short"):
        Needle(seq_len=16, num_pairs=4)
    with pytest.raises(ValueError, match="num_pairs=100"):
        Needle(num_pairs=100, num_keys=64)


def test_heatmap_from_records(tmp_path):
    rng = np.random.default_rng(3)
    records = [{"task": "needle", "attn": attn, "seq_len": length,
                "test_accuracy_by_depth": {str(d): float(rng.random()) for d in (0.0, 0.25, 0.5, 0.75, 1.0)}}
               for attn in ("full", "sfa") for length in (1024, 4096)]
    records.append({"task": "listops", "attn": "full", "seq_len": 2000, "test_accuracy": 0.3})
    out = plot_needle_heatmap(records, tmp_path / "plots" / "needle.png")
    with Image.open(out) as image:
        assert image.size[0] > image.size[1] > 100
    with pytest.raises(ValueError, match="no needle records"):
        plot_needle_heatmap(records[-1:], tmp_path / "x.png")


def test_trains_and_records_accuracy_by_depth(tmp_path):
    record = train_smoke(tmp_path, ["task=needle", "task.seq_len=64", "task.num_train=16", "task.num_val=8",
                                    "task.num_test=10"])
    assert set(record["test_accuracy_by_depth"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
