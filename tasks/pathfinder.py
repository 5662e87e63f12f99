"""Pathfinder and Path-X (LRA): are the two circle markers on the same snake? Pixels as tokens.

Tokens are the 0..255 grey levels of a ``resolution`` x ``resolution`` image read row by
row (vocab 256, no padding: 0 is a black pixel, so ``has_padding = False`` and the model
must not derive a mask from token 0). Difficulty easy / intermediate / hard = contour
length 6 / 9 / 14 (``curv_baseline``, ``curv_contour_length_9``, ``curv_contour_length_14``);
LRA's Pathfinder is 32 px hard, Path-X 128 px hard (16384 tokens).

Sources:
* ``data_dir``: the LRA release layout, a folder holding ``imgs/<b>/sample_<i>.png`` and
  ``metadata/<b>.npy`` (text lines ``imgs/<b> sample_<i>.png <i> <label> ...``: field 0 the
  sub-folder, field 1 the file, field 3 the label); or a folder above it
  (``pathfinder32/curv_contour_length_14`` is then found from resolution and difficulty).
  Images are read in metadata order (batches in numeric order), empty images (the release's
  ``pathfinder32/curv_baseline/imgs/0/sample_172.png``) are skipped and counted in the
  source string, and the rest is split 80/10/10 (LRA's proportions) in that order,
  each part capped at num_train / num_val / num_test. Image paths in the metadata must stay
  inside the folder (no absolute paths, no '..'). The prepared arrays are cached keyed by a
  fingerprint of the folder (every file's size and mtime, the metadata's content).
* otherwise generated (``tasks/snakes.py``, ``tasks/pathfinder_gen.py``: the snakes2 algorithm
  with LRA's per-resolution parameters), each split from its own seed stream, over ``n_workers``
  processes, cached as .npz under ``cache_dir/pathfinder``, keyed by ``generator``: ``official``
  (default) reproduces the release's distribution, the bugs of snakes2's seed test and target
  growth included; ``clean`` is the corrected variant, whose label is always true to the image
  (``snakes`` module docstring).

Generation speed: ``python -m lra_sfa.tasks.pathfinder mode=bench`` prints images per wall second and
per CPU second (the per-core rate: workers are independent processes); measured rates are in
``results/tasks/NOTES.md``. Hard images are slow because both target snakes must grow 14
paddles without a dead end, and snakes2 restarts both from nothing when one fails. At 32 px
hard it keeps about 1 attempt in 320: its seed test refuses 330 of the 360 seed angles, and
about 1 in 26 of the attempts it lets through grows both targets; the ``clean`` variant keeps
about 1 in 34. The
``official`` path skips the attempts the seed test refuses on the empty canvas (distribution
unchanged: they draw nothing else) and grows the rest in batches (``tasks/pathfinder_batch.py``).

CLI (a Hydra app, ``conf/pathfinder_tools.yaml``): ``python -m lra_sfa.tasks.pathfinder
out=results/plots/pathfinder_samples.png`` writes a labelled PNG grid (``mode=samples``);
``mode=bench`` measures speed; ``mode=export out=<folder>`` writes the release layout.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from lra_sfa.tasks.base import Split, Task, TaskData, TaskDataError, cache_key, files_fingerprint, save_arrays_atomic
from lra_sfa.tasks.pathfinder_gen import generate, generate_image
from lra_sfa.tasks.snakes import CONTOUR_LENGTH, GENERATORS, lra_params

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
RELEASE_FOLDER = {"easy": "curv_baseline", "intermediate": "curv_contour_length_9", "hard": "curv_contour_length_14"}


# ---- the LRA release layout ------------------------------------------------------------------------
def find_release(data_dir: Path, resolution: int, difficulty: str) -> Path:
    """The folder with ``metadata/`` and ``imgs/``: ``data_dir`` itself or ``pathfinder<res>/<difficulty>`` below."""
    for folder in (data_dir, data_dir / RELEASE_FOLDER[difficulty],
                   data_dir / f"pathfinder{resolution}" / RELEASE_FOLDER[difficulty]):
        if (folder / "metadata").is_dir():
            return folder
    raise TaskDataError(
        f"pathfinder: no metadata/ folder in {data_dir} (nor in {RELEASE_FOLDER[difficulty]}/ or "
        f"pathfinder{resolution}/{RELEASE_FOLDER[difficulty]}/ below it). Expected the LRA release layout "
        f"imgs/<b>/sample_<i>.png + metadata/<b>.npy, from lra_release.gz (see the LRA README), e.g. "
        f"task.data_dir=.../lra_release/pathfinder{resolution}/{RELEASE_FOLDER[difficulty]}")


def _metadata_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    if raw.startswith(b"\x93NUMPY"):  # a real .npy array of strings, one row per image
        rows = np.load(path, allow_pickle=False)
        return [" ".join(str(v) for v in np.atleast_1d(row)) for row in rows]
    try:
        return raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise TaskDataError(f"pathfinder: {path} is neither UTF-8 text nor a .npy array ({err})") from err


def _inside(rel: str, where: str) -> str:
    """``rel`` when it names a file below the release folder; an absolute path or a '..' is refused, since
    the metadata must never make the loader read files elsewhere."""
    if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise TaskDataError(f"pathfinder: {where}: image path {rel!r} leaves the data folder (absolute or '..'); "
                            "the release lists paths inside it, like 'imgs/0 sample_0.png'")
    return rel


def read_metadata(folder: Path) -> list[tuple[str, int, str]]:
    """(image path relative to ``folder``, label, 'metadata file:line') for every listed image."""
    files = sorted((folder / "metadata").glob("*.npy"), key=lambda f: (not f.stem.isdigit(), int(f.stem)
                                                                         if f.stem.isdigit() else 0, f.stem))
    if not files:
        raise TaskDataError(f"pathfinder: {folder / 'metadata'} holds no <batch>.npy files")
    entries = []
    for path in files:
        for line_no, line in enumerate(_metadata_lines(path), start=1):
            if not line.strip():
                continue
            fields = line.split()
            where = f"{path}:{line_no}"
            if len(fields) < 4:
                raise TaskDataError(f"pathfinder: {where}: expected >= 4 space-separated fields, got {line!r}")
            if fields[3] not in ("0", "1"):
                raise TaskDataError(f"pathfinder: {where}: label (field 3) {fields[3]!r} is not 0 or 1")
            entries.append((_inside(f"{fields[0]}/{fields[1]}", where), int(fields[3]), where))
    return entries


def _read_pngs(args: tuple[str, int, list[tuple[str, int, str]]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    folder, resolution, entries = args
    images = np.empty((len(entries), resolution * resolution), np.uint8)
    keep = np.ones(len(entries), bool)
    empty = []
    for i, (rel, _, where) in enumerate(entries):
        path = Path(folder) / rel
        if not path.is_file():
            raise TaskDataError(f"pathfinder: {path} (listed at {where}) does not exist")
        if path.stat().st_size == 0:
            keep[i] = False
            empty.append(rel)
            continue
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("L") if image.mode != "L" else image)
        except OSError as err:
            raise TaskDataError(f"pathfinder: {path} (listed at {where}) is not a readable PNG: {err}") from err
        if pixels.shape != (resolution, resolution):
            raise TaskDataError(f"pathfinder: {path} is {pixels.shape}, expected ({resolution}, {resolution})")
        if pixels.max() == 0:
            keep[i] = False
            empty.append(rel)
        images[i] = pixels.reshape(-1)  # (res, res) -> (res * res,)
    return images[keep], keep, empty


def read_release(folder: Path, resolution: int, workers: int | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """All images (N, res*res) uint8 and labels (N,) in metadata order, and the skipped empty images."""
    entries = read_metadata(folder)
    step = 2048
    jobs = [(str(folder), resolution, entries[i : i + step]) for i in range(0, len(entries), step)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        parts = list(map(_read_pngs, jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_read_pngs, jobs))
    labels = np.asarray([label for _, label, _ in entries], np.int64)
    keep = np.concatenate([k for _, k, _ in parts])
    return np.concatenate([im for im, _, _ in parts]), labels[keep], [e for _, _, em in parts for e in em]


def write_release(folder: Path, images: np.ndarray, labels: np.ndarray, per_batch: int = 1000) -> None:
    """Write (N, res*res) images in the LRA release layout (PNG files + text metadata)."""
    resolution = int(round(images.shape[1] ** 0.5))
    for start in range(0, len(labels), per_batch):
        batch = start // per_batch
        (folder / "imgs" / str(batch)).mkdir(parents=True, exist_ok=True)
        (folder / "metadata").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(start, min(start + per_batch, len(labels))):
            name = f"sample_{i - start}.png"
            Image.fromarray(images[i].reshape(resolution, resolution)).save(folder / "imgs" / str(batch) / name)
            lines.append(f"imgs/{batch} {name} {i - start} {int(labels[i])}\n")
        (folder / "metadata" / f"{batch}.npy").write_text("".join(lines))


# ---- the task ------------------------------------------------------------------------------------
class Pathfinder(Task):
    """Pathfinder at ``resolution`` 32/64/128/256 and ``difficulty`` easy/intermediate/hard."""

    name = "pathfinder"
    vocab_size = 256
    num_classes = 2
    has_padding = False  # pixel value 0 is a real token

    def __init__(self, seq_len: int = 1024, pooling: str = "mean", data_dir: str | None = None,
                 resolution: int = 32, difficulty: str = "hard", num_train: int = 160_000, num_val: int = 20_000,
                 num_test: int = 20_000, seed: int = 0, n_workers: int | None = None,
                 generator: str = "official") -> None:
        super().__init__(seq_len, pooling, data_dir)
        self.params = lra_params(int(resolution), difficulty, generator)
        if self.seq_len != resolution * resolution:
            raise ValueError(f"task {self.name}: seq_len={seq_len} must be resolution^2 = {resolution ** 2} "
                             f"for resolution={resolution} (set task.seq_len={resolution ** 2})")
        self.resolution, self.difficulty, self.seed, self.n_workers = int(resolution), difficulty, seed, n_workers
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}

    def describe(self) -> dict:
        return {**super().describe(), "resolution": self.resolution, "difficulty": self.difficulty,
                "contour_length": CONTOUR_LENGTH[self.difficulty], "data_seed": self.seed,
                "generator": None if self.data_dir else self.params.generator,
                **{f"num_{k}": v for k, v in self.sizes.items()}}

    def load(self, cache_dir) -> TaskData:
        root = Path(cache_dir).expanduser() / "pathfinder"
        if self.data_dir:
            return self._load_release(root)
        splits = {}
        for index, split in enumerate(SPLITS):
            key = cache_key(task="pathfinder", v=1, params=asdict(self.params), seed=self.seed, split=split,
                            num=self.sizes[split])
            path = root / f"{self.resolution}px_{self.difficulty}_{self.params.generator}_{split}_{key}.npz"
            if not path.is_file():
                started = time.perf_counter()
                images, labels = generate(self.params, self.sizes[split], seed=f"{self.seed}-{index}",
                                          workers=self.n_workers)
                save_arrays_atomic(path, inputs=images, labels=labels)
                log.info("pathfinder: generated %d %s images in %.1f s -> %s", len(labels), split,
                         time.perf_counter() - started, path)
            with np.load(path) as data:
                splits[split] = Split(data["inputs"], data["labels"])
        return TaskData(**splits, source=f"generated:{root}/{self.resolution}px_{self.difficulty}")

    def _load_release(self, root: Path) -> TaskData:
        folder = find_release(Path(self.data_dir).expanduser().resolve(), self.resolution, self.difficulty)
        stamp = files_fingerprint(folder, read_under=("metadata",))
        path = root / f"release_{cache_key(folder=str(folder), resolution=self.resolution, stamp=stamp, v=2)}.npz"
        if path.is_file():
            with np.load(path) as data:
                images, labels, skipped = data["inputs"], data["labels"], list(data["skipped"])
        else:
            images, labels, skipped = read_release(folder, self.resolution, self.n_workers)
            save_arrays_atomic(path, inputs=images, labels=labels, skipped=np.asarray(skipped, dtype=str))
        n = len(labels)
        bounds = [0, int(0.8 * n), int(0.9 * n), n]
        splits = {}
        for i, split in enumerate(SPLITS):
            stop = min(bounds[i + 1], bounds[i] + self.sizes[split])
            splits[split] = Split(images[bounds[i] : stop], labels[bounds[i] : stop])
        note = f" (skipped {len(skipped)} empty image(s): {', '.join(skipped[:5])})" if skipped else ""
        if skipped:
            log.warning("pathfinder: skipped %d empty image(s) in %s: %s", len(skipped), folder, skipped[:5])
        return TaskData(**splits, source=f"{folder}{note}")


class PathX(Pathfinder):
    """Path-X: Pathfinder at 128 px, hard (16384 tokens)."""

    name = "pathx"

    def __init__(self, seq_len: int = 16384, pooling: str = "mean", data_dir: str | None = None,
                 resolution: int = 128, difficulty: str = "hard", **kwargs) -> None:
        super().__init__(seq_len, pooling, data_dir, resolution=resolution, difficulty=difficulty, **kwargs)


# ---- command line ----------------------------------------------------------------------------------
def save_samples(out: Path, resolution: int = 32, difficulty: str = "hard", num: int = 16, seed: int = 0,
                 generator: str = "official") -> Path:
    """A PNG grid of generated images titled with their labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params, rng = lra_params(resolution, difficulty, generator), random.Random(f"samples-{seed}")
    cols = min(num, 4)
    rows = -(-num // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax in axes.ravel()[:num]:
        image, label, _ = generate_image(params, rng)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"label {label}: {'connected' if label else 'not connected'}", fontsize=8)
    fig.suptitle(f"Pathfinder {resolution} px, {difficulty} (contour length {CONTOUR_LENGTH[difficulty]}), "
                 f"{generator} generator")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bench(resolution: int, difficulty: str, num: int, workers: int, generator: str = "official") -> tuple[float, float]:
    """Generate ``num`` images with ``workers`` processes; print and return (images per wall second,
    images per CPU second). The CPU rate is the per-core speed even on a machine busy with other work."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    generate(lra_params(resolution, difficulty, generator), num, seed="bench", workers=workers)
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    print(f"pathfinder {resolution}px {difficulty} ({generator}): {num} images, {workers} worker(s): "
          f"{num / wall:.1f} images/s wall, {num / cpu:.1f} images per CPU second "
          f"(load average {os.getloadavg()[0]:.1f})")
    return num / wall, num / cpu


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


TOOL_MODES = ("samples", "bench", "export")
OLD_OPTIONS = {name: name for name in ("out", "resolution", "difficulty", "num", "seed", "workers", "generator")}


def run_tool(cfg) -> None:
    """One mode of ``conf/pathfinder_tools.yaml`` (``cfg``: its composed config); bad keys are a ValueError."""
    for key, value, valid in (("mode", cfg.mode, TOOL_MODES), ("difficulty", cfg.difficulty, tuple(CONTOUR_LENGTH)),
                              ("generator", cfg.generator, tuple(GENERATORS))):
        if value not in valid:
            raise ValueError(f"{key}={value!r} must be one of {', '.join(valid)}")
    resolution, difficulty, num, generator = int(cfg.resolution), str(cfg.difficulty), int(cfg.num), str(cfg.generator)
    if cfg.mode == "samples":
        out = Path(str(cfg.out or "results/plots/pathfinder_samples.png"))
        print(save_samples(out, resolution, difficulty, num, int(cfg.seed), generator))
    elif cfg.mode == "bench":
        bench(resolution, difficulty, num, int(cfg.workers), generator)
    else:
        if not cfg.out:
            raise ValueError("mode=export needs out=<folder> (the release layout is written there)")
        images, labels = generate(lra_params(resolution, difficulty, generator), num, int(cfg.seed), int(cfg.workers))
        write_release(Path(str(cfg.out)), images, labels)
        print(f"wrote {len(labels)} images to {cfg.out}")


def _tool_app(cfg) -> None:
    from lra_sfa.cli import exit_on_bad_input

    with exit_on_bad_input("lra_sfa.tasks.pathfinder"):
        run_tool(cfg)


def main() -> None:
    """``python -m lra_sfa.tasks.pathfinder [key=value ...]`` (a Hydra app; imported here, not by the task);
    the old ``samples --out PNG`` form gets one line."""
    import hydra

    from lra_sfa.oldargs import exit_if_old_form, replacement

    exit_if_old_form(replacement("python -m lra_sfa.tasks.pathfinder", "conf/pathfinder_tools.yaml", sys.argv[1:],
                                 OLD_OPTIONS, positional=("mode", TOOL_MODES)))
    hydra.main(version_base=None, config_path="pkg://lra_sfa.conf", config_name="pathfinder_tools")(_tool_app)()


if __name__ == "__main__":
    main()
