"""``jaxqfl plot``: one panel row per metric of the run's task; a bad ``--out`` refused before drawing.

The records below are what ``jaxqfl run`` writes to ``metrics.jsonl`` for a tiny
synthetic-regression run and a tiny gaussian-mixture (k-means) run (copied from
real runs: the keys are the point).
"""
import json

import pytest

from jaxqfl.cli.main import main

pytest.importorskip("matplotlib")

REGRESSION = [
    {"round": 1, "test_loss": 4606.33, "test_mse": 4606.33, "test_rmse": 67.87, "test_r2": -0.349,
     "train_loss": 1695.06, "uplink_bits_total": 5856, "downlink_bits_total": 5856, "seconds": 0.006},
    {"round": 2, "test_loss": 3052.34, "test_mse": 3052.34, "test_rmse": 55.25, "test_r2": 0.106,
     "train_loss": 6730.53, "uplink_bits_total": 11712, "downlink_bits_total": 11712, "seconds": 0.008},
]
CLUSTERING = [
    {"round": 2, "test_loss": 10.77, "test_inertia": 4783.42, "train_loss": 22.37, "uplink_bits_total": 10560,
     "downlink_bits_total": 10560, "seconds": 0.026, "server_centroid_shift": 7.40, "server_empty_clusters": 1.0},
    {"round": 3, "test_loss": 9.81, "test_inertia": 4357.30, "train_loss": 18.50, "uplink_bits_total": 21120,
     "downlink_bits_total": 21120, "seconds": 0.039, "server_centroid_shift": 4.43, "server_empty_clusters": 1.0},
]


def _run_folder(folder, records):
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _panels(fig):
    """Per row: its y label and the y data of every line in its round panel."""
    rows = fig.axes[0::2]
    return [(ax.get_ylabel(), [list(line.get_ydata()) for line in ax.get_lines()]) for ax in rows]


@pytest.mark.parametrize("records, expected", [
    (REGRESSION, [("test MSE", "test_mse"), ("test R^2", "test_r2")]),
    (CLUSTERING, [("test inertia", "test_inertia")]),
    (CLUSTERING[:1] + [{**CLUSTERING[1], "test_ari": 0.5, "test_nmi": 0.6}],
     [("test inertia", "test_inertia"), ("test ARI", "test_ari"), ("test NMI", "test_nmi")]),
])
def test_plot_draws_the_metrics_of_the_runs_task(records, expected, tmp_path):
    import matplotlib.pyplot as plt

    from jaxqfl.cli import plot_command

    run = _run_folder(tmp_path / "run", records)
    fig = plot_command.figure([plot_command._load(str(run))], ["run"], [], multiple=False)
    got = _panels(fig)
    assert [label for label, _ in got] == [label for label, _ in expected]
    for (_, lines), (_, key) in zip(got, expected):  # one non-empty line with the run's values
        want = [r.get(key, float("nan")) for r in records]
        assert len(lines) == 1 and [str(v) for v in lines[0]] == [str(float(v)) for v in want]
    assert all(ax.get_lines() for ax in fig.axes)  # no empty panel (bits on the right)
    plt.close(fig)
    assert main(["plot", str(run), "--out", str(tmp_path / "fig.png"), "--dpi", "30"]) == 0


def test_plot_of_a_classification_run_keeps_accuracy_and_loss(tmp_path):
    from jaxqfl.cli import plot_command

    records = [{"round": 1, "test_loss": 2.0, "test_accuracy": 0.3, "uplink_bits_total": 10}]
    fig = plot_command.figure([plot_command._load(str(_run_folder(tmp_path / "c", records)))], ["c"], [],
                              multiple=False)
    assert [label for label, _ in _panels(fig)] == ["test accuracy", "test loss"]


def test_plot_refuses_a_bad_out_before_drawing(tmp_path, capsys, monkeypatch):
    from jaxqfl.cli import plot_command

    def no_load(run):
        raise AssertionError("a run was read for a bad --out")

    monkeypatch.setattr(plot_command, "_load", no_load)
    run = _run_folder(tmp_path / "run", REGRESSION)
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [(tmp_path / "fig.bmpx", ".bmpx is not an image format"),
             (tmp_path / "fig", "has no image extension"),
             (afile / "fig.png", "cannot be created"),
             (tmp_path / "figs.png", "is a folder")]
    (tmp_path / "figs.png").mkdir()
    for out, message in cases:
        assert main(["plot", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "error:" in err and message in err and str(out) in err
        if "image" in message:
            assert ".png" in err and ".pdf" in err and ".svg" in err  # what is allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "figs.png", "run"]


def test_per_client_metrics_get_a_mean_line_with_a_percentile_band(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from jaxqfl.cli import plot_command

    records = [{"round": r, "test_loss": 1.0 / r, "test_accuracy": 0.5 + 0.1 * r, "uplink_bits_total": 10 * r,
                "test_client_accuracy_mean": 0.6 + 0.1 * r, "test_client_accuracy_p10": 0.4 + 0.1 * r,
                "test_client_accuracy_p90": 0.7 + 0.1 * r} for r in (1, 2)]
    fig = plot_command.figure([plot_command._load(str(_run_folder(tmp_path / "p", records)))], ["p"], [],
                              multiple=False)
    got = _panels(fig)
    assert [label for label, _ in got][:2] == ["test accuracy", "test loss"]
    assert got[2][0].startswith("per-client test accuracy")
    assert [str(v) for v in got[2][1][0]] == [str(0.6 + 0.1 * r) for r in (1, 2)]  # the mean over clients
    band = [c for c in fig.axes[4].collections if isinstance(c, PolyCollection)]
    assert len(band) == 1  # the p10-p90 band, spanning the percentiles
    ys = band[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(0.5) and max(ys) == pytest.approx(0.9)
    plt.close(fig)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]\n", "line 1 is not a jaxqfl record (a JSON object with a round)"),  # a TypeError traceback
    ('{"round": 1}\n{"foo": 1}\n', "line 2 is not a jaxqfl record"),  # a KeyError traceback
    ('{"round": 1}\nnot json\n', "line 2 is not JSON"),  # named neither the file nor the line
    ("", "holds no records: the run evaluated nothing yet"),  # an empty figure, exit 0
])
def test_plot_names_the_line_of_a_malformed_metrics_file(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(content)
    assert main(["plot", str(run), "--out", str(tmp_path / "fig.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "metrics.jsonl" in err and "Traceback" not in err, err
    assert not (tmp_path / "fig.png").exists()
    with pytest.raises(SystemExit):
        main(["plot", str(run), "--out", str(tmp_path / "fig.png"), "--dpi", "100000"])  # bad_alloc in matplotlib
    assert "expected an integer from 10 to 1200, got '100000'" in capsys.readouterr().err
