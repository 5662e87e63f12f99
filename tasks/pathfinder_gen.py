"""Whole Pathfinder images from ``snakes.Canvas``, and parallel generation of many of them.

``generate_image`` makes one image, one target attempt at a time; ``generate_images`` makes many,
and with the ``official`` generator grows their target attempts in batches (``pathfinder_batch``).
``generate(params, num, seed, workers)`` splits the work into fixed chunks of ``CHUNK`` images,
each with its own ``random.Random((seed, chunk))`` stream, so the result depends on
(params, num, seed) only, not on the number of worker processes.
Speed: see the ``pathfinder`` module docstring (``python -m lra_sfa.tasks.pathfinder mode=bench``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from lra_sfa.tasks.pathfinder_batch import Batch, Tables, build_tables
from lra_sfa.tasks.snakes import Canvas, RenderCache, Snake, SnakeParams

log = logging.getLogger(__name__)
CHUNK = 256
MAX_TARGET_ATTEMPTS = 50_000  # 64 px hard accepts ~1 in 2000 (measured), see the pathfinder docstring
BATCH_BYTES = 32 << 20  # occupied masks of one batch of target attempts
_CACHES: dict[SnakeParams, RenderCache] = {}
_TABLES: dict[tuple[SnakeParams, int], Tables] = {}


def _cache(p: SnakeParams) -> RenderCache:
    if p not in _CACHES:
        _CACHES[p] = RenderCache(p)
    return _CACHES[p]


def _two_targets(canvas: Canvas) -> list | None:
    """Both target snakes (the original ``two_snakes``), or None when any step fails; the canvas is
    changed only on success."""
    p, rng = canvas.p, canvas.rng
    mu = list(p.snake_contrasts) * 2
    rng.shuffle(mu)
    first = canvas.seed(2 * p.seed_distance, rng.choice(p.paddle_contrasts) * mu[0], fresh=True)
    if first is None:
        return None
    second = canvas.second_seed(first, rng.choice(p.paddle_contrasts) * mu[1])
    if second is None:
        return None
    targets = [first, second]
    if p.generator == "official":
        return _grow_official(canvas, targets, mu)
    views = [canvas.mask.copy(), canvas.mask.copy()]  # what each target avoids: committed + partner's newest
    canvas.add_mask(views[0], *second.pending)
    canvas.add_mask(views[1], *first.pending)
    for _ in range(p.contour_length - 1):
        contrast = rng.choice(p.paddle_contrasts)
        for i, snake in enumerate(targets):
            if not canvas.extend(snake, contrast * mu[i], views[i], views[1 - i]):
                return None
    canvas.mask = np.maximum(views[0], views[1])  # every target paddle committed
    return targets


def _grow_official(canvas: Canvas, targets: list, mu: list[float]) -> list | None:
    """snakes2's growth: one occupied mask for both targets, where each paddle is committed one step
    late (so a target does not see the other's newest paddle, and the two may touch or cross), and
    only the second target's last paddle is committed before the distractors."""
    p, rng = canvas.p, canvas.rng
    mask = canvas.mask.copy()
    for _ in range(p.contour_length - 1):
        contrast = rng.choice(p.paddle_contrasts)
        for i, snake in enumerate(targets):
            if not canvas.extend(snake, contrast * mu[i], mask):
                return None
    canvas.add_mask(mask, *targets[1].pending)
    canvas.mask = mask
    return targets


def _distractor(canvas: Canvas) -> bool:
    """One distractor snake (the original ``make_snake``); the canvas is unchanged on failure."""
    p, rng = canvas.p, canvas.rng
    if float((canvas.view(canvas.mask) <= 0.3).mean()) < 0.01:
        return False
    snake = canvas.seed(1, rng.choice(p.snake_contrasts))
    if snake is None:
        return False
    mask = canvas.mask.copy()
    ok = all(canvas.extend(snake, rng.choice(p.snake_contrasts), canvas.mask) for _ in range(p.distractor_length - 1))
    if not ok:
        canvas.mask = mask
        return False
    canvas.paint(snake)
    canvas.add_mask(canvas.mask, *snake.pending)
    return True


def bytescale(image: np.ndarray) -> np.ndarray:
    """Map min..max to 0..255 with rounding (scipy.misc.imsave's conversion of float images)."""
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return ((image - lo) * (255.0 / (hi - lo))).clip(0, 255).__add__(0.5).astype(np.uint8)


def generate_image(p: SnakeParams, rng: random.Random, keep_layers: bool = False) -> tuple[np.ndarray, int, dict]:
    """One image (size, size) uint8, its label (1 = markers on the same snake) and bookkeeping.

    The bookkeeping dict holds ``margin``, ``targets`` (per target, its paddles as (start, angle)),
    ``marker_snakes`` (target index under the origin and terminal marker), ``markers`` (their
    centres), ``distractors`` (how many were placed) and, with ``keep_layers``, ``layers``: each
    target's own rendering (float, size x size). One attempt at a time: the reference for
    ``generate_images``.
    """
    cache = _cache(p)
    label = rng.randrange(2)
    margin = p.paddle_margins[rng.randrange(len(p.paddle_margins))]
    canvas = Canvas(p, cache, margin, rng, keep_layers)
    for _ in range(MAX_TARGET_ATTEMPTS):
        targets = _two_targets(canvas)
        if targets is not None:
            break
    else:
        raise RuntimeError(f"pathfinder: no two target snakes fit after {MAX_TARGET_ATTEMPTS} attempts with {p}")
    return _finish(canvas, targets, label)


def _finish(canvas: Canvas, targets: list[Snake], label: int) -> tuple[np.ndarray, int, dict]:
    """Paint the targets, add distractors and markers: the image, its label and bookkeeping."""
    p, rng = canvas.p, canvas.rng
    layers = [canvas.paint(t) for t in targets]
    placed = 0
    for _ in range(p.num_distractors):
        for _ in range(p.max_distractor_retrial + 1):
            if _distractor(canvas):
                placed += 1
                break
    origin = rng.randrange(2)
    terminal = origin if label == 1 else 1 - origin
    markers = (targets[origin].tail, targets[terminal].head)
    for centre in markers:
        canvas.paste(canvas.image, canvas.cache.marker, centre)
    image = bytescale(canvas.view(canvas.image))
    info = {"margin": canvas.margin, "targets": [t.paddles for t in targets], "marker_snakes": (origin, terminal),
            "markers": markers, "distractors": placed}
    if canvas.keep_layers:
        info["layers"] = layers
    return image, label, info


def generate_images(p: SnakeParams, count: int, rng: random.Random,
                    keep_layers: bool = False) -> list[tuple[np.ndarray, int, dict]]:
    """``count`` images as ``generate_image`` makes them; with the ``official`` generator, the target
    snakes of all of them are grown in batches (``pathfinder_batch``), which is several times faster."""
    if p.generator != "official":
        return [generate_image(p, rng, keep_layers) for _ in range(count)]
    labels = [rng.randrange(2) for _ in range(count)]
    margins = [p.paddle_margins[rng.randrange(len(p.paddle_margins))] for _ in range(count)]
    gen = np.random.default_rng(rng.getrandbits(64))
    grown = {m: _batched_targets(p, m, margins.count(m), rng, gen) for m in set(margins)}
    out = []
    for label, margin in zip(labels, margins):
        canvas = Canvas(p, _cache(p), margin, rng, keep_layers)
        canvas.mask, paddles = grown[margin].pop()
        out.append(_finish(canvas, _rebuild(canvas, paddles), label))
    return out


def _batched_targets(p: SnakeParams, margin: int, needed: int, rng: random.Random,
                     gen: np.random.Generator) -> list:
    """``needed`` surviving target attempts at ``margin``: (occupied mask, paddles of both targets)."""
    cache = _cache(p)
    if (p, margin) not in _TABLES:
        _TABLES[p, margin] = build_tables(cache, margin)
    canvas, got, tried = Canvas(p, cache, margin, rng), [], 0
    limit = max(64, BATCH_BYTES // (4 * cache.full**2))
    while len(got) < needed:
        if tried >= MAX_TARGET_ATTEMPTS and not got:
            raise RuntimeError(f"pathfinder: no two target snakes fit after {tried} attempts with {p}")
        rate = (len(got) + 1) / (tried + 32)  # survivors per attempt so far, starting from 1 in 32
        size = int(min(limit, max(64, 1.25 * (needed - len(got)) / rate)))
        batch = Batch(canvas, _TABLES[p, margin], size, gen)
        batch.grow()
        got.extend(batch.survivors())
        tried += size
    return got[:needed][::-1]  # reversed: the caller pops from the end, in attempt order


def _rebuild(canvas: Canvas, paddles: list[list[tuple[tuple[int, int], float]]]) -> list[Snake]:
    """Target snakes from their paddles, with snakes2's contrasts: a per-target factor from the snake
    contrasts, times a paddle contrast drawn per step (shared by both targets)."""
    p, rng = canvas.p, canvas.rng
    mu = list(p.snake_contrasts) * 2
    rng.shuffle(mu)
    steps = [rng.choice(p.paddle_contrasts) for _ in range(2)]
    steps += [rng.choice(p.paddle_contrasts) for _ in range(p.contour_length - 1)]
    targets = []
    for i, own in enumerate(paddles):
        snake = Snake(pivot=own[-1][0], theta=own[-1][1], tail=own[0][0], head=own[-1][0], paddles=own)
        contrasts = [steps[i]] + steps[2:]
        snake.strokes = [(canvas.cache.paddle(canvas.margin, angle).line, at, c * mu[i])
                         for (at, angle), c in zip(own, contrasts)]
        targets.append(snake)
    return targets


def _chunk(args: tuple[SnakeParams, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    p, seed, chunk, count = args
    rng = random.Random(f"pathfinder-{seed}-{chunk}")
    images = np.empty((count, p.size * p.size), np.uint8)
    labels = np.empty(count, np.int64)
    for i, (image, label, _) in enumerate(generate_images(p, count, rng)):
        images[i], labels[i] = image.reshape(-1), label  # (size, size) -> (size * size,)
    return images, labels


def generate(p: SnakeParams, num: int, seed: int = 0, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``num`` images as (num, size * size) uint8 tokens and (num,) labels, over ``workers`` processes."""
    workers = max(1, workers or os.cpu_count() or 1)
    jobs = [(p, seed, c, min(CHUNK, num - c * CHUNK)) for c in range(-(-num // CHUNK))]
    images = np.empty((num, p.size * p.size), np.uint8)
    labels = np.empty(num, np.int64)
    start, t0 = time.perf_counter(), 0
    if workers == 1 or len(jobs) == 1:
        results = map(_chunk, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(min(workers, len(jobs)))
        results = pool.map(_chunk, jobs)
    try:
        for c, (chunk_images, chunk_labels) in enumerate(results):
            images[c * CHUNK : c * CHUNK + len(chunk_labels)] = chunk_images
            labels[c * CHUNK : c * CHUNK + len(chunk_labels)] = chunk_labels
            t0 += len(chunk_labels)
            if c % 50 == 49:
                rate = t0 / (time.perf_counter() - start)
                log.info("pathfinder: %d / %d images (%.0f images/s)", t0, num, rate)
    finally:
        if pool is not None:
            pool.shutdown()
    return images, labels
