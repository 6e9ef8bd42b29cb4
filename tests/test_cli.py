"""The jaxqfl command: outputs, summaries, refusal of bad flags before any work, README/CI agreement."""
import json
import pathlib
import re

import numpy as np
import pytest

from jaxqfl.cli.main import main
from cli_refusals import assert_refused_before_any_work

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_run_writes_metrics_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--num-clients", "60", "--cohort-size", "12", "--rounds", "5", "--eval-every", "2",
               "--local-steps", "3", "--devices", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [2, 4, 5]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "final_loss", "rounds", "num_clients", "cohort_size", "num_devices",
                "compile_seconds", "seconds_per_round", "uplink_bits_total"):
        assert key in summary
    assert summary["num_devices"] == 4 and summary["rounds"] == 5 and summary["cohort_size"] == 12
    assert summary["uplink_bits_total"] == 5 * 12 * 32 * summary["num_params"]
    assert summary["final_accuracy"] == records[-1]["test_accuracy"]
    # per-round times: one per round since the previous record, summing to the device time between records
    assert [len(r["round_seconds"]) for r in records] == [2, 2, 1]
    previous = 0.0
    for r in records:
        assert abs(sum(r["round_seconds"]) - (r["seconds"] - previous)) < 1e-9 * max(1.0, r["seconds"])
        previous = r["seconds"]
    every = [t for r in records for t in r["round_seconds"]]
    assert summary["round_seconds_median"] == float(np.median(every))
    assert summary["round_seconds_p10"] <= summary["round_seconds_median"] <= summary["round_seconds_p90"]
    assert 0.0 <= summary["final_accuracy"] <= 1.0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--rounds", "0"], "positive integer"),
        (["--client-lr", "nan"], "positive finite"),
        (["--cohort-size", "5000"], "exceeds --num-clients"),
        (["--dataset", "mnist"], "--data-path"),
        (["--dataset", "mnist", "--data-path", "/no/such/file.npz"], "no such file"),
        (["--local-steps", "2", "--local-epochs", "1"], "not both"),
        (["--model", "cnn"], "MNIST CNN"),
        (["--server-opt", "lamb"], "invalid choice"),
        (["--partition", "natural", "--dataset", "mnist", "--data-path", __file__], "does not exist for mnist"),
        (["--hidden", "0"], "positive integers"),
        (["--uplink", "qsgd:0"], "levels"),
        (["--uplink", "sign+ef", "--integer-aggregation"], "--integer-aggregation needs"),
        (["--quant", "int3"], "not a preset"),
    ],
)
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()
    run_cmd = next(b for b in blocks if "jaxqfl run" in b)
    assert run_cmd.endswith("jaxqfl run"), "the main-job command runs the embedded default"
