"""Privacy planning of distributed DP: the noise, the Skellam grid and the epsilon of a run, before it starts.

:func:`plan_distributed_skellam` is what ``jaxqfl run --dp-distributed skellam``
does before building its aggregator, callable from a script. Given the clip c,
the update's dimension n, the population N, the cohort M, the rounds R, delta,
the secure sum's bits b and the declared dropout p:

1. the noise shares ``s = min_survivors(M, p)``: the fewest survivors the noise
   is split over (``jaxqfl.aggregate.skellam_calibration``);
2. for a noise multiplier z, the Skellam parameters
   ``skellam_parameters(c, z, dimension=n, cohort_size=M, bits=b, noise_shares=s)``:
   the grid step gamma, the sensitivities Delta_2, Delta_1 and the variance mu;
3. the equivalent Gaussian ``z_eff(z)`` whose RDP dominates the Skellam bound
   (Agarwal, Kairouz, Liu 2021, Cor. 4.1; ``jaxqfl.privacy.distributed``),
   against the sampling's neighbouring relation;
4. the run's event ``SelfComposedDpEvent(round_event(z_eff), R)`` and its
   epsilon at delta (RDP at integer orders);
5. with ``target_epsilon`` instead of z: the z whose epsilon is the target
   (``distributed_noise_for_epsilon``: Brent's method through steps 2-4, since
   the grid, hence z_eff, depends on z).

The central Gaussian (DP-FedAvg) needs no planner of its own:
:func:`jaxqfl.privacy.noise_for_epsilon`, :func:`jaxqfl.privacy.describe` and
:func:`jaxqfl.privacy.accountant_name` are the whole computation. SecAgg+'s
degree and threshold are :func:`jaxqfl.aggregate.secagg_plan.choose_degree`.

Example::

    plan = plan_distributed_skellam(clip=1.0, template_or_dimension=params, num_clients=1000,
                                    cohort_size=50, rounds=100, delta=1e-5, bits=20, dropout=0.1,
                                    target_epsilon=4.0)
    agg = aggregate.distributed_skellam(plan.clip, plan.noise_multiplier, template=params, num_clients=1000,
                                        cohort_size=50, bits=20, dropout=0.1,
                                        noise_shares=plan.parameters.noise_shares)

References:
  Agarwal, Kairouz, Liu. The Skellam Mechanism for Differentially Private
  Federated Learning. NeurIPS 2021.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import dp_accounting
import numpy as np

from jaxqfl.aggregate.skellam_calibration import SkellamParameters, min_survivors, skellam_parameters
from jaxqfl.privacy.accounting import SAMPLINGS
from jaxqfl.privacy.distributed import (
    distributed_epsilon,
    distributed_noise_for_epsilon,
    distributed_round_event,
    skellam_noise_multiplier,
)


class DistributedDpPlan(NamedTuple):
    """A distributed-DP run's privacy plan (module docstring)."""

    clip: float  # c
    noise_multiplier: float  # z: the Skellam noise on the sum has std >= z c
    parameters: SkellamParameters  # the grid, sensitivities and variance of z
    effective_noise_multiplier: float  # z_eff of the equivalent Gaussian
    epsilon: float  # after the run's rounds at delta (inf without noise)
    delta: float
    rounds: int
    sampling: str  # "fixed", "poisson" or "async"
    event: dp_accounting.DpEvent  # the run's event (the equivalent Gaussian's, composed over the rounds)
    accountant: str  # how epsilon is accounted, in words


