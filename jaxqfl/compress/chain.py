"""``chain``: nest codec wrappers around a final codec, the way optax chains transforms."""
from __future__ import annotations

from jaxqfl.compress.base import Codec


def chain(*parts) -> Codec:
    """``chain(w1, w2, ..., codec) = w1(w2(...(codec)))``.

    Every part but the last is a wrapper, a function ``Codec -> Codec``
    (``error_feedback``, ``hadamard`` or ``hadamard(block_size=...)``, each
    callable with no codec); the last is the codec that produces the message.
    Read left to right, the outer wrapper sees the update first::

        chain(error_feedback, hadamard, qsgd(4))
        # encode: e + delta -> rotate -> QSGD; residual kept in the original coordinates

    Raises:
      ValueError: no parts, a last part that is not a Codec, or an earlier part
        that is not a wrapper.
    """
    if not parts:
        raise ValueError("chain needs at least one codec")
    *wrappers, codec = parts
    if not isinstance(codec, Codec):
        raise ValueError(f"the last part of chain must be a Codec, got {codec!r}")
    for w in wrappers:
        if isinstance(w, Codec) or not callable(w):
            raise ValueError(
                f"every part of chain but the last must be a wrapper (Codec -> Codec), such as "
                f"error_feedback or hadamard; got {w!r}"
            )
    for w in reversed(wrappers):
        codec = w(codec)
        if not isinstance(codec, Codec):
            raise ValueError(f"wrapper {w!r} did not return a Codec")
    return codec
