"""A sweep keeps state as a single run does (issue 20, defect 3): checkpoints of every config, ``--resume``
bit for bit, a saved model per config, ``config.toml`` that repeats the sweep, a changed config refused.

In process, tiny shapes (8 clients, 1 local step, 2 devices); the interruption is a real SIGTERM to this
process, caught by the run's own handler (``jaxqfl.cli.interrupts``) at the end of a block.
"""
import json
import pathlib
import signal

import numpy as np
import pytest

from interrupted_runs import cut_resume_and_full
from jaxqfl.cli.main import main

TINY = ["--num-clients", "8", "--cohort-size", "4", "--local-steps", "1", "--batch-size", "4", "--devices", "2",
        "--chunk-size", "2", "--no-progress", "--autotune", "off"]
SWEEP = [*TINY, "--rounds", "6", "--eval-every", "2", "--seeds", "0-1", "--client-lr", "0.05,0.1"]


def summary(folder):
    return json.loads((pathlib.Path(folder) / "summary.json").read_text())


@pytest.fixture(scope="module")
def resumed_and_full(tmp_path_factory):
    """(interrupted-then-resumed sweep, its rc's, the same sweep run through once from its config.toml)."""
    def inspect(cut):
        return {"sweep": json.loads((cut / "sweep.json").read_text()),
                "rounds": sorted(int(p.name) for p in (cut / "checkpoints").iterdir() if p.name.isdigit())}

    # SIGTERM arrives while round 2 is being saved
    return cut_resume_and_full(tmp_path_factory.mktemp("sweep_resume"), SWEEP, at_step=2, sig=signal.SIGTERM,
                               inspect=inspect)


def test_an_interrupted_then_resumed_sweep_equals_the_uninterrupted_one_bit_for_bit(resumed_and_full):
    cut, full, (rc_cut, rc_resume, rc_full), stopped = resumed_and_full
    assert rc_cut == 143 and rc_resume == 0 and rc_full == 0
    assert stopped["sweep"]["interrupted"] is True and stopped["sweep"]["rounds"] == 4  # the block after the signal
    assert stopped["rounds"] == [2, 4]  # --checkpoint-every 2, and the stopped block's state
    report = json.loads((cut / "sweep.json").read_text())
    assert report["rounds"] == 6 and report["resumed_from_round"] == 4 and report["interrupted"] is False
    assert len(report["configs"]) == 4
    for c in report["configs"]:
        name = c["folder"]
        assert (cut / name / "final_params.msgpack").read_bytes() == (full / name / "final_params.msgpack").read_bytes()
        a, b = summary(cut / name), summary(full / name)
        assert a["rounds"] == b["rounds"] == 6 and a["completed"] and a["final_loss"] == b["final_loss"]
        rows_a = [json.loads(x) for x in (cut / name / "metrics.jsonl").read_text().splitlines()]
        rows_b = [json.loads(x) for x in (full / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows_a] == [2, 4, 6]  # the records before the resume are kept
        assert [(r["test_loss"], r["uplink_bits_total"]) for r in rows_a] == \
            [(r["test_loss"], r["uplink_bits_total"]) for r in rows_b]


def test_a_sweep_config_folder_loads_as_a_single_run(resumed_and_full):
    from jaxqfl import load_final_model, saved_run

    cut = resumed_and_full[0]
    run = saved_run.load(cut / "client_lr=0.1,seed=1")
    params = load_final_model(cut / "client_lr=0.1,seed=1")
    logits = np.asarray(run.model.apply(params, run.population.x_test[:8], key=None))
    assert logits.shape[0] == 8 and np.all(np.isfinite(logits))


def test_a_resumed_sweep_refuses_a_changed_config(resumed_and_full, capsys):
    cut = resumed_and_full[0]
    with pytest.raises(SystemExit) as exc:
        main(["run", "--resume", str(cut), "--client-lr", "0.05,0.2"])
    assert exc.value.code == 2
    assert "differs from the checkpoint's in 'client-lr'" in capsys.readouterr().err


def test_a_resume_reads_the_device_count_without_starting_jax(tmp_path):
    """``--resume`` splits the CPU into the run's devices before orbax starts JAX (else a --devices 2 run
    resumed from a shell saw one device and was refused); the count comes from OUT/config.toml."""
    from jaxqfl.experiment.run_folder import saved_devices

    (tmp_path / "config.toml").write_text('dataset = "synthetic"\ndevices = 2\n')
    assert saved_devices(tmp_path) == 2
    (tmp_path / "config.toml").write_bytes(b"\xff\xfe devices = ")  # damaged: the flag's default, no traceback
    assert saved_devices(tmp_path) is None and saved_devices(tmp_path / "missing") is None
