"""Client selection: which of the available clients form a round's cohort (issue 27, item 3).

Every rule first draws a *candidate pool* of D available clients uniformly
without replacement, then keeps M of them:

    u ~ U[0, 1)^C from purpose_key(round_key, COHORT)        (the same draw as uniform sampling)
    pool = the D clients with the largest  u_c  if available_c  else -1     (lax.top_k)
    cohort = the M pool members with the largest score_c                    (lax.top_k; pool order when no score)

Clients that are not available never enter the pool; when fewer than D are
available the pool's tail holds unavailable clients, marked invalid, whose
score is -inf: they are picked only when fewer than M clients are available,
and the round then masks those slots out (``jaxqfl.engine.round``). Ties go to
the earlier pool position (``lax.top_k``).

Rules:

* ``uniform()`` (the default): D = M, no score: M clients uniformly without
  replacement among the available ones. With every client available this is
  exactly the draw of ``jaxqfl.engine.round.sample_cohort``.
* ``power_of_choice(D)``: Power-of-Choice (Cho, Wang and Joshi, "Towards
  understanding biased client selection in federated learning", AISTATS 2022,
  Algorithm 1): score_c = the mean local loss of the current global model over
  client c's training rows, ``F_c(w) = (1/n_c) sum_i loss(w; x_i, y_i)``; the M
  candidates with the largest loss form the cohort. The paper draws its pool
  without replacement with probabilities proportional to the clients' data
  fractions; here the pool is drawn **uniformly** without replacement (the
  same draw as uniform sampling's), so a large client is favoured only
  through its loss.
* ``oort(D=None)``: Oort-like utility (Lai et al., "Oort: Efficient federated
  learning via guided participant selection", OSDI 2021, sec. 4.2):

      U_c = n_c sqrt( (1/n_c) sum_i loss_i^2 ) x s_c,   s_c = (T / t_c)^alpha if t_c > T else 1
      t_c = steps_c x seconds_per_step_c + 2 x 32 x P / bandwidth_c

  with the loss of the current global model on every training row of c, ``t_c``
  the client's expected round time from its ``ClientSystems`` (its local steps'
  compute plus the float32 model of P parameters down and the update up, the
  uncompressed nominal traffic), ``T`` the median ``t_c`` over the pool's valid
  members (the mean of the two middle values for an even count) and
  ``alpha = 2`` (Oort's default). The pool is D = min(C, 4 M) available clients
  unless given (``oort:D``). Oort's exploration of unseen clients, its
  staleness bonus, its pacer that adapts T and its blacklist are left out: this
  is the utility ranking only, recomputed from the current model every round.

The losses are evaluated inside the round program (``jaxqfl.engine.cohort_draw``),
padded to the largest client with masks; this module holds the formulas.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl import keys

OORT_ALPHA = 2.0  # Oort's straggler penalty exponent
OORT_POOL = 4  # Oort's default pool: min(C, 4 M) candidates
FLOAT_BITS = 32


class Candidates(NamedTuple):
    """What a score reads about the pool's D candidates (arrays of shape [D])."""

    ids: jax.Array  # int32 client ids
    ok: jax.Array  # bool: a real, available candidate
    counts: jax.Array  # int32 n_c, training rows
    mean_loss: jax.Array  # float32 (1/n_c) sum_i loss_i of the global model
    rms_loss: jax.Array  # float32 sqrt((1/n_c) sum_i loss_i^2)
    seconds: jax.Array | None  # float32 expected round time t_c (rules that need ClientSystems), else None


class Selection(NamedTuple):
    """A selection rule: ``score(Candidates) -> [D]`` (None: keep the pool's order, i.e. uniform)."""

    name: str
    score: Callable | None = None
    pool: int | None = None  # D; None: min(C, pool_multiple x M)
    pool_multiple: int = 1
    needs_systems: bool = False

    def pool_size(self, cohort_size: int, num_clients: int) -> int:
        """D, checked to lie in [M, C]."""
        D = self.pool if self.pool is not None else min(num_clients, self.pool_multiple * cohort_size)
        if not cohort_size <= D <= num_clients:
            raise ValueError(f"selection {self.name!r}: the candidate pool D={D} must lie in [cohort size "
                             f"M={cohort_size}, number of clients C={num_clients}]")
        return D


def uniform() -> Selection:
    """M clients uniformly without replacement among the available ones."""
    return Selection("uniform")


def _check_pool(rule: str, pool) -> int | None:
    if pool is None:
        return None
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"{rule} needs a candidate pool D that is a positive integer, got {pool!r}")
    return pool


