"""The zoo models as ``jaxqfl.quant.graph`` op sequences (for equalization and integer inference)."""
from __future__ import annotations

from jaxqfl.quant.graph import Conv, Dense, Flatten, MaxPool, Relu


def mlp_graph(num_hidden: int = 2) -> tuple:
    """``jaxqfl.models.mlp`` with ``num_hidden`` hidden layers (``len(hidden)``)."""
    ops = [Flatten()]
    for i in range(num_hidden):
        ops += [Dense(f"Dense_{i}"), Relu()]
    return tuple(ops + [Dense(f"Dense_{num_hidden}")])


def cnn_graph() -> tuple:
    """``jaxqfl.models.cnn`` (McMahan et al. 2017): conv-relu-pool x 2, dense-relu, dense."""
    return (
        Conv("Conv_0"), Relu(), MaxPool(),
        Conv("Conv_1"), Relu(), MaxPool(),
        Flatten(), Dense("Dense_0"), Relu(), Dense("Dense_1"),
    )
