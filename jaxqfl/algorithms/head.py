"""A model split into a shared body and a per-client head, by a regular expression over parameter paths.

FedRep and FedPer (``jaxqfl.algorithms.fedrep``) average the body over the
federation and keep the head on each client. A leaf belongs to the head when
``re.search(pattern, path)`` matches its ``/``-joined path (``Dense_2/kernel``,
``params/head/bias``: the names ``jaxqfl quantize`` and the LoRA targets use).
The split is static: the body and the head are tuples of leaves in the
params' flatten order, so the update a client uploads holds the body's leaves
only (its bits count the body alone) and ``merge`` puts the parts back.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax

from jaxqfl.quant.policy import _key_name


def leaf_paths(params) -> list[str]:
    """The ``/``-joined path of every leaf, in flatten order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return ["/".join(_key_name(k) for k in path) for path, _ in flat]


def last_module(params) -> str:
    """A pattern for the last top-level entry of a params dict in its own order (a Flax model's output layer)."""
    tree = params.get("params", params) if isinstance(params, dict) else params
    if not isinstance(tree, dict) or not tree:
        raise ValueError("the model's parameters are not a dict of layers: name the head with a path pattern")
    name = list(tree)[-1]
    prefix = "params/" if isinstance(params, dict) and "params" in params and tree is params["params"] else ""
    return f"^{re.escape(prefix + name)}/"


class HeadSplit(NamedTuple):
    """Which leaves are the head (``is_head``, static), and the functions between a model and its parts."""

    is_head: tuple[bool, ...]
    treedef: Any

    def body(self, params) -> tuple:
        return tuple(a for a, h in zip(jax.tree.leaves(params), self.is_head) if not h)

    def head(self, params) -> tuple:
        return tuple(a for a, h in zip(jax.tree.leaves(params), self.is_head) if h)

    def merge(self, body, head):
        body, head = iter(body), iter(head)
        return jax.tree.unflatten(self.treedef, [next(head) if h else next(body) for h in self.is_head])


def check_pattern(pattern: str) -> re.Pattern:
    """``pattern`` compiled; a ValueError naming it when it is not a regular expression."""
    try:
        return re.compile(pattern)
    except (re.error, TypeError) as err:
        raise ValueError(f"head pattern {pattern!r} is not a regular expression: {err}") from None


def split_by_pattern(params, pattern: str) -> HeadSplit:
    """The split of ``params`` whose head is the leaves matching ``pattern``; refuses an empty body or head."""
    rx = check_pattern(pattern)
    paths = leaf_paths(params)
    is_head = tuple(bool(rx.search(p)) for p in paths)
    listing = ", ".join(paths[:12]) + (", ..." if len(paths) > 12 else "")
    if not any(is_head):
        raise ValueError(f"head pattern {pattern!r} matches no parameter; the model's parameters are: {listing}")
    if all(is_head):
        raise ValueError(f"head pattern {pattern!r} matches every parameter, leaving no shared body; "
                         f"the model's parameters are: {listing}")
    return HeadSplit(is_head, jax.tree.structure(params))
