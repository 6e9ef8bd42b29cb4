"""The variance bound of an unbiased codec, from its paper: ``E||C(v) - v||^2 <= q ||v||^2``.

What a precision-aware rule needs to know about a client's codec
(``jaxqfl.aggregate.tier_weighted``). ``q`` per codec spec:

==================  ======================================  ================================
spec                ``q``                                   source
==================  ======================================  ================================
``none``            0                                       (float32, exact)
``qsgd:S:D``        ``min(D / S^2, sqrt(D) / S)``           Alistarh et al. 2017, Lemma 3.1
``uniform:B:D``     ``D / (2 (2^B - 1)^2)``                 Suresh et al. 2017: per coordinate
                                                            ``step^2 / 4``, ``step = (hi - lo) /
                                                            (2^B - 1)`` and ``(hi - lo)^2 <=
                                                            2 ||v||^2`` over the bucket
``natural``         1/8                                     Horvath et al. 2019, Theorem 1
``randk:F``         ``1 / F - 1`` (unbiased scaling)        Stich et al. 2018
==================  ======================================  ================================

A Hadamard rotation keeps ``q`` (it is orthonormal). A per-tensor bucket
(``qsgd:S:none``, ``uniform:B`` by default) has ``D`` = the tensor's size: give
``largest_tensor`` (the model's largest parameter count) for the bound that holds
for every tensor. Biased codecs (``topk``, ``sign``, ``randk`` without scaling,
anything with ``+ef``) have no such ``q``: refused, naming the spec.
"""
from __future__ import annotations

import math

from jaxqfl.compress.families import NO_CODEC
from jaxqfl.compress.spec import parse


def relative_variance(spec: str, largest_tensor: int | None = None) -> float:
    """``q`` of the codec ``spec`` (module docstring); ``ValueError`` for a codec without a stated bound."""
    parsed = parse(spec)
    a = parsed.arguments
    why = None
    if "ef" in parsed.modifiers:
        why = "error feedback makes it biased"
    elif parsed.name in NO_CODEC:
        return 0.0
    elif parsed.name in ("qsgd", "uniform"):
        d = a.get("bucket_size") or largest_tensor
        if d is None:
            why = ("its buckets are whole tensors, whose size a spec does not know; give a bucket (e.g. qsgd:4:512) "
                   "or the model's largest tensor")
        elif parsed.name == "qsgd":
            s = a["levels"]
            return min(d / s**2, math.sqrt(d) / s)
        else:
            return d / (2.0 * (2 ** a["bits"] - 1) ** 2)
    elif parsed.name == "natural":
        return 0.125
    elif parsed.name == "randk" and a.get("unbiased", True) and a.get("fraction") is not None:
        return 1.0 / a["fraction"] - 1.0
    if why is None:
        why = "it is biased or has no variance bound stated here (none, qsgd, uniform, natural, randk:FRACTION)"
    raise ValueError(f"codec {spec!r} has no variance bound q for precision weights: {why}")
