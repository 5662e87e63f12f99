"""Image (LRA): CIFAR-10 in grey levels, one token per pixel (1024 tokens, vocab 256), 10 classes.

Grey levels follow ``tf.image.rgb_to_grayscale`` on uint8 images exactly: x / 255 in float32,
weights (0.2989, 0.5870, 0.1140), then x * 255.5 truncated to uint8. Pixel 0 is a real
token (black), so ``has_padding = False``: the model must not derive a mask from token 0.
Splits 45k / 5k / 10k: train = the first 90% (45,000) training images, val = the last 10%,
test = the test set. LRA takes TFDS ``train[:90%]`` / ``train[90%:]``; TFDS orders the
training images differently from the pickles, so the val images are a different (equally
sized, same-distribution) subset here.

Sources:
* ``data_dir``: the official ``cifar-10-batches-py`` folder (``data_batch_1`` .. ``_5``,
  ``test_batch``: pickles of dicts with b'data' (10000, 3072) uint8 in R, G, B planes and
  b'labels'), from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz.
* otherwise the HF hub dataset ``hf_name`` (default ``uoft-cs/cifar10``, columns img/label),
  cached or downloaded; offline and uncached fails within seconds.
Token arrays are cached under ``cache_dir/image``, keyed by the size and mtime of each pickle.

The pickles are read by a restricted unpickler (``CifarUnpickler``) that admits only the
numpy array and dtype constructors and ``_codecs.encode``, all that the release (and a
re-save under Python 3) refers to: a crafted ``data_batch_1`` cannot run code.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path

import numpy as np

from lra_sfa.tasks.base import Split, Task, TaskData, TaskDataError, cache_key, files_fingerprint, save_arrays_atomic
from lra_sfa.tasks.sources import load_hf

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
TRAIN_FRACTION = 0.9  # TFDS train[:90%] -> 45,000 of 50,000
GRAY_WEIGHTS = np.asarray([0.2989, 0.5870, 0.1140], np.float32)
HINT = ("Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpack it and pass "
        "task.data_dir=/path/to/cifar-10-batches-py (holding data_batch_1..5 and test_batch).")


def _numpy_function(module: str, name: str):
    """numpy 2 keeps the pickle helpers in numpy._core, numpy 1 in numpy.core (pickles name either)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{module}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {module}.{name}")


_ALLOWED_GLOBALS = {
    **{(f"{package}.multiarray", "_reconstruct"): _numpy_function("multiarray", "_reconstruct")
       for package in ("numpy.core", "numpy._core")},
    **{(f"{package}.numeric", "_frombuffer"): _numpy_function("numeric", "_frombuffer")
       for package in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes written by Python 3 at protocol <= 2
}


class CifarUnpickler(pickle.Unpickler):
    """Unpickles builtin types and numpy arrays only; any other global is refused before it is loaded.

    Plain ``pickle.load`` would run whatever a file names (a planted ``data_batch_1`` runs code); this is
    the standard library's documented way to restrict globals (there is no safer CIFAR reader to reuse:
    the official format is a pickle).
    """

    def find_class(self, module: str, name: str):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, which the CIFAR pickles never hold; "
                                         "refused without running it (only numpy arrays and builtin types load)")
        return found


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) uint8, as tf.image.rgb_to_grayscale."""
    scaled = rgb.astype(np.float32) * np.float32(1.0 / 255.0)
    gray = scaled @ GRAY_WEIGHTS  # (...,)
    return (gray * np.float32(255.5)).astype(np.uint8)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickle -> (N, 1024) grey tokens uint8 and (N,) labels; errors name the file."""
    if not path.is_file():
        raise TaskDataError(f"image: missing file {path}. {HINT}")
    try:
        with open(path, "rb") as f:
            batch = CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        if "refused without running it" in str(err):
            raise TaskDataError(f"image: {path} {err}") from None
        raise TaskDataError(f"image: {path} is not a readable CIFAR pickle (UnpicklingError: {err})") from None
    except Exception as err:  # pickle raises many types on a broken file
        raise TaskDataError(f"image: {path} is not a readable CIFAR pickle ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = list(batch)[:6] if isinstance(batch, dict) else type(batch).__name__
        raise TaskDataError(f"image: {path} must hold a dict with keys b'data' and b'labels', got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise TaskDataError(f"image: {path}: b'data' is {data.dtype} {data.shape} for {len(labels)} labels; "
                            f"expected uint8 (N, 3072)")
    if labels.min() < 0 or labels.max() > 9:
        bad = int(np.flatnonzero((labels < 0) | (labels > 9))[0])
        raise TaskDataError(f"image: {path}: b'labels'[{bad}] = {labels[bad]} is not a class 0..9")
    rgb = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3072) -> (N, 32, 32, 3)
    return rgb_to_gray(rgb).reshape(len(data), 1024), labels  # (N, 32, 32) -> (N, 1024)


class Cifar10(Task):
    """CIFAR-10 grey-level pixels (see module docstring)."""

    name = "image"
    vocab_size = 256
    num_classes = 10
    has_padding = False  # pixel value 0 is a real token

    def __init__(self, seq_len: int = 1024, pooling: str = "cls", data_dir: str | None = None,
                 hf_name: str = "uoft-cs/cifar10") -> None:
        super().__init__(seq_len, pooling, data_dir)
        if self.seq_len != 1024:
            raise ValueError(f"task image: seq_len={seq_len} must be 1024 (32 x 32 pixels)")
        self.hf_name = hf_name

    def load(self, cache_dir) -> TaskData:
        if self.data_dir:
            folder = Path(self.data_dir).expanduser().resolve()
            if not folder.is_dir():
                raise TaskDataError(f"image: data_dir {folder} does not exist. {HINT}")
            source = str(folder)
            stamp = files_fingerprint(*(folder / name for name in TRAIN_FILES + (TEST_FILE,)))
        else:
            source, stamp = f"hf:{self.hf_name}", ""
        path = Path(cache_dir).expanduser() / "image" / f"{cache_key(source=source, stamp=stamp, v=2)}.npz"
        if not path.is_file():
            train, test = self._read(folder) if self.data_dir else self._read_hf()
            save_arrays_atomic(path, train_inputs=train[0], train_labels=train[1], test_inputs=test[0],
                               test_labels=test[1])
        with np.load(path) as data:
            inputs, labels = data["train_inputs"], data["train_labels"]
            test = Split(data["test_inputs"], data["test_labels"])
        cut = int(TRAIN_FRACTION * len(labels))
        return TaskData(train=Split(inputs[:cut], labels[:cut]), val=Split(inputs[cut:], labels[cut:]), test=test,
                        source=source)

    @staticmethod
    def _read(folder: Path):
        parts = [read_batch(folder / name) for name in TRAIN_FILES]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        return train, read_batch(folder / TEST_FILE)

    def _read_hf(self):
        dataset = load_hf(self.hf_name, "image", f"Pass task.data_dir=/path/to/cifar-10-batches-py instead: {HINT}")
        out = []
        for split in ("train", "test"):
            if split not in dataset:
                raise TaskDataError(f"image: HF dataset {self.hf_name!r} has no {split!r} split ({list(dataset)})")
            part = dataset[split]
            image_col = "img" if "img" in part.column_names else "image"
            rgb = np.stack([np.asarray(im.convert("RGB")) for im in part[image_col]])  # (N, 32, 32, 3)
            out.append((rgb_to_gray(rgb).reshape(len(rgb), 1024), np.asarray(part["label"], np.int64)))
        return out[0], out[1]
