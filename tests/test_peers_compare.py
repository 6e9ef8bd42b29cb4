"""benchmarks/peers: the peer scripts' workloads are jaxqfl's bench workloads, and the driver's report is strict JSON.

Imports neither torch, pfl nor flwr (CI installs none of them): only the
settings module, the driver's pure parts and jaxqfl's own parser and workload
definitions.
"""
import json
import math
import pathlib
import sys

import numpy as np
import pytest

PEERS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))
import compare  # noqa: E402
import workloads as peer_workloads  # noqa: E402

from jaxqfl.bench import workloads as bench  # noqa: E402
from jaxqfl.cli.main import _parser  # noqa: E402


def _bench_workload(name, monkeypatch):
    """jaxqfl's bench workload ``name`` with its data generators stubbed out (their calls recorded)."""
    calls = {}
    monkeypatch.setattr(bench, "random_population", lambda *a, **k: calls.setdefault("random", (a, k)))
    import jaxqfl.data

    monkeypatch.setattr(jaxqfl.data, "synthetic", lambda *a, **k: calls.setdefault("synthetic", (a, k)))
    return bench.WORKLOADS[name](), calls


@pytest.mark.parametrize("name", sorted(peer_workloads.WORKLOADS))
def test_peer_settings_are_the_bench_workloads(name, monkeypatch):
    w = peer_workloads.WORKLOADS[name]
    b, calls = _bench_workload(w["bench"], monkeypatch)
    assert w["cohort_size"] == b.cohort_size
    assert (w["local_epochs"], w["local_steps"], w["batch_size"]) == (
        b.schedule.local_epochs, b.schedule.local_steps, b.schedule.batch_size)
    if w["model"] == "mlp":
        assert tuple(w["hidden"]) == bench.MLP_HIDDEN and w["client_lr"] == bench.MLP_CLIENT_LR
        assert calls["random"][0][0] == w["num_clients"]  # the bench's population size (MNIST rows replace its data)
    else:
        assert w["hidden"] == [] and w["client_lr"] == bench.TINY_CLIENT_LR
        assert calls["synthetic"][0] == (1.0, 1.0, w["num_clients"], 0)  # compare.py exports this very population


@pytest.mark.parametrize("name", sorted(peer_workloads.WORKLOADS))
def test_jaxqfl_flags_parse_to_the_same_settings(name):
    w = peer_workloads.WORKLOADS[name]
    args = _parser().parse_args(["run", *peer_workloads.jaxqfl_flags(name, "x.npz", 7)])
    assert (args.dataset, args.data_path, args.partition, args.model) == ("npz", "x.npz", "natural", w["model"])
    one = lambda v: v[0] if isinstance(v, tuple) and len(v) == 1 else v  # noqa: E731  (sweepable flags: tuples)
    assert tuple(map(one, (args.cohort_size, args.batch_size, args.client_lr, args.rounds, args.eval_every))) == (
        w["cohort_size"], w["batch_size"], w["client_lr"], 7, 1)
    assert (one(args.local_epochs), one(args.local_steps)) == (w["local_epochs"], w["local_steps"])
    if w["hidden"]:
        assert tuple(args.hidden) == tuple(w["hidden"])
    assert tuple(map(one, (args.algorithm, args.server_opt, args.server_lr, args.weighting))) == (
        "fedavg", "sgd", 1.0, "examples")


def test_load_slices_clients(tmp_path):
    ids = np.array([0, 0, 1, 1, 1, 2], np.int32)
    np.savez(tmp_path / "w.npz", x=np.arange(12, dtype=np.float32).reshape(6, 2), y=np.array([0, 1, 2, 0, 1, 4]),
             client_id=ids, x_test=np.zeros((1, 2), np.float32), y_test=np.array([3]))
    d = peer_workloads.load(str(tmp_path / "w.npz"))
    assert d["clients"] == [slice(0, 2), slice(2, 5), slice(5, 6)]
    assert d["num_classes"] == 5


def _fake_run(side, ms, loss_end):
    return {"peer": side, "round_ms": ms, "cpu_round_ms": 2 * ms, "first_round_s": ms / 10, "process_s": ms / 5,
            "cold_process_s": ms / 4, "losses": [2.0, loss_end], "loss_fell": True}


def test_report_is_strict_json_with_ratios(tmp_path):
    from jaxqfl.experiment.outputs import write_json

    runs = {"mlp": {"jaxqfl": [_fake_run("jaxqfl", 10.0, 1.0), _fake_run("jaxqfl", 30.0, float("nan"))],
                    "pfl": [_fake_run("pfl", 40.0, 1.5)], "flower": []}}
    summary = compare.summarize(runs)
    assert summary["mlp"]["jaxqfl"]["round_ms"] == {"median": 20.0, "min": 10.0, "max": 30.0}
    assert summary["mlp"]["pfl"]["ratio"]["round_ms"] == pytest.approx(2.0)
    assert "flower" not in summary["mlp"]  # a side with no runs has no row
    result = {"machine": {"cpu": "test cpu", "python": "3"}, "cpu_count": 2, "loadavg_start": [1, 1, 1],
              "loadavg_end": [2, 2, 2], "rounds": 10, "repeats": 2, "measured": "now", "versions": {"jax": "0"},
              "skipped": {"flower": "not installed"}, "summary": summary, "runs": runs,
              "data": {"mlp": {"clients": 3, "rows": 6, "features": 2, "classes": 5, "test_rows": 1,
                               "client_rows_min": 1, "client_rows_max": 3}}}
    write_json(tmp_path / "peers.json", result)

    def no_constants(c):
        raise ValueError(c)

    back = json.loads((tmp_path / "peers.json").read_text(), parse_constant=no_constants)
    assert back["runs"]["mlp"]["jaxqfl"][1]["losses"][1] is None  # NaN is written as null
    assert not any(isinstance(v, float) and math.isnan(v) for v in back["runs"]["mlp"]["jaxqfl"][1]["losses"])
    md = compare.markdown(result)
    assert "| mlp | pfl | 40.0 (40.0-40.0) |" in md and "2.0x" in md and "Skipped: flower" in md


def test_refuses_a_folder_with_an_earlier_comparison(tmp_path, capsys):
    assert compare.refuse_existing(tmp_path) is None
    (tmp_path / "peers.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        compare.parse(["--out", str(tmp_path), "--workloads", "tiny"])
    assert e.value.code == 2 and "already holds peers.json" in capsys.readouterr().err
    assert compare.refuse_existing(compare.ROOT / "benchmarks" / "results") is None  # the stored results: allowed


@pytest.mark.parametrize("argv, message", [
    (["--workloads", "cnn"], "--workloads takes names of mlp, tiny"),
    (["--peers", "fedml"], "--peers takes names of pfl, flower"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--workloads", "mlp", "--data-path", "/nonexistent/mnist.npz"], "no such file"),
])
def test_bad_flags_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        compare.parse(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_once_pairs_are_parsed_and_checked(capsys):
    assert compare.parse(["--workloads", "tiny", "--once", "flower:tiny,pfl:mlp"]).once == {("flower", "tiny"),
                                                                                          ("pfl", "mlp")}
    assert compare.parse(["--workloads", "tiny", "--once", "none"]).once == set()
    with pytest.raises(SystemExit) as e:
        compare.parse(["--workloads", "tiny", "--once", "flower"])
    assert e.value.code == 2 and "--once takes PEER:WORKLOAD pairs" in capsys.readouterr().err
