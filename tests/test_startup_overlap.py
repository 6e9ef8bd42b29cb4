"""A run's start (issue 25): the round block compiles on a worker while the first state and the evaluation compile.

``engine.startup.start`` overlaps them; checked here: the two sides really run at the same
time, each program is still compiled exactly once (the evaluation's ahead-of-time compile is
the one its first call uses), results equal a start with nothing overlapped, and an error on
either side is raised once no compile is left running.
"""
import threading
import time

import jax
import numpy as np
import optax
import pytest

from jaxqfl import algorithms, engine, models
from jaxqfl.engine import startup
from jaxqfl.engine.compilations import CompilationLog
from populations import classification_population


def _sim(seed_features=4):
    rng = np.random.default_rng(5)
    pop = classification_population(rng.integers(3, 9, size=10).tolist(), num_features=seed_features, num_classes=3,
                                    seed=5)
    return engine.build(pop, models.mlp(hidden=(5,), num_outputs=3), algorithms.fedavg(optax.sgd(0.2)),
                        engine.LocalSchedule(local_steps=2, batch_size=3), cohort_size=4, num_devices=2, chunk_size=2,
                        autotune=False)


def test_the_block_compiles_while_the_first_state_is_built():
    started, seen = threading.Event(), {}

    def compile_block(n):  # waits for the other side: finishes only if both run at once
        seen["worker"] = threading.get_ident()
        seen["overlapped"] = started.wait(timeout=20)
        return 1.5

    def first_state():
        started.set()
        return "state"

    prepared = []
    seconds, state = startup.start(compile_block, 4, first_state, prepared.append)
    assert seen["overlapped"] and seen["worker"] != threading.get_ident()
    assert (seconds, state, prepared) == (1.5, "state", ["state"])


def test_an_error_while_building_the_state_is_raised_after_the_compile_ends():
    finished = []

    def compile_block(n):
        time.sleep(0.3)
        finished.append(n)
        return 0.3

    def first_state():
        raise ValueError("bad seed")

    with pytest.raises(ValueError, match="bad seed"):
        startup.start(compile_block, 2, first_state)
    assert finished == [2]  # no compile left running behind the error

    def failing_compile(n):
        raise RuntimeError("the block does not trace")

    with pytest.raises(RuntimeError, match="does not trace"):
        startup.start(failing_compile, 2, lambda: "state")


def test_each_program_compiles_once_and_results_equal_an_unoverlapped_start():
    sim = _sim()
    with CompilationLog() as log:
        overlapped = engine.run(sim, rounds=4, eval_every=2, seed=3)
    counts = log.counts()
    # the evaluation's ahead-of-time compile is the one its calls use: one compilation each, not two; and no
    # other program (the run key is wrapped inside the init program, not seeded eagerly: keys.run_key_data)
    assert counts == {"jit(round_block)": 1, "jit(init_from_words)": 1, "jit(per_device_eval)": 1,
                      "jit(_all_finite)": 1}, counts

    serial = _sim()  # the same run with its start done in order on one thread, as before the overlap
    serial.compile_block(2)
    state = serial.init(3)
    reference = engine.run(serial, rounds=4, eval_every=2, state=state)
    a, b = jax.tree.leaves(overlapped.state.params), jax.tree.leaves(reference.state.params)
    assert len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    strip = [{k: v for k, v in r.items() if k not in engine.driver.TIMING_KEYS} for r in overlapped.records]
    assert strip == [{k: v for k, v in r.items() if k not in engine.driver.TIMING_KEYS} for r in reference.records]
