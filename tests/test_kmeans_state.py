"""A k-means run keeps state as a single run does (issue 20, defects 1 and 3): checkpoints every
``--checkpoint-every`` rounds, ``--resume`` bit for bit, ``config.toml`` that repeats the run, the centroids
saved; and its k-means++ seeding listens to a signal between bounded pieces of work.

In process, tiny shapes; interruptions are real signals to this process, caught by the run's own handler.
"""
import json
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interrupted_runs import cut_resume_and_full
from jaxqfl.cli.main import main

KMEANS = ["--dataset", "gaussian-mixture", "--num-clients", "20", "--cohort-size", "10", "--components", "4",
          "--devices", "2", "--no-progress", "--rounds", "6", "--eval-every", "2"]


def rows(folder):
    return [json.loads(x) for x in (pathlib.Path(folder) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed_and_full(tmp_path_factory):
    # SIGINT while the checkpoint of state.round 3 is written: the seeding round 0, then rounds 1 and 2
    return cut_resume_and_full(tmp_path_factory.mktemp("kmeans_state"), KMEANS, at_step=3, sig=signal.SIGINT,
                               inspect=lambda cut: json.loads((cut / "summary.json").read_text()))


@pytest.mark.slow  # three k-means runs (~14 s); the cheap guards below stay in the default suite
def test_an_interrupted_then_resumed_kmeans_run_equals_the_uninterrupted_one_bit_for_bit(resumed_and_full):
    cut, full, (rc_cut, rc_resume, rc_full), stopped = resumed_and_full
    assert rc_cut == 130 and rc_resume == 0 and rc_full == 0
    assert stopped["interrupted"] is True and stopped["signal"] == "SIGINT" and stopped["rounds"] == 2
    assert (cut / "final_params.msgpack").read_bytes() == (full / "final_params.msgpack").read_bytes()
    a, b = json.loads((cut / "summary.json").read_text()), json.loads((full / "summary.json").read_text())
    assert a["resumed_from_round"] == 2 and a["completed"] and a["rounds"] == b["rounds"] == 6
    for key in ("final_inertia", "seeding_inertia", "seeding_sample_size", "uplink_bits_total"):
        assert a[key] == b[key], key
    assert [(r["round"], r["test_inertia"]) for r in rows(cut)] == [(r["round"], r["test_inertia"]) for r in rows(full)]
    assert len(rows(cut)) == 3
    from jaxqfl import load_final_model

    assert np.asarray(load_final_model(cut)["centroids"]).shape == (4, 10)


@pytest.mark.slow
def test_a_resumed_kmeans_run_refuses_a_changed_config(resumed_and_full, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--resume", str(resumed_and_full[0]), "--seed", "1"])
    assert exc.value.code == 2 and "differs from the checkpoint's in 'seed'" in capsys.readouterr().err


def test_kmeans_config_toml_holds_only_what_kmeans_takes_and_reads_back(tmp_path, capsys):
    """The validators fill model, client-lr, local-steps and batch-size; k-means refuses them as flags, so its
    config.toml must leave them out or ``--config OUT/config.toml`` is refused (``--print-config`` writes that file)."""
    assert main(["run", *KMEANS, "--print-config"]) == 0
    text = capsys.readouterr().out
    keys = {line.split(" = ")[0] for line in text.splitlines()}
    assert {"dataset", "rounds", "kmeans", "components"} <= keys
    assert not keys & {"model", "client-lr", "local-steps", "batch-size", "hidden"}
    (tmp_path / "config.toml").write_text(text)
    assert main(["run", "--config", str(tmp_path / "config.toml"), "--print-config"]) == 0
    assert capsys.readouterr().out == text


def _sample(num_rows=64, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(num_rows, d)), jnp.float32), jnp.asarray(rng.random(num_rows) < 0.8)


def test_seeding_in_pieces_draws_what_one_piece_draws(monkeypatch):
    """The pieces between signal checks change nothing: one k-means++ draw a piece equals all draws at once."""
    from jaxqfl.algorithms import kmeans_seeding as ks

    points, valid = _sample()
    key = jax.random.key(3)
    whole = np.asarray(ks.best_of_restarts(points, valid, 6, key, restarts=3, lloyd_iterations=2))
    monkeypatch.setattr(ks, "PIECE_WORK", 1)
    checks = []
    pieces = np.asarray(ks.best_of_restarts(points, valid, 6, key, restarts=3, lloyd_iterations=2,
                                            should_stop=lambda: checks.append(1) and False))
    assert np.array_equal(whole, pieces)
    assert len(checks) == 5 + 2 + 1  # one per k-means++ draw after the first, per Lloyd iteration, and at the end
    # with no Lloyd iteration and one restart, the seeds are k-means++ keyed fold_in(key, 0), whatever the pieces
    plain = ks.best_of_restarts(points, valid, 6, key, restarts=1, lloyd_iterations=0)
    assert np.array_equal(np.asarray(plain), np.asarray(jax.jit(ks.kmeans_plus_plus, static_argnums=2)(points, valid, 6, jax.random.fold_in(key, 0))))


def test_seeding_stops_between_pieces_when_asked(monkeypatch):
    from jaxqfl.algorithms import kmeans_seeding as ks

    monkeypatch.setattr(ks, "PIECE_WORK", 1)
    points, valid = _sample()
    calls = []

    def stop_at_third():
        calls.append(1)
        return len(calls) >= 3

    assert ks.best_of_restarts(points, valid, 9, jax.random.key(0), restarts=2, should_stop=stop_at_third) is None
    assert len(calls) == 3  # stopped at the third check, no piece more


def test_a_signal_during_kmeans_seeding_stops_the_run(tmp_path, monkeypatch, capsys):
    """A signal while the server runs k-means++ ends the run at the next piece with 143 and a summary."""
    from jaxqfl.algorithms import kmeans_seeding as ks

    real = ks._restarts_next

    def signal_then_draw(*a, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    monkeypatch.setattr(ks, "_restarts_next", signal_then_draw)
    out = tmp_path / "km"
    assert main(["run", *KMEANS, "--out", str(out)]) == 143
    s = json.loads((out / "summary.json").read_text())
    assert s["interrupted"] is True and s["signal"] == "SIGTERM" and s["stopped_in"] == "seeding" and s["rounds"] == 0
    assert not (out / "metrics.jsonl").exists()
    assert "during the k-means++ seeding" in capsys.readouterr().err


def test_the_stop_flag_is_read_after_the_piece_before_it_has_run(monkeypatch):
    """JAX dispatches asynchronously: a check right after dispatching a piece would come before its work, and
    a loop of such checks would queue the whole seeding and read a signal only at its end."""
    from jaxqfl.algorithms import kmeans_seeding as ks

    monkeypatch.setattr(ks, "PIECE_WORK", 2 ** 22)
    dispatched, unfinished = [], []
    for name in ("_restarts_next", "_restarts_lloyd"):
        real = getattr(ks, name)

        def spy(*a, _real=real):
            out = _real(*a)
            dispatched.append(jax.tree.leaves(out)[0])
            return out

        monkeypatch.setattr(ks, name, spy)

    def should_stop():
        unfinished.extend(x for x in dispatched if not x.is_ready())
        return False

    points, valid = _sample(num_rows=4096, d=16, seed=1)
    ks.best_of_restarts(points, valid, 24, jax.random.key(0), restarts=4, lloyd_iterations=3, should_stop=should_stop)
    assert len(dispatched) > 4 and not unfinished


def test_resuming_a_finished_kmeans_run_leaves_it_as_it_was(tmp_path):
    """Its checkpoint steps are one past its rounds (the seeding round), so a resume of a finished run wrote its
    last checkpoint again: exit 5, "free some space", and a checkpoint_error in summary.json."""
    out = tmp_path / "done"
    assert main(["run", *KMEANS, "--rounds", "2", "--out", str(out)]) == 0
    before = (out / "final_params.msgpack").read_bytes()
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["checkpoint_error"] is None and s["completed"] and s["rounds"] == 2
    assert (out / "final_params.msgpack").read_bytes() == before
