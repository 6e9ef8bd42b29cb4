"""``jaxqfl run --tiers``: a mixed-precision federation from the command line; bad tiers refused before any work."""
import json
import shutil

import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl.cli.main import main

SYNTH = ["--dataset", "synthetic", "--num-clients", "20", "--cohort-size", "5", "--rounds", "4", "--eval-every", "2",
         "--local-steps", "2", "--devices", "2", "--chunk-size", "5", "--no-progress"]
TIERS = "0.3/w4a8/qsgd:4;0.5/full/uniform:8;0.2/none/none"


def test_a_tiered_run_reports_every_tier_and_resumes_its_tier_totals(tmp_path, capsys):
    out = tmp_path / "tiers"
    assert main(["run", *SYNTH, "--tiers", TIERS, "--tier-weights", "precision", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    rows = s["tiers"]
    assert [r["num_clients"] for r in rows] == [6, 10, 4] and s["tier_weights"] == "precision"
    assert sum(r["uplink_bits_total"] for r in rows) == s["uplink_bits_total"]
    assert sum(r["client_rounds"] for r in rows) == 4 * 5
    assert rows[0]["bops"] < rows[1]["bops"] and "bops" not in rows[2]  # 4-bit < 8-bit weights; float: no BOPs
    assert all(0.0 <= r["final_accuracy"] <= 1.0 for r in rows)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "test_tier0_accuracy" in records[0] and len(records[0]["tier_uplink_bits_total"]) == 3
    assert "tiers (precision)" in capsys.readouterr().out
    half = tmp_path / "half"  # resumed from its round-2 checkpoint: the per-tier totals carry over
    shutil.copytree(out, half)
    shutil.rmtree(half / "checkpoints" / "4")
    assert main(["run", "--resume", str(half)]) == 0
    resumed = json.loads((half / "summary.json").read_text())
    assert [r["uplink_bits_total"] for r in resumed["tiers"]] == [r["uplink_bits_total"] for r in rows]
    assert resumed["final_loss"] == s["final_loss"]


@pytest.mark.parametrize("argv,message", [
    (["--tiers", "0.5/w4a8/qsgd:4;0.6/none/none"], "tier fractions must sum to 1"),
    (["--tiers", "0.5/w4a8;0.5/none/none"], "is not FRACTION/PRESET/UPLINK"),
    (["--tiers", "half/w4a8/qsgd:4;0.5/none/none"], "fraction 'half' is not a number"),
    (["--tiers", "0.5/w3/qsgd:4;0.5/none/none"], "'w3' is not a preset"),
    (["--tiers", "0.5/w4a8/sign;0.5/none/none"], "majority vote"),
    (["--tiers", "0.5/w4a8/qsgd:x;0.5/none/none"], "invalid codec spec 'qsgd:x'"),
    (["--tiers", "0.5/w4a8/qsgd:4;0.5/none/none", "--uplink", "qsgd:4"], "does not combine with --uplink"),
    (["--tiers", "0.5/w4a8/qsgd:4;0.5/none/none", "--seeds", "0-1"], "does not combine with --seeds"),
    (["--tiers", "0.5/w4a8/topk:0.1;0.5/none/none", "--tier-weights", "precision"], "no variance bound"),
    (["--tier-weights", "precision"], "--tier-weights applies to --tiers"),
])
def test_bad_tiers_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *argv], message)
