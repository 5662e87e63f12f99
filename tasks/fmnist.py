"""Sequential and permuted Fashion-MNIST: 28 x 28 grey images as 784 pixel tokens (vocab 256), 10 classes.

``task=fmnist`` reads the pixels in raster order (row by row); ``task=fmnist_perm`` applies one fixed
permutation of the 784 positions to every image, drawn from ``permutation_seed`` (the psMNIST
protocol: neighbouring pixels end up far apart, so the task needs long-range interactions). The
token is the pixel value itself; value 0 (black) is a real token, so ``has_padding = False``, as
for the LRA image task. Splits 55k / 5k / 10k: the validation set is ``num_val`` (5,000) training
images chosen by ``split_seed``; test is the official test set.

Sources, in order:
* ``data_dir``: a folder holding the four original idx files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or
  ``.gz``). idx: big-endian int32 magic (2051 images, 2049 labels), one big-endian int32 per
  dimension, then the uint8 data.
* ``data_dir: null``: Debian's package ``dataset-fashion-mnist`` folder when it is installed,
  otherwise the HF hub dataset ``hf_name`` (cached or downloaded; offline and uncached fails fast).
Decoded pixels are cached under ``cache_dir/fmnist`` (unpermuted; the permutation is applied at load).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from lra_sfa.tasks.base import Split, Task, TaskData, TaskDataError, cache_key, save_arrays_atomic
from lra_sfa.tasks.sources import load_hf

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # 0x0803: uint8 data, 3 dims; 0x0801: uint8 data, 1 dim
SIDE = 28
HINT = (f"Install the data with `apt-get install dataset-fashion-mnist` (files go to {DEBIAN_DIR}), or put "
        f"{', '.join(n + '.gz' for n in FILES.values())} (from https://github.com/zalandoresearch/fashion-mnist) "
        "in a folder and pass task.data_dir=/path/to/that/folder.")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One idx(.gz) file -> its uint8 array in the header's shape; TaskDataError naming the file otherwise."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # the gzip signature, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise TaskDataError(f"fmnist: cannot read {path} ({type(err).__name__}: {err})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else "none (file too short)"
        raise TaskDataError(f"fmnist: {path} has magic number {found}, expected {magic} "
                            f"({'images' if magic == IMAGE_MAGIC else 'labels'}, idx uint8)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TaskDataError(f"fmnist: {path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape))
    if len(raw) != header + size:
        state = "truncated" if len(raw) < header + size else "longer than its header says"
        raise TaskDataError(f"fmnist: {path} is {state}: {len(raw) - header} data bytes for shape {shape} "
                            f"({size} expected)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def find_file(folder: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` in ``folder``; TaskDataError with the install hint when neither exists."""
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise TaskDataError(f"fmnist: missing file {folder / stem}.gz (or {stem}) in data_dir {folder}. {HINT}")


def read_folder(folder: Path) -> dict[str, np.ndarray]:
    """The four idx files -> train/test images (N, 784) uint8 and labels (N,) int64, checked."""
    out = {}
    for split in ("train", "test"):
        images_path = find_file(folder, FILES[f"{split}_images"])
        labels_path = find_file(folder, FILES[f"{split}_labels"])
        images, labels = read_idx(images_path, IMAGE_MAGIC), read_idx(labels_path, LABEL_MAGIC)
        if images.shape[1:] != (SIDE, SIDE):
            raise TaskDataError(f"fmnist: {images_path} holds images of shape {images.shape[1:]}, expected (28, 28)")
        if len(images) != len(labels):
            raise TaskDataError(f"fmnist: {images_path} has {len(images)} images but {labels_path} "
                                f"has {len(labels)} labels")
        if len(labels) and labels.max() > 9:
            bad = int(np.flatnonzero(labels > 9)[0])
            raise TaskDataError(f"fmnist: {labels_path}: label {bad} is {labels[bad]}, not a class 0..9")
        out[f"{split}_inputs"] = images.reshape(len(images), SIDE * SIDE)  # (N, 28, 28) -> (N, 784), raster order
        out[f"{split}_labels"] = labels.astype(np.int64)
    return out


def positions_permutation(seed: int, length: int = SIDE * SIDE) -> np.ndarray:
    """The fixed permutation of pixel positions: token i of a permuted image is pixel ``perm[i]``."""
    return np.random.default_rng(seed).permutation(length)