def power_of_choice(pool: int) -> Selection:
    """Power-of-Choice: the M largest global-model losses among D uniform candidates (Cho et al. 2022)."""
    pool = _check_pool("power-of-choice", pool)
    if pool is None:
        raise ValueError("power-of-choice needs its candidate pool D (an integer in [M, C])")
    return Selection(f"power-of-choice:{pool}", lambda c: c.mean_loss, pool)


def oort_utility(c: Candidates, alpha: float = OORT_ALPHA) -> jax.Array:
    """``n_c sqrt(mean loss^2) x min(1, (T / t_c)^alpha)``, T the median t_c over the valid pool (module docstring)."""
    statistical = c.counts.astype(jnp.float32) * c.rms_loss
    t = c.seconds
    k = jnp.sum(c.ok.astype(jnp.int32))
    ordered = jnp.sort(jnp.where(c.ok, t, jnp.inf))
    lower, upper = ordered[jnp.maximum((k - 1) // 2, 0)], ordered[jnp.maximum(k // 2, 0)]
    preferred = 0.5 * (lower + upper)
    factor = jnp.where(t > preferred, (preferred / t) ** alpha, 1.0)
    return statistical * factor


def oort(pool: int | None = None, alpha: float = OORT_ALPHA) -> Selection:
    """Oort-like utility ranking over a pool of D (default min(C, 4 M)) candidates; needs ``ClientSystems``."""
    pool = _check_pool("oort", pool)
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"oort's alpha must be a number >= 0, got {alpha!r}")
    name = "oort" if pool is None else f"oort:{pool}"
    return Selection(name, lambda c: oort_utility(c, float(alpha)), pool, OORT_POOL, needs_systems=True)


def parse(spec: str) -> Selection:
    """``uniform``, ``power-of-choice:D``, ``oort`` or ``oort:D``."""
    if not isinstance(spec, str):
        raise ValueError(f"selection must be a spec string or a Selection, got {spec!r}")
    name, _, arg = spec.lower().partition(":")
    if name == "uniform" and not arg:
        return uniform()
    if name in ("power-of-choice", "oort"):
        if name == "oort" and not _:
            return oort()
        try:
            pool = int(arg)
        except ValueError:
            raise ValueError(f"selection {spec!r}: D {arg!r} is not an integer") from None
        return power_of_choice(pool) if name == "power-of-choice" else oort(pool)
    raise ValueError(f"selection {spec!r} is none of uniform, power-of-choice:D, oort, oort:D")


def resolve(selection) -> Selection | None:
    """A ``Selection`` (or spec string, or None); None when it is ``uniform``."""
    if selection is None:
        return None
    if isinstance(selection, str):
        selection = parse(selection)
    if not isinstance(selection, Selection):
        raise ValueError(f"selection must be a spec string or a jaxqfl.systems.selection.Selection, got {selection!r}")
    return None if selection.score is None and selection.pool is None else selection


def draw_pool(rkey: jax.Array, num_clients: int, pool: int, available: jax.Array | None):
    """``(ids [D] int32, ok [D] bool)``: D clients uniformly without replacement among the available ones."""
    u = jax.random.uniform(keys.purpose_key(rkey, keys.COHORT), (num_clients,))
    if available is None:
        _, ids = jax.lax.top_k(u, pool)
        return ids.astype(jnp.int32), jnp.ones((pool,), bool)
    kept, ids = jax.lax.top_k(jnp.where(available, u, -1.0), pool)
    return ids.astype(jnp.int32), kept >= 0.0


def pick(ids: jax.Array, ok: jax.Array, scores: jax.Array | None, cohort_size: int):
    """``(cohort [M], joined [M])``: the M valid candidates with the largest scores (pool order without scores)."""
    if scores is None:
        return ids[:cohort_size], ok[:cohort_size]
    ranked = jnp.where(ok, scores.astype(jnp.float32), -jnp.inf)
    _, pos = jax.lax.top_k(ranked, cohort_size)
    return ids[pos], ok[pos]


def expected_seconds(seconds_per_step: jax.Array, bandwidth: jax.Array, steps: jax.Array,
                     num_params: int) -> jax.Array:
    """``t_c = steps_c x seconds_per_step_c + 2 x 32 x P / bandwidth_c`` (per candidate)."""
    return steps.astype(jnp.float32) * seconds_per_step + (2.0 * FLOAT_BITS * num_params) / bandwidth
