"""A run resumed where JAX sees fewer devices than its checkpoint's layout is refused with the remedy.

``jaxqfl run`` splits a CPU host into one device per core; a Python script sees JAX's single CPU device unless it
sets XLA_FLAGS. ``jaxqfl.resume`` of a command-line run then failed in the mesh with "num_devices must be an integer
in [1, 1]", without saying why the run asks for 2 devices or what to do.
"""
import jax
import pytest

import jaxqfl
from jaxqfl.cli.main import main


def test_resume_on_fewer_devices_than_the_run_names_both_remedies(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", "--rounds", "2", "--num-clients", "20", "--cohort-size", "4", "--devices", "2",
                 "--checkpoint-every", "1", "--no-progress", "--out", str(out)]) == 0
    (out / "summary.json").unlink()  # as if stopped after its checkpoint (resume reads the checkpoint, not this)
    every = jax.devices()
    monkeypatch.setattr(jax, "devices", lambda *a, **k: every[:1])  # a process that sees one CPU device
    with pytest.raises(jaxqfl.ExperimentError) as e:
        jaxqfl.resume(out)
    message = str(e.value)
    assert "the run was trained on 2 devices" in message and "this process's JAX sees 1 (cpu)" in message
    assert f"`jaxqfl run --resume {out}`" in message
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=2 before it imports JAX" in message


def test_more_devices_than_jax_sees_says_how_to_get_them(tmp_path, monkeypatch):
    every = jax.devices()
    monkeypatch.setattr(jax, "devices", lambda *a, **k: every[:1])
    with pytest.raises(jaxqfl.ExperimentError) as e:
        jaxqfl.run(jaxqfl.Experiment.of(devices=2, rounds=1, num_clients=20, cohort_size=4), out=tmp_path / "x")
    assert str(e.value).startswith("--devices 2, but this process's JAX sees 1 (cpu); `jaxqfl run` splits the host "
                                   "into as many, and a Python script sets XLA_FLAGS=")
