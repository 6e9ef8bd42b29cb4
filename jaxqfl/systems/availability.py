"""Client availability: which clients can be sampled in round ``r`` (issue 27, item 1).

Real devices come and go: a phone trains only while idle, charging and on
Wi-Fi (Bonawitz et al., "Towards federated learning at scale", MLSys 2019,
sec. 2 and fig. 7, which shows the daily cycle of available devices). Each
model here gives every client ``c`` a probability ``p_c(r)`` of being available
in round ``r``; availability is then an independent Bernoulli draw per client
and round,

    available_c(r) = 1[ u_c(r) < p_c(r) ],   u(r) ~ U[0, 1)^C  drawn from  purpose_key(round_key(r), AVAILABILITY),

inside the round program (no host synchronisation). ``u`` is one replicated
draw of C uniforms, so a client's availability depends on the seed, the round
and its id, never on the device count or the chunk size. Since ``u < 1``,
``p = 1`` makes every client available.

The models (``parse`` reads them from the CLI's ``--availability`` spec):

* ``always()``: every client, every round (``p = 1``, and nothing is drawn: the
  round program is the one without availability, bit for bit).
* ``bernoulli(P)``: ``p_c(r) = P`` for every client and round.
* ``diurnal(PERIOD, floor=DIURNAL_FLOOR)``: a day of PERIOD rounds,

      p_c(r) = clip(0.5 + 0.5 cos(2 pi (r / PERIOD + phase_c)), floor, 1),

  with each client's phase (its time zone) ``phase_c ~ U[0, 1)`` drawn once from
  ``purpose_key(derive(run_key, CLIENT_TAG, c), AVAILABILITY)``: a function of the
  seed and the client id only. The floor (0.05) keeps every client reachable at
  its "night". **The diurnal clock is the round index r, not the virtual clock**
  (``jaxqfl.systems.clock``): the cohort is drawn at the start of a round, before
  the round's simulated duration (which depends on who is in it) is known, and
  drawing it from the round index keeps the round program free of the clock's
  state, so availability is the same whether or not ``--speeds`` is given.
* ``per_client(probabilities)`` / ``load_availability_csv(FILE)``: a fixed
  ``p_c`` per client (a CSV ``client,availability``, one row per client id, each
  value in [0, 1]).

How the cohort is then drawn from the available clients (M uniformly without
replacement, or a selection rule) is ``jaxqfl.systems.selection``.
"""
from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxqfl import keys

DIURNAL_FLOOR = 0.05  # the smallest availability probability of the diurnal model


class Availability(NamedTuple):
    """An availability model: ``probability(run_key, round_index, num_clients) -> [C] float32``.

    ``probability`` is None for ``always`` (nothing is drawn). ``num_clients`` is the
    population size a per-client model was made for (None: any).
    """

    name: str  # the spec it was made from, for reports ("always", "bernoulli:0.5", "diurnal:24", a file)
    probability: Callable | None
    num_clients: int | None = None

    def check(self, num_clients: int) -> "Availability":
        if self.num_clients is not None and self.num_clients != num_clients:
            raise ValueError(f"availability {self.name!r} gives {self.num_clients} clients' probabilities; the "
                             f"population has {num_clients} clients")
        return self


def always() -> Availability:
    """Every client is available in every round."""
    return Availability("always", None)


def bernoulli(p: float) -> Availability:
    """Each client is available with probability ``p`` in (0, 1], independently per round."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"bernoulli availability needs a probability P in (0, 1], got {p!r}")
    p = float(p)
    return Availability(f"bernoulli:{p:g}", lambda run_key, r, C: jnp.full((C,), p, jnp.float32))


def diurnal_phases(run_key: jax.Array, num_clients: int) -> jax.Array:
    """``[C]`` float32 in [0, 1): each client's phase, from the seed and its id (module docstring)."""
    def one(c):
        return jax.random.uniform(keys.purpose_key(keys.derive(run_key, keys.CLIENT_TAG, c), keys.AVAILABILITY))

    return jax.vmap(one)(jnp.arange(num_clients, dtype=jnp.int32))


