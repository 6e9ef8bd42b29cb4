"""Opening a user's ``.npz`` file: a clear refusal for anything that is not a readable archive of arrays.

``numpy.load`` reads a file by its first bytes: a zip is an ``.npz`` archive, the ``.npy`` magic a single
array, anything else it takes for a pickle, and with ``allow_pickle=False`` refuses it with a message that
suggests loading it unsafely. :func:`open_npz` never loads a pickle and names what the file is instead.
"""
from __future__ import annotations

import zipfile

import numpy as np

_NPY_MAGIC = b"\x93NUMPY"


def open_npz(path: str, keys: str) -> "np.lib.npyio.NpzFile":
    """The open archive at ``path`` (a file that exists; the caller closes it); ``ValueError`` naming ``path``
    when it is not a zip of ``.npy`` arrays. ``keys``: what the archive should hold, for the message."""
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if not zipfile.is_zipfile(path) and head != _NPY_MAGIC:
        raise ValueError(f"{path!r} is not an .npz archive (a zip of .npy arrays, as numpy.savez writes) with "
                         f"keys {keys}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path!r} is not a readable .npz archive: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} holds a single array (a .npy file), not an .npz archive with keys {keys}")
    return archive


def array_shapes(path: str, keys: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """The shapes of the arrays ``keys`` of the archive at ``path``, from their ``.npy`` headers: nothing is read
    or decompressed past them (indexing the archive would load each array whole). ``ValueError`` for a file that
    :func:`open_npz` refuses; ``KeyError`` for a missing key."""
    shapes = {}
    with open_npz(path, ", ".join(keys)) as archive:
        for key in keys:
            with archive.zip.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shapes[key] = np.lib.format.read_array_header_1_0(f)[0]
                elif version == (2, 0):
                    shapes[key] = np.lib.format.read_array_header_2_0(f)[0]
                else:  # a header version numpy reads only through the whole array
                    shapes[key] = archive[key].shape
    return shapes