class FashionMNIST(Task):
    """Fashion-MNIST pixels as tokens (see module docstring); ``permute=True`` is ``fmnist_perm``."""

    vocab_size = 256
    num_classes = 10
    has_padding = False  # pixel value 0 is a real token

    def __init__(self, seq_len: int = 784, pooling: str = "cls", data_dir: str | None = None,
                 permute: bool = False, permutation_seed: int = 0, split_seed: int = 0, num_val: int = 5000,
                 hf_name: str = "fashion_mnist") -> None:
        self.name = "fmnist_perm" if permute else "fmnist"
        super().__init__(seq_len, pooling, data_dir)
        if self.seq_len != SIDE * SIDE:
            raise ValueError(f"task {self.name}: seq_len={seq_len} must be 784 (28 x 28 pixels)")
        self.permute, self.permutation_seed, self.split_seed = bool(permute), int(permutation_seed), int(split_seed)
        if int(num_val) < 1:
            raise ValueError(f"task {self.name}: num_val={num_val} must be at least 1 (held out of train)")
        self.num_val = int(num_val)
        self.hf_name = hf_name

    def describe(self) -> dict:
        return {**super().describe(), "permute": self.permute,
                "permutation_seed": self.permutation_seed if self.permute else None,
                "permutation_sha256": self._permutation_digest() if self.permute else None,
                "split_seed": self.split_seed, "num_val": self.num_val}

    def _permutation_digest(self) -> str:
        """sha256 of the permutation as little-endian int64: the record pins the positions themselves, so a
        change of numpy's random stream under the same seed shows as another digest."""
        perm = positions_permutation(self.permutation_seed).astype("<i8")
        return hashlib.sha256(perm.tobytes()).hexdigest()

    def _folder(self) -> Path | None:
        """The idx folder to read: data_dir (must exist), else the Debian package's folder if present, else None."""
        if self.data_dir:
            folder = Path(self.data_dir).expanduser().resolve()
            if not folder.is_dir():
                raise TaskDataError(f"fmnist: data_dir {folder} does not exist. {HINT}")
            return folder
        return DEBIAN_DIR if all((DEBIAN_DIR / (n + ".gz")).is_file() for n in FILES.values()) else None

    def load(self, cache_dir) -> TaskData:
        folder = self._folder()
        if folder is not None:
            source = str(folder)
            stamp = [(folder / n).stat().st_mtime_ns for n in sorted(p.name for p in folder.iterdir())
                     if n.startswith(tuple(FILES.values()))]
        else:
            source, stamp = f"hf:{self.hf_name}", []
        path = Path(cache_dir).expanduser() / "fmnist" / f"{cache_key(source=source, stamp=stamp, v=1)}.npz"
        if not path.is_file():
            save_arrays_atomic(path, **(read_folder(folder) if folder is not None else self._read_hf()))
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        if self.permute:
            perm = positions_permutation(self.permutation_seed)
            for split in ("train", "test"):
                arrays[f"{split}_inputs"] = arrays[f"{split}_inputs"][:, perm]  # (N, 784) positions reordered
        inputs, labels = arrays["train_inputs"], arrays["train_labels"]
        if len(labels) <= self.num_val:
            raise TaskDataError(f"fmnist: {source} has {len(labels)} training images; task.num_val={self.num_val} "
                                "are held out for validation, so more are needed")
        order = np.random.default_rng(self.split_seed).permutation(len(labels))
        val, train = np.sort(order[:self.num_val]), np.sort(order[self.num_val:])
        return TaskData(train=Split(inputs[train], labels[train]), val=Split(inputs[val], labels[val]),
                        test=Split(arrays["test_inputs"], arrays["test_labels"]), source=source)

    def _read_hf(self) -> dict[str, np.ndarray]:
        dataset = load_hf(self.hf_name, "fmnist", HINT)
        out = {}
        for split in ("train", "test"):
            if split not in dataset:
                raise TaskDataError(f"fmnist: HF dataset {self.hf_name!r} has no {split!r} split ({list(dataset)})")
            part = dataset[split]
            images = np.stack([np.asarray(im.convert("L"), np.uint8) for im in part["image"]])  # (N, 28, 28)
            out[f"{split}_inputs"] = images.reshape(len(images), SIDE * SIDE)  # (N, 28, 28) -> (N, 784)
            out[f"{split}_labels"] = np.asarray(part["label"], np.int64)
        return out
