"""Caches never serve stale data, and the report survives any record.

The Pathfinder and Text caches are keyed by a fingerprint of the release
files: editing one label, one image or one review in place gives fresh arrays.
Records with wrongly typed fields are skipped and listed by the report.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from lra_sfa import report
from lra_sfa.records import load_records, store_record, write_json_atomic
from lra_sfa.tasks.pathfinder import Pathfinder, write_release
from lra_sfa.tasks.sources import byte_ids
from lra_sfa.tasks.text import Text

from .test_report import run_record, sweep_record
from .test_tasks_text import write_aclimdb


def release(tmp_path, count=10):
    images = np.random.default_rng(0).integers(1, 256, size=(count, 32 * 32), dtype=np.uint8)
    labels = np.asarray([i % 2 for i in range(count)])
    folder = tmp_path / "release"
    write_release(folder, images, labels)
    return folder, images, labels


def load_pathfinder(folder, cache):
    task = Pathfinder(data_dir=str(folder), num_train=8, num_val=1, num_test=1, n_workers=1)
    data = task.load(cache)
    return np.concatenate([data.train.inputs, data.val.inputs, data.test.inputs]), \
        np.concatenate([data.train.labels, data.val.labels, data.test.labels])


def test_pathfinder_cache_notices_an_edited_label(tmp_path):
    folder, images, labels = release(tmp_path)
    cache = tmp_path / "cache"
    assert load_pathfinder(folder, cache)[1].tolist() == labels.tolist()
    metadata = folder / "metadata" / "0.npy"
    lines = metadata.read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace(" 4 0\n", " 4 1\n")  # one label flipped, same file size
    metadata.write_text("".join(lines))
    expected = labels.copy()
    expected[4] = 1
    assert load_pathfinder(folder, cache)[1].tolist() == expected.tolist()


@pytest.mark.parametrize("edit", ["repaint", "delete"])
def test_pathfinder_cache_notices_an_edited_or_deleted_image(tmp_path, edit):
    folder, images, labels = release(tmp_path)
    cache = tmp_path / "cache"
    np.testing.assert_array_equal(load_pathfinder(folder, cache)[0], images)
    png = folder / "imgs" / "0" / "sample_3.png"
    if edit == "repaint":
        Image.fromarray(np.full((32, 32), 77, np.uint8)).save(png)
        inputs, _ = load_pathfinder(folder, cache)
        assert (inputs[3] == 77).all()
        np.testing.assert_array_equal(np.delete(inputs, 3, axis=0), np.delete(images, 3, axis=0))
    else:
        png.unlink()
        with pytest.raises(ValueError, match="sample_3.png .*does not exist"):
            load_pathfinder(folder, cache)


def test_text_cache_notices_a_review_edited_in_place(tmp_path):
    folder, written = write_aclimdb(tmp_path)
    cache = tmp_path / "cache"
    before = Text(seq_len=64, data_dir=str(folder)).load(cache)
    path = sorted(p for p in written if "train" in p.parts)[0]
    old = path.read_text(encoding="utf-8")
    path.write_text("z" * len(old.encode()), encoding="utf-8")  # same size, new content
    after = Text(seq_len=64, data_dir=str(folder)).load(cache)
    edited = byte_ids(b"z" * len(old.encode()), 64)
    assert any(np.array_equal(row, edited) for row in after.train.inputs)
    assert not np.array_equal(before.train.inputs, after.train.inputs)


BAD_FIELDS = {
    "max_steps_text.json": {"max_steps": "x"},
    "attn_args_list.json": {"attn_args": ["k", 8]},
    "steps_text.json": {"steps": "many"},
    "seq_len_text.json": {"seq_len": "1K"},
    "model_text.json": {"model": "tiny"},
    "by_length_text.json": {"test_accuracy_by_length": {"256": "high"}},
}


def test_report_skips_and_lists_records_with_wrongly_typed_fields(tmp_path):
    rng = random.Random(0)
    runs = tmp_path / "results" / "runs"
    for attn in ("full", "sfa"):
        for _ in range(2):
            store_record(run_record(rng, "listops", attn, 2000, "lra_listops"), runs)
    write_json_atomic(tmp_path / "results" / "bench" / "ok.json", sweep_record("full", "attention", "fwd", 1024))
    for name, fields in BAD_FIELDS.items():
        write_json_atomic(runs / name, run_record(rng, "listops", "full", 2000, "lra_listops") | fields)
    infinite = json.dumps(run_record(rng, "listops", "full", 2000, "lra_listops")).replace(
        '"peak_memory_mb": ', '"peak_memory_mb": Infinity, "was": ')
    (runs / "peak_memory_infinite.json").write_text(infinite)
    write_json_atomic(tmp_path / "results" / "bench" / "bad.json",
                      sweep_record("full", "attention", "fwd", 2048) | {"device": ["H100"]})
    inputs = report.build_report(tmp_path / "results", tmp_path / "out", published_dir=None)
    skipped = dict(inputs.skipped)
    expected = {f"runs/{name}" for name in BAD_FIELDS} | {"runs/peak_memory_infinite.json", "bench/bad.json"}
    assert set(skipped) == expected, skipped
    assert "field 'max_steps' is 'x', expected an integer" in skipped["runs/max_steps_text.json"]
    assert "field 'peak_memory_mb' is inf, expected a finite number" in skipped["runs/peak_memory_infinite.json"]
    assert "field 'device'" in skipped["bench/bad.json"]
    assert len(inputs.runs) == 4 and len(inputs.bench) == 1
    page = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "runs/steps_text.json" in page and (tmp_path / "out" / "tables" / "accuracy.csv").is_file()
    valid, invalid = load_records(runs)
    assert len(valid) == 4 and len(invalid) == len(BAD_FIELDS) + 1
