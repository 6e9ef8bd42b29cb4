"""Randomness: every draw is a ``fold_in`` of the run key, along a tagged path.

A client's randomness depends on who it is and when, never on which device or
chunk it was placed on: same seed, same results, whatever the device count or
the chunk size (DESIGN.md, "Randomness and determinism").

Scheme (version 2). Every derivation folds in a *domain tag* first and then
the value, so a key is the image of a sequence of (tag, value) pairs::

    derive(key, tag, value) = fold_in(fold_in(key, tag), value)

    round_key(run, r)       = derive(run,  ROUND_TAG,   r)
    client_key(rkey, c)     = derive(rkey, CLIENT_TAG,  c)
    step_key(ckey, s)       = derive(ckey, STEP_TAG,    s)
    epoch_key(ckey, e)      = derive(ckey, EPOCH_TAG,   e)
    purpose_key(key, p)     = derive(key,  PURPOSE_TAG, p)

so, for example, a local step's batch key is the sequence
``(ROUND, r)(CLIENT, c)(STEP, s)(PURPOSE, BATCH)``. Because tags sit at the
even positions and values at the odd ones, the sequence of a path can be read
back unambiguously: two paths meet only if they are the same path (up to a
threefry collision, probability ~2^-64 per pair). A step number and a purpose
tag, or a codec's sub-key and a batch key, live in different domains even when
their integers are equal. (Version 1 folded bare integers: ``fold_in(fold_in(
ckey, UPLINK), 1)``, Hadamard's inner key, was the batch key of local step 3.)

Purposes (``PURPOSES``) are one flat set of distinct integers, shared by the
engine's draws and the sub-keys of codecs and aggregators (``ROTATION`` and
``INNER`` for a wrapper such as Hadamard: ``purpose_key(key, INNER)`` is what a
wrapped codec receives). A new kind of draw gets a new constant here.

Two rules keep draws apart from keys:

* A key is either a *parent* (only derived from) or a *leaf* (only drawn
  from), never both. With JAX's partitionable threefry, the random bits of a
  draw's i-th counter block come from ``fold_in(key, i)`` (and
  ``split(key)[i] == fold_in(key, i)``), so drawing from a key that also has
  children would reuse a child's bits.
* A codec that must let the decoder regenerate its draws (Hadamard's signs,
  rand-k's positions) puts a 32-bit seed drawn from its leaf key in the
  message; both ends draw from ``seed_key(seed) = derive(key(0), SEED_TAG,
  seed)``. That domain is disjoint from every run path, even for the run seed
  0, since no run path starts with ``SEED_TAG``. (Two messages may draw the same
  32-bit seed, ~n^2 / 2^33 for n messages: the wire format's limit.)
* Leaves are purpose keys (or a codec's sub-purpose keys); round, client, step
  and epoch keys are parents. Draws that are not per-client (cohort sampling,
  server-side noise) use ``purpose_key(round_key, ...)``; parameter
  initialisation uses ``purpose_key(run_key, INIT)``.
* One purpose key is a parent by contract: the *model key*
  ``purpose_key(step_key, QUANT)`` the engine hands a model's ``apply`` in each
  local step. A model derives its streams from it and draws nothing from it
  directly: a stochastic quantizer of parameter ``p`` draws from
  ``fold_in(fold_in(key, crc32(p)), role)`` with ``role`` in {0, 1}
  (``jaxqfl.models.intercept``), Flax's ``make_rng('quant')`` folds in the
  layer path, and ``from_flax``'s dropout stream is ``purpose_key(key,
  DROPOUT)``: per client and step, and a path none of the others can meet.

Changing a tag or the scheme changes every result of a seed (it changed once,
from version 1 to version 2).
"""
from __future__ import annotations

import jax
import numpy as np

from jaxqfl import threefry_cpu

threefry_cpu.install()  # the same bits, compiled in a fraction of the time on CPU (see that module)

# Domain tags: the first integer of every (tag, value) pair.
ROUND_TAG = 1
CLIENT_TAG = 2
STEP_TAG = 3
EPOCH_TAG = 4
PURPOSE_TAG = 5
SEED_TAG = 6  # keys rebuilt from a message's 32-bit seed (seed_key), under the fixed root key(0)
DOMAIN_TAGS = {"round": ROUND_TAG, "client": CLIENT_TAG, "step": STEP_TAG, "epoch": EPOCH_TAG,
               "purpose": PURPOSE_TAG, "seed": SEED_TAG}

