"""``jaxqfl run --algorithm``: each algorithm runs from the command line and is recorded; bad flags refused."""
import json

import pytest

from jaxqfl.cli.main import main
from cli_refusals import assert_refused_before_any_work

SMALL = ["--num-clients", "20", "--cohort-size", "5", "--rounds", "2", "--eval-every", "2", "--local-steps", "2",
         "--devices", "2", "--no-progress"]


@pytest.mark.slow
def test_run_records_the_algorithm_and_its_hyper_parameters(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *SMALL, "--out", str(out), "--algorithm", "scaffold", "--server-lr", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "scaffold"
    assert summary["algorithm_hparams"] == {"local_lr": 0.01, "global_lr": 0.5, "weighting": "uniform"}
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert "of scaffold" in capsys.readouterr().out


def test_a_swept_client_lr_reaches_the_algorithm(tmp_path):
    """``--client-lr 0.01,0.05`` with SCAFFOLD: one sweep program; the two configs differ."""
    out = tmp_path / "sweep"
    assert main(["run", *SMALL, "--out", str(out), "--algorithm", "scaffold", "--client-lr", "0.01,0.05"]) == 0
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("*/summary.json"))]
    assert len(summaries) == 2
    assert summaries[0]["final_loss"] != summaries[1]["final_loss"]


@pytest.mark.parametrize(
    "argv,hparams",
    [
        (["--algorithm", "fedavg", "--server-opt", "adam", "--server-lr", "0.01"],
         {"client_lr": 0.05, "server_opt": "adam", "server_lr": 0.01, "weighting": "examples"}),
        (["--algorithm", "fedavg", "--server-opt", "optax-yogi", "--server-lr", "0.01"],
         {"client_lr": 0.05, "server_opt": "optax-yogi", "server_lr": 0.01, "weighting": "examples"}),
        (["--algorithm", "fedprox"], {"mu": 0.01}),
        (["--algorithm", "fedprox", "--mu", "0"], {"mu": 0.0}),
        (["--algorithm", "fednova", "--weighting", "uniform"], {"momentum": 0.0, "weighting": "uniform"}),
        (["--algorithm", "feddyn", "--feddyn-alpha", "0.1"], {"alpha": 0.1, "weighting": "uniform"}),
        (["--algorithm", "mimelite", "--server-opt", "momentum"],
         {"base_optimizer": "momentum", "learning_rate": 0.05}),
    ],
)
def test_flags_build_the_named_algorithm(argv, hparams):
    from jaxqfl import algorithms
    from jaxqfl.experiment import algorithm_rules, runner
    from jaxqfl.cli.main import _parser

    parser = _parser().run_parser  # the flags generated from jaxqfl.Experiment's settings
    args = parser.parse_args(["--client-lr", "0.05", *argv])
    runner._split_sweep(parser, args)  # one value each: the lists' first
    algorithm_rules.validate(parser, args)
    algorithm, recorded = algorithm_rules.build(args)
    assert isinstance(algorithm, algorithms.Algorithm)
    assert hparams.items() <= recorded.items()


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
        (["--algorithm", "feddyn", "--server-lr", "1,0.5"], "--server-lr takes no list"),
    ],
)
def test_bad_algorithm_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)
