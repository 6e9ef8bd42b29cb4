"""A statistical check that a randomized codec is unbiased: the mean of many decodes lies within Z standard errors."""
import math

import numpy as np

Z = 5.0  # standard errors: a false alarm per coordinate has probability < 6e-7


def assert_unbiased(samples, x, z: float = Z) -> None:
    """``samples`` ``[K, n]`` decodes of ``x`` ``[n]``; the standard error adds a range term so a zero-variance
    coordinate of a non-zero bias still fails."""
    samples, xn = np.asarray(samples, np.float64), np.asarray(x, np.float64)
    k = samples.shape[0]
    se = np.sqrt(samples.var(0, ddof=1) + np.max(np.abs(samples - xn)) ** 2 / k) / math.sqrt(k)
    assert np.all(np.abs(samples.mean(0) - xn) <= z * se + 1e-6)
