"""Pathfinder: generator properties (label true to the image), release-layout reader, cache, CLI."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from lra_sfa.tasks import pathfinder
from lra_sfa.tasks.base import TaskDataError
from lra_sfa.tasks.paddles import dilate
from lra_sfa.tasks.pathfinder import Pathfinder, PathX, read_metadata, run_tool, write_release
from lra_sfa.tasks.pathfinder_gen import generate, generate_image, generate_images
from lra_sfa.tasks.snakes import CONTOUR_LENGTH, lra_params

from .conftest import train_smoke


def components(binary: np.ndarray) -> np.ndarray:
    """8-connected component labels (0 = background), by flood fill."""
    labels = np.zeros(binary.shape, np.int64)
    count = 0
    h, w = binary.shape
    for y0, x0 in zip(*np.nonzero(binary)):
        if labels[y0, x0]:
            continue
        count += 1
        labels[y0, x0] = count
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for yy in range(max(0, y - 1), min(h, y + 2)):
                for xx in range(max(0, x - 1), min(w, x + 2)):
                    if binary[yy, xx] and not labels[yy, xx]:
                        labels[yy, xx] = count
                        stack.append((yy, xx))
    return labels


def check_label_true_to_image(image: np.ndarray, label: int, info: dict, p) -> None:
    origin, terminal = info["marker_snakes"]
    targets = info["targets"]
    # bookkeeping: markers on the first tail of one target and the last head of the same / the other one
    assert label == int(origin == terminal)
    assert info["markers"][0] == targets[origin][0][0]
    assert info["markers"][1] == targets[terminal][-1][0]
    assert [len(t) for t in targets] == [p.contour_length, p.contour_length]
    # rendered pixels: each target is one contour (its paddle gaps bridged by margin + 1 pixels),
    # covering its own markers; with the clean generator the two targets share no pixel, so only label 1
    # connects the markers (the official one, as the release, lets them touch)
    layers = [layer > 0.2 for layer in info["layers"]]
    if p.generator == "clean":
        assert not (layers[0] & layers[1]).any()
    assert 0 <= info["distractors"] <= p.num_distractors
    for which, marker in zip((origin, terminal), info["markers"]):
        y, x = marker
        assert layers[which][max(0, y - 1) : y + 2, max(0, x - 1) : x + 2].any(), "marker off its contour"
    for layer in layers:
        labels = components(dilate(layer, info["margin"] + 1))
        assert labels.max() == 1, "a target contour is broken into pieces"
    # what is drawn is in the image: contour pixels and markers are bright
    for layer in layers:
        assert np.median(image[layer]) > 40
    for y, x in info["markers"]:
        assert image[y, x] > 60


@pytest.mark.parametrize("generator", ["official", "clean"])
@pytest.mark.parametrize("resolution,difficulty,count", [(32, "hard", 24), (32, "easy", 24), (64, "easy", 8),
                                                         (128, "hard", 2)])
def test_generated_label_is_true_to_the_image(resolution, difficulty, count, generator):
    p = lra_params(resolution, difficulty, generator)
    rng = random.Random(f"test-{resolution}-{difficulty}")
    labels = []
    for _ in range(count):
        image, label, info = generate_image(p, rng, keep_layers=True)
        assert image.shape == (resolution, resolution) and image.dtype == np.uint8 and image.max() == 255
        check_label_true_to_image(image, label, info, p)
        labels.append(label)
    assert 0 < sum(labels) < count  # both classes occur


@pytest.mark.parametrize("resolution,difficulty,count", [(32, "hard", 24), (64, "easy", 8), (128, "hard", 3)])
def test_batched_official_label_is_true_to_the_image(resolution, difficulty, count):
    p = lra_params(resolution, difficulty)
    made = generate_images(p, count, random.Random(f"batched-{resolution}"), keep_layers=True)
    for image, label, info in made:
        assert image.shape == (resolution, resolution) and image.dtype == np.uint8 and image.max() == 255
        check_label_true_to_image(image, label, info, p)
    assert 0 < sum(label for _, label, _ in made) < count


def test_lra_parameters():
    assert [lra_params(32, d).num_distractors for d in CONTOUR_LENGTH] == [10, 6, 5]
    p = lra_params(128, "hard")
    assert (p.paddle_margins, p.seed_distance, p.marker_radius, p.contour_length) == ((2, 3), 20, 3.0, 14)
    with pytest.raises(ValueError, match="resolution"):
        lra_params(48, "hard")
    with pytest.raises(ValueError, match="difficulty"):
        lra_params(32, "medium")
    with pytest.raises(ValueError, match=r"generator='snakes' must be one of \['official', 'clean'\]"):
        lra_params(32, "hard", "snakes")


def test_generation_is_deterministic_and_independent_of_workers():
    p = lra_params(32, "easy")
    a_images, a_labels = generate(p, 300, seed=3, workers=1)
    b_images, b_labels = generate(p, 300, seed=3, workers=2)
    np.testing.assert_array_equal(a_images, b_images)
    np.testing.assert_array_equal(a_labels, b_labels)
    c_images, _ = generate(p, 300, seed=4, workers=1)
    assert not np.array_equal(a_images, c_images)
    assert a_images.shape == (300, 1024) and set(np.unique(a_labels)) == {0, 1}


def test_generated_task_is_cached(tmp_path, monkeypatch):
    task = Pathfinder(resolution=32, difficulty="easy", num_train=40, num_val=10, num_test=12, n_workers=1)
    data = task.load(tmp_path)
    assert [len(s) for s in (data.train, data.val, data.test)] == [40, 10, 12]
    assert data.train.inputs.shape == (40, 1024) and Pathfinder.has_padding is False
    assert not np.array_equal(data.train.inputs[:10], data.val.inputs)  # separate seed streams

    def refuse(*args, **kwargs):
        raise AssertionError("Pathfinder images generated again: the cache was not used")

    monkeypatch.setattr(pathfinder, "generate", refuse)
    again = task.load(tmp_path)
    np.testing.assert_array_equal(again.test.inputs, data.test.inputs)


def test_generator_keys_cache_and_record(tmp_path):
    sizes = dict(resolution=32, difficulty="easy", num_train=6, num_val=4, num_test=4, n_workers=1)
    official, clean = Pathfinder(**sizes), Pathfinder(generator="clean", **sizes)
    assert (official.describe()["generator"], clean.describe()["generator"]) == ("official", "clean")
    a, b = official.load(tmp_path), clean.load(tmp_path)
    assert not np.array_equal(a.train.inputs, b.train.inputs)
    names = sorted(path.name for path in (tmp_path / "pathfinder").glob("*.npz"))
    assert len(names) == 6 and sum("_official_" in n for n in names) == 3 and sum("_clean_" in n for n in names) == 3
    assert Pathfinder(data_dir=str(tmp_path)).describe()["generator"] is None  # release files: no generator


def test_seq_len_must_match_resolution():
    with pytest.raises(ValueError, match="task.seq_len=4096"):
        Pathfinder(seq_len=1024, resolution=64)
    assert PathX().seq_len == 16384 and PathX().resolution == 128


def _release(tmp_path, count=40):
    images, labels = generate(lra_params(32, "hard"), count, seed=1, workers=1)
    folder = tmp_path / "lra_release" / "pathfinder32" / "curv_contour_length_14"
    write_release(folder, images, labels, per_batch=15)
    return folder, images, labels


def test_release_reader_round_trip_and_skips_empty_image(tmp_path):
    folder, images, labels = _release(tmp_path)
    assert (folder / "imgs" / "2" / "sample_9.png").is_file()
    assert (folder / "metadata" / "0.npy").read_text().splitlines()[3].split()[:4] == ["imgs/0", "sample_3.png", "3",
                                                                                       str(labels[3])]
    (folder / "imgs" / "0" / "sample_7.png").write_bytes(b"")  # the release has one empty image
    keep = np.ones(len(labels), bool)
    keep[7] = False
    task = Pathfinder(data_dir=str(tmp_path / "lra_release"), resolution=32, difficulty="hard", n_workers=2)
    data = task.load(tmp_path / "cache")
    assert "skipped 1 empty image(s): imgs/0/sample_7.png" in data.source
    got = np.concatenate([data.train.inputs, data.val.inputs, data.test.inputs])
    np.testing.assert_array_equal(got, images[keep])
    np.testing.assert_array_equal(np.concatenate([data.train.labels, data.val.labels, data.test.labels]), labels[keep])
    assert [len(data.train), len(data.val), len(data.test)] == [31, 4, 4]  # 80/10/10 in metadata order
    again = Pathfinder(data_dir=str(folder), resolution=32, difficulty="hard", num_train=5).load(tmp_path / "cache2")
    assert len(again.train) == 5 and "skipped 1" in again.source


def test_release_errors_name_file_and_line(tmp_path):
    folder, _, _ = _release(tmp_path, count=20)
    meta = folder / "metadata" / "1.npy"
    lines = meta.read_text().splitlines()
    lines[2] = "imgs/1 sample_2.png 2 7"
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskDataError, match=r"1\.npy:3: label \(field 3\) '7'"):
        read_metadata(folder)
    lines[2] = "imgs/1 sample_99.png 2 0"
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskDataError, match=r"sample_99.png \(listed at .*1\.npy:3\) does not exist"):
        Pathfinder(data_dir=str(folder), n_workers=1).load(tmp_path / "cache")
    lines[2] = "imgs/1 sample_2.png 2 0"
    meta.write_text("\n".join(lines) + "\n")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(folder / "imgs" / "1" / "sample_2.png")
    with pytest.raises(TaskDataError, match=r"sample_2.png is \(16, 16\), expected \(32, 32\)"):
        Pathfinder(data_dir=str(folder), n_workers=1).load(tmp_path / "cache")
    with pytest.raises(TaskDataError, match="no metadata/ folder"):
        Pathfinder(data_dir=str(tmp_path / "nowhere"), n_workers=1).load(tmp_path / "cache")


def test_samples_cli_writes_png(tmp_path):
    out = tmp_path / "plots" / "samples.png"
    with initialize_config_module("lra_sfa.conf", version_base=None):
        cfg = compose("pathfinder_tools", overrides=["mode=samples", f"out={out}", "num=4", "difficulty=easy"])
    run_tool(cfg)
    with Image.open(out) as image:
        assert image.size[0] > 200 and image.size[1] > 200


def test_trains_from_release_files_and_generated(tmp_path):
    folder, _, _ = _release(tmp_path, count=30)
    record = train_smoke(tmp_path / "a", ["task=pathfinder", f"task.data_dir={folder}"])
    assert record["task"] == "pathfinder" and 0.0 <= record["test_accuracy"] <= 1.0
    record = train_smoke(tmp_path / "b", ["task=pathfinder", "task.difficulty=easy", "task.num_train=16",
                                          "task.num_val=8", "task.num_test=8", "task.n_workers=1"])
    assert record["data_source"].startswith("generated:")
