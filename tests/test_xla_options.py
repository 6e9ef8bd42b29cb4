"""The CPU programs compile at LLVM -O1 (``jaxqfl.engine.xla_options``): same results as XLA's default -O2.

The module's claim is that -O1 changes how long a round takes to compile, not what it
computes. Checked here on a round block with an MLP, server momentum, a QSGD uplink
with error feedback and a Dirichlet-skewed population: the block compiled with XLA's
defaults and with ``xla_options.CPU_OPTIONS`` gives bit-identical parameters, client
states and metrics from the same state; and the run's own programs are the -O1 ones.
"""
import jax
import numpy as np
import optax

from jaxqfl import algorithms, compress, engine, models
from jaxqfl.engine import simulation, xla_options
from populations import classification_population


def _build(monkeypatch):
    """An in-memory simulation, its ``lower_block`` and the dict of its compiled blocks (spied on)."""
    seen = {}
    real = simulation.block_compiler

    def spy(lower_block):
        compile_block, compiled = real(lower_block)
        seen.update(lower_block=lower_block, compiled=compiled)
        return compile_block, compiled

    monkeypatch.setattr(simulation, "block_compiler", spy)
    rng = np.random.default_rng(5)
    population = classification_population(rng.integers(4, 14, size=12).tolist(), num_features=7, num_classes=3,
                                            seed=5)
    sim = engine.build(population, models.mlp(hidden=(9,), num_outputs=3),
                       algorithms.fedavg(optax.sgd(0.3), optax.sgd(1.0, momentum=0.9)),
                       engine.LocalSchedule(local_steps=3, batch_size=4), cohort_size=4, num_devices=2,
                       chunk_size=2, uplink=compress.from_spec("qsgd:4+ef"))
    return sim, seen["lower_block"], seen["compiled"]


def test_the_o1_block_computes_what_the_default_block_computes(monkeypatch):
    assert jax.default_backend() == "cpu" and xla_options.options() == xla_options.CPU_OPTIONS
    calls = []
    real_compile = xla_options.compile
    monkeypatch.setattr(xla_options, "compile", lambda lowered: calls.append(1) or real_compile(lowered))
    sim, lower_block, compiled = _build(monkeypatch)
    o1_state, o1_metrics = jax.device_get(sim.run_block(sim.init(0), 3))
    assert len(calls) == 1, "the run's block is compiled through xla_options (at -O1 on this CPU)"
    compiled[3] = lower_block(3).compile()  # XLA's defaults (-O2), run the same way
    state, metrics = jax.device_get(sim.run_block(sim.init(0), 3))
    for a, b in zip(jax.tree.leaves((state.params, state.client_states, state.algorithm_state, metrics)),
                    jax.tree.leaves((o1_state.params, o1_state.client_states, o1_state.algorithm_state,
                                     o1_metrics)), strict=True):
        np.testing.assert_array_equal(a, b)
    start = jax.device_get(sim.init(0).params)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(state.params)))
