"""``jaxqfl run`` with personalized and fair algorithms and per-client evaluation; bad flags refused."""
import json

import pytest

from cli_refusals import assert_refused_before_any_work
from conftest import MNIST_PATH
from jaxqfl.cli.main import main

MNIST = ["--dataset", "mnist", "--data-path", str(MNIST_PATH), "--partition", "shards", "--num-clients", "20",
         "--cohort-size", "5", "--rounds", "4", "--eval-every", "2", "--local-steps", "4", "--devices", "2",
         "--model", "mlp", "--hidden", "32", "--no-progress", "--chunk-size", "5"]


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_ditto_run_reports_personal_and_global_per_client_accuracy(tmp_path, capsys):
    out = tmp_path / "ditto"
    assert main(["run", *MNIST, "--algorithm", "ditto", "--ditto-lambda", "0.5", "--out", str(out)]) == 0
    s = _summary(out)
    assert s["algorithm_hparams"]["lambda"] == 0.5
    for k in ("final_client_accuracy_mean", "final_client_accuracy_p10", "final_client_accuracy_min",
              "final_global_client_accuracy_mean"):
        assert 0.0 <= s[k] <= 1.0, k
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [2, 4] and all("test_client_accuracy_p90" in r for r in records)
    assert "per client       accuracy mean" in capsys.readouterr().out


@pytest.mark.slow
def test_pooled_mnist_gets_client_test_rows_by_default_and_none_keeps_it_pooled(tmp_path):
    assert main(["run", *MNIST, "--out", str(tmp_path / "a")]) == 0
    assert main(["run", *MNIST, "--client-test", "none", "--out", str(tmp_path / "b")]) == 0
    a, b = _summary(tmp_path / "a"), _summary(tmp_path / "b")
    assert "final_client_accuracy_mean" in a and "final_client_accuracy_mean" not in b
    assert a["final_accuracy"] == b["final_accuracy"]  # the same pooled rows, only reordered


def test_perfedavg_is_evaluated_one_inner_step_from_the_global_model(tmp_path):
    out = tmp_path / "pfa"
    assert main(["run", *MNIST, "--algorithm", "perfedavg", "--perfedavg-alpha", "0.1", "--out", str(out)]) == 0
    s = _summary(out)
    assert s["algorithm_hparams"]["alpha"] == 0.1
    assert "final_client_accuracy_mean" in s and "final_global_client_accuracy_mean" in s
    config = (out / "config.toml").read_text()
    assert "personal_eval = 1" in config.replace("-", "_")


@pytest.mark.slow
def test_config_file_repeats_a_fedrep_run_exactly(tmp_path):
    first = tmp_path / "first"
    assert main(["run", *MNIST, "--algorithm", "fedrep", "--head", "Dense_1", "--head-steps", "1",
                 "--out", str(first)]) == 0
    again = tmp_path / "again"
    assert main(["run", "--config", str(first / "config.toml"), "--no-progress", "--out", str(again)]) == 0
    a, b = _summary(first), _summary(again)
    assert a["final_client_accuracy_mean"] == b["final_client_accuracy_mean"]
    assert a["uplink_bits_total"] == b["uplink_bits_total"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--ditto-lambda", "0.1"], "--ditto-lambda applies to --algorithm ditto"),
        (["--algorithm", "ditto", "--ditto-lambda", "-1"], "non-negative"),
        (["--head", "Dense"], "--head applies to --algorithm fedrep / fedper"),
        (["--algorithm", "fedrep", "--head", "("], "is not a regular expression"),
        (["--algorithm", "fedper", "--head-steps", "2"], "--head-steps applies to --algorithm fedrep"),
        (["--q", "1"], "--q applies to --algorithm qffl"),
        (["--algorithm", "qffl", "--server-opt", "adam"], "--server-opt must be sgd"),
        (["--algorithm", "qffl", "--server-lr", "0.5"], "--server-lr must be 1"),
        (["--perfedavg-alpha", "0.1"], "--perfedavg-alpha applies to --algorithm perfedavg"),
        (["--personal-lr", "0.1"], "give --personal-eval K"),
        (["--personal-eval", "-1"], "non-negative"),
        (["--algorithm", "ditto", "--seeds", "0-1"], "sweeps (--seeds, list-valued flags) do not yet do"),
        (["--personal-eval", "2", "--stream"], "--stream does not yet do"),
        (["--personal-eval", "2", "--client-test", "none"], "--client-test none leaves it none"),
        (["--client-test", "half"], "invalid choice"),
    ],
)
def test_bad_personalization_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


def test_personal_models_without_client_test_rows_are_refused_naming_the_fix(tmp_path, capsys):
    code = None
    try:
        code = main(["run", *MNIST, "--algorithm", "ditto", "--client-test", "none", "--out", str(tmp_path / "x")])
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert "--client-test none leaves" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_reports_per_client_accuracy_per_config(tmp_path):
    out = tmp_path / "sweep"
    assert main(["run", *MNIST, "--seeds", "0-1", "--out", str(out)]) == 0
    for summary in sorted(out.glob("seed=*/summary.json")):
        s = json.loads(summary.read_text())
        assert 0.0 <= s["final_client_accuracy_mean"] <= 1.0 and "final_client_accuracy_p10" in s
