"""The benchmark workloads: a population, a model, an algorithm, a schedule and a cohort size.

=======  ===========================================================================
name     workload
=======  ===========================================================================
mlp      1,000 clients x 64 random examples (784 features, 62 classes), 100 per
         round; MLP 784-200-62; one local epoch of SGD, batch 16 (4 steps)
tiny     Synthetic(1, 1) (Li et al. 2020), 1,000 clients, all 1,000 per round;
         multinomial logistic regression 60 -> 10; 20 local SGD steps of batch 10
cnn      MNIST (the 24,345-image partial training split in shared/data) split IID over
         100 clients (243-244 examples each), 10 per round; the
         CNN of McMahan et al. 2017; one local epoch of SGD, batch 10 (25 steps)
big      ``mlp`` at 10,000 clients per round (population of 10,000)
qfl      ``mlp`` with int8 quantization-aware training (policy ``"full"``) and an
         8-bit QSGD uplink (``qsgd:127``: 1 sign bit + 7 level bits per coordinate)
resnet   100 clients x 50 random CIFAR-shaped images (32x32x3, 10 classes), 10 per
         round; ResNet-20 with GroupNorm (He et al. 2016); 5 local steps of batch 10
lstm     the fortunes corpus (shared/data), one client per topic file (40), 10 per
         round, next byte over windows of 80; the char LSTM of McMahan et al. 2017
         (embedding 8, 2 x 256); 5 local steps of batch 8
transformer  the same fortunes clients and windows; a decoder-only transformer
         (width 64, 2 blocks, 4 heads, context 80); 10 local steps of batch 16
=======  ===========================================================================

``resnet``, ``lstm`` and ``transformer`` (the model zoo of issue 23) are not in
:data:`DEFAULT_ORDER`: ``jaxqfl bench`` runs them when named (``--workloads``).

Random data is drawn once per workload with NumPy (seeded); its values do not
change the cost of a round, only its shapes do.
"""
from __future__ import annotations

import pathlib
from typing import Any, Callable, NamedTuple

import numpy as np
import optax

from jaxqfl import algorithms, models
from jaxqfl.data.population import Population
from jaxqfl.engine.schedule import LocalSchedule

DEFAULT_MNIST = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist" / "mnist.npz"
DEFAULT_FORTUNES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fortunes"


MLP_HIDDEN, MLP_CLIENT_LR = (200,), 0.05  # the mlp family's model and client learning rate (benchmarks/peers reads them)
TINY_CLIENT_LR = 0.01


class Workload(NamedTuple):
    name: str
    description: str
    population: Population
    model: Any
    algorithm: Any
    schedule: LocalSchedule
    cohort_size: int
    uplink: Any = None


def random_population(
    num_clients: int, examples_per_client: int, num_features: int, num_classes: int, seed: int = 0
) -> Population:
    """Equal-sized clients of uniform random features and labels, client-major (CSR)."""
    rng = np.random.default_rng(seed)
    n = num_clients * examples_per_client
    x = rng.random((n, num_features), dtype=np.float32)
    y = rng.integers(0, num_classes, n, dtype=np.int32)
    offsets = np.arange(num_clients, dtype=np.int32) * examples_per_client
    counts = np.full(num_clients, examples_per_client, np.int32)
    return Population(x, y, offsets, counts, x[:256].copy(), y[:256].copy(), num_classes, name="random")


def _mlp_like(name: str, description: str, num_clients: int, cohort_size: int, policy=None, uplink=None) -> Workload:
    return Workload(
        name,
        description,
        random_population(num_clients, 64, 784, 62),
        models.mlp(hidden=MLP_HIDDEN, num_outputs=62, policy=policy),
        algorithms.fedavg(optax.sgd(MLP_CLIENT_LR)),
        LocalSchedule(local_epochs=1, batch_size=16),
        cohort_size,
        uplink,
    )


def mlp(**_) -> Workload:
    return _mlp_like("mlp", "MLP 784-200-62, 1,000 clients x 64 ex., 100/round, 1 epoch, batch 16", 1000, 100)


def big(**_) -> Workload:
    return _mlp_like("big", "MLP 784-200-62, 10,000 clients x 64 ex., 10,000/round, 1 epoch, batch 16", 10_000, 10_000)


def qfl(**_) -> Workload:
    from jaxqfl.compress import from_spec

    return _mlp_like(
        "qfl",
        "mlp + int8 QAT (policy 'full') + 8-bit QSGD uplink (qsgd:127)",
        1000,
        100,
        policy="full",
        uplink=from_spec("qsgd:127"),
    )


def tiny(**_) -> Workload:
    from jaxqfl.data import synthetic

    return Workload(
        "tiny",
        "logistic regression 60->10 on Synthetic(1,1), 1,000 clients, 1,000/round, 20 steps of batch 10",
        synthetic(1.0, 1.0, 1000, 0),
        models.logistic_regression(10),
        algorithms.fedavg(optax.sgd(TINY_CLIENT_LR)),
        LocalSchedule(local_steps=20, batch_size=10),
        1000,
    )


def cnn(*, mnist_path=None, **_) -> Workload:
    from jaxqfl.data import build

    return Workload(
        "cnn",
        "McMahan CNN on MNIST (partial split: 24,345 images IID over 100 clients), 10/round, 1 epoch, batch 10",
        build("mnist", num_clients=100, partition="iid", data_path=mnist_path or DEFAULT_MNIST),
        models.cnn(10),
        algorithms.fedavg(optax.sgd(0.05)),
        LocalSchedule(local_epochs=1, batch_size=10),
        10,
    )


