"""Runs a researcher can trust (issue 12): checkpoints and resume, interrupts, divergence, outputs, configs, plots.

The subprocess tests run tiny synthetic runs (8 clients, 1 local step) so that
a process is mostly start-up and compilation.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_subprocess import cli_env

from jaxqfl.cli.main import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

# FedAvg with an error-feedback codec: per-client residuals are part of the state that must resume exactly.
TINY = ["--num-clients", "8", "--cohort-size", "4", "--local-steps", "1", "--batch-size", "4",
        "--uplink", "topk:0.1+ef", "--devices", "2", "--no-progress"]


def reject(name):
    raise ValueError(f"non-strict JSON constant {name}")


def strict(text):
    return json.loads(text, parse_constant=reject)


def without_time(record):
    """A metrics record without its wall-clock fields (``driver.TIMING_KEYS``)."""
    from jaxqfl.engine.driver import TIMING_KEYS

    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def records_without_time(out):
    recs = [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [without_time(r) for r in recs]


def final_params_bytes(out):
    return (out / "final_params.msgpack").read_bytes()




def _start(args, cwd):
    # one persistent compilation cache for the chain: the later processes load the first one's programs
    env = {**cli_env(), "JAX_COMPILATION_CACHE_DIR": str(cwd / "xla-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return subprocess.Popen([sys.executable, "-m", "jaxqfl.cli.main", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc, timeout=90.0):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before the awaited moment:\n"
                                 + proc.stderr.read()[-3000:])
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


def _checkpoints(out):
    d = out / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run the interrupted ones must equal, bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "run"
    rc = main(["run", *TINY, "--rounds", "300", "--eval-every", "10", "--checkpoint-every", "50", "--out", str(out)])
    assert rc == 0
    return out


def test_interrupts_kill_and_resume_equal_the_uninterrupted_run(reference_run, tmp_path):
    out = tmp_path / "run"
    flags = [*TINY, "--rounds", "300", "--eval-every", "10", "--checkpoint-every", "50"]
    # 1. SIGINT while the run is being built and compiled (its folder exists: the handler is installed)
    p = _start([*flags, "--out", str(out)], tmp_path)
    _wait_for(lambda: out.is_dir(), p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    summary = strict((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == "SIGINT" and summary["completed"] is False
    assert _checkpoints(out), "an interrupted run leaves a checkpoint to resume"
    assert "Traceback" not in err
    # 2. SIGTERM during training, after the first evaluation of the resumed run
    p = _start(["--resume", str(out)], tmp_path)
    first = summary["rounds"]
    _wait_for(lambda: any(strict(line)["round"] > first for line in
                          (out / "metrics.jsonl").read_text().splitlines() if line.strip()), p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    summary = strict((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == "SIGTERM"
    stopped_at = summary["rounds"]
    assert 0 < stopped_at < 300 and max(_checkpoints(out)) == stopped_at
    # 3. SIGKILL once a later checkpoint is complete; nothing is written at the kill
    p = _start(["--resume", str(out)], tmp_path)
    _wait_for(lambda: max(_checkpoints(out)) > stopped_at, p)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    # 4. --resume completes from the last checkpoint
    p = _start(["--resume", str(out)], tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    summary = strict((out / "summary.json").read_text())
    assert summary["completed"] and not summary["interrupted"] and summary["rounds"] == 300
    assert summary["resumed_from_round"] > stopped_at
    assert final_params_bytes(out) == final_params_bytes(reference_run)
    assert records_without_time(out) == records_without_time(reference_run)
    ref = strict((reference_run / "summary.json").read_text())
    assert summary["uplink_bits_total"] == ref["uplink_bits_total"]
    assert summary["config_fingerprint"] == ref["config_fingerprint"]


def test_resumed_engine_state_equals_uninterrupted_bit_for_bit(tmp_path):
    """Checkpoint after 4 rounds, restore into a blank template, run 6 more: the whole state matches."""
    import jax
    import optax

    from jaxqfl import algorithms, compress, data, engine, models
    from jaxqfl.engine import checkpoint

    population = data.build("synthetic", num_clients=12, seed=1)

    def make(home):
        return engine.build(population, models.logistic_regression(num_outputs=10),
                            algorithms.fedavg(optax.sgd(0.05)), engine.LocalSchedule(local_steps=2, batch_size=4),
                            cohort_size=4, num_devices=2, uplink=compress.from_spec("topk:0.1+ef"),
                            client_state=home)

    for home in ("host",):  # NumPy rows on the host (the CLI test below resumes device-resident states)
        sim = make(home)
        full = engine.run(sim, rounds=10, eval_every=2, seed=3)
        part = engine.run(sim, rounds=4, eval_every=2, seed=3)
        checkpoint.save(tmp_path / home, part.state, {"records": part.records})
        fresh = sim  # a fresh process is the CLI test's job; here the restored state starts from a blank template
        state, meta = checkpoint.restore(tmp_path / home, fresh.init(11))
        rest = engine.run(fresh, rounds=6, eval_every=2, state=state,
                          totals=engine.RunTotals(part.uplink_bits_total, part.downlink_bits_total))
        a, b = jax.device_get(full.state), jax.device_get(rest.state)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
        for x, y in zip(jax.tree.leaves(a._replace(key=0)), jax.tree.leaves(b._replace(key=0))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        ef = jax.tree.leaves(a.client_states["uplink"])
        assert any(np.any(np.asarray(r) != 0) for r in ef), "the error-feedback residuals were exercised"
        strip = [without_time(r) for r in full.records]
        assert [without_time(r) for r in meta["records"] + rest.records] == strip


def test_a_checkpoint_of_a_replicated_state_compiles_nothing_and_restores_placed_like_the_template(tmp_path):
    """orbax cuts a replicated array into per-replica slices with a compiled program per shape; one process
    saves each such array whole instead, and the restored state is the saved one, on the template's devices."""
    import jax
    import optax

    from jaxqfl import algorithms, data, engine, models
    from jaxqfl.engine import checkpoint
    from jaxqfl.engine.compilations import CompilationLog

    sim = engine.build(data.build("synthetic", num_clients=8, seed=2), models.logistic_regression(num_outputs=10),
                       algorithms.fedavg(optax.sgd(0.05)), engine.LocalSchedule(local_steps=1, batch_size=4),
                       cohort_size=4, num_devices=2)
    state = engine.run(sim, rounds=2, eval_every=2, seed=5).state
    replicated = [a for a in jax.tree.leaves(state.params) if len(a.sharding.device_set) == 2]
    assert replicated and all(a.is_fully_replicated for a in replicated)
    with CompilationLog() as log:
        checkpoint.save(tmp_path, state, {"round": 2})
    assert log.names == []
    restored, meta = checkpoint.restore(tmp_path, sim.init(0))
    assert meta == {"round": 2}
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.params)):
        assert b.sharding == a.sharding
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_with_a_different_config_is_refused_naming_the_field(reference_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--resume", str(reference_run), "--client-lr", "0.5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "'client-lr'" in err and "0.01" in err and "0.5" in err


def test_diverging_run_stops_exits_nonzero_and_writes_strict_json(tmp_path, capsys):
    out = tmp_path / "div"
    rc = main(["run", *TINY, "--client-lr", "1e30", "--server-lr", "1e30", "--rounds", "20", "--eval-every", "5",
               "--out", str(out)])
    assert rc == 3
    summary = strict((out / "summary.json").read_text())
    assert summary["diverged"] is True and summary["diverged_round"] >= 1 and summary["rounds"] < 20
    assert f"diverged at round {summary['diverged_round']}" in capsys.readouterr().err
    for path in out.rglob("*"):
        if path.suffix in (".json", ".jsonl"):
            for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
                strict(line)
    assert summary["final_loss"] is None  # NaN written as null


def test_outputs_unique_refused_checked(tmp_path, monkeypatch, capsys):
    from concurrent.futures import ThreadPoolExecutor

    from jaxqfl.experiment import outputs

    monkeypatch.chdir(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: outputs.prepare_out(None, dataset="synthetic", seed=0, overwrite=False),
                                range(8)))
    assert len(set(folders)) == 8 and all(f.is_dir() for f in folders)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "summary.json").write_text("{}")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(taken, "--overwrite"), (afile, "not a folder"), (afile / "sub", "cannot be created")]
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder refuses only other users
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        cases.append((readonly, "not writable"))
    for out, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["run", *TINY, "--out", str(out)])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert (taken / "summary.json").read_text() == "{}"  # refused, untouched


