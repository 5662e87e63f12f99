"""Pathfinder images: snake contours made of paddles, distractor snakes and two circle markers.

A re-implementation of the algorithm of the published generator (drewlinsley/pathfinder
``snakes2.py``/``snakes.py``; parameters per resolution from LRA ``data/pathfinder.py``),
written for speed: paddles are rendered once per orientation and cached (PIL line at
``aa_scale`` x, Lanczos down-sampling, as the original), images are composed on a padded
float canvas with slicing, and the candidate directions of each growth step are precomputed.

Per image (as the original): label ~ Bernoulli(0.5); a paddle margin is drawn from the
list; two target snakes of ``contour_length`` paddles grow from seeds ``seed_distance``
apart (the first seed keeps 2 x seed_distance from the border); each step moves the pivot
``length + 2 margin`` ahead and samples the next paddle's far end on a circle of radius
``length + margin``, weighted by ``cos(min(continuity * turn, pi/2))^2`` and by the free
space (mask dilated by the margin), retrying ``max_paddle_retrial`` times when the new
paddle's margin mask overlaps the occupied mask; any failure restarts both targets. Then
``num_distractors`` snakes of ``distractor_length`` paddles are added (each retried up to
``max_distractor_retrial`` times, skipped when it cannot be placed, stopping when < 1% of
the area is free). Targets use paddle_contrast x snake_contrast, distractors snake_contrast
(as the original). Markers (disks of ``marker_radius``, drawn at ``aa_scale`` x and
Lanczos-resized) go on the first paddle's tail of one target and the last paddle's head of
the same target (label 1) or of the other one (label 0). The image is byte-scaled to
0..255 (what ``scipy.misc.imsave`` did).

Two generators (``SnakeParams.generator``):

* ``official`` (default) behaves as snakes2 did when it made the LRA release, bugs included. Its
  seed test (``RenderCache.seed_footprint``) lets through, at 32 px, only paddles heading up and
  left (30 angles of 360): the first target always starts that way and most distractor tries
  fail. The second seed is not tested against the first; a target paddle's mask is committed one
  step late, so a target does not see the other's newest paddle; only the second target's last
  paddle is committed before the distractors: the targets may touch (a quarter of 32 px images).
* ``clean`` keeps the label true to the image: the seed test uses the paddle footprint placed
  exactly at the tail, the second seed paddle must not overlap the first, each target sees the
  other's newest paddle, and both last paddles are committed before the distractors.

Single-paddle filler (``use_single_paddles``) is off in both, as in the published wrapper script.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from lra_sfa.tasks.paddles import Paddle, disk, render_marker, render_paddle
from lra_sfa.tasks.paddles import translate as _translate

CONTOUR_LENGTH = {"easy": 6, "intermediate": 9, "hard": 14}
GENERATORS = ("official", "clean")


@dataclass(frozen=True)
class SnakeParams:
    size: int
    padding: int
    paddle_margins: tuple[int, ...]
    paddle_length: int
    thickness: float
    marker_radius: float
    seed_distance: int
    continuity: float
    contour_length: int
    distractor_length: int
    num_distractors: int
    snake_contrasts: tuple[float, ...]
    paddle_contrasts: tuple[float, ...]
    aa_scale: int = 2
    max_paddle_retrial: int = 2
    max_distractor_retrial: int = 4
    generator: str = "official"


# Per resolution: padding, margins, paddle length, thickness, marker radius, seed distance,
# continuity, distractor budget (num_distractors = budget // distractor_length), contrasts.
_RESOLUTION = {
    32: dict(padding=1, paddle_margins=(1,), paddle_length=2, thickness=0.5, marker_radius=1.5, seed_distance=7,
             continuity=1.0, budget=20, snake_contrasts=(2.0,), paddle_contrasts=(0.75,)),
    64: dict(padding=1, paddle_margins=(1,), paddle_length=5, thickness=1.0, marker_radius=2.5, seed_distance=12,
             continuity=1.8, budget=22, snake_contrasts=(0.8,), paddle_contrasts=(1.0,)),
    128: dict(padding=1, paddle_margins=(2, 3), paddle_length=5, thickness=1.5, marker_radius=3.0, seed_distance=20,
              continuity=1.8, budget=35, snake_contrasts=(0.9,), paddle_contrasts=(1.0,)),
    256: dict(padding=22, paddle_margins=(3,), paddle_length=5, thickness=2.0, marker_radius=5.0, seed_distance=27,
              continuity=1.8, budget=30, snake_contrasts=(1.0,), paddle_contrasts=(1.0,)),
}


def lra_params(resolution: int, difficulty: str, generator: str = "official") -> SnakeParams:
    """The LRA release's generator settings for ``resolution`` (32/64/128/256), difficulty and
    ``generator`` (``official``: snakes2's behaviour, bug included; ``clean``: the corrected one)."""
    if generator not in GENERATORS:
        raise ValueError(f"pathfinder: generator={generator!r} must be one of {list(GENERATORS)}")
    if resolution not in _RESOLUTION:
        raise ValueError(f"pathfinder: resolution={resolution!r} must be one of {sorted(_RESOLUTION)}")
    if difficulty not in CONTOUR_LENGTH:
        raise ValueError(f"pathfinder: difficulty={difficulty!r} must be one of {list(CONTOUR_LENGTH)}")
    cfg = dict(_RESOLUTION[resolution])
    contour_length = CONTOUR_LENGTH[difficulty]
    distractor_length = contour_length // 3  # Python 2 integer division in the original scripts
    budget = cfg.pop("budget")
    return SnakeParams(size=resolution, contour_length=contour_length, distractor_length=distractor_length,
                       num_distractors=budget // distractor_length, generator=generator, **cfg)


def _flip(theta: float) -> float:
    return theta + math.pi if theta < 0 else theta - math.pi


def _covers(offsets: np.ndarray, size: int) -> bool:
    """Whether every pixel of a size x size image has at least one of ``offsets`` (k, 2) inside it."""
    hit = np.zeros((size, size), bool)
    for dy, dx in offsets:
        hit[max(0, -dy) : size - max(0, dy), max(0, -dx) : size - max(0, dx)] = True
    return bool(hit.all())


class RenderCache:
    """Per-process renderings and geometry: paddles per (margin, angle), the marker, growth candidates."""

    def __init__(self, p: SnakeParams) -> None:
        self.p = p
        self.paddles: dict[tuple[int, float], Paddle] = {}
        self.marker = render_marker(p.marker_radius, p.aa_scale)
        half = p.paddle_length + math.ceil(p.thickness) + max(p.paddle_margins)
        reach = p.paddle_length + 3 * max(p.paddle_margins) + 2  # candidate + disk beyond an off-image pivot
        self.border = max(half, reach, self.marker.shape[0] // 2) + 1
        self.full = p.size + 2 * self.border
        self.steps = {m: self._step_candidates(p.paddle_length + m, m) for m in p.paddle_margins}
        self.turn_weights: dict[tuple[int, float], np.ndarray] = {}
        self.footprints: dict[tuple[int, float], tuple[np.ndarray, bool]] = {}
        self.fresh_free: dict[tuple[int, float, int], np.ndarray] = {}
        self.first_angles: dict[tuple[int, int], list[int]] = {}
        self.inside = np.zeros((self.full, self.full), np.float32)  # 1 on the image, 0 on the border
        self.inside[self.border : self.border + p.size, self.border : self.border + p.size] = 1.0

    def paddle(self, margin: int, theta: float) -> Paddle:
        key = (margin, round(theta, 9))
        if key not in self.paddles:
            p = self.p
            self.paddles[key] = render_paddle(p.paddle_length, p.thickness, margin, p.aa_scale, theta)
        return self.paddles[key]

    def seed_footprint(self, margin: int, theta: float) -> tuple[np.ndarray, bool]:
        """Offsets (k, 2) from a candidate tail that must be free for a seed along ``theta``, and whether
        the seed test can pass at all (memoised). ``clean``: the saturated part of the paddle's margin mask
        at the tail. ``official``: snakes2 draws that mask from (r + 1, r + 1) in a (2r + 1)^2 window,
        r = paddle_length + margin, cut to the window, and dilates the occupied mask with it by
        ``cv2.dilate``, anchored at the window's centre: the footprint loses its far side and moves one pixel
        down and right. Pixels outside the image read as -DBL_MAX, so if any image pixel's footprint lies
        wholly outside, the dilated mask has a negative value and snakes2 finds no free tail at all."""
        key = (margin, round(theta, 9))
        if key not in self.footprints:
            struct = self.paddle(margin, theta).struct
            if self.p.generator == "clean":
                self.footprints[key] = (struct, True)
            else:
                reach = self.p.paddle_length + margin
                kept = struct[((struct >= -reach - 1) & (struct <= reach - 1)).all(1)] + 1  # (k', 2)
                self.footprints[key] = (kept, _covers(kept, self.p.size))
        return self.footprints[key]

    def turn_weight(self, margin: int, theta: float) -> np.ndarray:
        """cos(min(continuity * turn, pi/2))^2 for each growth candidate after heading ``theta`` (U,)."""
        key = (margin, round(theta, 9))
        if key not in self.turn_weights:
            turn = np.abs(self.steps[margin][1] - theta)
            turn = np.minimum(np.minimum(turn, 2 * np.pi - turn) * self.p.continuity, 0.5 * np.pi)
            self.turn_weights[key] = np.maximum(np.cos(turn), 0.0) ** 2
        return self.turn_weights[key]

    def _step_candidates(self, radius: int, margin: int) -> tuple[np.ndarray, ...]:
        """Unique pixel offsets on a circle of ``radius`` (one sample per pixel of arc), their angles, their
        flat canvas offsets (U,), and those of each one's margin disk (U, D) for the dilated-mask lookup."""
        angles = np.deg2rad(np.arange(0, 360, 360.0 / (2 * radius * math.pi)))
        offsets = np.stack([np.floor(radius * np.sin(angles)), np.floor(radius * np.cos(angles))], 1).astype(int)
        offsets = np.unique(offsets, axis=0)  # (U, 2)
        near = offsets[:, None, :] + disk(margin)[None, :, :]  # (U, D, 2)
        flat = offsets[:, 0] * self.full + offsets[:, 1]
        return offsets, np.arctan2(offsets[:, 0], offsets[:, 1]), flat, near[..., 0] * self.full + near[..., 1]


@dataclass
class Snake:
    pivot: tuple[int, int]
    theta: float
    tail: tuple[int, int]  # origin tip (first paddle's start)
    head: tuple[int, int]  # terminal tip (last paddle's far end)
    paddles: list[tuple[tuple[int, int], float]] = field(default_factory=list)  # (start, orientation)
    pending: tuple[np.ndarray, tuple[int, int]] | None = None  # newest paddle's mask, not yet committed
    strokes: list[tuple[np.ndarray, tuple[int, int], float]] = field(default_factory=list)  # painted on success


class Canvas:
    """Image and occupancy mask on a zero border, so that paddles paste by slicing."""

    def __init__(self, p: SnakeParams, cache: RenderCache, margin: int, rng: random.Random,
                 keep_layers: bool = False) -> None:
        self.p, self.cache, self.margin, self.rng, self.keep_layers = p, cache, margin, rng, keep_layers
        self.size, self.border = p.size, cache.border
        self.image = np.zeros((cache.full, cache.full), np.float32)
        self.mask = np.zeros((cache.full, cache.full), np.float32)
        inner, pad = self.view(self.mask), p.padding
        inner[:pad, :], inner[-pad:, :], inner[:, :pad], inner[:, -pad:] = 1, 1, 1, 1

    def view(self, canvas: np.ndarray) -> np.ndarray:
        b = self.border
        return canvas[b : b + self.size, b : b + self.size]

    def region(self, sprite: np.ndarray, at: tuple[int, int]) -> tuple[slice, slice]:
        half = sprite.shape[0] // 2
        y, x = at[0] + self.border - half, at[1] + self.border - half
        return slice(y, y + sprite.shape[0]), slice(x, x + sprite.shape[1])

    def paste(self, canvas: np.ndarray, sprite: np.ndarray, at: tuple[int, int], scale: float = 1.0) -> None:
        ys, xs = self.region(sprite, at)
        np.maximum(canvas[ys, xs], sprite * scale if scale != 1.0 else sprite, out=canvas[ys, xs])

    def add_mask(self, mask: np.ndarray, sprite: np.ndarray, at: tuple[int, int]) -> None:
        """Paste a paddle mask; the part outside the image is dropped (the original clips it)."""
        self.paste(mask, sprite, at)
        half, lo, hi = sprite.shape[0] // 2, min(at), max(at)
        if lo - half < 0 or hi + half >= self.size:
            b = self.border
            mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = 0, 0, 0, 0

    def inside(self, *points: tuple[int, int]) -> bool:
        return all(0 <= y < self.size and 0 <= x < self.size for y, x in points)

    def collides(self, mask: np.ndarray, sprite: np.ndarray, at: tuple[int, int]) -> bool:
        ys, xs = self.region(sprite, at)
        return float((mask[ys, xs] + sprite).max()) >= 1.8

    def draw(self, snake: Snake, paddle: Paddle, at: tuple[int, int], theta: float, contrast: float) -> None:
        snake.paddles.append((at, theta))
        snake.strokes.append((paddle.line, at, contrast))

    def paint(self, snake: Snake) -> np.ndarray | None:
        """Put a finished snake's paddles on the image; with ``keep_layers`` also return its own layer."""
        layer = np.zeros_like(self.image) if self.keep_layers else None
        for line, at, contrast in snake.strokes:
            self.paste(self.image, line, at, contrast)
            if layer is not None:
                self.paste(layer, line, at, contrast)
        return None if layer is None else self.view(layer)

    # ---- seeds -------------------------------------------------------------------------------------
    def available(self, theta: float, border: int, fresh: bool = False) -> np.ndarray:
        """Flat indices of free tails for a seed along ``theta`` (``RenderCache.seed_footprint``), none when
        the seed test refuses the angle; the ``border`` outermost pixels count as occupied.

        ``fresh``: the mask is still the empty canvas's (first target seed), so the answer depends
        on (margin, theta, border) only and is memoised.
        """
        footprint, usable = self.cache.seed_footprint(self.margin, theta)
        if not usable:
            return footprint[:0, 0]
        key = (self.margin, round(theta, 9), border)
        if fresh and key in self.cache.fresh_free:
            return self.cache.fresh_free[key]
        occupied = self.mask > 0.3  # padded, (full, full)
        inner = self.view(occupied)
        inner[:border, :], inner[-border:, :], inner[:, :border], inner[:, -border:] = True, True, True, True
        blocked = np.zeros((self.size, self.size), bool)
        b, s = self.border, self.size
        for dy, dx in footprint:
            blocked |= occupied[b + dy : b + dy + s, b + dx : b + dx + s]
        free = np.flatnonzero(~blocked)
        if fresh:
            self.cache.fresh_free[key] = free
        return free

    def seed(self, border: int, contrast: float, fresh: bool = False) -> Snake | None:
        """A first paddle at a free place (the original ``seed_snake``); None when nothing fits. ``fresh``
        (first target, empty canvas): the first angle is drawn among those with a free tail; an attempt
        drawing another fails before drawing anything else, so skipping it leaves the distribution as is."""
        p, rng = self.p, self.rng
        for trial in range(p.max_paddle_retrial + 1):
            if fresh and trial == 0:
                angles = self.first_angles(border)
                if not angles:
                    return None
                theta = math.radians(angles[rng.randrange(len(angles))])
            else:
                theta = math.radians(rng.randrange(-180, 180))
            free = self.available(theta, border, fresh)
            if len(free) == 0:
                return None
            tail = divmod(int(free[rng.randrange(len(free))]), self.size)
            head = _translate(*tail, theta, p.paddle_length)
            pivot = _translate(*head, _flip(theta), p.paddle_length + self.margin)
            if self.inside(head, pivot):
                return self._start(tail, theta, pivot, contrast)
        return None

    def first_angles(self, border: int) -> list[int]:
        """Angles (whole degrees, ascending) with a free tail on the empty canvas, memoised."""
        key = (self.margin, border)
        if key not in self.cache.first_angles:
            self.cache.first_angles[key] = [
                deg for deg in range(-180, 180) if len(self.available(math.radians(deg), border, fresh=True))]
        return self.cache.first_angles[key]

    def second_seed(self, first: Snake, contrast: float) -> Snake | None:
        """The other target's first paddle, ``seed_distance`` from the first one's tail: its head and
        pivot on the image; ``clean`` also wants its tail there and no overlap with the first paddle
        (``official``, as snakes2, tests neither)."""
        p, rng = self.p, self.rng
        for _ in range(p.max_paddle_retrial + 1):
            theta = math.radians(rng.randrange(-180, 180))
            phi = math.radians(rng.randrange(0, 360))
            tail = (int(np.round(first.tail[0] + p.seed_distance * math.sin(phi))),
                    int(np.round(first.tail[1] + p.seed_distance * math.cos(phi))))
            head = _translate(*tail, theta, p.paddle_length)
            pivot = _translate(*head, _flip(theta), p.paddle_length + self.margin)
            if self.p.generator == "official":
                if self.inside(head, pivot):
                    return self._start(tail, theta, pivot, contrast)
                continue
            if not self.inside(head, pivot, tail):
                continue
            mask = self.mask.copy()
            self.add_mask(mask, *first.pending)
            if not self.collides(mask, self.cache.paddle(self.margin, theta).mask, tail):
                return self._start(tail, theta, pivot, contrast)
        return None

    def _start(self, tail, theta, pivot, contrast) -> Snake:
        snake = Snake(pivot=pivot, theta=theta, tail=tail, head=tail)
        paddle = self.cache.paddle(self.margin, theta)
        self.draw(snake, paddle, tail, theta, contrast)
        snake.pending = (paddle.mask, tail)
        return snake

    # ---- growth ------------------------------------------------------------------------------------
    def extend(self, snake: Snake, contrast: float, mask: np.ndarray, partner_mask: np.ndarray | None = None) -> bool:
        """Add one paddle ahead of the snake (the original ``extend_snake``); False at a dead end.

        ``mask`` is what this snake must avoid (committed paddles, plus the partner target's newest);
        on success the snake's previous paddle is committed to it, and its new paddle goes into
        ``partner_mask`` (the other target's view) when given.
        """
        p, m, rng = self.p, self.margin, self.rng
        pivot = _translate(*snake.pivot, snake.theta, p.paddle_length + 2 * m)
        offsets, angles, flat, near = self.cache.steps[m]
        base = (pivot[0] + self.border) * self.cache.full + pivot[1] + self.border
        inside = self.cache.inside.ravel()[flat + base]  # (U,) 1 where the candidate is on the image
        dilated = mask.ravel()[near + base].max(1)  # (U,) mask dilated by the margin, at each candidate
        pmf = inside * (1.0 - dilated) * self.cache.turn_weight(m, snake.theta)
        total = pmf.sum()
        if total < 1e-4:
            return False
        cmf = np.cumsum(pmf / total)
        for _ in range(p.max_paddle_retrial + 1):
            index = int(np.argmax(cmf > rng.random()))
            theta = float(angles[index])
            head = (pivot[0] + int(offsets[index, 0]), pivot[1] + int(offsets[index, 1]))
            paddle = self.cache.paddle(m, _flip(theta))
            if not self.collides(mask, paddle.mask, head):
                break
        else:
            return False
        self.draw(snake, paddle, head, _flip(theta), contrast)
        self.add_mask(mask, *snake.pending)
        if partner_mask is not None:
            self.add_mask(partner_mask, paddle.mask, head)
        snake.pending, snake.pivot, snake.theta, snake.head = (paddle.mask, head), pivot, theta, head
        return True