def resnet(**_) -> Workload:
    rng = np.random.default_rng(0)
    C, n = 100, 50
    x = rng.random((C * n, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, C * n, dtype=np.int32)
    pop = Population(x, y, np.arange(C, dtype=np.int32) * n, np.full(C, n, np.int32), x[:256].copy(),
                     y[:256].copy(), 10, name="random-cifar")
    return Workload(
        "resnet",
        "ResNet-20/GroupNorm on 100 clients x 50 CIFAR-shaped images, 10/round, 5 steps of batch 10",
        pop,
        models.resnet20(10),
        algorithms.fedavg(optax.sgd(0.05)),
        LocalSchedule(local_steps=5, batch_size=10),
        10,
    )


def _fortunes(path, context: int = 80) -> Population:
    from jaxqfl.data.text import load_text

    return load_text(path or DEFAULT_FORTUNES, context)


def lstm(*, fortunes_path=None, **_) -> Workload:
    return Workload(
        "lstm",
        "char LSTM (McMahan et al. 2017, 2 x 256) on fortunes, 40 topic clients, 10/round, next byte over 80, "
        "5 steps of batch 8",
        _fortunes(fortunes_path),
        models.char_lstm(),
        algorithms.fedavg(optax.sgd(1.0)),
        LocalSchedule(local_steps=5, batch_size=8),
        10,
    )


def transformer(*, fortunes_path=None, **_) -> Workload:
    return Workload(
        "transformer",
        "decoder-only transformer (width 64, 2 blocks, 4 heads) on fortunes, 40 topic clients, 10/round, "
        "next byte over 80, 10 steps of batch 16",
        _fortunes(fortunes_path),
        models.transformer(width=64, depth=2, heads=4, context=80),
        algorithms.fedavg(optax.sgd(0.5)),
        LocalSchedule(local_steps=10, batch_size=16),
        10,
    )


WORKLOADS: dict[str, Callable[..., Workload]] = {"mlp": mlp, "tiny": tiny, "cnn": cnn, "big": big, "qfl": qfl,
                                                 "resnet": resnet, "lstm": lstm, "transformer": transformer}
DEFAULT_ORDER = ("mlp", "tiny", "cnn", "big", "qfl")


def synthetic_like(
    num_clients: int,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_features: int = 60,
    num_classes: int = 10,
    min_size: int = 10,
    max_size: int = 40,
    test_clients: int = 2000,
    test_rows: int = 5,
    seed: int = 0,
    block: int = 50_000,
) -> Population:
    """A Synthetic(alpha, beta) population (Li et al. 2020) of many small clients, drawn in vectorised blocks.

    The generative model of :func:`jaxqfl.data.synthetic.synthetic` (per-client
    ``W_k, b_k ~ N(u_k, 1)``, ``u_k ~ N(0, alpha)``; ``x ~ N(v_k, diag(j^-1.2))``,
    ``v_k ~ N(B_k, 1)``, ``B_k ~ N(0, beta)``; ``y = argmax(W_k^T x + b_k)``), but
    drawn ``block`` clients at a time from one generator in float32, so a million
    clients take a minute and no per-client parameter arrays are kept (not the same
    numbers as ``synthetic``). Sizes: ``n_k = min(min_size + floor(LogNormal(ln 9, 0.6)),
    max_size)``, about 21 on average. The test set is ``test_rows`` extra rows of
    each of the first ``test_clients`` clients.
    """
    rng = np.random.default_rng(seed)
    d, C = num_features, num_classes
    std = (np.arange(1, d + 1, dtype=np.float32) ** -0.6).astype(np.float32)  # sqrt(j^-1.2)
    sizes = np.minimum(min_size + rng.lognormal(np.log(9.0), 0.6, num_clients).astype(np.int64), max_size)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    x = np.empty((int(sizes.sum()), d), np.float32)
    y = np.empty((x.shape[0],), np.int32)
    x_test, y_test = [], []
    for start in range(0, num_clients, block):
        k = min(block, num_clients - start)
        u = rng.normal(0.0, alpha, (k, 1, 1)).astype(np.float32)
        w = u + rng.standard_normal((k, d, C), dtype=np.float32)  # [k, d, C]
        b = u[:, :, 0] + rng.standard_normal((k, C), dtype=np.float32)  # [k, C]
        v = rng.normal(0.0, beta, (k, 1)).astype(np.float32) + rng.standard_normal((k, d), dtype=np.float32)
        n = sizes[start:start + k]
        extra = test_rows if start < test_clients else 0
        for size in np.unique(n):  # clients of one size at a time: only the rows they hold are drawn
            g = np.flatnonzero(n == size)
            xb = v[g, None, :] + std * rng.standard_normal((len(g), size + extra, d), dtype=np.float32)
            yb = np.argmax(np.matmul(xb, w[g]) + b[g, None, :], axis=-1).astype(np.int32)
            rows = offsets[start + g][:, None] + np.arange(size)[None, :]
            x[rows], y[rows] = xb[:, :size], yb[:, :size]
            if extra:
                t = g[start + g < test_clients]
                x_test.append(xb[: len(t), size:].reshape(-1, d))
                y_test.append(yb[: len(t), size:].reshape(-1))
    return Population(
        x, y, offsets.astype(np.int32), sizes.astype(np.int32), np.concatenate(x_test), np.concatenate(y_test), C,
        name=f"synthetic_like({alpha:g},{beta:g})",
    )
