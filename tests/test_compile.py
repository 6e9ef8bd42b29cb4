"""Compile once: counted XLA compilations (jax.monitoring), not just traces."""
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.data.population import from_client_indices
from jaxqfl.engine.compilations import CompilationLog
from jaxqfl.engine.streaming import build_streaming

BLOCK = "jit(round_block)"


@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 10, size=12)
    x = rng.normal(size=(int(sizes.sum()), 5)).astype(np.float32)
    y = rng.integers(0, 3, size=x.shape[0]).astype(np.int32)
    bounds = np.cumsum([0, *sizes])
    idx = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    return from_client_indices(x, y, idx, x[:10], y[:10], 3)


def _args(population):
    return (population, models.logistic_regression(3), algorithms.fedavg(optax.sgd(0.1)),
            engine.LocalSchedule(local_steps=2, batch_size=3))


def test_a_run_compiles_its_block_once_and_new_keys_or_rounds_compile_nothing(population):
    sim = engine.build(*_args(population), cohort_size=5, num_devices=2)
    with CompilationLog() as first:
        result = engine.run(sim, rounds=7, eval_every=3, seed=0)  # blocks 3 + 3 + (1 of 3)
    assert first.count(BLOCK) == 1
    with CompilationLog() as again:
        engine.run(sim, rounds=5, eval_every=3, seed=5, state=result.state)  # later rounds, another key
        engine.run(sim, rounds=4, eval_every=3, seed=7)  # a fresh state, another seed
    assert again.count() == 0, again.counts()
    assert sim.trace_count() == 1


def test_a_block_of_rounds_is_one_program(population):
    sim = engine.build(*_args(population), cohort_size=4, num_devices=1)
    with CompilationLog() as log:
        sim.compile_block(6)
    assert log.count(BLOCK) == 1
    state = sim.init(0)
    with CompilationLog() as log:
        state, metrics = sim.run_block(state, 6)
        state, metrics = sim.run_block(state, 6, num_active=2)
    assert log.count() == 0, log.counts()
    assert metrics.train_loss.shape == (6,) and int(state.round) == 8
    with CompilationLog() as log:
        sim.compile_block(2)  # another block length is another program
    assert log.count(BLOCK) == 1


def test_streamed_rounds_compile_one_round_program(population):
    stream = build_streaming(*_args(population), cohort_size=5, num_devices=2)
    with CompilationLog() as log:
        state, _ = stream.run_block(stream.init(0), 2)
    assert log.count("jit(round_fn)") == 1
    with CompilationLog() as log:
        state, _ = stream.run_block(state, 3)
        stream.run_block(stream.init(1), 1)
    assert log.count() == 0, log.counts()
