"""Randomness: key domains that cannot meet, and the draws the local schedule makes from them.

Every test here goes through public entry points (``jaxqfl.keys``,
``jaxqfl.engine.schedule.make_batch_fn``, ``engine.build``) and states a
property that a wrong derivation breaks: distinct keys, uncorrelated draws,
uniform rows, different rows per step, client and epoch, different cohorts per
round.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from jaxqfl import algorithms, compress, engine, keys, models
from jaxqfl.engine.schedule import LocalSchedule, make_batch_fn
from populations import regression_population

ROUNDS, CLIENTS, STEPS, EPOCHS = 2, 2, 4, 2


def _data(k):
    return tuple(int(v) for v in np.asarray(jax.random.key_data(k)).ravel())


class _FoldRecorder:
    """Wraps ``jax.random.fold_in`` to record every concrete derivation ``parent -> child``."""

    def __init__(self):
        self.real = jax.random.fold_in
        self.children = {}  # child data -> parent data

    def __call__(self, key, value):
        child = self.real(key, value)
        if not isinstance(child, jax.core.Tracer):
            self.children[_data(child)] = _data(key)
        return child


def test_every_key_of_a_round_is_distinct_from_every_other(monkeypatch):
    """Enumerate every key a few rounds derive (rounds, clients, steps, epochs, every purpose,
    Hadamard's sub-keys and seed keys, and the intermediate tagged keys) and find them distinct.

    Each leaf key's first draw blocks (``fold_in(leaf, i)``, whose bits a draw from the leaf
    uses under the partitionable threefry) are included too, so a derived key that reused a
    draw's random bits would also be caught.
    """
    rec = _FoldRecorder()
    monkeypatch.setattr(jax.random, "fold_in", rec)
    run = jax.random.key(0)  # seed 0: the root of seed_key too, the hardest case
    count = jnp.int32(9)
    step_draws = make_batch_fn(LocalSchedule(local_steps=STEPS, batch_size=4), 9)[1]
    codec = compress.chain(compress.hadamard, compress.hadamard, compress.qsgd(4))  # nested sub-keys
    delta = {"w": jnp.linspace(-1.0, 1.0, 6)}
    state = codec.init(delta)
    leaves = {}  # name -> key data, the keys draws are made from

    def leaf(name, k):
        leaves[name] = _data(k)

    for p, v in keys.PURPOSES.items():
        leaf(f"run/{p}", keys.purpose_key(run, v))
    for r in range(ROUNDS):
        rkey = keys.round_key(run, r)
        for p, v in keys.PURPOSES.items():
            leaf(f"r{r}/{p}", keys.purpose_key(rkey, v))
        for c in range(CLIENTS):
            ckey = keys.client_key(rkey, c)
            for p, v in keys.PURPOSES.items():
                leaf(f"r{r}/c{c}/{p}", keys.purpose_key(ckey, v))
            for s in range(STEPS):
                skey = keys.step_key(ckey, s)
                for p, v in keys.PURPOSES.items():
                    leaf(f"r{r}/c{c}/s{s}/{p}", keys.purpose_key(skey, v))
                step_draws((), ckey, count, jnp.int32(s))  # the schedule's own derivation
            for e in range(EPOCHS):
                ekey = keys.epoch_key(ckey, e)
                for p, v in keys.PURPOSES.items():
                    leaf(f"r{r}/c{c}/e{e}/{p}", keys.purpose_key(ekey, v))
            codec.encode(delta, state, keys.purpose_key(ckey, keys.UPLINK))  # Hadamard's sub-keys

    monkeypatch.undo()
    derived = set(rec.children)
    parents = set(rec.children.values())
    drawn_from = derived - parents  # never derived from: the keys draws use
    # a purpose key is drawn from, never derived from; only a codec's key may be split by a wrapper
    handed_to_codecs = {"uplink", "downlink"}
    assert {k for n, k in leaves.items() if n.rsplit("/", 1)[1] not in handed_to_codecs} <= drawn_from
    # the codec's keys were recorded by the codec itself: its rotation seeds, inner keys, seed keys
    assert len(drawn_from) > len(leaves) + 3 * CLIENTS * ROUNDS
    drawn = jax.random.wrap_key_data(jnp.asarray(sorted(drawn_from), jnp.uint32))
    blocks = jax.vmap(lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(drawn))(jnp.arange(4))
    blocks = [tuple(b) for b in np.asarray(jax.random.key_data(blocks)).reshape(-1, 2).tolist()]
    everything = [_data(run)] + list(rec.children) + blocks
    assert len(everything) == len(set(everything)), "two derivation paths produced the same key"
    expected_leaves = (1 + ROUNDS + ROUNDS * CLIENTS * (1 + STEPS + EPOCHS)) * len(keys.PURPOSES)
    assert len(leaves) == expected_leaves and len(set(leaves.values())) == expected_leaves


def test_the_version_one_collisions_are_gone():
    """The two coincidences of the old scheme: Hadamard's inner key vs the batch key of step 3,
    and the epoch-2 permutation key vs the step-1 QUANT key."""
    ckey = keys.client_key(keys.round_key(jax.random.key(1), 0), 0)
    inner = keys.purpose_key(keys.purpose_key(ckey, keys.UPLINK), keys.INNER)
    for s in range(8):
        step = keys.step_key(ckey, s)
        for p in keys.PURPOSES.values():
            assert _data(keys.purpose_key(step, p)) != _data(inner)
            for e in range(4):
                assert _data(keys.purpose_key(keys.epoch_key(ckey, e), keys.BATCH)) != _data(keys.purpose_key(step, p))


def test_draws_of_different_purposes_are_uncorrelated():
    """Uniforms drawn from different leaf keys of the same clients have sample correlation
    within 5 standard errors of 0 (|r| < 5 / sqrt(n)); identical keys would give r = 1."""
    n_clients, per_key = 1024, 8
    rkey = keys.round_key(jax.random.key(7), 2)

    def draws(c):
        ckey = keys.client_key(rkey, c)
        uplink = keys.purpose_key(ckey, keys.UPLINK)
        leaves = [keys.purpose_key(keys.step_key(ckey, s), p) for s in range(4) for p in (keys.BATCH, keys.QUANT)]
        leaves += [keys.purpose_key(keys.epoch_key(ckey, e), keys.BATCH) for e in range(3)]
        leaves += [keys.purpose_key(uplink, keys.INNER), keys.purpose_key(uplink, keys.ROTATION),
                   keys.purpose_key(ckey, keys.DOWNLINK), keys.purpose_key(ckey, keys.DP),
                   keys.purpose_key(ckey, keys.AGGREGATE)]
        return jnp.stack([jax.random.uniform(k, (per_key,)) for k in leaves])

    u = np.asarray(jax.jit(jax.vmap(draws))(jnp.arange(n_clients)))  # [clients, purposes, per_key]
    u = u.transpose(1, 0, 2).reshape(u.shape[1], -1)
    r = np.corrcoef(u)
    off = np.abs(r[~np.eye(len(r), dtype=bool)])
    assert off.max() < 5 / np.sqrt(u.shape[1]), off.max()


# ---------------------------------------------------------------- the schedule's draws


def _step_rows(schedule, max_count, ckey, count):
    prepare, batch = make_batch_fn(schedule, max_count)
    plan = prepare(ckey, jnp.int32(count))
    steps = jnp.arange(schedule.num_steps(max_count), dtype=jnp.int32)
    sb = jax.vmap(lambda s: batch(plan, ckey, jnp.int32(count), s))(steps)
    return np.asarray(sb.rows), np.asarray(sb.mask)


@pytest.mark.parametrize("count", [1, 2, 7, 13])
def test_minibatch_rows_are_uniform_over_all_rows(count):
    """Chi-square test of the rows a ``local_steps`` schedule draws: every row of ``[0, count)``,
    the first and the last included, has probability 1 / count (p-value > 1e-4)."""
    schedule = LocalSchedule(local_steps=4, batch_size=64)
    rkey = keys.round_key(jax.random.key(3), 0)
    rows = np.concatenate([
        _step_rows(schedule, 16, keys.client_key(rkey, c), count)[0].ravel() for c in range(40)
    ])  # 40 clients x 4 steps x 64 rows
    assert rows.min() >= 0 and rows.max() < count
    observed = np.bincount(rows, minlength=count)
    assert observed.size == count
    if count > 1:
        assert stats.chisquare(observed).pvalue > 1e-4, observed


def test_minibatch_steps_read_different_rows():
    """Steps s != s' draw their rows independently: for 1000 rows the batches differ, and equal
    positions occur about 1 / count of the time."""
    schedule = LocalSchedule(local_steps=6, batch_size=32)
    rows, _ = _step_rows(schedule, 1000, keys.client_key(keys.round_key(jax.random.key(0), 0), 5), 1000)
    for s, t in itertools.combinations(range(6), 2):
        assert np.mean(rows[s] == rows[t]) < 0.1, (s, t)


def test_clients_and_rounds_draw_different_rows():
    schedule = LocalSchedule(local_steps=2, batch_size=32)
    run = jax.random.key(4)
    draws = [_step_rows(schedule, 500, keys.client_key(keys.round_key(run, r), c), 500)[0]
             for r in range(3) for c in range(3)]
    for a, b in itertools.combinations(draws, 2):
        assert np.mean(a == b) < 0.1


def test_epochs_are_different_permutations():
    """Epoch mode reads a fresh permutation of the client's rows each epoch."""
    E, count = 4, 12
    schedule = LocalSchedule(local_epochs=E, batch_size=5)
    for c in range(3):
        ckey = keys.client_key(keys.round_key(jax.random.key(2), 1), c)
        rows, mask = _step_rows(schedule, 15, ckey, count)
        seen = rows[mask]
        assert seen.size == E * count
        perms = [tuple(seen[e * count:(e + 1) * count]) for e in range(E)]
        for p in perms:
            assert sorted(p) == list(range(count))
        assert len(set(perms)) == E, perms


