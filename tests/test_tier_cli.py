"""``jaxqfl run --tiers``: a mixed-precision federation from the command line; bad tiers refused before any work."""
import json
import re
import shutil

import numpy as np
import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl.cli.main import main
from jaxqfl.data.files import load_npz_tiers, tiers_by_client

SYNTH = ["--dataset", "synthetic", "--num-clients", "20", "--cohort-size", "5", "--rounds", "4", "--eval-every", "2",
         "--local-steps", "2", "--devices", "2", "--chunk-size", "5", "--no-progress",
         "--checkpoint-every", "2"]  # the resume below starts from round 2's checkpoint
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


def _tiered_npz(path, tier_of_client, rows_per_client=12, features=5):
    """An npz of natural clients with string ids (so the client order is np.unique's, not the file's)."""
    rng = np.random.default_rng(0)
    names = [f"user{c:02d}" for c in range(len(tier_of_client))][::-1]  # listed in reverse of np.unique's order
    ids = np.repeat(names, rows_per_client)
    tiers = np.repeat(tier_of_client, rows_per_client)
    perm = rng.permutation(ids.size)  # rows shuffled: a client's rows are not contiguous
    x = rng.normal(size=(ids.size, features)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    np.savez(path, x=x[perm], y=y[perm], client_id=ids[perm], tier=tiers[perm])
    return dict(zip(names, tier_of_client))


def test_tiers_read_from_the_data_give_each_natural_client_the_tier_of_its_rows(tmp_path):
    tier_of_name = _tiered_npz(tmp_path / "d.npz", [0, 1, 1, 2, 0, 1, 2, 2, 1, 0])
    expected = [tier_of_name[n] for n in sorted(tier_of_name)]  # natural client i = i-th id in sorted order
    assert load_npz_tiers(tmp_path / "d.npz", 3).tolist() == expected
    assert tiers_by_client(np.array([7, 3, 7, 3, 5]), np.array([2, 0, 2, 0, 1]), 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("ids,tiers,message", [
    ([1, 1, 2], [0, 1, 1], "client 1 has rows in tier 0 and in tier 1"),
    ([1, 1, 2], [0, 0, 3], "'tier' holds 3 (row 2)"),
    ([1, 1, 2], [0.0, 0.0, 1.0], "expected integers 0 to 2"),
    ([1, 1, 2], [0, 0], "one tier per row"),
])
def test_a_bad_tier_column_is_refused_naming_the_value(ids, tiers, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiers_by_client(np.array(ids), np.array(tiers), 3)


def test_a_run_with_tiers_from_the_data_uses_the_files_tiers(tmp_path):
    tier_of_name = _tiered_npz(tmp_path / "d.npz", [0, 1, 1, 0, 0, 1, 0, 1])
    out = tmp_path / "run"
    assert main(["run", "--dataset", "npz", "--data-path", str(tmp_path / "d.npz"), "--rounds", "2",
                 "--cohort-size", "4", "--local-steps", "1", "--devices", "2", "--no-progress",
                 "--tiers", "data/w4a8/uniform:4;data/none/none", "--out", str(out)]) == 0
    rows = json.loads((out / "summary.json").read_text())["tiers"]
    counts = np.bincount(list(tier_of_name.values()), minlength=2)
    assert [r["num_clients"] for r in rows] == counts.tolist()
    assert [r["fraction"] for r in rows] == (counts / counts.sum()).tolist()
    assert sum(r["client_rounds"] for r in rows) == 2 * 4


@pytest.mark.parametrize("column,argv,message", [
    (True, ["--tiers", "data/w4a8/qsgd:4;0.5/none/none"], "not both"),
    (True, ["--tiers", "data/w4a8/qsgd:4;data/none/none", "--partition", "iid", "--num-clients", "4",
      "--cohort-size", "2"],
     "--partition iid re-splits the rows"),
    (False, ["--tiers", "data/w4a8/qsgd:4;data/none/none"], "lacks the key(s) ['tier']"),
    (True, ["--tiers", "data/w4a8/qsgd:4"], "'tier' holds 1"),
])
def test_bad_tiers_from_the_data_are_refused_before_any_work(tmp_path, capsys, monkeypatch, column, argv, message):
    path = tmp_path / "d.npz"
    _tiered_npz(path, [0, 1, 1, 0])
    if not column:
        with np.load(path) as f:
            np.savez(path, **{k: f[k] for k in f.files if k != "tier"})
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                   ["--dataset", "npz", "--data-path", str(path), "--no-progress", *argv], message)


def test_tiers_from_the_data_need_an_npz_dataset(tmp_path, capsys, monkeypatch):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                   [*SYNTH, "--tiers", "data/w4a8/qsgd:4;data/none/none"],
                                   "tiers are read from the 'tier' key of a --dataset npz file")
