"""Pathfinder's ``official`` generator reproduces snakes2 (drewlinsley/pathfinder), which made the LRA release.

Two kinds of check:
* the mechanism: snakes2's seed test dilates the occupied mask with the seed paddle's mask through
  ``cv2.dilate``; a reference model of that call written here from OpenCV's documented defaults
  (anchor at the kernel centre, pixels outside the image read as -DBL_MAX), is compared with
  ``Canvas.available`` on every angle, and with OpenCV itself (``cv2``, in the dev extras);
* the outcome: image statistics at 32 px hard against the table of issue 21, which measured them on
  images of the official snakes2 (run unmodified under Python 2.7, and a faithful Python 3 port) and
  of this project's corrected generator (``clean``), on 500 to 1,300 images each.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from lra_sfa.tasks.pathfinder_batch import Batch, build_tables
from lra_sfa.tasks.pathfinder_gen import generate_image, generate_images
from lra_sfa.tasks.snakes import Canvas, RenderCache, lra_params

from .test_tasks_pathfinder import components

LOWEST = -np.finfo(np.float64).max


def dilate_like_cv2(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.dilate(image, kernel)`` with its defaults: out[y, x] = max of image[y + i - a, x + j - a] over the
    kernel's non-zero (i, j), a = the kernel's centre; pixels outside the image count as -DBL_MAX."""
    k, (h, w) = kernel.shape[0], image.shape
    anchor = k // 2
    padded = np.full((h + 2 * k, w + 2 * k), LOWEST)
    padded[k : k + h, k : k + w] = image
    out = np.full(image.shape, LOWEST)
    for i, j in np.argwhere(kernel):
        y, x = k + i - anchor, k + j - anchor
        out = np.maximum(out, padded[y : y + h, x : x + w])
    return out


def snakes2_kernel(cache: RenderCache, margin: int, theta: float) -> np.ndarray:
    """The seed test's kernel: the paddle's margin mask drawn with its start at (r + 1, r + 1) of a
    (2r + 1)^2 window (r = paddle_length + margin), cut to the window, cast to uint8 (1 only where saturated)."""
    reach = cache.p.paddle_length + margin
    sprite = cache.paddle(margin, theta).mask  # (2 half + 1, 2 half + 1) in [0, 1], the start at its centre
    half, size = sprite.shape[0] // 2, 2 * reach + 1
    window = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            a, b = i - (reach + 1) + half, j - (reach + 1) + half
            if 0 <= a < sprite.shape[0] and 0 <= b < sprite.shape[1]:
                window[i, j] = sprite[a, b]
    return window.astype(np.uint8)


def snakes2_free(cache: RenderCache, margin: int, theta: float, occupied: np.ndarray, border: int) -> np.ndarray:
    """Flat indices snakes2 offers as seed tails: none when any dilated pixel is negative, else where the
    dilated mask rounds to 0 (``ceil(x - 0.3) == 0``)."""
    lined = occupied.astype(np.float64)
    lined[:border, :], lined[-border:, :], lined[:, :border], lined[:, -border:] = 1, 1, 1, 1
    dilated = dilate_like_cv2(lined, snakes2_kernel(cache, margin, theta))
    if dilated.min() < 0:
        return np.empty(0, np.int64)
    return np.flatnonzero(np.ceil(dilated - 0.3) == 0)


def _masks(p, seed: int):
    """An empty mask and two with random occupied pixels (fractional values, as painted paddle masks have)."""
    rng = np.random.default_rng(seed)
    yield np.zeros((p.size, p.size))
    for density in (0.03, 0.1):
        yield (rng.random((p.size, p.size)) < density) * rng.random((p.size, p.size))


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_seed_test_matches_the_cv2_model_on_every_angle(resolution):
    p = lra_params(resolution, "hard")
    cache, rng = RenderCache(p), random.Random(resolution)
    for margin in p.paddle_margins:
        for deg in range(-180, 180, 1 if resolution == 32 else 7):
            theta = math.radians(deg)
            for index, occupied in enumerate(_masks(p, deg + 180)):
                border = (1, 2 * p.seed_distance, 3)[index]
                canvas = Canvas(p, cache, margin, rng)
                canvas.view(canvas.mask)[...] = np.maximum(canvas.view(canvas.mask), occupied)
                want = snakes2_free(cache, margin, theta, canvas.view(canvas.mask), border)
                np.testing.assert_array_equal(canvas.available(theta, border), want, err_msg=f"{deg} deg")


def test_the_cv2_model_is_cv2():
    cv2 = pytest.importorskip("cv2")
    p = lra_params(32, "hard")
    cache, rng = RenderCache(p), np.random.default_rng(0)
    for deg in range(-180, 180, 3):
        kernel = snakes2_kernel(cache, 1, math.radians(deg))
        image = (rng.random((32, 32)) < 0.05) * rng.random((32, 32))
        np.testing.assert_array_equal(dilate_like_cv2(image, kernel), cv2.dilate(image, kernel=kernel, iterations=1))


