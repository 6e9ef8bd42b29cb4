"""Who the federation serves: the spread of a metric over clients, from per-client sums.

Each client ``c`` with ``n_c > 0`` held-out rows has the per-client mean
``a_c = S_c / n_c`` of each per-example metric (``S_c`` its sum over the
client's rows, computed inside the evaluation program). Reported over those
clients, unweighted (every client counts once, as in q-FFL's and TFF's
per-client evaluation):

    client_<m>_mean = mean_c a_c,   client_<m>_std = population std of a_c,
    accuracy (higher is better):   client_accuracy_p10 = 10th percentile, client_accuracy_min = worst,
                                   client_accuracy_p90 (the band's other edge)
    losses (lower is better):      client_<m>_p90 = 90th percentile, client_<m>_max = worst,
                                   client_<m>_p10

Percentiles are NumPy's default (linear interpolation between order statistics).
A client whose mean is not finite (its model diverged, e.g. under a personal
fine-tuning's too large step) is counted in ``client_<m>_nonfinite`` (present
only when some are); the statistics then are NaN, written as null.
Next-token metrics are ratios of sums: a client's token loss is its summed
token loss over its token count, and ``client_bits_per_char = loss / ln 2``.
"""
from __future__ import annotations

import math

import numpy as np

HIGHER_IS_BETTER = ("accuracy",)


def per_client_means(sums: dict, counts) -> dict:
    """``{metric: [C'] per-client means}`` over the clients with at least one test row."""
    counts = np.asarray(counts, np.float64)
    held = counts > 0
    if "token_loss_sum" in sums and "tokens" in sums:  # next-token: ratios of per-client sums
        tokens = np.asarray(sums["tokens"], np.float64)[held]
        ok = np.where(tokens > 0, tokens, 1.0)
        loss = np.asarray(sums["token_loss_sum"], np.float64)[held] / ok
        return {"loss": loss, "accuracy": np.asarray(sums["correct"], np.float64)[held] / ok,
                "bits_per_char": loss / math.log(2.0)}
    return {k: np.asarray(v, np.float64)[held] / counts[held] for k, v in sums.items()}


def spread(sums: dict, counts) -> dict:
    """The ``client_<metric>_*`` summary of the module docstring (floats, JSON-ready)."""
    out = {}
    for name, a in per_client_means(sums, counts).items():
        if a.size == 0:
            continue
        diverged = int(np.count_nonzero(~np.isfinite(a)))
        if diverged:
            out[f"client_{name}_nonfinite"] = diverged
        out[f"client_{name}_mean"] = float(a.mean())
        out[f"client_{name}_std"] = float(a.std())
        if name in HIGHER_IS_BETTER:
            out[f"client_{name}_p10"] = float(np.percentile(a, 10))
            out[f"client_{name}_min"] = float(a.min())
            out[f"client_{name}_p90"] = float(np.percentile(a, 90))
        else:
            out[f"client_{name}_p90"] = float(np.percentile(a, 90))
            out[f"client_{name}_max"] = float(a.max())
            out[f"client_{name}_p10"] = float(np.percentile(a, 10))
    return out
