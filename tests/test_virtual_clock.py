"""The virtual clock (issue 27, items 1 and 5): each round's simulated time from the drawn speeds, the exact bits and
the local steps, in records, summaries and plots; a run's training is the same with or without it."""
import json
import shutil

import jax
import numpy as np
import optax
import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl import algorithms, compress, engine, models, systems
from jaxqfl.cli.main import main
from populations import classification_population

C = 12


def _clock_reference(spc, bw, rounds):
    """A loop over rounds and cohort members: the slowest member's steps x s/step + (up + down) / bandwidth."""
    t, clock = 0.0, []
    for cohort, steps, up, down in rounds:
        slowest = 0.0
        for i, c in enumerate(cohort):
            if c >= 0:
                slowest = max(slowest, steps[i] * spc[c] + (float(up[i]) + float(down[i])) / bw[c])
        t += slowest
        clock.append(t)
    return clock


def test_the_clock_in_the_records_equals_a_numpy_loop_over_the_rounds():
    rng = np.random.default_rng(3)
    population = classification_population(rng.integers(3, 20, size=C).tolist(), num_features=5, num_classes=3, seed=3)
    # local epochs: a client's steps follow its size, so both the compute and the traffic differ per client
    sim = engine.build(population, models.mlp(hidden=(6,), num_outputs=3), algorithms.fedavg(optax.sgd(0.2)),
                       engine.LocalSchedule(local_epochs=1, batch_size=4), cohort_size=4, num_devices=2, chunk_size=2,
                       uplink=compress.from_spec("qsgd:4"))
    profile = systems.draw_lognormal_systems(jax.random.key(0), C, 1.0, step_seconds=0.5, bandwidth_bps=2e4)
    result = engine.run(sim, rounds=5, eval_every=2, systems=profile)  # blocks of 2: the last one has a skipped round
    state, rounds = sim.init(0), []
    for active in (2, 2, 1):  # the same five rounds, block by block, read back whole
        state, metrics = sim.run_block(state, 2, active)
        m = jax.device_get(metrics)
        rounds += [(m.cohort[r], m.local_steps[r], m.uplink_bits[r], m.downlink_bits[r]) for r in range(active)]
    assert len({int(s) for _, steps, _, _ in rounds for s in steps}) > 1
    want = _clock_reference(np.asarray(profile.seconds_per_step, np.float64), np.asarray(profile.bandwidth, np.float64),
                            rounds)
    np.testing.assert_allclose([r["sim_time"] for r in result.records], [want[1], want[3], want[4]], rtol=1e-6)
    assert result.sim_time == result.records[-1]["sim_time"]
    plain = engine.run(sim, rounds=5, eval_every=2)  # no clock: the same training
    assert "sim_time" not in plain.records[-1] and plain.sim_time is None
    assert plain.records[-1]["test_loss"] == result.records[-1]["test_loss"]


SYNTH = ["--dataset", "synthetic", "--num-clients", "20", "--cohort-size", "5", "--rounds", "4", "--eval-every", "2",
         "--local-steps", "2", "--devices", "2", "--chunk-size", "5", "--no-progress",
         "--checkpoint-every", "2"]  # the resume below starts from round 2's checkpoint


def test_a_run_with_speeds_reports_its_clock_resumes_it_and_trains_the_same(tmp_path, capsys):
    out, plain = tmp_path / "clock", tmp_path / "plain"
    assert main(["run", *SYNTH, "--uplink", "uniform:4", "--speeds", "lognormal:0.8", "--target-accuracy", "0.01",
                 "--out", str(out)]) == 0
    assert main(["run", *SYNTH, "--uplink", "uniform:4", "--target-accuracy", "1.0", "--out", str(plain)]) == 0
    s, p = (json.loads((d / "summary.json").read_text()) for d in (out, plain))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [2, 4] and 0 < records[0]["sim_time"] < records[1]["sim_time"]
    assert s["sim_time_total"] == records[-1]["sim_time"]
    assert s["rounds_to_target"] == 2 and s["time_to_target"] == records[0]["sim_time"]  # reached at once
    assert p["rounds_to_target"] is None and "time_to_target" not in p and "sim_time_total" not in p
    assert s["final_loss"] == p["final_loss"]  # the clock never changes the training
    assert "virtual clock" in capsys.readouterr().out
    half = tmp_path / "half"  # resumed from its round-2 checkpoint: the clock carries over
    shutil.copytree(out, half)
    shutil.rmtree(half / "checkpoints" / "4")
    assert main(["run", "--resume", str(half)]) == 0
    assert json.loads((half / "summary.json").read_text())["sim_time_total"] == s["sim_time_total"]
    assert main(["plot", str(out), str(plain), "--out", str(tmp_path / "fig.png")]) == 0


def test_a_speeds_file_gives_each_client_its_row(tmp_path):
    """Every client 2 s a step and a link so fast that traffic is free: each round takes 2 steps x 2 s."""
    speeds = tmp_path / "speeds.csv"
    speeds.write_text("client,seconds_per_step,bandwidth_bps\n" + "".join(f"{c},2,1e30\n" for c in range(20)))
    out = tmp_path / "file"
    assert main(["run", *SYNTH, "--speeds", str(speeds), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["sim_time_total"] == pytest.approx(4 * 2 * 2.0)


def test_each_config_of_a_sweep_runs_the_clock_of_its_single_run(tmp_path):
    """Config ``seed=1`` of a sweep: its clients' speeds from its seed, its own cohorts and QSGD bits."""
    sweep, single = tmp_path / "sweep", tmp_path / "single"
    common = [*SYNTH, "--uplink", "qsgd:4", "--speeds", "lognormal:0.8"]
    assert main(["run", *common, "--seeds", "0-1", "--out", str(sweep)]) == 0
    assert main(["run", *common, "--seed", "1", "--out", str(single)]) == 0
    configs = json.loads((sweep / "sweep.json").read_text())["configs"]
    want = json.loads((single / "summary.json").read_text())["sim_time_total"]
    assert configs[1]["sim_time_total"] == pytest.approx(want, rel=1e-12)
    assert configs[0]["sim_time_total"] != configs[1]["sim_time_total"]  # another seed: other speeds and cohorts


@pytest.mark.parametrize("argv,message", [
    (["--speeds", "lognormal:x"], "SIGMA 'x' is not a number"),
    (["--speeds", "lognormal:-1"], "SIGMA must be a finite number >= 0"),
    (["--speeds", "nowhere.csv"], "is neither lognormal:SIGMA nor a file"),
    (["--bandwidth", "5"], "--bandwidth applies to --speeds"),
    (["--speeds", "lognormal:1", "--step-seconds", "0"], "must be a finite number > 0"),
    (["--target-accuracy", "1.5"], "--target-accuracy must lie in (0, 1]"),
])
def test_bad_speeds_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *argv], message)


@pytest.mark.parametrize("sweep", [[], ["--seeds", "0-1"]])
def test_a_speeds_file_missing_clients_is_refused_before_anything_is_written(tmp_path, capsys, sweep):
    speeds = tmp_path / "speeds.csv"
    speeds.write_text("client,seconds_per_step,bandwidth_bps\n0,1,1\n")
    out = tmp_path / "out"
    try:
        status = main(["run", *SYNTH, "--speeds", str(speeds), *sweep, "--out", str(out)])
    except SystemExit as e:
        status = e.code
    assert status == 2 and "no row for client(s) [1, 2" in capsys.readouterr().err
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], [".jaxqfl.lock"])  # no config, no run folders
