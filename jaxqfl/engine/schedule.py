"""How much local work a client does, and which of its examples each local step reads.

Two modes, both with static shapes (the number of scanned steps is the same for
every client; steps a small client does not take are masked out):

* ``local_steps=K``: K steps. Each step's batch is ``batch_size`` row indices
  drawn uniformly *with replacement* from ``[0, n_i)`` (i.i.d. minibatch SGD):
  ``row = floor(u * n_i)``, ``u ~ U[0, 1)`` from step s's key
  ``purpose_key(step_key(ckey, s), BATCH)``, so every row, the last included,
  has probability ``1 / n_i``. The cost of a step never depends on the size of
  the largest client.
* ``local_epochs=E``: E passes over the client's data in a per-client random
  order: epoch e reads the permutation ``pi_e`` of ``[0, n_i)`` (argsort of
  uniforms drawn from ``purpose_key(epoch_key(ckey, e), BATCH)``, padded
  entries pushed to the end). Step s reads positions
  ``p = s*B .. s*B + B - 1`` of the sequence ``pi_0 ++ pi_1 ++ ...`` of length
  ``E * n_i``; positions past the end are masked. The scan runs
  ``ceil(E * n_max / B)`` steps; client i takes ``ceil(E * n_i / B)`` of them.

``batch_size=None`` means full batch: every step reads all of the client's
examples (``B = n_max``, masked), so ``local_steps=1, batch_size=None`` is FedSGD.

A sweep over local steps (``jaxqfl.engine.build_sweep``) pads ``local_steps``
to the sweep's maximum K_max and gives each config its count K as a traced
``real_steps`` (``schedule.padded(K)``): the scan runs K_max steps and steps
``s >= K`` are masked (the local state is kept as it was, their loss left out,
``info.num_steps = K``). Step s's keys are ``step_key(ckey, s)`` whatever the
number of steps, so the first K steps draw exactly what the unpadded run with
``local_steps=K`` draws: config K of the sweep equals that run.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxqfl import keys

_POSITIONS = 2**31 - 1  # the largest row position of a client's epochs (int32, as the programs count)


@dataclasses.dataclass(frozen=True)
class LocalSchedule:
    """Local work of every client: exactly one of ``local_steps`` / ``local_epochs``."""

    local_steps: int | None = None
    local_epochs: int | None = None
    batch_size: int | None = 32
    #: ``local_steps`` mode padded to ``local_steps``: a traced int32 count of real steps
    #: (one sweep config's K <= local_steps); None: every scheduled step is real.
    real_steps: Any = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError(
                f"give exactly one of local_steps and local_epochs, got local_steps={self.local_steps}, "
                f"local_epochs={self.local_epochs}"
            )
        for name in ("local_steps", "local_epochs", "batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.real_steps is not None and self.local_steps is None:
            raise ValueError("real_steps (padded local steps) needs local_steps, not local_epochs")

    def padded(self, real_steps) -> "LocalSchedule":
        """This schedule (``local_steps`` mode) with only ``real_steps`` (traced) of its steps real."""
        if self.local_steps is None:
            raise ValueError(f"only local_steps can be padded, got local_epochs={self.local_epochs}")
        return dataclasses.replace(self, real_steps=jnp.asarray(real_steps, jnp.int32))

    @property
    def every_step_active(self) -> bool:
        """True when no client ever has a masked step (fixed ``local_steps``, not padded)."""
        return self.local_steps is not None and self.real_steps is None

    def batch(self, max_count: int) -> int:
        """Static batch width ``B``."""
        return max_count if self.batch_size is None else self.batch_size

    def num_steps(self, max_count: int) -> int:
        """Static number of scanned local steps; refuses epochs whose row positions would not fit an int32."""
        if self.local_steps is not None:
            return self.local_steps
        B = self.batch(max_count)
        if self.local_epochs * max_count + B > _POSITIONS:  # step s reads positions s*B .. s*B + B - 1 (int32)
            raise ValueError(
                f"local_epochs={self.local_epochs:,} passes over the largest client's {max_count:,} rows are "
                f"{self.local_epochs * max_count:,} row positions; at most {_POSITIONS - B:,} with batches of {B:,} "
                f"(a client's positions are 32-bit integers): fewer epochs")
        return math.ceil(self.local_epochs * max_count / B)

    def steps_taken(self, count, max_count: int):
        """Number of real (unmasked) steps for a client with ``count`` examples."""
        if self.local_steps is not None:
            real = self.local_steps if self.real_steps is None else self.real_steps
            return jnp.full_like(count, real)
        b = self.batch(max_count)
        return (self.local_epochs * count + b - 1) // b


class StepBatch(NamedTuple):
    rows: jax.Array  # [B] int32 row offsets within the client, in [0, count)
    mask: jax.Array  # [B] bool, False for padding
    active: jax.Array  # () bool, False when the whole step is padding


def make_batch_fn(schedule: LocalSchedule, max_count: int):
    """Return ``(prepare(ckey, count) -> plan, batch(plan, ckey, count, step) -> StepBatch)``.

    ``prepare`` runs once per client (per-epoch permutations); ``batch`` once per step.
    """
    B = schedule.batch(max_count)
    full_batch = schedule.batch_size is None

    if full_batch:

        def prepare(ckey, count):
            return ()

        def batch(plan, ckey, count, step):
            rows = jnp.arange(B, dtype=jnp.int32)
            mask = rows < count
            active = step < schedule.steps_taken(count, max_count)
            return StepBatch(jnp.minimum(rows, count - 1), mask, active)

        return prepare, batch

    if schedule.local_steps is not None:

        def prepare(ckey, count):
            return ()

        def batch(plan, ckey, count, step):
            k = keys.purpose_key(keys.step_key(ckey, step), keys.BATCH)
            u = jax.random.uniform(k, (B,))
            rows = jnp.minimum((u * count).astype(jnp.int32), count - 1)
            active = jnp.asarray(True) if schedule.real_steps is None else step < schedule.real_steps
            return StepBatch(rows, jnp.ones((B,), bool), active)

        return prepare, batch

    E = schedule.local_epochs

    def prepare(ckey, count):
        idx = jnp.arange(max_count)

        def perm(e):
            u = jax.random.uniform(keys.purpose_key(keys.epoch_key(ckey, e), keys.BATCH), (max_count,))
            return jnp.argsort(jnp.where(idx < count, u, 2.0)).astype(jnp.int32)

        return jax.vmap(perm)(jnp.arange(E))  # [E, max_count]

    def batch(perms, ckey, count, step):
        total = E * count
        p = step * B + jnp.arange(B, dtype=jnp.int32)
        mask = p < total
        pc = jnp.minimum(p, total - 1)
        rows = perms[pc // count, pc % count]
        return StepBatch(rows, mask, step * B < total)

    return prepare, batch
