"""Every kind of run keeps its promises (issue 20): sweep folders, divergence, overwrite, locks, damaged or
unwritable checkpoints, the resumed layout, the data seed, sweep refusals and signals to a sweep.

In-process runs are tiny (8 clients, 1 local step, 2 devices); the one subprocess test is a small sweep.
"""
import errno
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_subprocess import cli_env
from interrupted_runs import back_to_checkpoint

from jaxqfl.cli.main import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--num-clients", "8", "--cohort-size", "4", "--local-steps", "1", "--batch-size", "4", "--devices", "2",
        "--no-progress", "--autotune", "off"]


def strict(text):
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def summary(out):
    return strict((pathlib.Path(out) / "summary.json").read_text())


# --- defect 2: sweep folders -------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", ["0.1,0.10", "0.1,0.1000000001"])
def test_a_sweep_refuses_values_it_cannot_tell_apart(tmp_path, capsys, values):
    """Equal values (as text, or to the float32 the round computes in) would be one folder written twice."""
    with pytest.raises(SystemExit) as exc:
        main(["run", *TINY, "--rounds", "2", "--seeds", "0-1", "--client-lr", values, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "distinct" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_config_folder_names_are_unique_and_read_back():
    from jaxqfl import engine
    from jaxqfl.experiment.sweep_runner import config_name, parse_config_name

    configs = engine.grid([0, 12], client_lr=[0.1, 0.1000001, 1e-07], local_steps=[1, 3])
    names = [config_name(c) for c in configs]
    assert len(set(names)) == len(configs)  # ':g' wrote 0.1 and 0.1000001 both as 'client_lr=0.1'
    assert [parse_config_name(n) for n in names] == configs
    from jaxqfl.engine.sweep import check_configs

    with pytest.raises(ValueError, match="the same"):
        check_configs([{"seed": 0, "lr": 0.1}, {"seed": 0, "lr": 0.1 + 1e-12}])


# --- defects 7, 8, 9: a sweep with a diverging config; overwrite; data seed -----------------------------------

@pytest.fixture(scope="module")
def diverged_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sw"
    rc = main(["run", *TINY, "--rounds", "4", "--eval-every", "2", "--chunk-size", "2", "--seeds", "0-1",
               "--client-lr", "0.05,1e30", "--server-lr", "1,1e30", "--out", str(out)])
    return rc, out


def test_a_sweep_with_a_diverged_config_says_so_and_exits_3(diverged_sweep):
    rc, out = diverged_sweep
    assert rc == 3
    report = strict((out / "sweep.json").read_text())
    assert report["num_diverged"] == 2
    for c in report["configs"]:  # only both learning rates at 1e30 overflow within 4 rounds
        assert c["diverged"] is (c["client_lr"] == c["server_lr"] == 1e30), c
        assert summary(out / c["folder"])["diverged"] is c["diverged"]
        assert (c["diverged_round"] is not None) is c["diverged"]
    rows = (out / "sweep.md").read_text().splitlines()
    assert sum("diverged (2 of 2)" in r for r in rows) == 1 and sum("n/a" in r for r in rows) == 0


def test_overwrite_of_a_sweep_folder_by_a_single_run_leaves_only_the_new_run(diverged_sweep, tmp_path):
    _, sweep_out = diverged_sweep
    out = tmp_path / "o"
    shutil.copytree(sweep_out, out)
    (out / "notes.txt").write_text("mine")  # not a run's file: kept
    config = next(p for p in out.iterdir() if p.name.startswith("client_lr="))
    (config / "mine.txt").write_text("mine")  # a file of the user's in a config folder, and in checkpoints/: kept
    (out / "checkpoints" / "mine").mkdir()
    (out / "checkpoints" / "mine" / "data.txt").write_text("mine")
    assert main(["run", *TINY, "--rounds", "2", "--eval-every", "2", "--chunk-size", "2", "--out", str(out),
                 "--overwrite"]) == 0
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert left == ["checkpoints", config.name, "config.toml", "final_params.msgpack", "metrics.jsonl", "notes.txt",
                    "summary.json"]
    assert sorted(p.name for p in config.iterdir()) == ["mine.txt"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "mine"]
    assert (out / "checkpoints" / "mine" / "data.txt").read_text() == "mine"


def test_each_sweep_config_is_the_single_run_of_its_seed_and_data_seed(diverged_sweep, tmp_path):
    """Config seed=1 of the sweep (whose population is the first seed's) = run --seed 1 --data-seed 0."""
    _, sweep_out = diverged_sweep
    swept = summary(sweep_out / "client_lr=0.05,seed=1,server_lr=1.0")
    assert swept["data_seed"] == 0
    # its summary's config is this config's (not the sweep's seeds: a summary per config each that long was
    # quadratic in the number of configs)
    assert swept["config"]["seed"] == 1 and swept["config"]["seeds"] is None and swept["config"]["client_lr"] == 0.05
    out = tmp_path / "single"
    assert main(["run", *TINY, "--rounds", "4", "--eval-every", "2", "--chunk-size", "2", "--seed", "1",
                 "--data-seed", "0", "--client-lr", "0.05", "--out", str(out)]) == 0
    single = summary(out)
    assert single["data_seed"] == 0
    np.testing.assert_allclose(single["final_loss"], swept["final_loss"], rtol=1e-5)
    np.testing.assert_allclose(single["final_accuracy"], swept["final_accuracy"], atol=1e-6)
    # and the data seed is what differs from the plain --seed 1 run (the population of seed 1)
    other = tmp_path / "plain"
    assert main(["run", *TINY, "--rounds", "4", "--eval-every", "2", "--chunk-size", "2", "--seed", "1",
                 "--client-lr", "0.05", "--out", str(other)]) == 0
    assert summary(other)["data_seed"] == 1 and summary(other)["final_loss"] != single["final_loss"]
    # the config's own config.toml is that single run; its saved model is the single run's
    import tomllib

    from jaxqfl import load_final_model

    cfg = tomllib.loads((sweep_out / "client_lr=0.05,seed=1,server_lr=1.0" / "config.toml").read_text())
    assert (cfg["seed"], cfg["data-seed"], cfg["client-lr"], cfg["server-lr"]) == (1, 0, 0.05, 1.0)
    assert "seeds" not in cfg
    a = load_final_model(sweep_out / "client_lr=0.05,seed=1,server_lr=1.0")
    b = load_final_model(out)
    for u, v in zip(jax_leaves(a), jax_leaves(b), strict=True):
        np.testing.assert_allclose(u, v, atol=1e-5)


# --- defect 10: what a sweep refuses ------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [(["--stream"], "--stream is not available in a sweep")])
def test_what_a_sweep_does_not_do_is_refused(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["run", *TINY, "--rounds", "2", "--seeds", "0-1", *flags, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_sweep_too_large_for_memory_is_refused_with_an_estimate(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--rounds", "2", "--seeds", "0-9999", "--model", "mlp", "--hidden", "2048,2048",
              "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "10,000 configs" in err and "fewer configs" in err and "--stream" not in err, err
    assert not (tmp_path / "o").exists()


# --- defect 6: one run per folder ---------------------------------------------------------------------------------

def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    fd = os.open(out / ".jaxqfl.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first run holds it
    try:
        with pytest.raises(SystemExit) as exc:
            main(["run", *TINY, "--rounds", "2", "--out", str(out)])
        assert exc.value.code == 2 and "in use by another jaxqfl run" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".jaxqfl.lock"]  # nothing truncated or written
    finally:
        os.close(fd)
    assert main(["run", *TINY, "--rounds", "2", "--chunk-size", "2", "--out", str(out)]) == 0  # free: it runs


# --- defect 5: damaged and unwritable checkpoints -----------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", *TINY, "--rounds", "4", "--eval-every", "2", "--checkpoint-every", "2", "--out", str(out)]) == 0
    return out


def test_a_damaged_latest_checkpoint_falls_back_to_the_older_one(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    meta = out / "checkpoints" / "4" / "meta" / "metadata"
    meta.write_bytes(meta.read_bytes()[: len(meta.read_bytes()) // 2])  # truncated while written
    (out / "final_params.msgpack").unlink()
    assert main(["run", "--resume", str(out)]) == 0
    assert "checkpoints/4 cannot be read" in capsys.readouterr().err
    assert summary(out)["resumed_from_round"] == 2
    assert (out / "final_params.msgpack").read_bytes() == (finished_run / "final_params.msgpack").read_bytes()
    # every kept checkpoint damaged: refused, naming them
    for r in (2, 4):
        (out / "checkpoints" / str(r) / "meta" / "metadata").write_bytes(b"\xff\xfe{garbage")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--resume", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no readable checkpoint" in err and "checkpoints/2" in err and "Traceback" not in err


def test_a_full_disk_while_checkpointing_stops_cleanly(tmp_path, monkeypatch, capsys):
    from jaxqfl.engine import checkpoint

    real_save, calls = checkpoint.save, []

    def save(directory, state, meta, **kw):
        calls.append(1)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(directory, state, meta, **kw)

    monkeypatch.setattr(checkpoint, "save", save)
    out = tmp_path / "run"
    assert main(["run", *TINY, "--rounds", "6", "--eval-every", "2", "--checkpoint-every", "2", "--chunk-size", "2",
                 "--out", str(out)]) == 5
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    s = summary(out)
    assert s["rounds"] == 4 and not s["completed"] and "No space left" in s["checkpoint_error"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]


# --- defect 4: a resumed run keeps its layout ---------------------------------------------------------------------

def test_a_resumed_run_reuses_the_layout_it_was_written_with(finished_run, tmp_path, monkeypatch):
    """The automatic chunk size is stored; a resume whose cost model now says otherwise keeps the stored one."""
    import jaxqfl.engine.layout as layout

    out = back_to_checkpoint(finished_run, tmp_path / "run", 2)  # resume from round 2
    first = summary(finished_run)["chunk_size"]
    monkeypatch.setattr(layout, "auto_chunk_size", lambda *a, **k: 1 if first != 1 else 2)  # "re-tuned"
    assert main(["run", "--resume", str(out)]) == 0
    assert summary(out)["chunk_size"] == first
    assert (out / "final_params.msgpack").read_bytes() == (finished_run / "final_params.msgpack").read_bytes()


# --- defect 1: a sweep stops on a signal --------------------------------------------------------------------------



def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "jaxqfl.cli.main", "run", *args], cwd=cwd, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(path, proc, timeout=120.0):
    """Until ``path`` holds a line (the first evaluated block): the run is in its loop of blocks."""
    t0 = time.time()
    while not (path.is_file() and path.read_text().strip()):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def test_a_sweep_stops_at_the_end_of_its_block_on_sigint(tmp_path):
    out = tmp_path / "sw"
    p = _start([*TINY, "--chunk-size", "2", "--rounds", "100000", "--eval-every", "5", "--seeds", "0-1",
                "--out", str(out)], tmp_path)
    _wait_for_line(out / "seed=1" / "metrics.jsonl", p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    report = strict((out / "sweep.json").read_text())
    assert report["interrupted"] is True and 0 < report["rounds"] < 100000
    for c in report["configs"]:
        s = summary(out / c["folder"])
        assert s["interrupted"] is True and s["signal"] == "SIGINT" and s["rounds"] == report["rounds"]
        assert len((out / c["folder"] / "metrics.jsonl").read_text().splitlines()) == report["rounds"] // 5
        assert (out / c["folder"] / "final_params.msgpack").is_file()


def test_a_kmeans_run_stops_on_sigterm_and_keeps_its_centroids(tmp_path):
    out = tmp_path / "km"
    p = _start(["--dataset", "gaussian-mixture", "--num-clients", "20", "--cohort-size", "10", "--components", "4",
                "--rounds", "100000", "--eval-every", "5", "--devices", "2", "--no-progress", "--out", str(out)],
               tmp_path)
    _wait_for_line(out / "metrics.jsonl", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    s = summary(out)
    assert s["interrupted"] is True and s["signal"] == "SIGTERM" and 0 < s["rounds"] < 100000
    from jaxqfl import load_final_model

    assert np.asarray(load_final_model(out)["centroids"]).shape == (4, 10)
    import tomllib

    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["dataset"] == "gaussian-mixture" and cfg["rounds"] == 100000 and cfg["components"] == 4


def test_a_sweep_config_folder_points_to_its_sweep_for_resume_and_for_its_model(diverged_sweep, tmp_path):
    """--resume of one config of a sweep said 'stopped before its first checkpoint; start it again' (the sweep's
    checkpoints are its parent's); load_final_model of the sweep folder, or of a damaged file, named neither."""
    import jaxqfl
    from jaxqfl.experiment.run_folder import readable_meta
    from jaxqfl.value_kinds import ExperimentError

    _, sweep_out = diverged_sweep
    config = sweep_out / "client_lr=0.05,seed=1,server_lr=1.0"
    with pytest.raises(ExperimentError, match=f"is one config of the sweep in '{sweep_out}': a sweep resumes whole"):
        readable_meta(config / "checkpoints", str(config))
    with pytest.raises(FileNotFoundError, match=r"a sweep keeps one model per config, in its config folders"):
        jaxqfl.load_final_model(sweep_out)
    damaged = tmp_path / "final_params.msgpack"
    damaged.write_bytes((config / "final_params.msgpack").read_bytes()[:50])
    with pytest.raises(ValueError, match=f"'{damaged}' is not a readable params file"):
        jaxqfl.load_final_model(damaged)


def test_resume_of_a_run_still_going_says_so_and_resume_with_overwrite_is_refused(diverged_sweep, capsys):
    """A run still going (its lock held; maybe no checkpoint yet) was told 'start it again'; --overwrite beside
    --resume was ignored."""
    import fcntl
    import os

    _, sweep_out = diverged_sweep
    fd = os.open(sweep_out / ".jaxqfl.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: as another process's lock
        with pytest.raises(SystemExit) as exc:
            main(["run", "--resume", str(sweep_out)])
        assert exc.value.code == 2 and "is in use by another jaxqfl run" in capsys.readouterr().err
    finally:
        os.close(fd)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--resume", str(sweep_out), "--overwrite"])
    assert exc.value.code == 2 and "--overwrite would start a new one over it" in capsys.readouterr().err
