"""``jaxqfl run --algorithm``: each algorithm runs from the command line and is recorded; bad flags refused."""
import json

import pytest

from jaxqfl.cli.main import main

SMALL = ["--num-clients", "20", "--cohort-size", "5", "--rounds", "2", "--eval-every", "2", "--local-steps", "2",
         "--devices", "2", "--no-progress"]


@pytest.mark.parametrize(
    "argv,name,hparams",
    [
        (["--algorithm", "fedprox", "--mu", "0.5"], "fedprox", {"mu": 0.5, "client_lr": 0.01}),
        (["--algorithm", "scaffold", "--server-lr", "0.5"], "scaffold",
         {"local_lr": 0.01, "global_lr": 0.5, "weighting": "uniform"}),
        (["--algorithm", "fednova"], "fednova", {"momentum": 0.0}),
        (["--algorithm", "feddyn"], "feddyn", {"alpha": 0.01, "weighting": "uniform"}),
        (["--algorithm", "mimelite", "--server-opt", "adam"], "mimelite",
         {"base_optimizer": "adam", "learning_rate": 0.01}),
        ([], "fedavg", {"server_opt": "sgd", "server_lr": 1.0}),
    ],
)
def test_run_records_the_algorithm_and_its_hyper_parameters(tmp_path, capsys, argv, name, hparams):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out), *argv]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == name
    assert hparams.items() <= summary["algorithm_hparams"].items()
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert f"of {name}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--algorithm", "fedsgd"], "invalid choice"),
        (["--mu", "0.1"], "--mu applies to --algorithm fedprox"),
        (["--algorithm", "fedprox", "--mu", "-1"], "non-negative"),
        (["--algorithm", "fedprox", "--mu", "inf"], "non-negative finite"),
        (["--feddyn-alpha", "0.1"], "--feddyn-alpha applies to --algorithm feddyn"),
        (["--algorithm", "feddyn", "--feddyn-alpha", "0"], "positive"),
        (["--algorithm", "scaffold", "--server-opt", "adam"], "--server-opt must be sgd"),
        (["--algorithm", "mimelite", "--server-lr", "0.5"], "--server-lr must be 1"),
    ],
)
def test_bad_algorithm_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    import jaxqfl.engine

    def no_build(*a, **k):
        raise AssertionError("engine.build was called for a bad flag")

    monkeypatch.setattr(jaxqfl.engine, "build", no_build)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(out), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