def test_memory_guard_refuses_1000_devices_quickly_without_allocating(tmp_path):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "jaxqfl.cli.main", "run", "--devices", "1000", "--out",
                        str(tmp_path / "o")], env={**cli_env(), "XLA_FLAGS": ""}, capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    seconds = time.time() - t0
    assert r.returncode == 2
    assert "refused before allocating" in r.stderr and "--devices" in r.stderr and "GiB" in r.stderr
    assert "exceeds this host's" in r.stderr  # the warning about more devices than cores
    assert not (tmp_path / "o").exists()
    assert seconds < 5.0 * 2, seconds  # < 5 s on an idle machine; CI's 2 shared cores get twice that


def test_config_file_print_config_and_config_toml_round_trip(reference_run, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('num-clients = 30\ncohort_size = 6\nuplink = "qsgd:4"\nhidden = [16, 8]\nmodel = "mlp"\n')
    assert main(["run", "--config", str(cfg), "--cohort-size", "3", "--print-config"]) == 0
    import tomllib

    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["num-clients"] == 30 and printed["cohort-size"] == 3  # the flag overrides the file
    assert printed["uplink"] == "qsgd:4" and printed["hidden"] == [16, 8] and printed["rounds"] == 300
    # the run folder's config.toml reproduces its config exactly
    assert main(["run", "--config", str(reference_run / "config.toml"), "--print-config"]) == 0
    again = tomllib.loads(capsys.readouterr().out)
    assert again == tomllib.loads((reference_run / "config.toml").read_text())
    bad = tmp_path / "bad.toml"
    bad.write_text("clinet-lr = 0.1\n")
    with pytest.raises(SystemExit):
        main(["run", "--config", str(bad), "--print-config"])
    assert "unknown key 'clinet-lr'" in capsys.readouterr().err


def test_a_flag_replaces_its_exclusive_partner_from_a_config_file_and_refusals_name_the_files_values(
        reference_run, tmp_path, capsys):
    """A run's config.toml holds --local-steps and --seed: --local-epochs 1 or --seeds 0-1 on top of it were
    refused as "not both" (of flags never typed); a refusal of a file's value says it came from the file; a switch
    the file turns on can be turned off; a value a flag overrides is still checked; 'help' is no setting."""
    import tomllib

    cfg = str(reference_run / "config.toml")
    assert main(["run", "--config", cfg, "--local-epochs", "1", "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["local-epochs"] == 1 and "local-steps" not in printed
    assert main(["run", "--config", cfg, "--seeds", "0-1", "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)
    assert printed["seeds"] == [0, 1] and "seed" not in printed
    files = {"fp.toml": 'algorithm = "fedprox"\nmu = 0.1\n', "stream.toml": "stream = true\n",
             "bad.toml": 'rounds = "abc"\n', "help.toml": "help = true\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert main(["run", "--config", str(tmp_path / "stream.toml"), "--no-stream", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["stream"] is False
    for name, argv, message in (
            ("fp.toml", ["--algorithm", "fedavg"], f"--mu applies to --algorithm fedprox, got --algorithm fedavg "
                                                   f"(mu = 0.1 from --config {tmp_path / 'fp.toml'})"),
            ("bad.toml", ["--rounds", "2"], "rounds = 'abc': expected a positive integer"),
            ("help.toml", [], "'help' is not read from a config file")):
        with pytest.raises(SystemExit):
            main(["run", "--config", str(tmp_path / name), *argv, "--print-config"])
        assert message in capsys.readouterr().err


def test_summary_records_config_versions_device_and_final_model_loads(reference_run):
    import jax

    import jaxqfl
    from jaxqfl.engine.checkpoint import load_final_model

    s = strict((reference_run / "summary.json").read_text())
    assert s["versions"]["jaxqfl"] == jaxqfl.__version__ and s["versions"]["jax"] == jax.__version__
    assert s["versions"]["device_kind"] == jax.devices()[0].device_kind
    assert s["config"]["uplink"] == "topk:0.1+ef" and s["config"]["rounds"] == 300
    params = load_final_model(reference_run)
    assert sum(np.size(a) for a in jax.tree.leaves(params)) == s["num_params"]


def test_version_flag(capsys):
    import jaxqfl

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and jaxqfl.__version__ in capsys.readouterr().out


def test_plot_writes_a_png_of_the_expected_size(reference_run, tmp_path):
    pytest.importorskip("matplotlib")
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text((reference_run / "metrics.jsonl").read_text())
    (other / "config.toml").write_text((reference_run / "config.toml").read_text().replace("0.01", "0.02"))
    fig = tmp_path / "fig.png"
    assert main(["plot", str(reference_run), str(other), "--out", str(fig), "--dpi", "50"]) == 0
    head = fig.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    # 10 x 10.5 inches at 50 dpi: accuracy, loss and the per-client band (its clients hold their own test rows)
    assert (width, height) == (500, 525)


def test_topk_count_is_exact():
    from jaxqfl.compress.sparsify import SparsityLevel

    assert SparsityLevel(0.07, None).k(100, "topk") == 7  # 0.07 * 100 = 7.000000000000001 in floats
    assert SparsityLevel(0.29, None).k(100, "topk") == 29
    assert SparsityLevel(0.011, None).k(1000, "topk") == 11
    assert SparsityLevel(0.0105, None).k(1000, "topk") == 11  # a true fraction still rounds up


def test_negative_seed_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--seed", "-1"])
    assert exc.value.code == 2 and "non-negative" in capsys.readouterr().err


def test_plot_asks_for_matplotlib_when_missing(reference_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["plot", str(reference_run), "--out", str(tmp_path / "f.png")]) == 2
    assert 'pip install "jaxqfl[plot]"' in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_a_model_too_narrow_for_the_task_is_refused_before_training():
    import optax

    from jaxqfl import algorithms, data, engine, models

    population = data.build("synthetic", num_clients=6, seed=0)  # 10 classes
    with pytest.raises(ValueError, match="outputs \\(5,\\) per example but the task has 10 classes"):
        engine.build(population, models.logistic_regression(num_outputs=5), algorithms.fedavg(optax.sgd(0.1)),
                     engine.LocalSchedule(local_steps=1, batch_size=4), cohort_size=2)


def test_the_background_orbax_import_is_waited_for_at_exit():
    """A run imports orbax on a thread while it builds. As a daemon thread, a run refused meanwhile (e.g. by the
    memory check once the data is read) ended about 1 time in 10 with the interpreter tearing the import down
    ("terminate called without an active exception", status 134 instead of 2; measured with the CLI). The
    interpreter joins non-daemon threads before it finalizes: in a fresh interpreter, the thread must be one."""
    script = ("import threading\n"
              "from jaxqfl.engine import checkpoint\n"
              "checkpoint.load_in_background()\n"
              "print([t.daemon for t in threading.enumerate() if t.name == 'jaxqfl-orbax-import'])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env())
    assert (out.returncode, out.stdout) == (0, "[False]\n"), out.stderr[-500:]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_output_file_where_no_file_can_be_made_is_refused_before_any_work(monkeypatch):
    """/proc takes no new files, for root too (os.access says it is writable there); the check names the folder.
    With os.access fooled everywhere, a read-only-by-nature place is still refused by the probe."""
    from jaxqfl.experiment.outputs import OutputError, check_output_file

    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    for path in ("/proc/jaxqfl-test.png", "/proc/jaxqfl-sub/test.msgpack"):
        with pytest.raises(OutputError, match="no file can be written in '/proc'"):
            check_output_file(path)
    assert not os.path.exists("/proc/jaxqfl-test.png")


def test_resuming_a_run_that_diverged_before_a_checkpoint_says_so(tmp_path, capsys):
    """The refusal said the run "was stopped before its first checkpoint" of a run that diverged at round 1."""
    out = tmp_path / "diverged"
    out.mkdir()
    (out / "config.toml").write_text("rounds = 3\n")
    (out / "summary.json").write_text(json.dumps({"diverged": True, "diverged_round": 1}))
    with pytest.raises(SystemExit):
        main(["run", "--resume", str(out)])
    err = capsys.readouterr().err
    assert "the run diverged at round 1, before its first checkpoint" in err and "lower --client-lr" in err
    (out / "summary.json").write_text(json.dumps({"diverged": False, "interrupted": True}))
    with pytest.raises(SystemExit):
        main(["run", "--resume", str(out)])
    assert "the run was stopped before its first checkpoint" in capsys.readouterr().err
