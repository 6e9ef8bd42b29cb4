"""MNIST from a local ``mnist.npz`` in the Keras layout (no downloads).

The archive holds four arrays (LeCun, Cortes, Burges; the layout of
``keras.datasets.mnist``):

    x_train  uint8 [N, 28, 28]   pixel intensities 0..255
    y_train  uint8 [N]           digit labels 0..9 (any integer dtype is accepted)
    x_test   uint8 [M, 28, 28]
    y_test   uint8 [M]

:func:`load_mnist` returns ``x / 255`` as float32 ``[N, 28, 28, 1]`` (NHWC, one
channel) and the labels as int32. Images given as ``[N, 28, 28, 1]`` are also
accepted. Anything else is refused with a ``ValueError`` that says what is wrong.
"""
from __future__ import annotations

import errno
import os
import zipfile

import numpy as np

from jaxqfl.data.npz_archive import open_npz

__all__ = ["load_mnist", "IMAGE_SHAPE", "NUM_CLASSES"]

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_mnist(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``mnist.npz`` (Keras layout) into ``(x_train, y_train, x_test, y_test)``.

    Returns:
        ``x_train`` float32 ``[N, 28, 28, 1]`` in ``[0, 1]``, ``y_train`` int32
        ``[N]`` in ``[0, 10)``, and the same for the test split.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: the file is not an ``.npz`` archive, lacks one of the keys
            ``x_train, y_train, x_test, y_test``, or holds arrays of the wrong
            shape or dtype, or labels outside ``[0, 10)``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"no MNIST file at {path!r}", path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; expected the file mnist.npz")
    arrays = _read_npz(path)
    x_train, y_train = _check_split(path, "train", arrays["x_train"], arrays["y_train"])
    x_test, y_test = _check_split(path, "test", arrays["x_test"], arrays["y_test"])
    return x_train, y_train, x_test, y_test


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with open_npz(path, ", ".join(_KEYS)) as archive:
        missing = [k for k in _KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"{path!r} lacks the key(s) {missing}; it has {sorted(archive.files)}, needs {list(_KEYS)}")
        try:
            return {k: archive[k] for k in _KEYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path!r}: cannot read the arrays of the archive: {err}") from err


def _check_split(path: str, split: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xk, yk = f"x_{split}", f"y_{split}"
    if x.dtype != np.uint8:
        raise ValueError(f"{path!r}: {xk} has dtype {x.dtype}; expected uint8 pixel values 0..255")
    if x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{path!r}: {xk} has shape {x.shape}; expected [N, 28, 28] (or [N, 28, 28, 1])")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{path!r}: {yk} has dtype {y.dtype}; expected integer labels")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{path!r}: {yk} has shape {y.shape}, but {xk} holds {x.shape[0]} images")
    if x.shape[0] == 0:
        raise ValueError(f"{path!r}: {xk} is empty")
    bad = np.flatnonzero((y < 0) | (y >= NUM_CLASSES))
    if bad.size:
        raise ValueError(
            f"{path!r}: {yk} has label {int(y[bad[0]])} at index {int(bad[0])} ({bad.size} in all) "
            f"outside the allowed range [0, {NUM_CLASSES})"
        )
    images = (x.astype(np.float32) / np.float32(255.0))[..., None]  # [N, 28, 28, 1]
    return images, y.astype(np.int32)
