"""CIFAR-10 from a local ``cifar-10-batches-py`` folder (the "python version"; no downloads).

Layout (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny
Images"): ``data_batch_1`` .. ``data_batch_5`` (training) and ``test_batch``,
each a pickled dict with

    b"data"    uint8 [n, 3072]   a row is the 1024 red, then green, then blue
                                 pixels of a 32x32 image, row-major
    b"labels"  list of n ints in [0, 10)

``data_path`` is that folder, or a folder holding it. :func:`load_cifar10`
returns ``x / 255`` as float32 ``[N, 32, 32, 3]`` (NHWC) and int32 labels.
The pickles are read with an unpickler that builds only dicts, lists, strings,
numbers and NumPy arrays: a file naming any other class is refused, so a
tampered file cannot run code.
"""
from __future__ import annotations

import errno
import os
import pickle

import numpy as np

__all__ = ["load_cifar10", "NUM_CLASSES", "IMAGE_SHAPE", "TRAIN_FILES", "TEST_FILE"]

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
_FOLDER = "cifar-10-batches-py"
#: The globals a CIFAR-10 pickle may name (NumPy array reconstruction).
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 store bytes


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays, "
                                     "lists and numbers")


def _folder(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no CIFAR-10 folder at {path!r}", path)
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file; expected the folder {_FOLDER} (or one holding it)")
    inner = os.path.join(path, _FOLDER)
    return inner if os.path.isdir(inner) else path


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            blob = _ArraysOnly(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"{path!r} is not a readable CIFAR-10 batch (a pickled dict): {err}") from err
    if not isinstance(blob, dict):
        raise ValueError(f"{path!r} holds a {type(blob).__name__}; expected a dict with keys b'data', b'labels'")
    blob = {k.decode() if isinstance(k, bytes) else k: v for k, v in blob.items()}
    missing = [k for k in ("data", "labels") if k not in blob]
    if missing:
        raise ValueError(f"{path!r} lacks the key(s) {missing}; it has {sorted(map(str, blob))}")
    try:  # e.g. ragged lists, which numpy cannot make one array of
        data, labels = (np.asarray(blob[k]) for k in ("data", "labels"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path!r}: 'data' and 'labels' must be an array and a flat list of integers: {err}") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path!r}: 'data' is {data.dtype} {data.shape}; expected uint8 [n, 3072] (3 x 32 x 32)")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path!r}: 'labels' has shape {labels.shape} and dtype {labels.dtype}; expected "
                         f"{data.shape[0]} integers")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"{path!r}: labels lie in [{labels.min()}, {labels.max()}], outside [0, {NUM_CLASSES})")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [n, 32, 32, 3]
    return images, labels.astype(np.int32)


def load_cifar10(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``cifar-10-batches-py`` into ``(x_train, y_train, x_test, y_test)``.

    Returns:
        ``x_train`` float32 ``[50000, 32, 32, 3]`` in ``[0, 1]`` (for the full
        data set), ``y_train`` int32 in ``[0, 10)``, and the same for the test batch.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: a batch file is missing, unreadable, or malformed.
    """
    folder = _folder(os.fspath(path))
    missing = [f for f in TRAIN_FILES + (TEST_FILE,) if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise ValueError(f"{folder!r} lacks {missing}; the {_FOLDER} layout is {', '.join(TRAIN_FILES)}, {TEST_FILE}")
    train = [_read_batch(os.path.join(folder, f)) for f in TRAIN_FILES]
    x_test, y_test = _read_batch(os.path.join(folder, TEST_FILE))
    x = np.concatenate([t[0] for t in train])
    y = np.concatenate([t[1] for t in train])
    scale = np.float32(255.0)
    return x.astype(np.float32) / scale, y, x_test.astype(np.float32) / scale, y_test
