"""`jaxqfl run` saves the final model; `jaxqfl quantize` exports it to integers; bad input exits 2."""
import json

import jax
import numpy as np
import pytest

from jaxqfl import data, models, quant
from jaxqfl.cli.main import main
from jaxqfl.models.serialization import load_integer_model, load_params, save_params


def test_params_round_trip(tmp_path):
    m = models.mlp((7, 5))
    p = m.init(jax.random.key(0), np.zeros((1, 9), np.float32))
    save_params(tmp_path / "p.msgpack", p)
    q = load_params(tmp_path / "p.msgpack")
    jax.tree.map(np.testing.assert_array_equal, p, q)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["run", "--num-clients", "12", "--cohort-size", "4", "--rounds", "2", "--eval-every", "2",
               "--model", "mlp", "--hidden", "12", "--autotune", "off", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_quantize_writes_an_integer_model_equal_to_the_pipeline(run_dir, capsys):
    out = run_dir / "int.msgpack"
    rc = main(["quantize", str(run_dir), "--policy", "W4A8",  # names are case-insensitive, as --quant
               "--calibrate", "percentile", "--calibration-clients", "3",
               "--adjust", "bias,equalize", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "integer" in text and "smaller" in text
    im = load_integer_model(out)
    # the same pipeline in Python gives the same integer model and predictions
    cfg = json.loads((run_dir / "summary.json").read_text())["config"]
    pop = data.build("synthetic", num_clients=cfg["num_clients"], seed=cfg["seed"])
    model, graph = models.mlp((12,), pop.num_classes), models.mlp_graph(1)
    params = quant.equalize(jax.tree.map(jax.numpy.asarray, load_params(run_dir / "final_params.msgpack")), graph)
    from jaxqfl.ptq import federated_calibrate

    ranges = federated_calibrate(model, params, pop, "percentile", client_ids=np.arange(3), rows_per_client=64)
    policy = quant.calibrated_policy("w4a8", params, ranges)
    rows = np.concatenate([pop.client(i)[0][:64] for i in range(3)])
    params = quant.bias_correction(params, policy, models.layer_inputs(model, params, rows), graph)
    ref = quant.export_integer(quant.bias_to_grid(params, policy, graph), policy, graph)
    assert ref.meta == im.meta and ref.int_bytes == im.int_bytes
    np.testing.assert_array_equal(quant.integer_apply(im, pop.x_test), quant.integer_apply(ref, pop.x_test))


@pytest.mark.parametrize("argv, message", [
    (["quantize", "/nonexistent/run"], "no such directory"),
    (["quantize", "{run}", "--policy", "binary"], "--policy 'binary'"),
    (["quantize", "{empty}"], "has no summary.json"),
    (["quantize", "{run}", "--adjust", "bias,foo"], "got 'foo'"),
])
def test_bad_input_exits_2_with_a_message(argv, message, run_dir, tmp_path, capsys):
    argv = [a.format(run=run_dir, empty=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A run on generated data far from the defaults: 20 features, Synthetic(0.5, 2), small clients."""
    out = tmp_path_factory.mktemp("odd")
    rc = main(["run", "--num-clients", "6", "--cohort-size", "3", "--rounds", "1", "--eval-every", "1",
               "--local-steps", "2", "--model", "mlp", "--hidden", "8", "--num-features", "20",
               "--synthetic-alpha", "0.5", "--synthetic-beta", "2", "--client-size-mean", "2",
               "--client-size-sigma", "0.5", "--min-client-size", "20", "--max-client-size", "40",
               "--seed", "3", "--autotune", "off", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_a_saved_run_rebuilds_its_own_data_and_model(odd_run):
    from jaxqfl import saved_run

    summary = json.loads((odd_run / "summary.json").read_text())
    run = saved_run.load(odd_run)
    pop = run.population
    assert pop.x_test.shape[1:] == (20,) and summary["num_examples"] == pop.num_examples
    counts = np.asarray(pop.counts)
    assert counts.min() >= 20 and counts.max() <= 40  # the run's client sizes, not the default 50 and up
    params = jax.tree.map(jax.numpy.asarray, load_params(odd_run / "final_params.msgpack"))
    logits = np.asarray(run.model.apply(params, pop.x_test))
    assert float(np.mean(logits.argmax(1) == np.asarray(pop.y_test))) == summary["final_accuracy"]


def test_quantize_evaluates_the_runs_own_test_set(odd_run, capsys):
    rc = main(["quantize", str(odd_run), "--calibration-clients", "2", "--out", str(odd_run / "q.msgpack")])
    assert rc == 0
    final = json.loads((odd_run / "summary.json").read_text())["final_accuracy"]
    text = capsys.readouterr().out
    assert f"float {final:.4f}" in text
    # BOPs by hand: the MLP 20 -> 8 -> 10 has 20 x 8 + 8 x 10 = 240 MACs an example; "full" is 8-bit x 8-bit
    assert "240 MACs an example; BOPs float 245,760   full 15,360   (16x fewer" in text


def _copy_run(run_dir, dest):
    import shutil

    dest.mkdir()
    for name in ("summary.json", "config.toml", "final_params.msgpack"):
        shutil.copy(run_dir / name, dest / name)
    return dest


def test_damaged_params_and_unwritable_out_are_refused_before_any_work(run_dir, odd_run, tmp_path, capsys,
                                                                      monkeypatch):
    import jaxqfl.saved_run

    def no_rebuild(*a, **k):  # the refusals must come before the data is built
        raise AssertionError("the run's data was rebuilt for a bad input")

    monkeypatch.setattr(jaxqfl.saved_run, "rebuild", no_rebuild)
    truncated = _copy_run(run_dir, tmp_path / "truncated")
    blob = (truncated / "final_params.msgpack").read_bytes()
    (truncated / "final_params.msgpack").write_bytes(blob[: len(blob) // 2])
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [([str(truncated)], f"{truncated / 'final_params.msgpack'}: cannot read"),
             ([str(run_dir), "--out", str(afile / "q.msgpack")], f"--out '{afile / 'q.msgpack'}' cannot be created"),
             ([str(run_dir), "--out", str(tmp_path)], "is a folder"),
             # a run's own files are never replaced; another existing file only with --overwrite (both were
             # overwritten silently: a summary.json replaced by msgpack broke the run folder)
             ([str(run_dir), "--out", str(run_dir / "summary.json"), "--overwrite"],
              f"--out '{run_dir / 'summary.json'}' is a run's own summary.json"),
             ([str(run_dir), "--out", str(afile)], f"--out '{afile}' exists; add --overwrite")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main(["quantize", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "jaxqfl quantize: error:" in err and message in err and "Traceback" not in err  # its own usage
    assert not (truncated / "quantized_full.msgpack").exists() and afile.read_text() == "x"


def test_params_of_another_run_are_refused_naming_the_shapes(run_dir, odd_run, tmp_path, capsys):
    swapped = _copy_run(odd_run, tmp_path / "swapped")
    (swapped / "final_params.msgpack").write_bytes((run_dir / "final_params.msgpack").read_bytes())
    assert main(["quantize", str(swapped), "--calibration-clients", "2"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Dense_0" in err and "(12,)" in err and "(8,)" in err and "not this run's" in err


def test_a_mixture_config_rebuilds_with_its_own_settings(odd_run):
    from jaxqfl import saved_run

    config = {**saved_run.read_config(odd_run), "dataset": "gaussian-mixture", "components": 3, "separation": 9.0,
              "model": "logreg"}
    pop = saved_run.rebuild(config).population
    assert pop.task == "clustering" and pop.num_classes == 3 and pop.x.shape[1:] == (20,)
    counts = np.asarray(pop.counts)
    assert pop.num_clients == 6 and counts.min() >= 20 and counts.max() <= 40
