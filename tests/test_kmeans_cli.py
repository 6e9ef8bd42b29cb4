"""``jaxqfl run --task clustering``: the summary's numbers and traffic, and k-means flags refused before any work."""
import json
import math
import time

import pytest

from jaxqfl.cli.main import main
from cli_refusals import assert_refused_before_any_work
from jaxqfl.experiment.process_clock import MAIN_CALL


@pytest.mark.slow  # CI time (~14 s): federated k-means stays checked by default in test_kmeans / test_kmeans_state
def test_clustering_run_writes_inertia_ari_nmi_and_counts_the_seeding_traffic(tmp_path, capsys):
    out = tmp_path / "km"
    t0 = time.time()
    rc = main(["run", "--dataset", "gaussian-mixture", "--num-clients", "20", "--cohort-size", "10",
               "--components", "4", "--rounds", "4", "--eval-every", "2", "--devices", "2", "--out", str(out),
               "--no-progress"])
    wall = time.time() - t0
    assert rc == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [3, 5]  # round 1 of the run is the seeding round
    s = json.loads((out / "summary.json").read_text())
    assert s["task"] == "clustering" and s["clusters"] == 4 and s["kmeans"] == "lloyd"
    assert s["startup_from"] == MAIN_CALL and s["compile_seconds"] <= s["startup_seconds"] < wall
    assert 0 < s["round_seconds_p10"] <= s["round_seconds_median"] <= s["round_seconds_p90"] < wall
    assert 0.0 <= s["final_ari"] <= 1.0 and 0.0 <= s["final_nmi"] <= 1.0
    # the host's float64 inertia of the final centroids is the devices' float32 one of the last evaluation
    assert s["final_inertia"] == pytest.approx(records[-1]["test_inertia"], rel=1e-4)
    assert s["final_inertia"] <= s["seeding_inertia"]
    d, K, M = 10, 4, 10
    points = math.ceil(50 * K / M)  # rows per client in the seeding round, 4 slots per row
    seeding_bits = M * 32 * (4 * M * points) * (d + 1)
    assert s["uplink_bits_total"] == seeding_bits + 4 * M * 32 * (K * d + K)
    assert "test ARI / NMI" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "gaussian-mixture", "--model", "mlp"], "--model and --quant do not apply"),
        (["--dataset", "gaussian-mixture", "--local-steps", "3"], "--local-steps applies to --kmeans minibatch"),
        (["--dataset", "gaussian-mixture", "--kmeans", "minibatch", "--local-epochs", "1"], "fixed batch"),
        (["--clusters", "3"], "--clusters applies to --task clustering"),
        (["--dataset", "gaussian-mixture", "--kmeans", "minibatch", "--client-lr", "0.1"], "--client-lr does not apply"),
        (["--dataset", "gaussian-mixture", "--clusters", "0"], "positive integer"),
        # k-means read none of these: a review found the runs bit-identical to the plain one, exit 0
        (["--dataset", "gaussian-mixture", "--dp-clip", "0.01", "--dp-noise", "5"], "--dp-clip does not apply to"),
        (["--dataset", "gaussian-mixture", "--aggregator", "krum"], "--aggregator does not apply to --task clustering"),
        (["--dataset", "gaussian-mixture", "--attack", "scale", "--byzantine-fraction", "0.5"], "--attack does not"),
        (["--dataset", "gaussian-mixture", "--algorithm", "fedprox"], "--algorithm does not apply"),
        (["--dataset", "gaussian-mixture", "--server-opt", "adam"], "--server-opt does not apply"),
        (["--dataset", "gaussian-mixture", "--personal-eval", "2"], "--personal-eval does not apply"),
        (["--dataset", "gaussian-mixture", "--lora-rank", "2"], "--lora-rank does not apply"),
        (["--dataset", "gaussian-mixture", "--secure-aggregation", "secagg", "--uplink", "qsgd:4"],
         "--secure-aggregation does not apply"),
    ],
)
def test_bad_clustering_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--num-clients", "20", "--cohort-size", "5", "--clusters", "1000000"], "--clusters 1000000 exceeds the"),
        (["--clusters", "5000"], "the k-means++ seeding (10 restarts on 100 clients' sampled rows) needs at least"),
        (["--seed-points", "2147483647"], "--clusters 10 with --seed-points 2,147,483,647: the k-means++ seeding"),
    ],
)
def test_clusters_beyond_the_rows_or_the_memory_are_refused_before_seeding(tmp_path, capsys, monkeypatch, argv,
                                                                         message):
    """More clusters than rows, or a seeding larger than memory (it grew to 10 GB over minutes), exit 2 at once."""
    import jaxqfl.engine
    from jaxqfl.cli.main import main

    def no_build(*a, **k):
        raise AssertionError("the seeding round was built for a refused --clusters")

    monkeypatch.setattr(jaxqfl.engine, "build", no_build)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dataset", "gaussian-mixture", "--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
