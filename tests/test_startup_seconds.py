"""Time to the first round: the process clock ``startup_seconds`` counts from, and the tuning rule's two ends."""
import os
import pathlib
import subprocess
import sys
import time

import pytest

from jaxqfl.experiment import process_clock

ROOT = pathlib.Path(__file__).resolve().parents[1]
TICK = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="the process start is read from /proc")
def test_the_process_start_is_when_the_interpreter_was_spawned_not_when_jaxqfl_was_imported():
    """The child sleeps 0.3 s before importing jaxqfl: its start must lie between the parent's spawn and the sleep."""
    code = ("import time; time.sleep(0.3); t = time.time(); from jaxqfl.experiment import process_clock; "
            "s, what = process_clock.process_start(); print(s, t, what, sep='|')")
    spawned = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip()
    start, slept_until, what = out.split("|")
    start, slept_until = float(start), float(slept_until)
    assert what == process_clock.PROCESS_START
    assert spawned - 2 * TICK <= start <= slept_until - 0.3 + 2 * TICK


def test_a_call_from_python_counts_from_the_call(monkeypatch):
    """``main([...])`` (a test, a notebook) times its own call, not the process it lives in."""
    from jaxqfl.cli import main as cli_main

    seen = {}

    def fake_run(parser, args, argv, origin):
        seen["origin"] = origin
        return 0

    monkeypatch.setattr(cli_main, "_run", fake_run)
    before = time.time()
    assert cli_main.main(["run", "--rounds", "1"]) == 0
    assert seen["origin"][1] == process_clock.MAIN_CALL and before <= seen["origin"][0] <= time.time()


def test_a_five_round_run_never_searches_and_a_five_thousand_round_one_does(monkeypatch):
    """``jaxqfl.engine.tuning_rule`` on the bench ``mlp`` workload (784-200-62 MLP, 100 of 1,000 clients a round),
    at this 2-core CPU's nominal peaks (fixed here, so the verdicts do not depend on the test machine's cores)."""
    from jaxqfl.bench.workloads import random_population
    from jaxqfl import algorithms, models
    from jaxqfl.engine import tuning_rule
    from jaxqfl.engine.schedule import LocalSchedule
    import optax

    monkeypatch.setattr(tuning_rule, "nominal_peaks", lambda platform, n: (2 * tuning_rule.CPU_FLOPS_PER_CORE,
                                                                           2 * tuning_rule.CPU_BYTES_PER_CORE))
    population = random_population(1000, 64, 784, 62)
    model = models.mlp(hidden=(200,), num_outputs=62)
    decide = lambda rounds: tuning_rule.decide(population, model, algorithms.fedavg(optax.sgd(0.05)),
                                               LocalSchedule(local_epochs=1, batch_size=16), cohort_size=100,
                                               rounds=rounds, platform="cpu", num_devices=2)
    short, long = decide(5), decide(5000)
    assert not short.tune and long.tune
    assert long.floor_seconds == pytest.approx(1000 * short.floor_seconds)  # R x the same round's floor
