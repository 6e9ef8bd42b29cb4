"""The round program under ``jax.distributed``: two processes on localhost equal one process.

Each of two worker processes (this file run as a script) holds the whole
population, starts JAX's distributed runtime (coordinator on a free localhost
port, CPU collectives over gloo, JAX's default on CPU) with two CPU devices of
its own, builds the same simulation over the global 4-device mesh and runs the
same rounds. The ``psum`` over ``"clients"`` then reduces across the two
processes. The test compares process 0's parameters and metrics with a
single-process run on four devices.
"""
from __future__ import annotations

import pytest

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

ROUNDS = 3
LOCAL_DEVICES = 2
NUM_PROCESSES = 2


def _population():
    from jaxqfl.data.population import from_client_indices

    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 20, size=16)
    x = rng.normal(size=(int(sizes.sum()), 6)).astype(np.float32)
    y = rng.integers(0, 3, size=x.shape[0]).astype(np.int32)
    bounds = np.cumsum([0, *sizes])
    idx = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
    return from_client_indices(x, y, idx, x[:30], y[:30], 3)


def _run(num_devices):
    """Build and run the simulation both sides use; returns host copies of params and metrics."""
    import jax
    import optax

    from jaxqfl import algorithms, engine, models

    sim = engine.build(
        _population(), models.mlp(hidden=(8,), num_outputs=3),
        algorithms.fedavg(optax.sgd(0.1), optax.sgd(1.0, momentum=0.5)),
        engine.LocalSchedule(local_epochs=1, batch_size=4), cohort_size=6, num_devices=num_devices, chunk_size=1,
    )
    result = engine.run(sim, rounds=ROUNDS, eval_every=2, seed=3)
    params = jax.tree.map(np.asarray, jax.device_get(result.state.params))
    return params, result.records, sim.num_devices


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(process_id: int, port: int, out: str) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=NUM_PROCESSES, process_id=process_id,
        initialization_timeout=60,
    )
    assert jax.process_count() == NUM_PROCESSES and len(jax.devices()) == NUM_PROCESSES * LOCAL_DEVICES
    params, records, num_devices = _run(None)
    flat = {"/".join(str(k) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, num_devices=num_devices, test_loss=[r["test_loss"] for r in records], **flat)
    jax.distributed.shutdown()


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    import jax

    port = _free_port()
    outs = [tmp_path / f"process{i}.npz" for i in range(NUM_PROCESSES)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen([sys.executable, __file__, str(i), str(port), str(outs[i])], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(NUM_PROCESSES)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    params, records, num_devices = _run(NUM_PROCESSES * LOCAL_DEVICES)
    flat = {"/".join(str(k) for k in path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    for out in outs:  # both processes hold the same (replicated) result
        got = np.load(out)
        assert int(got["num_devices"]) == num_devices == NUM_PROCESSES * LOCAL_DEVICES
        for name, leaf in flat.items():
            np.testing.assert_allclose(got[name], leaf, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["test_loss"], [r["test_loss"] for r in records], atol=1e-6)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