def diurnal_probability(phases: jax.Array, round_index, period: int, floor: float = DIURNAL_FLOOR) -> jax.Array:
    """``clip(0.5 + 0.5 cos(2 pi (r / PERIOD + phase_c)), floor, 1)`` for every client."""
    r = jnp.asarray(round_index, jnp.float32)
    angle = 2.0 * jnp.pi * (r / period + phases)
    return jnp.clip(0.5 + 0.5 * jnp.cos(angle), floor, 1.0).astype(jnp.float32)


def diurnal(period: int, floor: float = DIURNAL_FLOOR) -> Availability:
    """A day of ``period`` rounds; each client with its own phase (module docstring for the formula)."""
    if isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1:
        raise ValueError(f"diurnal availability needs a PERIOD that is a positive integer (rounds), got {period!r}")
    if not (isinstance(floor, (int, float)) and 0.0 < floor <= 1.0):
        raise ValueError(f"the diurnal floor must be in (0, 1], got {floor!r}")
    period, floor = int(period), float(floor)
    return Availability(f"diurnal:{period}", lambda run_key, r, C: diurnal_probability(
        diurnal_phases(run_key, C), r, period, floor))


def per_client(probabilities, name: str = "per-client") -> Availability:
    """A fixed probability per client (``[C]`` values in [0, 1])."""
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"per-client availability needs a 1-D array of probabilities, got shape {p.shape}")
    bad = np.flatnonzero(~((p >= 0) & (p <= 1)))
    if bad.size:
        raise ValueError(f"availability of client {int(bad[0])} is {p[bad[0]]!r}; probabilities must lie in [0, 1]")
    table = jnp.asarray(p, jnp.float32)
    return Availability(name, lambda run_key, r, C: table, p.size)


def load_availability_csv(path, num_clients: int) -> Availability:
    """Read ``client,availability`` rows (every id 0..C-1 once, values in [0, 1]); ValueError naming the row."""
    from jaxqfl.systems.profile_file import read_client_table

    probability = (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")  # NaN fails too
    return per_client(read_client_table(path, num_clients, {"availability": probability})["availability"],
                      name=str(path))


def parse(spec: str, num_clients: int | None = None) -> Availability:
    """``always``, ``bernoulli:P``, ``diurnal:PERIOD`` or a CSV file (read when ``num_clients`` is given)."""
    if not isinstance(spec, str):
        raise ValueError(f"availability must be a spec string or an Availability, got {spec!r}")
    low = spec.lower()
    if low == "always":
        return always()
    for prefix, what, convert, kind, make in (("bernoulli:", "P", float, "a number", bernoulli),
                                              ("diurnal:", "PERIOD", int, "an integer", diurnal)):
        if low.startswith(prefix):
            text = spec[len(prefix):]
            try:
                value = convert(text)
            except ValueError:
                raise ValueError(f"availability {spec!r}: {what} {text!r} is not {kind}") from None
            return make(value)
    if os.path.isfile(spec):
        if num_clients is None:
            raise ValueError(f"availability file {spec!r}: the number of clients is needed to read it")
        return load_availability_csv(spec, num_clients)
    raise ValueError(f"availability {spec!r} is none of always, bernoulli:P, diurnal:PERIOD or an existing CSV file")


def resolve(availability, num_clients: int) -> Availability | None:
    """An ``Availability`` (or spec string, or None) checked for ``num_clients``; None when it is ``always``."""
    if availability is None:
        return None
    if isinstance(availability, str):
        availability = parse(availability, num_clients)
    if not isinstance(availability, Availability):
        raise ValueError(f"availability must be a spec string or a jaxqfl.systems.availability.Availability, "
                         f"got {availability!r}")
    availability = availability.check(num_clients)
    return None if availability.probability is None else availability


def available_mask(availability: Availability, run_key: jax.Array, rkey: jax.Array, round_index,
                   num_clients: int) -> jax.Array:
    """``[C]`` bool: ``u_c < p_c(r)`` with ``u`` from ``purpose_key(rkey, AVAILABILITY)`` (traceable)."""
    p = availability.probability(run_key, round_index, num_clients)
    u = jax.random.uniform(keys.purpose_key(rkey, keys.AVAILABILITY), (num_clients,))
    return u < p