def accountant_description(sampling: str) -> str:
    """How :func:`plan_distributed_skellam` accounts: RDP at integer orders on the equivalent Gaussian."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    relation = "add-or-remove-one" if sampling == "poisson" else "replace-one"
    return (f"rdp ({relation}, integer orders) on the equivalent Gaussian"
            + (", no sampling amplification" if sampling == "async" else ""))


def update_dimension(template_or_dimension: Any) -> int:
    """n: an int itself, else the number of coordinates of a pytree of arrays or ``jax.ShapeDtypeStruct``."""
    if isinstance(template_or_dimension, (int, np.integer)) and not isinstance(template_or_dimension, bool):
        n = int(template_or_dimension)
    else:
        import jax

        leaves = jax.tree.leaves(template_or_dimension)
        if not leaves or not all(hasattr(x, "shape") for x in leaves):
            raise ValueError(f"template_or_dimension must be a positive int or a pytree of arrays (or "
                             f"ShapeDtypeStructs), got {type(template_or_dimension).__name__}")
        n = sum(math.prod(x.shape) for x in leaves)
    if n < 1:
        raise ValueError(f"the update must have at least one coordinate, got dimension {n}")
    return n


def plan_distributed_skellam(
    *,
    clip: float,
    template_or_dimension: Any,
    num_clients: int,
    cohort_size: int,
    rounds: int,
    delta: float,
    bits: int = 20,
    dropout: float = 0.0,
    sampling: str = "fixed",
    noise_multiplier: Optional[float] = None,
    target_epsilon: Optional[float] = None,
) -> DistributedDpPlan:
    """The noise, Skellam parameters and epsilon of a distributed-DP run (module docstring).

    Args:
      clip: c, the L2 clip of a client's whole update.
      template_or_dimension: the update's pytree (the model's parameters for FedAvg; arrays or
        ``jax.eval_shape``'s structs) or its coordinate count n.
      num_clients: N, the population.
      cohort_size: M, the clients summed per round (FedBuff: the buffer K; Poisson: the expected q N,
        an integer here since the grid is sized for it).
      rounds: R, the rounds (FedBuff: flushes) accounted.
      delta: the target delta, in (0, 1).
      bits: b, the secure sum's modulus 2^b.
      dropout: p, the declared dropout; the noise is split over ``min_survivors(M, p)`` clients.
      sampling: ``"fixed"`` (M of N without replacement), ``"poisson"`` or ``"async"`` (FedBuff's flushes).
      noise_multiplier, target_epsilon: exactly one; z itself, or the epsilon z is calibrated to.

    Raises:
      ValueError naming the value: both or neither of noise_multiplier / target_epsilon, and any
      value the calibration or the accounting refuses (clip, bits, cohort, delta, rounds, sampling).
    """
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ValueError(f"give exactly one of noise_multiplier and target_epsilon, got noise_multiplier="
                         f"{noise_multiplier!r} and target_epsilon={target_epsilon!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not (isinstance(cohort_size, int) and cohort_size >= 2):
        raise ValueError(f"distributed DP needs an integer cohort_size >= 2 (the secure sum's clients), "
                         f"got {cohort_size!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    n = update_dimension(template_or_dimension)
    shares = min_survivors(cohort_size, dropout)  # does not depend on z

    def parameters(z):
        return skellam_parameters(clip, z, dimension=n, cohort_size=cohort_size, bits=bits, noise_shares=shares)

    def z_eff_of(p):
        return skellam_noise_multiplier(p.l2_sensitivity, p.l1_sensitivity, p.central_variance, sampling=sampling)

    acct = dict(num_clients=num_clients, cohort_size=cohort_size, sampling=sampling)
    if target_epsilon is not None:
        noise_multiplier = distributed_noise_for_epsilon(target_epsilon, delta, rounds,
                                                         lambda z: z_eff_of(parameters(z)), **acct)
    p = parameters(noise_multiplier)
    z_eff = z_eff_of(p)
    eps = distributed_epsilon(z_eff, delta, rounds, **acct)
    event = dp_accounting.SelfComposedDpEvent(distributed_round_event(z_eff, **acct), rounds)
    return DistributedDpPlan(clip=float(clip), noise_multiplier=float(noise_multiplier), parameters=p,
                             effective_noise_multiplier=z_eff, epsilon=eps, delta=delta, rounds=rounds,
                             sampling=sampling, event=event, accountant=accountant_description(sampling))
