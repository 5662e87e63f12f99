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
# Growth candidates turned by continuity x turn >= pi/2 keep the weight cos(pi/2)^2 ~ 4e-33, not 0; they are
# left out, which changes a draw with probability below 1e-27 per step (a live step's total weight is >= 1e-4).
NEGLIGIBLE = 1e-20


@dataclass
class Tables:
    """Per (params, margin): every paddle a target can draw, by id, as flat arrays over the padded canvas."""

    heading: np.ndarray  # (K,) the direction the snake goes on after this paddle
    drawn: np.ndarray  # (K,) the paddle's own orientation (seeds: the heading; candidates: flipped)
    cand: np.ndarray  # (K, V) ascending indices of the growth candidates with weight after this paddle
    weight: np.ndarray  # (K, V) their continuity weights, 0 where the row is padded
    cells: np.ndarray  # (K, Z) flat canvas offsets (from the paddle's centre) where its margin mask is > 0
    values: np.ndarray  # (K, Z) the mask there (rows padded by repeating an entry)
    hard: np.ndarray  # (K, Z') offsets where the mask is >= 0.8: only there can it reach the collision sum 1.8
    hard_values: np.ndarray  # (K, Z') the mask there
    flat: np.ndarray  # (U,) flat offsets of the growth candidates from the pivot
    near: np.ndarray  # (U, D) flat offsets of each candidate's margin disk
    offsets: np.ndarray  # (U, 2) candidate offsets (dy, dx)


def build_tables(cache: RenderCache, margin: int) -> Tables:
    """The lookup tables of ``Tables`` for paddles of ``margin``, from the cache's renderings and candidates."""
    offsets, angles, flat, near = cache.steps[margin]
    seeds = np.radians(np.arange(-180, 180, dtype=np.float64))
    flipped = np.where(angles < 0, angles + math.pi, angles - math.pi)
    heading, drawn = np.concatenate([seeds, angles]), np.concatenate([seeds, flipped])
    sprites = np.stack([cache.paddle(margin, float(theta)).mask for theta in drawn])  # (K, S, S)
    half = sprites.shape[1] // 2
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]  # (S, S) each
    window = (dy * cache.full + dx).ravel()
    cells, values = _ragged(sprites.reshape(len(drawn), -1) > 0, window, sprites.reshape(len(drawn), -1))
    can_hit = sprites.reshape(len(drawn), -1) + np.float32(1.0) >= 1.8  # (K, S*S), in the mask's float32 arithmetic
    hard, hard_values = _ragged(can_hit, window, sprites.reshape(len(drawn), -1))
    weight = np.stack([cache.turn_weight(margin, float(theta)) for theta in heading])  # (K, U)
    keep = weight > NEGLIGIBLE
    width = keep.sum(1).max()
    cand, kept = np.zeros((len(heading), width), np.int64), np.zeros((len(heading), width))
    for row, mask in enumerate(keep):
        cand[row, : mask.sum()], kept[row, : mask.sum()] = np.flatnonzero(mask), weight[row, mask]
    return Tables(heading, drawn, cand, kept, cells, values, hard, hard_values, flat, near, offsets)


def _ragged(keep: np.ndarray, where: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``keep`` (K, N), ``where`` (N,) and ``values`` (K, N) at its True entries, padded by repeating
    the row's first entry (a repeated cell gets the same value twice when pasted, so the paste stays right)."""
    width = keep.sum(1).max()
    out_where, out_values = np.zeros((len(keep), width), np.int64), np.zeros((len(keep), width), np.float32)
    for row, mask in enumerate(keep):
        index = np.flatnonzero(mask)
        index = np.concatenate([index, np.full(width - len(index), index[0])])
        out_where[row], out_values[row] = where[index], values[row, index]
    return out_where, out_values


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
        angles = np.asarray(canvas.first_angles(border), np.int64)
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

    def _commit(self, rows: np.ndarray, centre: np.ndarray, ids: np.ndarray) -> None:
        """Paste paddle masks into the rows' occupied masks, clipped to the image (as snakes2 clips them)."""
        cells = self._flat(centre)[:, None] + self.t.cells[ids]  # (r, Z)
        where = rows[:, None] * self.full**2 + cells
        flat = self.masks.reshape(-1)  # (n, full*full) -> (n*full*full,), a view
        flat[where] = np.maximum(flat[where], self.t.values[ids] * self.inside[cells])

    def _extend(self, snake: int, step: int) -> None:
        """One paddle for target ``snake`` of every live attempt (``Canvas.extend`` on a shared mask)."""
        t, rows = self.t, np.flatnonzero(self.alive)
        last = self.ids[snake, rows, step - 1]
        py, px = _ceil_step(self.pivot[snake, rows, 0], self.pivot[snake, rows, 1], t.heading[last],
                            self.p.paddle_length + 2 * self.canvas.margin)
        base = (py + self.border) * self.full + px + self.border  # (r,)
        flat = self.masks.reshape(-1)  # (n, full*full) -> (n*full*full,), a view
        cand = t.cand[last]  # (r, V)
        near = (rows * self.full**2 + base)[:, None, None] + t.near[cand]  # (r, V, D)
        pmf = self.inside[t.flat[cand] + base[:, None]] * (1.0 - flat[near].max(2)) * t.weight[last]  # (r, V)
        total = pmf.sum(1)
        cmf = np.cumsum(pmf / np.where(total > 0, total, 1.0)[:, None], 1)
        choice, found = np.zeros(len(rows), np.int64), np.zeros(len(rows), bool)
        todo = np.flatnonzero(total >= 1e-4)  # the others are at a dead end
        for _ in range(self.p.max_paddle_retrial + 1):
            k = cand[todo, np.argmax(cmf[todo] > self.gen.random(len(todo))[:, None], 1)]
            head = (py[todo] + t.offsets[k, 0] + self.border) * self.full + px[todo] + t.offsets[k, 1] + self.border
            where = (rows[todo] * self.full**2 + head)[:, None] + t.hard[SEED_IDS + k]  # (r', Z')
            clear = (flat[where] + t.hard_values[SEED_IDS + k]).max(1) < 1.8
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