def test_official_seed_test_refuses_most_angles_at_32px():
    """About 92% of seeds refused (issue 21): every angle whose footprint leaves a corner pixel uncovered."""
    official, clean = RenderCache(lra_params(32, "hard")), RenderCache(lra_params(32, "hard", "clean"))
    passed = [deg for deg in range(-180, 180) if official.seed_footprint(1, math.radians(deg))[1]]
    assert 0.90 <= 1 - len(passed) / 360 <= 0.94
    assert all(-180 < deg < -90 for deg in passed)  # only paddles heading up and left
    assert all(clean.seed_footprint(1, math.radians(deg))[1] for deg in range(-180, 180))


# ---- image statistics at 32 px hard ------------------------------------------------------------------
# Issue 21's table: (official snakes2, this project's corrected generator, rounding unit of the figures).
# N_REF is the smallest of its samples.
REFERENCE = {
    "mean intensity": (20.2, 28.0, 0.1),
    "lit fraction (>= 64)": (0.126, 0.176, 0.001),
    "8-connected components (>= 128)": (21.0, 33.0, 1.0),
    "distractors placed": (1.2, 4.6, 0.1),
    "targets overlapping": (0.26, 0.0, 0.01),
}
N_REF = 500


def image_statistics(generator: str, num: int, seed: str, batched: bool = True) -> dict[str, np.ndarray]:
    """Per-image measures of ``num`` generated 32 px hard images (``generate_images``, or one by one)."""
    p, rng = lra_params(32, "hard", generator), random.Random(seed)
    rows = []
    made = generate_images(p, num, rng, keep_layers=True) if batched else (
        generate_image(p, rng, keep_layers=True) for _ in range(num))
    for image, _, info in made:
        first_angle = info["targets"][0][0][1]
        overlap = (info["layers"][0] > 0.2) & (info["layers"][1] > 0.2)
        rows.append((image.mean(), (image >= 64).mean(), components(image >= 128).max(), info["distractors"],
                     overlap.any(), math.sin(first_angle) < 0 and math.cos(first_angle) < 0))
    columns = np.asarray(rows, np.float64).T  # (6, num)
    return dict(zip([*REFERENCE, "first paddle heading up-left"], columns))


def check_against_table(stats: dict[str, np.ndarray], column: int) -> None:
    """Each mean within 4 standard errors of the difference of two samples (ours and the table's, the
    spread taken from ours, or from the table's rate for proportions), plus half the table's rounding."""
    for name, (*values, unit) in REFERENCE.items():
        sample, ref = stats[name], values[column]
        spread = math.sqrt(ref * (1 - ref)) if name == "targets overlapping" else sample.std(ddof=1)
        tolerance = 4 * spread * math.sqrt(1 / len(sample) + 1 / N_REF) + unit / 2
        assert abs(sample.mean() - ref) <= tolerance, f"{name}: {sample.mean():.4f} vs {ref} (+- {tolerance:.4f})"


@pytest.mark.parametrize("num,batched", [(300, True), (300, False), pytest.param(1500, True, marks=pytest.mark.slow)])
def test_official_images_match_the_release_statistics(num, batched):
    """Both ways of growing the targets: in batches (what ``generate`` uses) and one attempt at a time."""
    stats = image_statistics("official", num, seed=f"official-{num}", batched=batched)
    check_against_table(stats, column=0)
    # The table gives 90% for a heading measure it does not define. With the seed's own angle, the seed test
    # admits only up-left angles at 32 px (see above), so every first target starts heading up-left.
    assert stats["first paddle heading up-left"].mean() == 1.0


@pytest.mark.parametrize("num", [200, pytest.param(1000, marks=pytest.mark.slow)])
def test_clean_images_match_the_project_column(num):
    stats = image_statistics("clean", num, seed=f"clean-{num}")
    check_against_table(stats, column=1)
    assert stats["targets overlapping"].max() == 0.0
    heading = stats["first paddle heading up-left"]  # seed angles drawn uniformly: near a quarter up-left
    assert abs(heading.mean() - 0.25) <= 4 * math.sqrt(0.25 * 0.75 / len(heading))


@pytest.mark.parametrize("resolution,difficulty,margin", [(32, "hard", 1), (128, "easy", 3)])
def test_batched_masks_hold_exactly_the_committed_paddles(resolution, difficulty, margin):
    """Every target paddle but the first target's last, pasted one by one as ``Canvas.add_mask`` does."""
    p = lra_params(resolution, difficulty)
    cache = RenderCache(p)
    canvas = Canvas(p, cache, margin, random.Random(0))
    batch = Batch(canvas, build_tables(cache, margin), 600, np.random.default_rng(resolution))
    batch.grow()
    survivors = batch.survivors()
    assert survivors
    for mask, (first, second) in survivors:
        assert len(first) == len(second) == p.contour_length
        want = canvas.mask.copy()
        for centre, angle in first[:-1] + second:
            canvas.add_mask(want, cache.paddle(margin, angle).mask, centre)
        np.testing.assert_array_equal(mask, want)
