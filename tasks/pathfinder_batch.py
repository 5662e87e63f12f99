"""The ``official`` generator's two target snakes, grown for many attempts at once.

snakes2 grows both targets paddle by paddle and starts again from nothing when a step fails, so at
32 px hard about 26 attempts that pass the seed test are grown for each image that keeps its targets.
Per attempt and paddle, that is a few dozen numpy calls on arrays of ~20 elements: the scalar version
(``Canvas.extend``) spends its time in call overhead. Here a batch of attempts advances in lock step,
each step one set of array operations over the attempts still alive, on a stack of occupied masks.

The rules are those of ``pathfinder_gen._two_targets`` with the ``official`` generator: the first seed
from the memoised empty-canvas free tails, the second ``seed_distance`` away with no test but its head
and pivot on the image, one shared mask per attempt to which each paddle is committed one step late,
and the second target's last paddle committed at the end. Attempts are independent and the survivors
are taken in attempt order, whatever their content, so each one is a draw from the same distribution
as the scalar loop's; the images' statistics are tested against the same reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lra_sfa.tasks.snakes import Canvas, RenderCache

SEED_IDS = 360  # ids 0..359: seed paddles at whole degrees -180..179; 360 + k: growth candidate k


@dataclass
class Tables:
    """Per (params, margin): every paddle a target can draw, by id, as flat arrays over the padded canvas."""

    heading: np.ndarray  # (K,) the direction the snake goes on after this paddle
    drawn: np.ndarray  # (K,) the paddle's own orientation (seeds: the heading; candidates: flipped)
    weight: np.ndarray  # (K, U) continuity weight of each growth candidate after this paddle
    sprite: np.ndarray  # (K, S*S) the paddle's margin mask, flattened
    window: np.ndarray  # (S*S,) flat canvas offsets of a sprite around its centre
    flat: np.ndarray  # (U,) flat offsets of the growth candidates from the pivot
    near: np.ndarray  # (U, D) flat offsets of each candidate's margin disk
    offsets: np.ndarray  # (U, 2) candidate offsets (dy, dx)


def build_tables(cache: RenderCache, margin: int) -> Tables:
    offsets, angles, flat, near = cache.steps[margin]
    seeds = np.radians(np.arange(-180, 180, dtype=np.float64))
    flipped = np.where(angles < 0, angles + math.pi, angles - math.pi)
    heading, drawn = np.concatenate([seeds, angles]), np.concatenate([seeds, flipped])
    sprites = [cache.paddle(margin, float(theta)).mask for theta in drawn]
    half = sprites[0].shape[0] // 2
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]  # (S, S) each
    weight = np.stack([cache.turn_weight(margin, float(theta)) for theta in heading])  # (K, U)
    return Tables(heading, drawn, weight, np.stack(sprites).reshape(len(sprites), -1),  # (K, S, S) -> (K, S*S)
                  (dy * cache.full + dx).ravel(), flat, near, offsets)


def _ceil_step(y: np.ndarray, x: np.ndarray, theta: np.ndarray, dist: float) -> tuple[np.ndarray, np.ndarray]:
    """``snakes._translate`` on arrays: move by ``dist`` along ``theta`` and round up."""
    return np.ceil(y + dist * np.sin(theta)).astype(np.int64), np.ceil(x + dist * np.cos(theta)).astype(np.int64)


class Batch:
    """``n`` target attempts at one margin: seeds, then lock-step growth; ``survivors()`` at the end."""

    def __init__(self, canvas: Canvas, tables: Tables, n: int, gen: np.random.Generator) -> None:
        self.canvas, self.t, self.gen, self.p = canvas, tables, gen, canvas.p
        self.border, self.full = canvas.border, canvas.cache.full
        self.inside = canvas.cache.inside.ravel()
        self.masks = np.repeat(canvas.mask.reshape(1, -1), n, 0)  # (n, full*full)
        length = self.p.contour_length
        self.pos = np.zeros((2, n, length, 2), np.int64)  # each target's paddle centres (y, x)
        self.ids = np.zeros((2, n, length), np.int64)  # and their paddle ids
        self.pivot = np.zeros((2, n, 2), np.int64)
        self.alive = np.ones(n, bool)
        self._seed_first(n)
        self._seed_second(n)

    def _flat(self, yx: np.ndarray) -> np.ndarray:
        return (yx[..., 0] + self.border) * self.full + yx[..., 1] + self.border

    def _on_image(self, *points: np.ndarray) -> np.ndarray:
        size = self.p.size
        return np.logical_and.reduce([((pt >= 0) & (pt < size)).all(-1) for pt in points])

    def _seed_first(self, n: int) -> None:
        """The first target's seed: as ``Canvas.seed(fresh=True)``, retried while head or pivot is off the image."""
        p, canvas, border = self.p, self.canvas, 2 * self.p.seed_distance
        angles = np.asarray(canvas._first_angles(border), np.int64)
        if len(angles) == 0:
            self.alive[:] = False
            return
        deg = angles[self.gen.integers(len(angles), size=n)]
        pending = np.ones(n, bool)
        for trial in range(p.max_paddle_retrial + 1):
            if trial:
                deg = np.where(pending, self.gen.integers(-180, 180, size=n), deg)
            for d in np.unique(deg[pending]):
                rows = np.flatnonzero(pending & (deg == d))
                free = canvas.available(math.radians(int(d)), border, fresh=True)
                if len(free) == 0:
                    self.alive[rows], pending[rows] = False, False
                    continue
                pick = free[self.gen.integers(len(free), size=len(rows))]
                self.pos[0, rows, 0] = np.stack([pick // p.size, pick % p.size], 1)
            theta = np.radians(deg.astype(np.float64))
            tail = self.pos[0, :, 0]
            hy, hx = _ceil_step(tail[:, 0], tail[:, 1], theta, p.paddle_length)
            back = np.where(theta < 0, theta + math.pi, theta - math.pi)
            py, px = _ceil_step(hy, hx, back, p.paddle_length + canvas.margin)
            ok = pending & self._on_image(np.stack([hy, hx], 1), np.stack([py, px], 1))
            self.ids[0, ok, 0] = deg[ok] + 180
            self.pivot[0, ok] = np.stack([py, px], 1)[ok]
            pending &= ~ok
        self.alive &= ~pending

    def _seed_second(self, n: int) -> None:
        """The second target's seed, ``seed_distance`` from the first tail: head and pivot on the image."""
        p, pending = self.p, self.alive.copy()
        for _ in range(p.max_paddle_retrial + 1):
            deg = self.gen.integers(-180, 180, size=n)
            phi = np.radians(self.gen.integers(0, 360, size=n).astype(np.float64))
            theta = np.radians(deg.astype(np.float64))
            tail = self.pos[0, :, 0]
            ty = np.round(tail[:, 0] + p.seed_distance * np.sin(phi)).astype(np.int64)
            tx = np.round(tail[:, 1] + p.seed_distance * np.cos(phi)).astype(np.int64)
            hy, hx = _ceil_step(ty, tx, theta, p.paddle_length)
            back = np.where(theta < 0, theta + math.pi, theta - math.pi)
            py, px = _ceil_step(hy, hx, back, p.paddle_length + self.canvas.margin)
            ok = pending & self._on_image(np.stack([hy, hx], 1), np.stack([py, px], 1))
            self.pos[1, ok, 0] = np.stack([ty, tx], 1)[ok]
            self.ids[1, ok, 0] = deg[ok] + 180
            self.pivot[1, ok] = np.stack([py, px], 1)[ok]
            pending &= ~ok
        self.alive &= ~pending

    def _window(self, rows: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices of a sprite window around ``centre`` (r, 2): into the stacked masks and into one canvas."""
        cells = self._flat(centre)[:, None] + self.t.window[None, :]  # (r, S*S)
        return rows[:, None] * self.full**2 + cells, cells

    def _commit(self, rows: np.ndarray, centre: np.ndarray, ids: np.ndarray) -> None:
        """Paste paddle masks into the rows' occupied masks, clipped to the image (as snakes2 clips them)."""
        where, cells = self._window(rows, centre)
        flat = self.masks.reshape(-1)  # (n, full*full) -> (n*full*full,), a view
        flat[where] = np.maximum(flat[where], self.t.sprite[ids] * self.inside[cells])

    def _extend(self, snake: int, step: int) -> None:
        """One paddle for target ``snake`` of every live attempt (``Canvas.extend`` on a shared mask)."""
        t, rows = self.t, np.flatnonzero(self.alive)
        last = self.ids[snake, rows, step - 1]
        py, px = _ceil_step(self.pivot[snake, rows, 0], self.pivot[snake, rows, 1], t.heading[last],
                            self.p.paddle_length + 2 * self.canvas.margin)
        base = (py + self.border) * self.full + px + self.border  # (r,)
        flat = self.masks.reshape(-1)  # (n, full*full) -> (n*full*full,), a view
        near = (rows * self.full**2 + base)[:, None, None] + t.near[None]  # (r, U, D)
        pmf = self.inside[t.flat[None] + base[:, None]] * (1.0 - flat[near].max(2)) * t.weight[last]  # (r, U)
        total = pmf.sum(1)
        cmf = np.cumsum(pmf / np.where(total > 0, total, 1.0)[:, None], 1)
        choice, found = np.zeros(len(rows), np.int64), np.zeros(len(rows), bool)
        todo = np.flatnonzero(total >= 1e-4)  # the others are at a dead end
        for _ in range(self.p.max_paddle_retrial + 1):
            k = np.argmax(cmf[todo] > self.gen.random(len(todo))[:, None], 1)
            where, _ = self._window(rows[todo], np.stack([py[todo] + t.offsets[k, 0], px[todo] + t.offsets[k, 1]], 1))
            clear = (flat[where] + t.sprite[SEED_IDS + k]).max(1) < 1.8
            choice[todo[clear]], found[todo[clear]] = k[clear], True
            todo = todo[~clear]
        ok = rows[found]
        self.alive[rows[~found]] = False
        self._commit(ok, self.pos[snake, ok, step - 1], self.ids[snake, ok, step - 1])
        k = choice[found]
        self.pos[snake, ok, step] = np.stack([py[found] + t.offsets[k, 0], px[found] + t.offsets[k, 1]], 1)
        self.ids[snake, ok, step] = SEED_IDS + k
        self.pivot[snake, ok] = np.stack([py[found], px[found]], 1)

    def grow(self) -> None:
        for step in range(1, self.p.contour_length):
            for snake in (0, 1):
                if self.alive.any():
                    self._extend(snake, step)
        rows = np.flatnonzero(self.alive)
        self._commit(rows, self.pos[1, rows, -1], self.ids[1, rows, -1])

    def survivors(self) -> list[tuple[np.ndarray, list[list[tuple[tuple[int, int], float]]]]]:
        """Per surviving attempt: its occupied mask (full, full) and each target's paddles as (centre, angle)."""
        out = []
        for row in np.flatnonzero(self.alive):
            targets = [[((int(y), int(x)), float(self.t.drawn[i])) for (y, x), i in zip(self.pos[s, row],
                                                                                           self.ids[s, row])]
                       for s in (0, 1)]
            out.append((self.masks[row].reshape(self.full, self.full).copy(), targets))  # (full*full,) -> (full, full)
        return out