def test_cohorts_differ_across_rounds():
    """The cohort is drawn from each round's own key: 4 rounds of 5 of 30 clients give 4
    different cohorts (equal with probability 1 / C(30, 5) per pair)."""
    pop = regression_population([3] * 30, num_features=2)
    sim = engine.build(pop, models.linear_regression(1), algorithms.fedavg(optax.sgd(0.1)),
                       LocalSchedule(local_steps=1, batch_size=None), cohort_size=5, num_devices=1)
    _, metrics = sim.run_block(sim.init(0), 4)
    cohorts = {tuple(sorted(row)) for row in np.asarray(metrics.cohort).tolist()}
    assert len(cohorts) == 4


def test_run_key_data_is_the_words_of_jax_seeding():
    """``keys.run_key_data`` equals JAX's own seeding (which the init program no longer runs eagerly), with 32-bit
    integers here, and in fresh interpreters with 64-bit ones and with another default PRNG (rbg)."""
    import subprocess
    import sys

    from cli_subprocess import ROOT

    seeds = [0, 1, 12345, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 5, 2**40 + 7]
    for seed in seeds:
        np.testing.assert_array_equal(keys.run_key_data(seed), jax.random.key_data(jax.random.key(seed)))
    code = ("import jax, numpy as np; from jaxqfl import keys; "
            f"print(all(np.array_equal(keys.run_key_data(s), jax.random.key_data(jax.random.key(s))) for s in {seeds}))")
    for setting in ({"JAX_ENABLE_X64": "1"}, {"JAX_DEFAULT_PRNG_IMPL": "rbg"}):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", **setting})
        assert out.returncode == 0 and out.stdout.strip() == "True", (setting, out.stderr)