# Purpose tags (the value after PURPOSE_TAG). Fixed integers: changing one changes every result of a seed.
COHORT = 0  # which clients take part in a round
BATCH = 1  # a client's data order (per-client shuffle / minibatch rows)
QUANT = 2  # stochastic rounding in quantization-aware training
UPLINK = 3  # update codec, client -> server
DOWNLINK = 4  # model codec, server -> client
DP = 5  # differential-privacy noise
AGGREGATE = 6  # randomness of the aggregator (e.g. secure-sum masks)
INIT = 7  # parameter initialisation
DROPOUT = 8  # model-internal randomness
ROTATION = 9  # a codec wrapper's own draw (Hadamard: the rotation's seed)
INNER = 10  # the key a codec wrapper hands the codec it wraps
ATTACK = 11  # a threat model's randomness (simulated Byzantine clients)
SEEDING = 12  # k-means seeding: a client's sample slots, the server's k-means++ draws
PERSONAL = 13  # per-client evaluation: a client's fine-tuning batches from the evaluated model
SYSTEMS = 14  # a client's device speed and link bandwidth, drawn once per run (jaxqfl.systems)
AVAILABILITY = 17  # whether a client can be sampled in a round, and its diurnal phase (jaxqfl.systems.availability)
POPULATION = 20  # a procedural population's client rows, from (population seed, client id) (jaxqfl.data.procedural)
PURPOSES = {
    "cohort": COHORT, "batch": BATCH, "quant": QUANT, "uplink": UPLINK, "downlink": DOWNLINK, "dp": DP,
    "aggregate": AGGREGATE, "init": INIT, "dropout": DROPOUT, "rotation": ROTATION, "inner": INNER,
    "attack": ATTACK, "seeding": SEEDING, "personal": PERSONAL, "systems": SYSTEMS,
    "availability": AVAILABILITY, "population": POPULATION,
}
if len(set(PURPOSES.values())) != len(PURPOSES) or len(set(DOMAIN_TAGS.values())) != len(DOMAIN_TAGS):
    raise AssertionError("jaxqfl.keys: two purposes (or two domain tags) share an integer")


def derive(key: jax.Array, tag: int, value) -> jax.Array:
    """``fold_in(fold_in(key, tag), value)``: one tagged step of a derivation path."""
    return jax.random.fold_in(jax.random.fold_in(key, tag), value)


def round_key(run_key: jax.Array, round_index) -> jax.Array:
    """Key of one round: ``derive(run_key, ROUND_TAG, round)``."""
    return derive(run_key, ROUND_TAG, round_index)


def client_key(rkey: jax.Array, client_id) -> jax.Array:
    """Key of one client in one round: ``derive(round_key, CLIENT_TAG, client_id)``."""
    return derive(rkey, CLIENT_TAG, client_id)


def step_key(ckey: jax.Array, step) -> jax.Array:
    """Key of one local step of one client: ``derive(client_key, STEP_TAG, step)``."""
    return derive(ckey, STEP_TAG, step)


def epoch_key(ckey: jax.Array, epoch) -> jax.Array:
    """Key of one local epoch of one client: ``derive(client_key, EPOCH_TAG, epoch)``."""
    return derive(ckey, EPOCH_TAG, epoch)


def purpose_key(key: jax.Array, purpose: int) -> jax.Array:
    """Split a key by what it is for: ``derive(key, PURPOSE_TAG, purpose)`` (a leaf: draw from it)."""
    return derive(key, PURPOSE_TAG, purpose)


def abstract_key() -> jax.ShapeDtypeStruct:
    """A run key's shape and dtype, for ``jax.eval_shape``; unlike ``jax.random.key(0)`` nothing is compiled or run."""
    return jax.eval_shape(lambda: jax.random.key(0))


def run_key_data(seed: int) -> np.ndarray:
    """``jax.random.key_data(jax.random.key(seed))`` for a non-negative ``seed``, computed on the host.

    Threefry's seeding puts the seed's high and low 32-bit words in the key; with JAX's
    default 32-bit integers the high word is 0 (a larger seed keeps its low word). A
    jitted program wraps these words (``jax.random.wrap_key_data``) instead of seeding
    eagerly, which compiles two small programs of its own on a first run.
    """
    if jax.config.jax_default_prng_impl != "threefry2x32":  # another PRNG seeds its own way: ask it (eagerly)
        return np.asarray(jax.random.key_data(jax.random.key(int(seed))))
    high = (int(seed) >> 32) & 0xFFFFFFFF if jax.config.jax_enable_x64 else 0
    return np.array([high, int(seed) & 0xFFFFFFFF], np.uint32)


def seed_key(seed) -> jax.Array:
    """Key rebuilt from a message's 32-bit seed: ``derive(jax.random.key(0), SEED_TAG, seed)`` (a leaf)."""
    return derive(jax.random.key(0), SEED_TAG, seed)
